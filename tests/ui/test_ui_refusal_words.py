"""Refusals in the words of the page they come back to, in a real browser: the New workspace
form names its own fields ("Image", "OpenSSH on port 22"), not the CLI's options, while the
API keeps the CLI's wording for its own users."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.ui.conftest import LAB, SignedIn


def _new_workspace(page: Any, url: str, name: str, provider: str) -> Any:
    page.goto(url + "/workspaces")
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()
    form = page.locator("#new-workspace form")
    form.get_by_label("Name").fill(name)
    form.get_by_label("Provider", exact=True).select_option(provider)
    return form


def _create(page: Any, form: Any) -> int:
    with page.expect_response(lambda r: r.url.endswith("/workspaces") and r.request.method == "POST") as resp:
        form.get_by_role("button", name="Create workspace").click()
    return resp.value.status


def test_fields_for_another_provider_kind_are_refused_by_their_labels(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    form = _new_workspace(page, srv.url, "wrong-kind", LAB)
    form.get_by_label("OpenSSH on port 22").check()
    assert _create(page, form) == 422
    expect(page.get_by_role("alert")).to_have_text(
        f'The “OpenSSH on port 22” switch is only for local providers, and provider "{LAB}" is manual: '
        "turn it off, or choose a local provider.")
    expect(form.get_by_label("OpenSSH on port 22")).to_be_checked()

    form.get_by_label("OpenSSH on port 22").uncheck()
    form.locator("#ws-image").fill("debian:12")
    assert _create(page, form) == 422
    expect(page.get_by_role("alert")).to_have_text(
        f'Image is only for docker providers, and provider "{LAB}" is manual: clear it, or choose a docker provider.')

    form.get_by_label("CVM: systemd as PID 1").check()
    assert _create(page, form) == 422
    expect(page.get_by_role("alert")).to_have_text(
        f'Image and the “CVM: systemd as PID 1” switch are only for docker providers, and provider "{LAB}" is '
        "manual: clear them, or choose a docker provider.")

    form.locator("#ws-image").fill("")
    assert _create(page, form) == 422
    expect(page.get_by_role("alert")).to_have_text(
        f'The “CVM: systemd as PID 1” switch is only for docker providers, and provider "{LAB}" is manual: '
        "turn it off, or choose a docker provider.")
    expect(form.get_by_label("CVM: systemd as PID 1")).to_be_checked()

    with srv.api() as c:  # the API and the CLI keep their options' names
        r = c.post("/workspaces", json={"name": "wrong-kind", "provider": LAB, "cvm": True})
        assert (r.status_code, r.json()["error"]) == (422, "--image and --cvm are for docker workspaces")
        assert c.get("/workspaces/wrong-kind").status_code == 404


def test_a_docker_provider_without_an_image_asks_for_the_image_field(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/providers", json={"name": "crates", "kind": "docker", "docker_host": "unix:///nonexistent/docker.sock"}).raise_for_status()
    try:
        form = _new_workspace(page, srv.url, "imageless", "crates")
        assert _create(page, form) == 422
        expect(page.get_by_role("alert")).to_have_text(
            "Image is required for docker providers: give an image on the provider's Docker engine, "
            "registry.example.com/dev:latest say.")
    finally:
        with srv.api() as c:
            c.delete("/providers/crates")


def _forge(page: Any, action: str, fields: dict[str, str]) -> None:
    """Submit a form as a page left open from before a demotion would: the signed-in member's
    CSRF token, a site manager's fields."""
    page.evaluate(
        """([action, fields]) => {
            const f = document.createElement("form");
            f.method = "post"; f.action = action;
            const token = document.querySelector('input[name="csrf_token"]').cloneNode();
            f.append(token);
            for (const [k, v] of Object.entries(fields)) {
                const i = document.createElement("input"); i.type = "hidden"; i.name = k; i.value = v; f.append(i);
            }
            document.body.append(f); f.submit();
        }""",
        [action, fields],
    )


def test_a_member_at_a_site_managers_action_is_told_what_happened(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    page.goto(srv.url + "/workspaces")
    _forge(page, "/workspaces", {"name": "for-alice", "provider": LAB, "owner": srv.manager})
    expect(page.get_by_role("alert")).to_have_text(
        "Only site managers can create a workspace for another user, and you are a member: create your own "
        f"(reload this page for a form without Owner), or ask a site manager to create it for \"{srv.manager}\".")
    expect(page.get_by_label("Name")).to_have_value("for-alice")

    for action, fields in ((f"/manage/providers/{LAB}/edit", {"external_connect": "on"}),
                           (f"/manage/users/{srv.member}/role", {"role": "site-manager"})):
        with page.expect_response(lambda r: r.url.endswith(action)) as resp:
            _forge(page, action, fields)
        assert resp.value.status == 403
        expect(page.get_by_role("heading", level=1)).to_have_text("Only site managers can do this")
        expect(page.locator(".error-state p.muted")).to_have_text(
            "It is for administering this deployment. Ask one of your site managers if you need access or a change here.")
        page.goto(srv.url + "/workspaces")
    with srv.api() as c:
        assert c.get("/workspaces/for-alice").status_code == 404
        assert next(u["role"] for u in c.get("/users").json() if u["username"] == srv.member) == "member"
