"""The web UI in a real browser against a real server: sign-in, the documented External Connect
path, roles, keys, CSRF, users, audit, keyboard and narrow screens."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx

from hatchway.server.policy import external_connect_off_message
from tests.helpers.server import api, first_user, running_server, wait_for
from tests.ui import flows
from tests.ui.conftest import LAB, SignedIn, UIServer
from tests.ui.fake_agent import ssh_stream


def _provider(srv: UIServer, name: str) -> dict[str, Any]:
    with srv.api() as c:
        return next(p for p in c.get("/providers").json() if p["name"] == name)


def _csrf(page: Any) -> str:
    return page.locator('input[name="csrf_token"]').first.get_attribute("value")


def _cookie_client(s: SignedIn) -> httpx.Client:
    return httpx.Client(base_url=s.url, cookies={"hatchway_session": s.session_cookie()}, follow_redirects=False, timeout=30)


# --- sign-in ------------------------------------------------------------------------------


def test_wrong_password_shows_an_error_and_the_right_one_signs_in(anon_page: Any, ui_server: UIServer) -> None:
    page = anon_page
    page.goto(ui_server.url + "/")
    assert page.title() == "Sign in · Hatchway"
    page.get_by_label("Username").fill(ui_server.member)
    page.get_by_label("Password").fill("not-the-password")
    with page.expect_response(lambda r: r.url.endswith("/sign-in")) as resp:
        page.get_by_role("button", name="Sign in").click()
    assert resp.value.status == 401
    assert page.get_by_role("alert").inner_text() == "Wrong username or password. Check both and try again."
    assert page.get_by_label("Username").input_value() == ui_server.member  # kept, password not
    assert page.get_by_label("Password").input_value() == ""

    page.get_by_label("Password").fill(ui_server.member_password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))
    assert page.get_by_role("heading", name="Workspaces", level=1).is_visible()

    cookie = next(c for c in page.context.cookies() if c["name"] == "hatchway_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Lax" and cookie["secure"] is False


def test_a_new_deployment_offers_to_create_the_first_site_manager(browser: Any, tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        context = browser.new_context(viewport=flows.DESKTOP)
        try:
            page = context.new_page()
            page.goto(srv.url + "/")
            assert page.get_by_role("heading", name="Welcome to Hatchway").is_visible()
            flows.screenshot(page, "setup")
            page.get_by_label("Username").fill("root")
            page.get_by_label("Email").fill("root@example.com")
            page.get_by_label("Password", exact=True).fill("root-password-1")
            page.get_by_label("Repeat password").fill("root-password-2")
            page.get_by_role("button", name="Create site manager account").click()
            assert page.get_by_role("alert").inner_text() == "The two passwords do not match."
            page.get_by_label("Password", exact=True).fill("root-password-1")
            page.get_by_label("Repeat password").fill("root-password-1")
            page.get_by_role("button", name="Create site manager account").click()
            page.wait_for_url(re.compile(r".*/workspaces$"))
            assert "first site manager" in page.locator(".flash").inner_text()
            assert page.get_by_role("button", name="Manage").is_visible()
            # Only once: afterwards / is the sign-in page.
            other = browser.new_context()
            try:
                anon = other.new_page()
                anon.goto(srv.url + "/")
                assert anon.get_by_role("heading", name="Sign in to Hatchway").is_visible()
            finally:
                other.close()
        finally:
            context.close()
        with api(srv.url) as c:
            assert c.get("/deployment").json()["needs_first_user"] is False
            token = c.post("/auth/login", json={"username": "root", "password": "root-password-1"}).json()["token"]
        with api(srv.url, token) as c:
            assert c.get("/users/me").json()["role"] == "site-manager"


def test_anonymous_pages_redirect_to_sign_in_and_back(anon_page: Any, ui_server: UIServer) -> None:
    page = anon_page
    page.goto(ui_server.url + "/account/key")
    assert re.search(r"/\?next=%2Faccount%2Fkey$", page.url)
    page.get_by_label("Username").fill(ui_server.member)
    page.get_by_label("Password").fill(ui_server.member_password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/account/key$"))


def test_failed_sign_ins_are_throttled_and_the_throttle_is_shared_with_the_api(anon_page: Any, ui_server: UIServer) -> None:
    with ui_server.api() as c:
        c.post("/users", json={"username": "carol", "email": "carol@example.com", "password": "carol-password-1"}).raise_for_status()
    page = anon_page
    page.goto(ui_server.url + "/")
    for _ in range(5):  # the server allows 5 failures per user and source
        page.get_by_label("Username").fill("carol")
        page.get_by_label("Password").fill("wrong-guess")
        page.get_by_role("button", name="Sign in").click()
        assert "Wrong username or password" in page.get_by_role("alert").inner_text()
    page.get_by_label("Password").fill("carol-password-1")  # even the right password now waits
    with page.expect_response(lambda r: r.url.endswith("/sign-in")) as resp:
        page.get_by_role("button", name="Sign in").click()
    assert resp.value.status == 429
    assert int(resp.value.headers["retry-after"]) > 0
    assert re.fullmatch(r"Too many failed sign-in attempts\. Please wait \d+ seconds before trying again\.", page.get_by_role("alert").inner_text())
    with api(ui_server.url) as c:  # same throttle behind the API
        assert c.post("/auth/login", json={"username": "carol", "password": "carol-password-1"}).status_code == 429
        # ... and other users are not affected
        assert c.post("/auth/login", json={"username": ui_server.member, "password": ui_server.member_password}).status_code == 200


def test_sign_out_deletes_the_session(browser: Any, ui_server: UIServer) -> None:
    with flows.signed_in_page(browser, ui_server.url, ui_server.member, ui_server.member_password) as page:
        token = next(c["value"] for c in page.context.cookies() if c["name"] == "hatchway_session")
        with api(ui_server.url, token) as c:
            assert c.get("/users/me").status_code == 200  # the cookie holds an ordinary session token
        page.get_by_role("button", name="Account").click()
        page.get_by_role("menuitem", name="Sign out").click()
        page.wait_for_url(re.compile(r".*/$"))
        assert page.locator(".flash").inner_text() == "You are signed out."
        assert not [c for c in page.context.cookies() if c["name"] == "hatchway_session"]
        with api(ui_server.url, token) as c:
            assert c.get("/users/me").status_code == 401
        page.goto(ui_server.url + "/workspaces")
        assert page.get_by_role("button", name="Sign in").is_visible()



def test_sessions_page_lists_and_signs_out_sessions(browser: Any, ui_server: UIServer) -> None:
    """Account → Sessions: the CLI logins and this browser, one signed out by hand, then all
    the others, then this one; each ends for real (its token gets 401)."""
    user, password = "erin", "erin-password"
    with ui_server.api() as c:
        c.post("/users", json={"username": user, "email": "erin@example.com", "password": password}).raise_for_status()

    def cli_login(host: str) -> str:
        with httpx.Client(base_url=ui_server.url + "/api/v1", headers={"User-Agent": f"hatchway-cli/9.9 ({host})"}) as c:
            return str(c.post("/auth/login", json={"username": user, "password": password}).json()["token"])

    old_laptop, build_box = cli_login("old-laptop"), cli_login("build-box")

    def status(token: str) -> int:
        with api(ui_server.url, token) as c:
            return c.get("/users/me").status_code

    with flows.signed_in_page(browser, ui_server.url, user, password) as page:
        page.get_by_role("button", name="Account").click()
        page.get_by_role("menuitem", name="Sessions").click()
        page.wait_for_url(re.compile(r".*/account/sessions$"))
        rows = page.locator("tbody tr")
        assert rows.count() == 3
        current = page.locator("tbody tr[data-current]")
        assert re.fullmatch(r"Chrome \d+ on Linux\s+This browser", current.locator("td").first.inner_text())
        assert "HeadlessChrome/" in (current.locator("[title]").first.get_attribute("title") or "")
        assert [page.locator("tbody tr").nth(i).get_attribute("data-current") for i in range(3)] == ["", None, None]
        assert rows.nth(1).locator("td").first.inner_text() == "hatchway CLI 9.9 on build-box"  # most recent first

        page.get_by_role("button", name="Sign out the session of hatchway CLI 9.9 on old-laptop").click()
        page.wait_for_url(re.compile(r".*/account/sessions$"))
        assert page.locator(".flash").inner_text() == "Session signed out. It can no longer use Hatchway, and SSH connections it opened have ended."
        assert "old-laptop" not in page.locator("tbody").inner_text() and rows.count() == 2
        assert (status(old_laptop), status(build_box)) == (401, 200)

        page.get_by_role("button", name="Sign out all other sessions").click()
        page.wait_for_url(re.compile(r".*/account/sessions$"))
        assert page.locator(".flash").inner_text() == "Signed out 1 other session. SSH connections opened with them have ended."
        assert rows.count() == 1 and page.locator("tbody tr[data-current]").count() == 1
        assert page.get_by_role("button", name="Sign out all other sessions").count() == 0
        assert status(build_box) == 401

        token = next(c["value"] for c in page.context.cookies() if c["name"] == "hatchway_session")
        current.get_by_role("button", name=re.compile("^Sign out the session of Chrome")).click()
        page.wait_for_url(re.compile(r".*/$"))
        assert page.locator(".flash").inner_text() == "You are signed out."
        assert status(token) == 401

# --- passwords ------------------------------------------------------------------------------


def _api_status(srv: UIServer, token: str) -> int:
    with api(srv.url, token) as c:
        return c.get("/users/me").status_code


def _api_login(srv: UIServer, user: str, password: str) -> httpx.Response:
    with api(srv.url) as c:
        return c.post("/auth/login", json={"username": user, "password": password})


def test_changing_your_own_password_in_account_password(browser: Any, ui_server: UIServer) -> None:
    """Account > Password: refusals shown on the form, then the change; the other sessions end,
    this browser stays signed in, and only the new password signs in."""
    user, old, new = "penny", "penny-password-1", "penny-password-2"
    with ui_server.api() as c:
        c.post("/users", json={"username": user, "email": "penny@example.com", "password": old}).raise_for_status()
    laptop = _api_login(ui_server, user, old).json()["token"]

    with flows.signed_in_page(browser, ui_server.url, user, old) as page:
        page.get_by_role("button", name="Account").click()
        page.get_by_role("menuitem", name="Password").click()
        page.wait_for_url(re.compile(r".*/account/password$"))
        assert page.title() == "Password · Hatchway"
        assert page.get_by_role("button", name="Account").get_attribute("class").endswith("is-current")

        def submit(current: str, new_pw: str, again: str) -> int:
            page.get_by_label("Current password").fill(current)
            page.get_by_label("New password", exact=True).fill(new_pw)
            page.get_by_label("Repeat new password").fill(again)
            with page.expect_response(lambda r: r.url.endswith("/account/password") and r.request.method == "POST") as resp:
                page.get_by_role("button", name="Change password").click()
            return resp.value.status

        assert submit("not-my-password", new, new) == 403
        assert page.get_by_role("alert").inner_text() == (
            "Your current password is not right. Check it and try again; if you forgot it, "
            "ask a site manager to set a new one for you.")
        assert page.get_by_label("Current password").input_value() == ""  # secrets are never sent back
        assert submit(old, new, new + "x") == 400
        assert page.get_by_role("alert").inner_text() == "The two new passwords do not match."
        with _cookie_client(SignedIn(page, ui_server, user, old)) as c:  # below the form's own minlength
            r = c.post("/account/password", data={"csrf_token": _csrf(page), "current_password": old,
                                                  "new_password": "short", "new_password_confirm": "short"})
        assert r.status_code == 400 and "New password must have at least 8 characters." in r.text
        assert _api_status(ui_server, laptop) == 200  # nothing changed yet

        assert submit(old, new, new) == 303
        page.wait_for_url(re.compile(r".*/account/password$"))
        assert page.locator(".flash-success").inner_text() == (
            "Password changed. 1 other session signed out; this browser stays signed in.")
        flows.screenshot(page, "account-password")
        assert _api_status(ui_server, laptop) == 401
        page.goto(ui_server.url + "/account/sessions")
        assert page.locator("tbody tr").count() == 1  # this browser, still signed in
    assert _api_login(ui_server, user, old).status_code == 401
    assert _api_login(ui_server, user, new).status_code == 200
    with ui_server.api() as c:
        event = next(e for e in reversed(c.get("/audit").json()) if e["action"] == "user.password" and e["target"] == user)
    assert (event["actor"], event["detail"]) == (user, {"had_password": True, "sessions_ended": 1})


def test_site_manager_sets_a_users_password(manager_page: SignedIn, browser: Any) -> None:
    """Manage > Users > ⋮ > Set password: the user's sessions all end and the new password works;
    members can neither open the page nor post it, and the form needs its CSRF token."""
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/users", json={"username": "quinn", "email": "quinn@example.com"}).raise_for_status()  # no password
    assert _api_login(srv, "quinn", "anything-at-all").status_code == 401

    flows.open_manage(page, "Users")
    row = page.locator('tr[data-user="quinn"]')
    status = row.locator('td[data-label="Status"] .badge')
    assert status.all_inner_texts() == ["Active", "No password"]  # the list says who cannot sign in yet
    assert status.nth(1).get_attribute("title") == "Cannot sign in until a password is set: ⋮ > Set password"
    row.get_by_role("button", name="Actions for user quinn").click()
    row.get_by_role("menuitem", name="Set password").click()
    page.wait_for_url(re.compile(r".*/manage/users/quinn/password$"))
    assert page.get_by_role("heading", name="Set password for “quinn”").is_visible()
    assert "They have no password yet and cannot sign in until you set one." in page.locator(".page-head").inner_text()
    page.get_by_label("New password", exact=True).fill("quinn-password-1")
    page.get_by_label("Repeat new password").fill("quinn-password-2")
    page.get_by_role("button", name="Set password").click()
    assert page.get_by_role("alert").inner_text() == "The two passwords do not match."
    page.get_by_label("New password", exact=True).fill("quinn-password-1")
    page.get_by_label("Repeat new password").fill("quinn-password-1")
    page.get_by_role("button", name="Set password").click()
    page.wait_for_url(re.compile(r".*/manage/users$"))
    assert page.locator(".flash-success").inner_text() == 'Password of "quinn" set; 0 sign-in sessions of theirs ended.'
    assert page.locator('tr[data-user="quinn"] td[data-label="Status"] .badge').all_inner_texts() == ["Active"]

    # A reset ends every session quinn has.
    sessions = [_api_login(srv, "quinn", "quinn-password-1").json()["token"] for _ in range(2)]
    page.goto(srv.url + "/manage/users/quinn/password")
    assert "Replaces their current password." in page.locator(".page-head").inner_text()
    page.get_by_label("New password", exact=True).fill("quinn-password-3")
    page.get_by_label("Repeat new password").fill("quinn-password-3")
    page.get_by_role("button", name="Set password").click()
    assert page.locator(".flash-success").inner_text() == 'Password of "quinn" set; 2 sign-in sessions of theirs ended.'
    assert [_api_status(srv, t) for t in sessions] == [401, 401]
    assert _api_login(srv, "quinn", "quinn-password-1").status_code == 401
    assert _api_login(srv, "quinn", "quinn-password-3").status_code == 200

    resp = page.goto(srv.url + "/manage/users/nobody/password")
    assert resp is not None and resp.status == 404
    assert page.get_by_role("heading", name='No user named "nobody"').is_visible()
    with _cookie_client(manager_page) as c:  # no CSRF token: refused, nothing changed
        r = c.post("/manage/users/quinn/password", data={"password": "csrf-less-pass", "password_confirm": "csrf-less-pass"})
    assert r.status_code == 403 and "This form was out of date" in r.text
    assert _api_login(srv, "quinn", "csrf-less-pass").status_code == 401

    with flows.signed_in_page(browser, srv.url, srv.member, srv.member_password) as member:
        resp = member.goto(srv.url + "/manage/users/quinn/password")
        assert resp is not None and resp.status == 403
        member.goto(srv.url + "/account/password")
        with httpx.Client(base_url=srv.url, cookies={"hatchway_session": next(
                c["value"] for c in member.context.cookies() if c["name"] == "hatchway_session")}) as c:
            r = c.post("/manage/users/quinn/password",
                       data={"csrf_token": _csrf(member), "password": "member-sets-it", "password_confirm": "member-sets-it"})
        assert r.status_code == 403
    assert _api_login(srv, "quinn", "member-sets-it").status_code == 401

    # Their own row offers Change password, Account > Password, which asks for the current one: a
    # session alone must not be enough to take the account over. Set password on themselves,
    # opened or posted by hand, sends them there and changes nothing.
    own = srv.manager
    flows.open_manage(page, "Users")
    row = page.locator(f'tr[data-user="{own}"]')
    row.get_by_role("button", name=f"Actions for user {own}").click()
    assert row.get_by_role("menuitem", name="Set password").count() == 0
    assert row.get_by_role("menuitem", name="Change password").get_attribute("href") == "/account/password"
    page.goto(srv.url + f"/manage/users/{own}/password")
    page.wait_for_url(re.compile(r".*/account/password$"))
    assert page.locator(".flash-info").inner_text() == "Your own password is changed here, with your current one."
    with _cookie_client(manager_page) as c:
        r = c.post(f"/manage/users/{own}/password",
                   data={"csrf_token": _csrf(page), "password": "taken-over-pw", "password_confirm": "taken-over-pw"})
    assert (r.status_code, r.headers["location"]) == (303, "/account/password")
    assert _api_login(srv, own, "taken-over-pw").status_code == 401
    assert _api_login(srv, own, srv.manager_password).status_code == 200


# --- the documented way to disable SSH ------------------------------------------------------


def test_site_manager_turns_external_connect_off_and_on_through_the_ui(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/workspaces", json={"name": "toggle-ws", "provider": LAB}).raise_for_status()
        first_new_event = max((e["id"] for e in c.get("/audit").json()), default=0) + 1  # other tests' edits
    try:
        # Manage > Providers > ⋮ > Edit > Features > External Connect off > Save
        flows.open_manage(page, "Providers")
        assert flows.external_connect_badge(page, LAB) == "On"
        row = page.locator(f'tr[data-provider="{LAB}"]')
        row.get_by_role("button", name=f"Actions for provider {LAB}").click()
        assert row.get_by_role("menuitem", name="Edit").is_visible()
        row.get_by_role("menuitem", name="Edit").click()
        page.wait_for_url(re.compile(rf".*/manage/providers/{LAB}/edit$"))
        features = page.locator("#features")
        assert features.get_by_role("heading", name="Features").is_visible()
        assert "Allow users to connect to this provider's workspaces over SSH" in features.inner_text()
        toggle = features.get_by_role("switch", name="External Connect")
        assert toggle.is_checked()
        toggle.uncheck()
        page.get_by_role("button", name="Save").click()
        page.wait_for_url(re.compile(r".*/manage/providers$"))
        assert page.locator(".flash").inner_text() == (
            f'Saved. External Connect is off for provider "{LAB}": new SSH connections to its '
            "workspaces are refused and live sessions were ended."
        )
        assert flows.external_connect_badge(page, LAB) == "Off"

        # Exactly like the API: state, audit event, refusal in the relay's words.
        assert _provider(srv, LAB)["external_connect"] is False
        with srv.api() as c:
            events = c.get("/audit", params={"limit": 20}).json()
        edit = next(e for e in events if e["action"] == "provider.edit" and e["target"] == LAB)
        assert edit["actor"] == srv.manager
        assert edit["detail"] == {"external_connect": {"old": True, "new": False}}
        _echo, refusal = ssh_stream(srv.url, srv.manager_token, "toggle-ws", b"SSH-2.0-OpenSSH_9.2p1\r\n")
        assert refusal == external_connect_off_message(LAB)

        page.goto(srv.url + "/workspaces")
        ws_row = page.locator('tr[data-workspace="alice/toggle-ws"]')
        assert ws_row.locator('td[data-label="SSH"]').inner_text().strip() == "SSH disabled by a site manager"
        assert "ssh hatchway.toggle-ws" not in ws_row.inner_text()

        # And back on, through the same documented path.
        flash = flows.set_external_connect(page, LAB, True)
        assert flash.startswith(f'Saved. External Connect is on for provider "{LAB}"')
        assert flows.external_connect_badge(page, LAB) == "On"
        assert _provider(srv, LAB)["external_connect"] is True
        _echo, refusal = ssh_stream(srv.url, srv.manager_token, "toggle-ws", b"SSH-2.0-OpenSSH_9.2p1\r\n")
        assert refusal is not None and "agent is not connected" in refusal  # no longer "disabled"
        page.goto(srv.url + "/workspaces")
        assert "ssh hatchway.toggle-ws" in page.locator('tr[data-workspace="alice/toggle-ws"]').inner_text()

        # Saving without a change says so and records nothing.
        flows.open_provider_edit(page, LAB)
        page.get_by_role("button", name="Save").click()
        assert page.locator(".flash").inner_text() == f'No changes to provider "{LAB}".'
        with srv.api() as c:
            edits = [e for e in c.get("/audit").json()
                     if e["action"] == "provider.edit" and e["target"] == LAB and e["id"] >= first_new_event]
        assert len(edits) == 2
    finally:
        with srv.api() as c:
            c.patch(f"/providers/{LAB}", json={"external_connect": True})
            c.delete("/workspaces/toggle-ws")


def test_member_sees_no_manage_menu_and_gets_403(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    assert page.get_by_role("button", name="Account").is_visible()
    assert page.get_by_role("button", name="Manage").count() == 0
    assert "/manage/" not in page.content()
    for path in ("/manage/providers", "/manage/providers/local/edit", "/manage/users", "/manage/audit"):
        resp = page.goto(srv.url + path)
        assert resp is not None and resp.status == 403, path
        assert page.get_by_role("heading", name="Only site managers can open this page").is_visible()
    # Nor can a member post the toggle, even with a valid CSRF token of their own.
    page.goto(srv.url + "/workspaces")
    with _cookie_client(member_page) as c:
        r = c.post("/manage/providers/local/edit", data={"csrf_token": _csrf(page)})
    assert r.status_code == 403
    assert _provider(srv, "local")["external_connect"] is True


# --- keys -----------------------------------------------------------------------------------


def test_private_key_download_is_the_owners_working_key(manager_page: SignedIn, tmp_path: Path) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.get_by_role("button", name="Account").click()
    page.get_by_role("menuitem", name="SSH key").click()
    page.wait_for_url(re.compile(r".*/account/key$"))
    with srv.api() as c:
        key = c.get("/users/me/key").json()
    assert page.locator("#key-fingerprint").inner_text() == key["fingerprint"]
    assert page.get_by_label("OpenSSH public key").input_value() == key["public_key"]

    with page.expect_download() as dl:
        page.get_by_role("button", name="Download private key").click()
    download = dl.value
    assert download.suggested_filename == "hatchway-alice_ed25519"
    path = tmp_path / download.suggested_filename
    download.save_as(str(path))
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], check=False, capture_output=True, text=True, timeout=10)
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == key["public_key"].split()[:2]

    with _cookie_client(manager_page) as c:
        r = c.post("/account/key/download", data={"csrf_token": _csrf(page)})
    assert r.status_code == 200
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-disposition"] == 'attachment; filename="hatchway-alice_ed25519"'
    assert r.text.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")


def test_regenerating_the_key_needs_confirmation(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    with srv.api(srv.member_token) as c:
        before = c.get("/users/me/key").json()["fingerprint"]
    page.goto(srv.url + "/account/key")
    page.get_by_role("link", name="Regenerate key…").click()
    page.wait_for_url(re.compile(r".*/account/key/regenerate$"))
    assert page.get_by_role("heading", name="Regenerate your SSH key?").is_visible()
    assert ("SSH sessions already open stay open; if the old key may have leaked, also sign out the sessions you "
            "do not recognise under Account > Sessions: that ends the SSH connections they opened.") in page.inner_text("main")
    with srv.api(srv.member_token) as c:
        assert c.get("/users/me/key").json()["fingerprint"] == before  # nothing yet
    page.get_by_role("button", name="Regenerate key").click()
    page.wait_for_url(re.compile(r".*/account/key$"))
    with srv.api(srv.member_token) as c:
        after = c.get("/users/me/key").json()["fingerprint"]
    assert after != before
    assert page.locator("#key-fingerprint").inner_text() == after
    assert after in page.locator(".flash").inner_text()
    with srv.api() as c:
        assert any(e["action"] == "key.regenerate" and e["actor"] == srv.member for e in c.get("/audit").json())


# --- CSRF -----------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_are_refused_and_change_nothing(manager_page: SignedIn) -> None:
    srv = manager_page.srv
    manager_page.page.goto(srv.url + "/manage/providers")
    with _cookie_client(manager_page) as c:
        # A form post that would turn External Connect off (the box is unchecked)...
        for data in ({}, {"csrf_token": ""}, {"csrf_token": "0" * 64}):
            r = c.post("/manage/providers/local/edit", data=data)
            assert r.status_code == 403, data
            assert "This form was out of date" in r.text
        assert _provider(srv, "local")["external_connect"] is True
        # ... nor any other form.
        assert c.post("/manage/users", data={"username": "mallory", "email": "m@example.com", "password": "12345678"}).status_code == 403
        assert c.post("/account/key/regenerate").status_code == 403
        assert c.post("/sign-out").status_code == 403
        # Another user's token does not fit this session either.
        with api(srv.url) as anon:
            other = anon.post("/auth/login", json={"username": srv.member, "password": srv.member_password}).json()["token"]
        with httpx.Client(base_url=srv.url, cookies={"hatchway_session": other}) as bob:
            bob_token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', bob.get("/workspaces").text).group(1)
        assert c.post("/manage/providers/local/edit", data={"csrf_token": bob_token}).status_code == 403
        # With the page's own token the very same post works.
        r = c.post("/manage/providers/local/edit", data={"csrf_token": _csrf(manager_page.page), "external_connect": "on"})
        assert r.status_code == 303
    with srv.api() as c:
        assert [u["username"] for u in c.get("/users").json()].count("mallory") == 0
        assert c.get("/users/me").status_code == 200
    # Sign-in is a form too (login CSRF).
    with httpx.Client(base_url=srv.url) as anon:
        r = anon.post("/sign-in", data={"username": srv.manager, "password": srv.manager_password})
        assert r.status_code == 403 and "hatchway_session" not in r.cookies


def _signin_form(client: httpx.Client) -> tuple[str, str]:
    """(pre-session cookie as "name=value", the sign-in form's CSRF token) of a fresh visitor."""
    first = client.get("/")
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', first.text).group(1)
    return first.headers["set-cookie"].split(";")[0], token


def test_a_pre_session_token_is_refused_on_a_signed_in_request(member_page: SignedIn) -> None:
    """Whoever can plant a cookie for this host (a sibling subdomain, another port, a man in the
    middle of plain http) gets a pre-session cookie and its token from the sign-in page; planted
    next to a signed-in user's session they must not make a form the server accepts."""
    srv = member_page.srv
    with httpx.Client(base_url=srv.url) as attacker:
        pre, token = _signin_form(attacker)
    assert pre.startswith("hatchway_pre=")
    cookie = f"hatchway_session={member_page.session_cookie()}; {pre}"
    with httpx.Client(base_url=srv.url, follow_redirects=False) as victim:
        r = victim.post("/workspaces", data={"name": "planted", "provider": LAB, "csrf_token": token}, headers={"Cookie": cookie})
        assert r.status_code == 403 and "This form was out of date" in r.text
        r = victim.post("/sign-out", data={"csrf_token": token}, headers={"Cookie": cookie})
        assert r.status_code == 403
    with srv.api(srv.member_token) as c:
        assert c.get("/workspaces/planted").status_code == 404
    member_page.page.goto(srv.url + "/workspaces")  # still signed in
    assert member_page.page.url.endswith("/workspaces")


def test_a_stale_session_cookie_does_not_stand_in_the_way_of_signing_in(anon_page: Any, ui_server: UIServer) -> None:
    """The sign-in form's token is the pre-session one, so the sign-in page drops a session
    cookie that no longer signs anyone in (expired, signed out elsewhere)."""
    page = anon_page
    page.context.add_cookies([{"name": "hatchway_session", "value": "hw_expired-long-ago", "url": ui_server.url}])
    page.goto(ui_server.url + "/")
    assert page.title() == "Sign in · Hatchway"
    assert "hatchway_session" not in {c["name"] for c in page.context.cookies()}
    page.get_by_label("Username").fill(ui_server.member)
    page.get_by_label("Password").fill(ui_server.member_password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))


