"""Second newcomer walk-through, in a real browser: refusals in the form's own words, error
pages that say what to do, every provider kind on offer, values that cannot disguise
themselves, and a second look before taking someone's administration away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.helpers.server import running_server
from tests.ui.conftest import LAB, SignedIn


def _submit_unchecked(page: Any, form: Any, button: str, path: str) -> int:
    """Press ``button`` with the browser's own checks (minlength, required) off, as a form
    filled by something else would arrive: the server's refusal is what is tested."""
    form.evaluate("f => { f.noValidate = true; }")
    with page.expect_response(lambda r: r.url.endswith(path) and r.request.method == "POST") as resp:
        form.get_by_role("button", name=button).click()
    return resp.value.status


# --- 1. refusals name the field as its label does ---------------------------------------


def test_refusals_name_each_field_by_its_label_in_plain_words(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.goto(srv.url + "/manage/users")
    page.locator("#new-user > summary").click()
    form = page.locator("#new-user form")
    form.get_by_label("Username").fill("Quinn Q")
    form.get_by_label("Email").fill("quinn@example.com")
    form.get_by_label("Initial password").fill("short")
    assert _submit_unchecked(page, form, "Create user", "/manage/users") == 400
    assert page.get_by_role("alert").inner_text() == (
        'Username "Quinn Q" is not valid: use 1-32 characters, lowercase letters, digits, \'_\' and \'-\', '
        "starting with a letter. Initial password must have at least 8 characters.")
    assert form.get_by_label("Username").input_value() == "Quinn Q"

    form.get_by_label("Username").fill("me")
    form.get_by_label("Email").fill("not-an-address")
    form.get_by_label("Initial password").fill("quinn-password-1")
    assert _submit_unchecked(page, form, "Create user", "/manage/users") == 400
    assert page.get_by_role("alert").inner_text() == (
        'Username "me" is reserved; choose another. '
        'Email "not-an-address" is not an email address: write it as name@example.com.')

    page.goto(srv.url + f"/manage/users/{srv.member}/password")
    form = page.locator("#user-password-form")
    form.get_by_label("New password", exact=True).fill("short")
    form.get_by_label("Repeat new password").fill("short")
    assert _submit_unchecked(page, form, "Set password", f"/manage/users/{srv.member}/password") == 400
    assert page.get_by_role("alert").inner_text() == "New password must have at least 8 characters."

    page.goto(srv.url + "/manage/providers")
    page.locator("#new-provider > summary").click()
    form = page.locator("#new-provider form")
    form.get_by_label("Name").fill("Edge Lab")
    assert _submit_unchecked(page, form, "Add provider", "/manage/providers") == 400
    assert page.get_by_role("alert").inner_text() == (
        'Name "Edge Lab" is not valid: use 1-63 lowercase letters, digits and \'-\', starting and ending '
        "with a letter or digit.")

    page.goto(srv.url + "/workspaces")
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()
    form = page.locator("#new-workspace form")
    form.get_by_label("Name").fill("envs")
    form.get_by_label("Provider", exact=True).select_option(LAB)
    form.get_by_label("Image environment").fill("EDITOR=vim\nLANG C.UTF-8")
    assert _submit_unchecked(page, form, "Create workspace", "/workspaces") == 400
    assert page.get_by_role("alert").inner_text() == (
        'Image environment line 2 ("LANG C.UTF-8") has no "=": write one NAME=value per line.')
    assert form.get_by_label("Image environment").input_value() == "EDITOR=vim\nLANG C.UTF-8"


def test_the_setup_form_names_its_fields_as_labelled(browser: Any, tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        context = browser.new_context()
        try:
            page = context.new_page()
            page.set_default_timeout(10_000)
            page.goto(srv.url + "/")
            form = page.locator("form")
            form.get_by_label("Username").fill("root")
            form.get_by_label("Email").fill("root@example.com")
            form.get_by_label("Password", exact=True).fill("short")
            form.get_by_label("Repeat password").fill("short")
            assert _submit_unchecked(page, form, "Create site manager account", "/setup") == 400
            assert page.get_by_role("alert").inner_text() == "Password must have at least 8 characters."
            expect(form.get_by_label("Username")).to_have_value("root")
        finally:
            context.close()


# --- 2. a refused page says what happened and what to do ---------------------------------


NOT_YOURS = (
    'Workspaces under "{owner}" can be opened only by that user and by site managers. Yours are on the '
    "Workspaces page; if you need access to this one, ask a site manager.")


def test_another_users_workspace_says_it_is_not_yours_and_not_whether_it_exists(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    with srv.api() as c:
        c.post("/workspaces", json={"name": "alices", "provider": LAB}).raise_for_status()
    try:
        seen = []
        # Her real workspace, one she does not have, and a user nobody has: the same answer,
        # as the API gives (403 before any lookup).
        for owner, name in ((srv.manager, "alices"), (srv.manager, "nothing-here"), ("nobody", "alices")):
            for path in (f"/workspaces/{owner}/{name}", f"/workspaces/{owner}/{name}/delete"):
                resp = page.goto(srv.url + path)
                assert resp is not None and resp.status == 403, path
                assert page.get_by_role("heading", level=1).inner_text() == "This workspace is not yours"
                assert page.locator(".error-state p.muted").inner_text() == NOT_YOURS.format(owner=owner)
                assert page.title() == "This workspace is not yours · Hatchway"
                seen.append(page.locator("main").inner_text().replace(owner, "OWNER"))
            with srv.api(srv.member_token) as c:
                assert c.get(f"/workspaces/{name}", params={"owner": owner}).status_code == 403
        assert len(set(seen)) == 1
        page.get_by_role("link", name="Go to your workspaces").click()
        expect(page).to_have_url(srv.url + "/workspaces")

        resp = page.goto(srv.url + "/manage/users")
        assert resp is not None and resp.status == 403
        assert page.get_by_role("heading", level=1).inner_text() == "Only site managers can open this page"
        assert page.locator(".error-state p.muted").inner_text() == (
            "It is for administering this deployment. Ask one of your site managers if you need access or a change here.")
    finally:
        with srv.api() as c:
            c.delete("/workspaces/alices")


# --- 3. every provider kind the API accepts, docker's own fields with it ------------------


def test_add_provider_offers_docker_with_its_fields_and_a_refusal_keeps_them(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.goto(srv.url + "/manage/providers")
    page.locator("#new-provider > summary").click()
    form = page.locator("#new-provider form")
    kind = form.get_by_label("Kind")
    assert kind.locator("option").evaluate_all("os => os.map(o => o.value)") == ["manual", "local", "docker"]
    assert form.locator("#provider-kind-hint").inner_text() == (
        "Docker workspaces are created from the image chosen with each one; the server must run as root.")
    host, network = form.get_by_label("Docker host"), form.get_by_label("Docker network")
    expect(host).to_be_hidden()  # manual, the default: the docker-only fields are out of the way
    kind.select_option("docker")
    expect(host).to_be_visible()
    expect(network).to_be_visible()

    form.get_by_label("Name").fill("dock-polish")
    host.fill("tcp://127.0.0.1:2375")
    network.fill("dev-net")
    form.get_by_role("switch", name="External Connect").set_checked(False)
    assert _submit_unchecked(page, form, "Add provider", "/manage/providers") == 400
    assert page.get_by_role("alert").inner_text() == (
        "Docker host 'tcp://127.0.0.1:2375' is not supported: the docker provider needs the engine on the server's "
        "own machine, reached through its Unix socket (unix:///var/run/docker.sock), not tcp.")
    expect(form.get_by_label("Name")).to_have_value("dock-polish")
    expect(kind).to_have_value("docker")
    expect(host).to_have_value("tcp://127.0.0.1:2375")
    expect(network).to_have_value("dev-net")
    expect(form.get_by_role("switch", name="External Connect")).not_to_be_checked()

    host.fill("unix:///run/hatchway-polish-none.sock")  # created without reaching the engine
    form.get_by_role("button", name="Add provider").click()
    try:
        expect(page.locator(".flash")).to_have_text('Provider "dock-polish" created.')
        assert page.locator('tr[data-provider="dock-polish"] td[data-label="Kind"]').inner_text() == (
            "docker\nunix:///run/hatchway-polish-none.sock · network dev-net")
        with srv.api() as c:
            made = next(p for p in c.get("/providers").json() if p["name"] == "dock-polish")
        assert (made["kind"], made["docker_host"], made["docker_network"], made["external_connect"]) == (
            "docker", "unix:///run/hatchway-polish-none.sock", "dev-net", False)
    finally:
        with srv.api() as c:
            c.delete("/providers/dock-polish")


def test_without_javascript_the_docker_fields_stay_and_say_whom_they_are_for(browser: Any, manager_page: SignedIn) -> None:
    srv = manager_page.srv
    context = browser.new_context(java_script_enabled=False, storage_state=manager_page.page.context.storage_state())
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(srv.url + "/manage/providers")
        page.locator("#new-provider > summary").click()
        form = page.locator("#new-provider form")
        expect(form.get_by_label("Docker host")).to_be_visible()
        assert form.locator("#provider-docker-network-hint").inner_text().startswith("For docker providers only: ")
        form.get_by_label("Name").fill("nojs-polish")
        form.get_by_label("Docker network").fill("dev-net")  # while the kind is still manual
        with page.expect_response(lambda r: r.url.endswith("/manage/providers") and r.request.method == "POST") as resp:
            form.get_by_role("button", name="Add provider").click()
        assert resp.value.status == 400
        assert page.get_by_role("alert").inner_text() == (
            "Docker host and Docker network are for docker providers only: clear them, or choose the docker kind "
            "instead of manual.")
        expect(form.get_by_label("Name")).to_have_value("nojs-polish")
        expect(form.get_by_label("Docker network")).to_have_value("dev-net")
        with srv.api() as c:
            assert "nojs-polish" not in [p["name"] for p in c.get("/providers").json()]
    finally:
        context.close()


# --- 4. characters that would disguise a value are shown, not obeyed ----------------------


RLO, ZWSP, LRI, PDI = "\u202e", "\u200b", "\u2066", "\u2069"


def test_invisible_and_reordering_characters_are_shown_as_code_points(manager_page: SignedIn) -> None:
    """A right-to-left override makes "evil\u202etxt.exe" read as "evilexe.txt"; a zero-width
    space makes two values look alike. Wherever the UI shows what users or clients sent, such
    characters appear as their code points, marked, and reorder nothing. (What agents report
    and User-Agents are stored without them already: the filter covers them all the same.)"""
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/users", json={"username": "rita", "email": f"rita{RLO}moc.elpmaxe@example.com",
                               "password": "rita-password-1"}).raise_for_status()
        c.post("/workspaces", json={"name": "masks", "provider": LAB,
                                    "env": {"GREETING": f"hi{ZWSP}there{RLO}cba", "ISOLATED": f"{LRI}x{PDI}"}}).raise_for_status()
        c.post("/providers", json={"name": "masked", "kind": "docker",
                                   "docker_host": f"unix:///run/{RLO}kcos.rekcod"}).raise_for_status()
    try:
        page.goto(srv.url + "/workspaces/alice/masks")
        env = page.get_by_role("table", name="Image environment variables").locator("tbody td.break")
        assert env.all_inner_texts() == ["hi<U+200B>there<U+202E>cba", "<U+2066>x<U+2069>"]
        assert env.locator(".unseen").evaluate_all("es => es.map(e => e.title)") == [
            "invisible character U+200B", "invisible character U+202E",
            "invisible character U+2066", "invisible character U+2069"]

        page.goto(srv.url + "/manage/users")
        assert page.locator('tr[data-user="rita"] td[data-label="User"] .muted').inner_text() == (
            "rita<U+202E>moc.elpmaxe@example.com")
        page.goto(srv.url + "/manage/providers")
        assert page.locator('tr[data-provider="masked"] td[data-label="Kind"] .mono').inner_text() == (
            "unix:///run/<U+202E>kcos.rekcod")
        page.goto(srv.url + "/manage/audit?view=admin")
        rows = page.get_by_role("table", name="Admin actions").locator("tbody tr")
        created = rows.filter(has=page.get_by_text("provider.create", exact=True)).first
        expect(created.locator('td[data-label="Details"]')).to_contain_text("docker host: unix:///run/<U+202E>kcos.rekcod;")
        assert RLO not in page.locator("main").inner_text()  # nothing on the page obeys one
    finally:
        with srv.api() as c:
            c.delete("/workspaces/masks")
            c.delete("/providers/masked")


# --- 5. a second look before taking someone's administration away -------------------------


def test_make_member_asks_first_and_cancel_changes_nothing(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/users", json={"username": "sam", "email": "sam@example.com", "role": "site-manager",
                               "password": "sam-password-1"}).raise_for_status()

    def role() -> str:
        with srv.api() as c:
            return next(u for u in c.get("/users").json() if u["username"] == "sam")["role"]

    def open_confirm() -> None:
        page.goto(srv.url + "/manage/users")
        row = page.locator('tr[data-user="sam"]')
        row.get_by_role("button", name="Actions for user sam").click()
        row.get_by_role("menuitem", name="Make member…").click()
        expect(page).to_have_url(srv.url + "/manage/users/sam/make-member")
        assert page.get_by_role("heading", level=1).inner_text() == 'Make "sam" a member?'
        assert page.locator(".confirm-card p").all_inner_texts() == [
            "sam (sam@example.com) stops being a site manager: they can no longer administer users, providers or "
            "other users' workspaces, nor see the audit log.",
            "Their own workspaces, SSH key and sessions stay as they are."]

    open_confirm()
    assert role() == "site-manager"  # a look first, nothing done yet
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(srv.url + "/manage/users")
    assert role() == "site-manager"

    open_confirm()
    with page.expect_response(lambda r: r.url.endswith("/manage/users/sam/role") and r.request.method == "POST") as resp:
        page.get_by_role("button", name="Make member").click()
    assert resp.value.status == 303
    expect(page.locator(".flash")).to_have_text('User "sam" is now a member.')
    assert role() == "member"
    assert page.locator('tr[data-user="sam"] td[data-label="Role"]').inner_text().strip() == "member"

    # Your own demotion says it is yours; a member cannot open the page at all.
    page.goto(srv.url + f"/manage/users/{srv.manager}/make-member")
    assert page.locator(".confirm-card p").first.inner_text().startswith("You stop being a site manager at once")
    with httpx.Client(base_url=srv.url, timeout=30, cookies={"hatchway_session": srv.member_token}) as c:
        r = c.get(f"/manage/users/{srv.manager}/make-member")
        assert r.status_code == 403 and "Only site managers can open this page" in r.text
