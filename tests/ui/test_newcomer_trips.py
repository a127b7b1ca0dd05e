"""What a newcomer trips over in the web UI, walked through in a real browser: addresses no
page answers, destructive clicks without a second look, long values, forms that forget."""

from __future__ import annotations

import re
from typing import Any

import httpx
from playwright.sync_api import expect

from tests.helpers.server import api, wait_for
from tests.ui import flows
from tests.ui.conftest import LAB, SignedIn, UIServer
from tests.ui.fake_agent import FakeAgent, ssh_stream


def test_a_browser_at_an_address_no_page_answers_gets_a_page_not_json(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    resp = page.goto(srv.url + "/manage")
    assert resp is not None and resp.status == 404
    assert page.title() == "There is no page at this address · Hatchway"
    assert page.get_by_role("heading", level=1).inner_text() == "There is no page at this address"
    assert page.get_by_role("button", name="Manage").is_visible()  # still signed in, header and all
    page.get_by_role("link", name="Go to your workspaces").click()
    page.wait_for_url(re.compile(r".*/workspaces$"))

    resp = page.goto(srv.url + "/account/key/download")  # a form's address, opened directly
    assert resp is not None and resp.status == 405 and resp.headers["allow"] == "POST"
    assert page.get_by_role("heading", level=1).inner_text() == "This address cannot be opened directly"
    assert resp.headers["content-security-policy"].startswith("default-src 'self'")

    # The API, and anything not asking for HTML, keep the JSON error.
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/api/v1/nope", headers={"Accept": "text/html"})
        assert r.status_code == 404 and r.json()["error"] == "not found"
        r = c.get("/manage", headers={"Accept": "application/json"})
        assert r.status_code == 404 and r.json()["error"] == "not found"


def test_opening_the_address_a_failed_sign_in_left_goes_back_to_the_form(anon_page: Any, ui_server: UIServer) -> None:
    page = anon_page
    page.goto(ui_server.url + "/")
    page.get_by_label("Username").fill("nobody-here")
    page.get_by_label("Password").fill("not-a-password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong username or password. Check both and try again."
    assert page.url == ui_server.url + "/sign-in"
    resp = page.goto(page.url)  # Enter in the address bar, or the address in a new tab
    assert resp is not None and resp.status == 200
    assert page.url == ui_server.url + "/"
    assert page.get_by_role("heading", name="Sign in to Hatchway").is_visible()
    page.goto(ui_server.url + "/setup")  # the setup form's address, once set up: sign-in too
    assert page.url == ui_server.url + "/"
    assert page.get_by_role("heading", name="Sign in to Hatchway").is_visible()


def test_suspending_a_user_asks_first_and_cancel_changes_nothing(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/users", json={"username": "frank", "email": "frank@example.com", "password": "frank-password-1"}).raise_for_status()

    def suspended() -> bool:
        with srv.api() as c:
            return next(u for u in c.get("/users").json() if u["username"] == "frank")["suspended"]

    def open_suspend() -> None:
        page.goto(srv.url + "/manage/users")
        row = page.locator('tr[data-user="frank"]')
        row.get_by_role("button", name="Actions for user frank").click()
        row.get_by_role("menuitem", name="Suspend…").click()
        page.wait_for_url(re.compile(r".*/manage/users/frank/suspend$"))
        assert page.get_by_role("heading", level=1).inner_text() == 'Suspend user "frank"?'

    open_suspend()
    assert suspended() is False  # a look first, nothing done yet
    page.get_by_role("link", name="Cancel").click()
    page.wait_for_url(re.compile(r".*/manage/users$"))
    assert suspended() is False
    assert page.locator('tr[data-user="frank"] td[data-label="Status"]').inner_text().strip() == "Active"

    open_suspend()
    page.get_by_role("button", name="Suspend user").click()
    page.wait_for_url(re.compile(r".*/manage/users$"))
    assert page.locator(".flash").inner_text() == (
        'User "frank" suspended: they cannot sign in or connect, and their live sessions were ended.')
    assert suspended() is True

    # The confirmation page is a site manager's, like the action.
    resp = manager_page.page.context.request.get(srv.url + "/manage/users/nobody/suspend")
    assert resp.status == 404
    with httpx.Client(base_url=srv.url, timeout=30, cookies={"hatchway_session": srv.member_token}) as c:
        r = c.get("/manage/users/frank/suspend")
        assert r.status_code == 403 and "Only site managers can open this page" in r.text


def _page_width(page: Any) -> int:
    """How wide the page's content is: wider than the window means sideways scrolling."""
    return page.evaluate("document.documentElement.scrollWidth")


def _sticking_out(page: Any) -> list[str]:
    """The elements of the page's main part that reach past the window's right edge."""
    return page.evaluate("""() => [...document.querySelectorAll('main *')]
        .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
        .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : ''))""")


def test_long_unbroken_values_stay_inside_the_window(browser: Any, manager_page: SignedIn) -> None:
    """The longest legal workspace name, and what agents and clients report (a diagnostic, a
    User-Agent, an environment value) with no place to break, wrap inside their cells and cards
    instead of stretching the page sideways, on a desktop and on a phone."""
    srv = manager_page.srv
    name, unbroken = "w" * 63, "x" * 200  # 200: what an agent may report fits
    with srv.api() as c:
        c.post("/users", json={"username": "gina", "email": "gina@example.com", "password": "gina-password-1"}).raise_for_status()
    with api(srv.url) as c:  # a client with an absurd User-Agent: in her sessions and the audit
        c.post("/auth/login", json={"username": "gina", "password": "gina-password-1"},
               headers={"User-Agent": "Agent/" + unbroken}).raise_for_status()
        token = c.post("/auth/login", json={"username": "gina", "password": "gina-password-1"}).json()["token"]
    with srv.api(token) as c:
        out = c.post("/workspaces", json={"name": name, "provider": LAB, "env": {"BLOB": unbroken}})
        out.raise_for_status()
    agent_token = out.json()["agent_command"].split()[0].split("=", 1)[1]
    report = {"version": "0.1.0", "os_user": "gina", "ssh_mode": "openssh", "ssh_server_version": "OpenSSH_" + unbroken,
              "diagnostics": ["warning: " + unbroken], "host_keys": ["ssh-ed25519 " + unbroken]}
    agent = FakeAgent(srv.url, agent_token, report).start()
    try:
        with srv.api(token) as c:
            wait_for(lambda: c.get(f"/workspaces/{name}").json()["diagnostics"], 10, what="the agent's report")
        for viewport in (flows.DESKTOP, flows.PHONE):
            with flows.signed_in_page(browser, srv.url, "gina", "gina-password-1", viewport) as page:
                for path in ("/workspaces", f"/workspaces/gina/{name}", "/account/sessions"):
                    page.goto(srv.url + path)
                    expect(page.locator("main")).to_contain_text(unbroken[:50])
                    assert _sticking_out(page) == [], (path, viewport)
                    assert _page_width(page) == viewport["width"], (path, viewport)
        page = manager_page.page
        for path in ("/manage/audit?view=admin&user=gina", "/workspaces?all=1"):
            page.goto(srv.url + path)
            expect(page.locator("main")).to_contain_text(unbroken[:50])
            assert _sticking_out(page) == [], path
            assert _page_width(page) == flows.DESKTOP["width"], path
    finally:
        agent.stop()
        with srv.api(token) as c:
            c.delete(f"/workspaces/{name}")


def test_a_refused_new_provider_form_keeps_external_connect_as_it_was_left(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.goto(srv.url + "/manage/providers")
    page.locator("#new-provider > summary").click()
    form = page.locator("#new-provider form")
    form.get_by_label("Name").fill("Edge Lab")  # not a valid name: refused
    form.evaluate("f => { f.noValidate = true; }")
    form.get_by_role("switch", name="External Connect").set_checked(False)
    with page.expect_response(lambda r: r.url.endswith("/manage/providers") and r.request.method == "POST") as resp:
        form.get_by_role("button", name="Add provider").click()
    assert resp.value.status == 400
    assert page.get_by_role("alert").inner_text().startswith('Name "Edge Lab" is not valid: ')
    assert form.get_by_label("Name").input_value() == "Edge Lab"
    expect(form.get_by_role("switch", name="External Connect")).not_to_be_checked()

    form.get_by_label("Name").fill("edge-lab")
    form.get_by_role("button", name="Add provider").click()
    assert page.locator(".flash").inner_text() == 'Provider "edge-lab" created.'
    assert flows.external_connect_badge(page, "edge-lab") == "Off"  # created as it was left
    page.locator("#new-provider > summary").click()
    expect(form.get_by_role("switch", name="External Connect")).to_be_checked()  # a fresh form: the default


#: A record's time as the Audit page shows it: how long ago, then the exact time and its zone.
RECORD_TIME = re.compile(r"(just now|\d+ s ago|\d+ min ago)\n\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC")


def test_audit_records_show_their_exact_time_and_zone(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    ssh_stream(srv.url, srv.manager_token, "no-such-workspace", b"x")  # a refused connection, recorded
    page.goto(srv.url + "/manage/audit")
    when = page.get_by_role("table", name="SSH connections").locator('tbody tr td[data-label="When"]').first
    assert RECORD_TIME.fullmatch(when.inner_text()), when.inner_text()
    page.goto(srv.url + "/manage/audit?view=admin")
    when = page.get_by_role("table", name="Admin actions").locator('tbody tr td[data-label="When"]').first
    assert RECORD_TIME.fullmatch(when.inner_text()), when.inner_text()