def test_session_cookie_is_secure_and_host_only_when_the_access_url_is_https(tmp_path: Path) -> None:
    with running_server(tmp_path, extra_env={"HATCHWAY_ACCESS_URL": "https://hatchway.example.com"}) as srv:
        root_token = first_user(srv.url, "root", "root-password-1")
        with httpx.Client(base_url=srv.url) as c:
            first = c.get("/")
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', first.text).group(1)
            pre_cookie = first.headers["set-cookie"]
            # __Host-: a browser takes it only from this host over https, with Secure, Path=/ and
            # no Domain, so nobody else can plant one.
            assert pre_cookie.startswith("__Host-hatchway_pre=") and "; secure" in pre_cookie.lower()
            assert "; path=/" in pre_cookie.lower() and "domain=" not in pre_cookie.lower()
            # (a client only sends Secure cookies over https; this test talks plain http to 127.0.0.1)
            pre = pre_cookie.split(";")[0]
            form = {"csrf_token": token, "username": "root", "password": "root-password-1"}
            # The same value under a name anyone may plant is not this browser's pre-session cookie...
            planted = "hatchway_pre=" + pre.split("=", 1)[1]
            r = c.post("/sign-in", data=form, headers={"Cookie": planted})
            assert r.status_code == 403 and "This form was out of date" in r.text
            # ... nor is a session under the old name anyone's session.
            r = c.get("/workspaces", headers={"Cookie": f"hatchway_session={root_token}"}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/?next=%2Fworkspaces"
            r = c.post("/sign-in", data=form, headers={"Cookie": pre})
        assert r.status_code == 303
        cookie = next(v for k, v in r.headers.multi_items() if k == "set-cookie" and v.startswith("__Host-hatchway_session="))
        attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
        assert {"httponly", "secure", "samesite", "path"} <= attrs and "domain" not in attrs
        assert "samesite=lax" in cookie.lower() and "; path=/" in cookie.lower()
        session = cookie.split(";")[0]
        with httpx.Client(base_url=srv.url, follow_redirects=False) as c:
            page = c.get("/workspaces", headers={"Cookie": session})
            assert page.status_code == 200
            token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
            r = c.post("/sign-out", data={"csrf_token": token}, headers={"Cookie": session})
            assert r.status_code == 303
            assert any(v.startswith('__Host-hatchway_session=""') for k, v in r.headers.multi_items() if k == "set-cookie")


# --- workspaces, users, audit ---------------------------------------------------------------


def test_member_creates_inspects_and_deletes_a_workspace(member_page: SignedIn) -> None:
    page, srv = member_page.page, member_page.srv
    page.goto(srv.url + "/workspaces")
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()
    page.get_by_label("Name").fill("Bad Name")
    page.get_by_role("button", name="Create workspace").click()
    assert page.get_by_role("alert").inner_text().startswith('Name "Bad Name" is not valid: use 1-63 lowercase')
    assert page.get_by_label("Name").input_value() == "Bad Name"  # kept for fixing

    page.get_by_label("Name").fill("bobdev")
    page.get_by_label("Provider", exact=True).select_option(LAB)
    page.get_by_label("Image environment").fill("EDITOR=vim\nLANG=C.UTF-8")
    page.get_by_role("button", name="Create workspace").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))
    assert page.get_by_role("heading", name='Workspace “bobdev” created').is_visible()
    # A manual provider's agent token is shown once, with the command to run the agent.
    command = page.locator("#agent-cmd").inner_text()
    assert command.startswith("HATCHWAY_AGENT_TOKEN=hwa_") and command.endswith(f"hatchway agent --url {srv.url}")
    page.get_by_role("link", name="Go to the workspace").click()
    page.wait_for_url(re.compile(r".*/workspaces/bob/bobdev$"))
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Workspaces").click()
    row = page.locator('tr[data-workspace="bob/bobdev"]')
    assert row.locator('td[data-label="State"]').inner_text().startswith("running")
    assert row.locator('td[data-label="Provider"]').inner_text().strip() == LAB
    assert "Not reachable: agent not connected" in row.inner_text()
    assert "disconnected" in row.locator('td[data-label="Agent"]').inner_text()
    assert row.locator(".copy-text").inner_text() == "ssh hatchway.bobdev"
    with srv.api(srv.member_token) as c:
        ws = c.get("/workspaces/bobdev").json()
    assert ws["env"] == {"EDITOR": "vim", "LANG": "C.UTF-8"}

    row.get_by_role("button", name="Actions for workspace bobdev").click()
    row.get_by_role("menuitem", name="Details").click()
    page.wait_for_url(re.compile(r".*/workspaces/bob/bobdev$"))
    assert page.get_by_role("heading", name="bobdev").first.is_visible()
    assert "EDITOR" in page.locator("#env-title + table").inner_text()

    page.get_by_role("link", name="Delete…").click()
    assert page.get_by_role("heading", name='Delete workspace "bobdev"?').is_visible()
    page.get_by_role("button", name="Delete workspace").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))
    assert page.locator(".flash").inner_text() == 'Workspace "bob/bobdev" deleted.'
    with srv.api(srv.member_token) as c:
        assert c.get("/workspaces/bobdev").status_code == 404
    assert page.get_by_role("heading", name="You have no workspaces yet").is_visible()


