"""The new-workspace form's Owner field: a site manager types another user's name (suggested
while the deployment is small enough to list everyone) and comes back to the list, told where
the workspace is listed; a name
no user has is refused naming the field, keeping what was typed; a member has no such field,
and one forged into the post is refused (403) while the CSRF check stays in force."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any

import httpx

from tests.helpers.server import wait_for
from tests.ui.conftest import CROWD, LAB, SignedIn, UIServer


def _open_form(page: Any, url: str) -> None:
    page.goto(url + "/workspaces")
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()


def _csrf(page: Any) -> str:
    return page.locator('input[name="csrf_token"]').first.get_attribute("value")


def _alert(page: httpx.Response) -> str:
    """The form's refusal on a page answered to a post, as the browser shows it."""
    found = re.findall(r'<div class="alert alert-error[^"]*" role="alert">(.*?)</div>', page.text, re.S)
    assert len(found) == 1, page.text
    return html.unescape(found[0])


def _cookie_client(s: SignedIn) -> httpx.Client:
    return httpx.Client(base_url=s.url, cookies={"hatchway_session": s.session_cookie()}, follow_redirects=False, timeout=30)


def test_a_site_manager_creates_a_local_workspace_for_a_member_from_mine(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    name = "onboard-" + secrets.token_hex(3)  # its Unix user is hw-bob-<name>: unique per run
    _open_form(page, srv.url)
    owner = page.get_by_label("Owner")
    assert owner.input_value() == srv.manager  # yourself unless you type someone else
    # Every user is suggested, by name, the signed-in one marked as you.
    with srv.api() as c:
        everyone = [u["username"] for u in c.get("/users").json()]
    assert owner.get_attribute("list") == "ws-owner-names"
    options = page.locator("#ws-owner-names option")
    assert [o.get_attribute("value") for o in options.all()] == everyone
    assert page.locator(f'#ws-owner-names option[value="{srv.manager}"]').get_attribute("label") == "you"
    assert page.locator(f'#ws-owner-names option[value="{srv.member}"]').get_attribute("label") is None
    owner.fill(srv.member)
    page.get_by_label("Name").fill(name)
    page.get_by_label("Provider", exact=True).select_option("local")
    page.get_by_role("button", name="Create workspace").click()
    try:
        page.wait_for_url(re.compile(r".*/workspaces$"))  # the list it was created from: Mine
        assert page.locator(".flash-success").inner_text() == (
            f'Workspace "{srv.member}/{name}" created for {srv.member} on provider "local". '
            f"{srv.member} connects after running hatchway config-ssh. It is not shown here because Mine lists only "
            "your own workspaces. — Show Everyone's · Go to the workspace"
        )
        page.locator(".flash").get_by_role("link", name="Show Everyone's").click()
        page.wait_for_url(re.compile(r".*/workspaces\?all=1$"))
        page.locator(f'tr[data-workspace="{srv.member}/{name}"]').get_by_role("link", name=name).click()
        page.wait_for_url(re.compile(rf".*/workspaces/{srv.member}/{name}\?next=%2Fworkspaces%3Fall%3D1$"))
        assert page.get_by_role("heading", name=name).first.is_visible()
        assert page.get_by_text(f"Owned by {srv.member} · provider local (local)").is_visible()
        connect = page.get_by_role("region", name="Connect", exact=True).inner_text()
        assert connect.splitlines()[-1] == (
            f"Only {srv.member} can connect to this workspace: they run hatchway config-ssh once on their machine, "
            f"then ssh hatchway.{name}."
        )
        with srv.api(srv.member_token) as c:
            mine = {w["name"]: w for w in c.get("/workspaces").json()}
        assert mine[name]["owner"] == srv.member and mine[name]["provider"] == "local"
        with srv.api() as c:
            assert name not in [w["name"] for w in c.get("/workspaces").json()]  # not the site manager's
            events = [e for e in c.get("/audit").json() if e["target"] == f"{srv.member}/{name}"]
            assert [(e["actor"], e["action"], e["detail"]) for e in events] == [
                (srv.manager, "workspace.create", {"provider": "local"})
            ]

            def running() -> bool:
                w = c.get(f"/workspaces/{name}", params={"owner": srv.member}).json()
                return bool(w["state"] == "running" and w["agent_connected"])

            wait_for(running, 60, what="the member's local workspace to run")
            # It runs as the member's Unix user for it, not the site manager's.
            assert c.get(f"/workspaces/{name}", params={"owner": srv.member}).json()["os_user"] == f"hw-{srv.member}-{name}"
    finally:
        with srv.api() as c:
            c.delete(f"/workspaces/{name}", params={"owner": srv.member})


def test_a_manual_workspace_for_a_member_shows_its_agent_command_to_the_site_manager(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    _open_form(page, srv.url)
    page.get_by_label("Owner").fill(srv.member)
    page.get_by_label("Name").fill("handed-over")
    page.get_by_label("Provider", exact=True).select_option(LAB)
    page.get_by_role("button", name="Create workspace").click()
    try:
        assert page.get_by_role("heading", name=f"Workspace “handed-over” created for {srv.member}").is_visible()
        assert page.locator("#agent-cmd").inner_text().startswith("HATCHWAY_AGENT_TOKEN=hwa_")
        page.get_by_role("link", name="Go to the workspace").click()
        page.wait_for_url(re.compile(rf".*/workspaces/{srv.member}/handed-over$"))
        assert page.get_by_text(f"Owned by {srv.member} · provider {LAB} (manual)").is_visible()
    finally:
        with srv.api(srv.member_token) as c:
            c.delete("/workspaces/handed-over")


def test_a_member_has_no_owner_field_and_a_forged_one_is_refused(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    _open_form(page, srv.url)
    assert page.locator("#ws-owner").count() == 0
    assert page.locator('[name="owner"]').count() == 0
    with _cookie_client(member_page) as c:
        r = c.post("/workspaces", data={"csrf_token": _csrf(page), "name": "planted", "provider": LAB, "owner": srv.manager})
        assert r.status_code == 403
        assert _alert(r) == (
            "Only site managers can create a workspace for another user, and you are a member: create your own "
            f'(reload this page for a form without Owner), or ask a site manager to create it for "{srv.manager}".')
        # Whatever is forged into it is quoted as any refused name is: bounded, and a NUL or a line
        # break shown, not written into the page.
        for forged, shown in (("x" * 100_000, "'" + "x" * 77 + "...'"), ("a\x00b\nc", "'a\\x00b\\nc'")):
            r = c.post("/workspaces", data={"csrf_token": _csrf(page), "name": "planted", "provider": LAB, "owner": forged})
            assert r.status_code == 403 and len(r.text) < 20_000
            assert _alert(r).endswith(f"ask a site manager to create it for {shown}.")
        # Without the form's token it is the CSRF refusal, as for every form.
        r = c.post("/workspaces", data={"name": "planted", "provider": LAB, "owner": srv.manager})
        assert r.status_code == 403 and "This form was out of date" in r.text
        # Naming yourself is your own workspace, as without the field.
        r = c.post("/workspaces", data={"csrf_token": _csrf(page), "name": "self-named", "provider": LAB, "owner": srv.member})
        assert r.status_code == 200 and "Workspace “self-named” created" in r.text
    with srv.api() as c:
        assert c.get("/workspaces/planted").status_code == 404
        assert c.get("/workspaces/planted", params={"owner": srv.member}).status_code == 404
    with srv.api(srv.member_token) as c:
        assert c.delete("/workspaces/self-named").status_code == 200


def test_an_owner_no_user_has_is_refused_by_the_fields_label_keeping_what_was_typed(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    _open_form(page, srv.url)
    owner, alert = page.get_by_label("Owner"), page.get_by_role("alert")
    page.get_by_label("Name").fill("for-nobody")
    page.get_by_label("Provider", exact=True).select_option(LAB)
    for typed, said in (
        ("nobody-here", 'Owner: no user named "nobody-here"; type an existing user\'s name (Manage > Users lists them).'),
        ("Bob Smith", "Owner \"Bob Smith\" is not valid: use 1-32 characters, lowercase letters, digits, '_' and '-', "
                      "starting with a letter."),
    ):
        owner.fill(typed)
        with page.expect_response(lambda r: r.url == srv.url + "/workspaces" and r.request.method == "POST") as resp:
            page.get_by_role("button", name="Create workspace").click()
        assert resp.value.status == 400
        assert alert.inner_text() == said
        assert page.locator("#new-workspace").get_attribute("open") is not None
        assert (owner.input_value(), page.get_by_label("Name").input_value()) == (typed, "for-nobody")
        assert page.get_by_label("Provider", exact=True).input_value() == LAB
    with srv.api() as c:
        assert [w for w in c.get("/workspaces", params={"all": "1"}).json() if w["name"] == "for-nobody"] == []

    owner.fill("")  # left empty: the site manager's own, as when left as it was
    page.get_by_role("button", name="Create workspace").click()
    try:
        assert page.get_by_role("heading", name="Workspace “for-nobody” created", exact=True).is_visible()
        with srv.api() as c:
            assert c.get("/workspaces/for-nobody").json()["owner"] == srv.manager
    finally:
        with srv.api() as c:
            c.delete("/workspaces/for-nobody")


def test_with_more_users_than_it_suggests_the_owner_field_lists_no_one_and_takes_a_typed_name(
    crowded_page: Any, crowded: UIServer
) -> None:
    """57 users: the page carries none of their names, and typing the last of them works."""
    page = crowded_page
    _open_form(page, crowded.url)
    owner = page.get_by_label("Owner")
    assert owner.input_value() == crowded.manager
    assert owner.get_attribute("list") is None and page.locator("datalist").count() == 0
    assert CROWD[-1] not in page.content()
    owner.fill(CROWD[-1])
    page.get_by_label("Name").fill("handed")
    page.get_by_label("Provider", exact=True).select_option(LAB)
    page.get_by_role("button", name="Create workspace").click()
    try:
        assert page.get_by_role("heading", name=f"Workspace “handed” created for {CROWD[-1]}").is_visible()
        with crowded.api() as c:
            assert c.get("/workspaces/handed", params={"owner": CROWD[-1]}).json()["owner"] == CROWD[-1]
    finally:
        with crowded.api() as c:
            c.delete("/workspaces/handed", params={"owner": CROWD[-1]})