def test_a_workspace_page_lists_its_recent_ssh_connections(member_page: SignedIn, manager_page: SignedIn) -> None:
    """Members have no Audit page: their workspace's page shows their own connections (what
    the API shows them); a site manager sees everyone's there, with a link to the rest."""
    page, srv = member_page.page, member_page.srv
    with srv.api(srv.member_token) as c:
        c.post("/workspaces", json={"name": "conns", "provider": LAB}).raise_for_status()
    try:
        page.goto(srv.url + "/workspaces/bob/conns")
        section = page.locator("section", has=page.get_by_role("heading", name="Recent SSH connections"))
        assert "None yet." in section.inner_text()
        _echo, mine = ssh_stream(srv.url, srv.member_token, "conns", b"SSH-2.0-OpenSSH_9.2p1\r\n")
        _echo, theirs = ssh_stream(srv.url, srv.manager_token, "conns", b"SSH-2.0-OpenSSH_9.2p1\r\n", owner="bob")
        assert mine is not None and "agent is not connected" in mine
        assert theirs is not None and "bob" in theirs  # nobody reaches a workspace not theirs

        page.reload()
        table = section.get_by_role("table", name="Recent SSH connections")
        rows = table.locator("tbody tr")
        assert rows.count() == 1  # bob's own attempt; alice's is not his to see
        assert rows.first.locator('td[data-label="User"]').inner_text() == "bob"
        assert rows.first.locator('td[data-label="Result"]').inner_text().startswith("refused")
        assert "agent is not connected" in rows.first.locator('td[data-label="Result"]').inner_text()
        assert section.get_by_role("link", name="All connections to this workspace in Audit").count() == 0

        manager = manager_page.page
        manager.goto(srv.url + "/workspaces/bob/conns")
        m_rows = manager.get_by_role("table", name="Recent SSH connections").locator("tbody tr")
        assert [m_rows.nth(i).locator('td[data-label="User"]').inner_text() for i in range(m_rows.count())] == ["alice", "bob"]
        manager.get_by_role("link", name="All connections to this workspace in Audit").click()
        manager.wait_for_url(re.compile(r".*/manage/audit\?workspace=bob%2Fconns$"))
        assert manager.get_by_role("table", name="SSH connections").locator("tbody tr").count() == 2
    finally:
        with srv.api(srv.member_token) as c:
            c.delete("/workspaces/conns")


def test_container_workspaces_take_an_image_and_cvm_from_the_form(member_page: SignedIn, tmp_path: Path) -> None:
    page, srv = member_page.page, member_page.srv
    engine = tmp_path / "no-engine.sock"  # a Docker provider whose engine is not running
    with srv.api() as c:
        c.post("/providers", json={"name": "boxes", "kind": "docker", "docker_host": f"unix://{engine}"}).raise_for_status()
    page.goto(srv.url + "/workspaces")
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()
    page.get_by_label("Name").fill("boxdev")
    page.get_by_label("Provider", exact=True).select_option(LAB)
    page.locator("#ws-image").fill("debian:12")
    page.get_by_label("CVM: systemd as PID 1").check()
    page.get_by_role("button", name="Create workspace").click()
    assert page.get_by_role("alert").inner_text() == (
        f'Image and the “CVM: systemd as PID 1” switch are only for docker providers, and provider "{LAB}" is manual: '
        "clear them, or choose a docker provider.")
    assert page.locator("#ws-image").input_value() == "debian:12"  # kept for fixing
    assert page.get_by_label("CVM: systemd as PID 1").is_checked()
    # On the Docker provider the image reaches the engine, whose absence is said plainly, and
    # to a member without where the site's engine listens.
    page.get_by_label("Provider", exact=True).select_option("boxes")
    page.get_by_role("button", name="Create workspace").click()
    assert page.get_by_role("alert").inner_text() == (
        'Cannot use image "debian:12": cannot reach the provider\'s Docker engine ([Errno 2] No such file or '
        "directory): is dockerd running? A site manager can start it (hatchway providers list shows where the "
        "provider looks for it), or point a provider at the right engine: hatchway providers create NAME --kind "
        "docker --docker-host unix:///PATH (and hatchway providers delete the wrong one once it has no workspaces)")
    with srv.api(srv.member_token) as c:
        assert c.get("/workspaces/boxdev").status_code == 404  # nothing half-made


def test_start_on_a_workspace_hatchway_does_not_run_explains_why(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/workspaces", json={"name": "manual-ws", "provider": LAB}).raise_for_status()
    try:
        page.goto(srv.url + "/workspaces/alice/manual-ws")
        # Its agent runs wherever its owner started it: no Start/Stop buttons are offered...
        assert page.get_by_role("button", name="Stop").count() == 0
        assert page.get_by_role("button", name="Start").count() == 0
        # ... and a hand-made post gets the API's explanation as an error message.
        with _cookie_client(manager_page) as c:
            r = c.post("/workspaces/alice/manual-ws/stop", data={"csrf_token": _csrf(page)})
        assert r.status_code == 303 and r.headers["location"] == "/workspaces/alice/manual-ws"
        page.context.add_cookies([{"name": k, "value": v, "url": srv.url} for k, v in r.cookies.items()])
        page.goto(srv.url + r.headers["location"])
        assert page.locator(".flash-error").inner_text().startswith('Workspace "manual-ws" is not started by Hatchway')
    finally:
        with srv.api() as c:
            c.delete("/workspaces/manual-ws")


def test_stop_start_and_restart_buttons_run_a_local_workspace(manager_page: SignedIn) -> None:
    """The buttons a workspace Hatchway runs offers, clicked in the browser, really stop and start
    its agent; each says what happened and the page offers what fits the new state."""
    page, srv = manager_page.page, manager_page.srv

    def state() -> dict:
        with srv.api() as c:
            return c.get("/workspaces/buttons").json()

    def running() -> bool:
        w = state()
        return w["state"] == "running" and w["agent_connected"]

    with srv.api() as c:
        c.post("/workspaces", json={"name": "buttons", "provider": "local"}).raise_for_status()
    try:
        wait_for(running, 60, what="the local workspace to run")
        page.goto(srv.url + "/workspaces/alice/buttons")
        assert page.get_by_role("button", name="Start", exact=True).count() == 0
        page.get_by_role("button", name="Stop", exact=True).click()
        assert page.locator(".flash-success").inner_text() == 'Workspace "alice/buttons" stopped.'
        assert (state()["state"], state()["agent_connected"]) == ("stopped", False)
        assert page.get_by_role("button", name="Stop", exact=True).count() == 0  # the page shows the new state
        page.get_by_role("button", name="Start", exact=True).click()
        assert page.locator(".flash-success").inner_text() == 'Starting workspace "alice/buttons".'
        wait_for(running, 60, what="the workspace to run again")
        page.reload()
        page.get_by_role("button", name="Restart", exact=True).click()
        assert page.locator(".flash-success").inner_text() == 'Restarting workspace "alice/buttons".'
        wait_for(running, 60, what="the workspace to run after the restart")
    finally:
        with srv.api() as c:
            c.delete("/workspaces/buttons")


def test_start_from_a_page_older_than_the_workspace_start_leaves_it_running(manager_page: SignedIn) -> None:
    """A Start button still on screen after the workspace was started elsewhere (another tab, the
    CLI) changes nothing and says so; it used to leave the workspace "starting" for good."""
    page, srv = manager_page.page, manager_page.srv

    def state() -> dict:
        with srv.api() as c:
            return c.get("/workspaces/stale").json()

    with srv.api() as c:
        c.post("/workspaces", json={"name": "stale", "provider": "local"}).raise_for_status()
    try:
        wait_for(lambda: state()["agent_connected"], 60, what="the local workspace to run")
        with srv.api() as c:
            c.post("/workspaces/stale/stop").raise_for_status()
        page.goto(srv.url + "/workspaces/alice/stale")
        with srv.api() as c:
            c.post("/workspaces/stale/start").raise_for_status()
        # Running, not only connected: the state turns "running" just after the agent connects,
        # and a Start before that rightly answers "Starting".
        wait_for(lambda: (w := state())["agent_connected"] and w["state"] == "running", 60,
                 what="the workspace to run again")
        page.get_by_role("button", name="Start", exact=True).click()
        assert page.locator(".flash-success").inner_text() == 'Workspace "alice/stale" is already running.'
        w = state()
        assert (w["state"], w["state_reason"], w["agent_connected"]) == ("running", None, True)
    finally:
        with srv.api() as c:
            c.delete("/workspaces/stale")


def test_site_manager_creates_promotes_suspends_and_activates_users(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    flows.open_manage(page, "Users")
    page.locator("#new-user > summary").click()
    form = page.locator("#new-user form")
    form.get_by_label("Username").fill("dave")
    form.get_by_label("Email").fill("dave@example.com")
    form.get_by_label("Initial password").fill("dave-password-1")
    form.get_by_role("button", name="Create user").click()
    assert page.locator(".flash").inner_text() == 'User "dave" created as member.'

    page.locator("#new-user > summary").click()
    form.get_by_label("Username").fill("dave")
    form.get_by_label("Email").fill("dave2@example.com")
    form.get_by_label("Initial password").fill("dave-password-1")
    form.get_by_role("button", name="Create user").click()
    assert page.get_by_role("alert").inner_text() == 'User "dave" already exists: pick another username'

    def act(item: str) -> str:
        row = page.locator('tr[data-user="dave"]')
        row.get_by_role("button", name="Actions for user dave").click()
        row.get_by_role("menuitem", name=item).click()
        return page.locator(".flash").inner_text()

    def dave() -> dict[str, Any]:
        with srv.api() as c:
            return next(u for u in c.get("/users").json() if u["username"] == "dave")

    page.locator('tr[data-user="dave"]').get_by_role("button", name="Actions for user dave").click()
    page.locator('tr[data-user="dave"]').get_by_role("menuitem", name="Make site manager…").click()
    page.get_by_role("button", name="Make site manager").click()  # on its confirmation page
    assert page.locator(".flash").inner_text() == 'User "dave" is now a site manager.'
    assert dave()["role"] == "site-manager"
    page.locator('tr[data-user="dave"]').get_by_role("button", name="Actions for user dave").click()
    page.locator('tr[data-user="dave"]').get_by_role("menuitem", name="Make member…").click()
    page.get_by_role("button", name="Make member").click()  # on its confirmation page
    assert page.locator(".flash").inner_text() == 'User "dave" is now a member.'

    other = page.context.browser.new_context()
    try:
        dave_page = other.new_page()
        flows.sign_in(dave_page, srv.url, "dave", "dave-password-1")
        row = page.locator('tr[data-user="dave"]')
        row.get_by_role("button", name="Actions for user dave").click()
        row.get_by_role("menuitem", name="Suspend…").click()  # a confirmation page first
        page.get_by_role("button", name="Suspend user").click()
        assert page.locator(".flash").inner_text().startswith('User "dave" suspended')
        assert dave()["suspended"] is True
        assert "Suspended" in page.locator('tr[data-user="dave"] td[data-label="Status"]').inner_text()
        # Dave's open session stops working at once, and he cannot sign in again.
        resp = dave_page.reload()
        assert resp is not None and resp.status == 403
        assert dave_page.get_by_role("heading", name="Your account is suspended").is_visible()
        dave_page.goto(srv.url + "/")
        dave_page.get_by_label("Username").fill("dave")
        dave_page.get_by_label("Password").fill("dave-password-1")
        dave_page.get_by_role("button", name="Sign in").click()
        assert dave_page.get_by_role("alert").inner_text() == "Your account is suspended. Ask a site manager to reactivate it."
    finally:
        other.close()
    with api(srv.url) as c:
        assert c.post("/auth/login", json={"username": "dave", "password": "dave-password-1"}).status_code == 403
    assert act("Activate") == 'User "dave" activated: they can sign in again (sessions from before the suspension stay ended).'
    assert dave()["suspended"] is False
    # One cannot suspend oneself: the item is not offered.
    me = page.locator(f'tr[data-user="{srv.manager}"]')
    me.get_by_role("button", name=f"Actions for user {srv.manager}").click()
    assert me.get_by_role("menuitem", name="Suspend").count() == 0


def test_audit_lists_connections_and_admin_actions_newest_first_filtered_and_paginated(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/providers", json={"name": "edge", "kind": "manual"}).raise_for_status()
        for i in range(30):
            c.patch("/providers/edge", json={"external_connect": i % 2 == 1}).raise_for_status()
    # Two refused connection attempts, recorded by the relay.
    ssh_stream(srv.url, srv.member_token, "nope", b"x")
    ssh_stream(srv.url, srv.manager_token, "nada", b"x")

    flows.open_manage(page, "Audit")
    table = page.get_by_role("table", name="SSH connections")
    first = table.locator("tbody tr").first
    assert "nada" in first.inner_text() and "refused" in first.inner_text()  # newest first
    assert 'no workspace named "nada" is yours' in first.inner_text()

    page.get_by_label("User").select_option(srv.member)
    page.get_by_role("button", name="Filter").click()
    rows = table.locator("tbody tr")
    assert rows.count() >= 1
    assert all(srv.member in rows.nth(i).locator('td[data-label="User"]').inner_text() for i in range(rows.count()))
    page.get_by_role("link", name="Clear").click()
    page.get_by_label("Workspace").fill("nope")
    page.get_by_role("button", name="Filter").click()
    assert table.locator("tbody tr").count() == 1

    page.goto(srv.url + "/manage/audit")
    page.get_by_role("link", name="Admin actions").click()
    admin = page.get_by_role("table", name="Admin actions")
    assert admin.locator("tbody tr").count() == 25
    top = admin.locator("tbody tr").first.inner_text()
    assert "provider.edit" in top and "edge" in top and "external connect: off → on" in top
    total = int(re.search(r"of (\d+)", page.locator(".pager").inner_text()).group(1))
    assert total >= 31
    page.get_by_role("link", name="Older →").click()
    assert "page=2" in page.url and "view=admin" in page.url
    assert "26–" in page.locator(".pager").inner_text()
    page.get_by_label("User").select_option(srv.member)
    page.get_by_role("button", name="Filter").click()
    assert "page=" not in page.url and "view=admin" in page.url
    rows = admin.locator("tbody tr")
    assert rows.count() >= 1
    for i in range(rows.count()):
        text = rows.nth(i).inner_text()
        assert srv.member in text, text


# --- keyboard and narrow screens ------------------------------------------------------------


def test_row_menu_opens_with_enter_and_space_and_closes_with_escape(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.goto(srv.url + "/manage/providers")
    button = page.get_by_role("button", name="Actions for provider local")
    menu = page.locator("#" + button.get_attribute("aria-controls"))
    for key in ("Enter", " "):
        button.focus()
        page.keyboard.press(key)
        assert menu.is_visible() and button.get_attribute("aria-expanded") == "true"
        assert page.evaluate("document.activeElement.textContent.trim()") == "Edit"  # first item focused
        page.keyboard.press("Escape")
        assert menu.is_hidden() and button.get_attribute("aria-expanded") == "false"
        assert page.evaluate("document.activeElement.getAttribute('aria-label')") == "Actions for provider local"
    # Enter on the focused item follows it.
    button.focus()
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*/manage/providers/local/edit$"))
    # The header menus behave the same way.
    page.get_by_role("button", name="Manage").focus()
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Providers"
    page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.textContent.trim()") == "Users"
    page.keyboard.press("Escape")
    assert page.get_by_role("menuitem", name="Users").is_hidden()


def test_narrow_screen_navigation(browser: Any, ui_server: UIServer) -> None:
    with flows.signed_in_page(browser, ui_server.url, ui_server.manager, ui_server.manager_password, viewport=flows.PHONE) as page:
        assert page.get_by_role("button", name="Manage").is_hidden()  # behind the menu toggle
        page.get_by_role("button", name="Menu").click()
        flows.open_manage(page, "Providers")
        page.wait_for_url(re.compile(r".*/manage/providers$"))
        assert page.evaluate("document.documentElement.scrollWidth") <= flows.PHONE["width"]
        row = page.locator('tr[data-provider="local"]')
        assert row.get_by_role("button", name="Actions for provider local").is_visible()
        for path in ("/workspaces", "/account/key", "/account/password", "/manage/users", "/manage/audit"):
            page.goto(ui_server.url + path)
            assert page.evaluate("document.documentElement.scrollWidth") <= flows.PHONE["width"], path
