"""A walk through every page with realistic data: saves the screenshots under docs/screenshots
(the README shows them) and checks what holds on every page: no request leaves the server,
every form control has a label, every state-changing form carries the CSRF token."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.ui import flows
from tests.ui.conftest import UIServer, start_ui_server
from tests.ui.fake_agent import FakeAgent, ssh_stream

UNLABELLED_CONTROLS = """
() => Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button'))
  .filter(el => {
    if (el.tagName === 'BUTTON') return !(el.textContent.trim() || el.getAttribute('aria-label'));
    return !((el.labels && el.labels.length) || el.getAttribute('aria-label') || el.getAttribute('aria-labelledby'));
  })
  .map(el => el.outerHTML.slice(0, 120))
"""

PUE_DIAGNOSTIC = (
    "sshd on port 22 has PermitUserEnvironment no: ~/.ssh/environment (image variables and "
    "Hatchway defaults) is not applied; set PermitUserEnvironment yes"
)

FORMS_WITHOUT_CSRF = """
() => Array.from(document.querySelectorAll('form'))
  .filter(f => (f.getAttribute('method') || 'get').toLowerCase() === 'post' && !f.querySelector('input[name=csrf_token]'))
  .map(f => f.getAttribute('action'))
"""


@pytest.fixture(scope="module")
def tour(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """A deployment that looks lived in: providers, users, workspaces, agents, connections."""
    flows.require_browser()
    srv = start_ui_server(tmp_path_factory.mktemp("tour") / "data")
    agents: list[FakeAgent] = []
    try:
        with srv.api() as c:
            # (start_ui_server made the manual provider "lab")
            c.post("/providers", json={"name": "gpu", "kind": "manual", "external_connect": False}).raise_for_status()
            for name, email in (("carol", "carol@example.com"), ("dmitri", "dmitri@example.com")):
                c.post("/users", json={"username": name, "email": email, "password": f"{name}-password-1"}).raise_for_status()
            c.post("/users/dmitri/suspend").raise_for_status()
            c.put("/users/carol/role", json={"role": "site-manager"}).raise_for_status()
            dev = c.post("/workspaces", json={"name": "dev", "provider": "lab", "env": {"LANG": "C.UTF-8", "EDITOR": "vim"}}).json()
            web = c.post("/workspaces", json={"name": "web", "provider": "lab"}).json()
            c.post("/workspaces", json={"name": "train", "provider": "gpu"}).raise_for_status()
        with srv.api(srv.member_token) as c:
            bobdev = c.post("/workspaces", json={"name": "dev", "provider": "lab"}).json()
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHf5Yc2bYt1uO7o1m0bXgUeY9a6H8QeR0pXyZ7r2mF4k"
        agents += [
            FakeAgent(srv.url, dev["agent_token"], {"version": "0.1.0", "os_user": "alice", "ssh_mode": "openssh",
                                                    "ssh_server_version": "OpenSSH_9.2p1", "host_keys": [key],
                                                    "diagnostics": [PUE_DIAGNOSTIC]}).start(),
            FakeAgent(srv.url, web["agent_token"], {"version": "0.1.0", "os_user": "alice", "ssh_mode": "built-in",
                                                    "host_keys": [key]}).start(),
            FakeAgent(srv.url, bobdev["agent_token"], {"version": "0.1.0", "os_user": "bob", "ssh_mode": "built-in"}).start(),
        ]
        flows_wait_connected(srv)
        # Real relayed connections (echoed by the fake agents) and real refusals.
        ssh_stream(srv.url, srv.manager_token, "dev", b"S" * 180_000)
        ssh_stream(srv.url, srv.manager_token, "web", b"S" * 2_400)
        ssh_stream(srv.url, srv.member_token, "dev", b"S" * 52_000)
        ssh_stream(srv.url, srv.manager_token, "train", b"SSH-2.0-OpenSSH_9.6\r\n")
        ssh_stream(srv.url, srv.member_token, "ghost", b"SSH-2.0-OpenSSH_9.6\r\n")
        yield srv
    finally:
        for a in agents:
            a.stop()
        srv.server.stop()


def flows_wait_connected(srv: UIServer) -> None:
    from tests.helpers.server import wait_for

    def connected() -> bool:
        with srv.api() as c:
            rows = c.get("/workspaces", params={"all": "true"}).json()
        return sum(1 for w in rows if w["agent_connected"] and w["ssh_mode"]) == 3

    wait_for(connected, 10, what="fake agents to report")


def _check_page(page: Any, origin: str, requests: list[str]) -> None:
    assert page.evaluate(UNLABELLED_CONTROLS) == [], page.url
    assert page.evaluate(FORMS_WITHOUT_CSRF) == [], page.url
    foreign = [u for u in requests if not (u.startswith((origin + "/", "data:")))]
    assert foreign == [], foreign


def test_tour_of_every_page_with_screenshots(browser: Any, tour: UIServer) -> None:
    origin = tour.url
    context = browser.new_context(viewport=flows.DESKTOP, accept_downloads=True)
    requests: list[str] = []
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        page.goto(origin + "/")
        _check_page(page, origin, requests)
        flows.screenshot(page, "sign-in")

        flows.sign_in(page, origin, tour.manager, tour.manager_password)
        rows = page.locator("tbody tr")
        assert rows.count() == 3
        assert page.locator('tr[data-workspace="alice/dev"] td[data-label="SSH"]').inner_text().strip() == "openssh (OpenSSH_9.2p1)"
        assert page.locator('tr[data-workspace="alice/web"] td[data-label="SSH"]').inner_text().strip() == "built-in"
        assert page.locator('tr[data-workspace="alice/train"] td[data-label="SSH"]').inner_text().strip() == "SSH disabled by a site manager"
        assert "connected" in page.locator('tr[data-workspace="alice/dev"] td[data-label="Agent"]').inner_text()
        _check_page(page, origin, requests)
        flows.screenshot(page, "workspaces")
        page.locator("#new-workspace > summary").click()
        page.get_by_label("Name").fill("api")
        flows.screenshot(page, "workspaces-new", full_page=False)

        page.goto(origin + "/workspaces/alice/dev")
        _check_page(page, origin, requests)
        flows.screenshot(page, "workspace-detail")

        page.goto(origin + "/account/key")
        _check_page(page, origin, requests)
        flows.screenshot(page, "account-ssh-key")
        page.get_by_role("link", name="Regenerate key…").click()
        flows.screenshot(page, "account-ssh-key-regenerate")

        flows.open_manage(page, "Providers")
        page.wait_for_url(re.compile(r".*/manage/providers$"))
        assert flows.external_connect_badge(page, "gpu") == "Off"
        _check_page(page, origin, requests)
        page.get_by_role("button", name="Actions for provider lab").click()
        flows.screenshot(page, "providers")

        page.get_by_role("menuitem", name="Edit").click()
        page.wait_for_url(re.compile(r".*/manage/providers/lab/edit$"))
        _check_page(page, origin, requests)
        page.locator("#features").scroll_into_view_if_needed()
        flows.screenshot(page, "provider-edit-features")

        # The documented path, saved: the flash and the badge say what happened.
        flows.set_external_connect(page, "lab", False)
        assert flows.external_connect_badge(page, "lab") == "Off"
        flows.screenshot(page, "providers-external-connect-off")
        flows.set_external_connect(page, "lab", True)

        page.goto(origin + "/manage/users")
        _check_page(page, origin, requests)
        flows.screenshot(page, "users")

        page.goto(origin + "/manage/audit")
        conn = page.get_by_role("table", name="SSH connections")
        top = conn.locator("tbody tr")
        assert top.count() == 5
        # The successful relays carry mode, byte counts and a duration.
        dev = top.filter(has_text="175.8 KB").first.inner_text()
        assert "openssh" in dev and "175.8 KB" in dev and "closed" in dev
        _check_page(page, origin, requests)
        flows.screenshot(page, "audit-connections")

        page.get_by_role("link", name="Admin actions").click()
        _check_page(page, origin, requests)
        flows.screenshot(page, "audit-admin")

        resp = page.goto(origin + "/manage/providers/nope/edit")
        assert resp is not None and resp.status == 404
        assert page.get_by_role("heading", name='No provider named "nope"').is_visible()
        flows.screenshot(page, "not-found")
    finally:
        context.close()

    with flows.signed_in_page(browser, origin, tour.manager, tour.manager_password, viewport=flows.PHONE) as phone:
        assert phone.evaluate("document.documentElement.scrollWidth") <= flows.PHONE["width"]
        flows.screenshot(phone, "workspaces-phone")
        phone.get_by_role("button", name="Menu").click()
        flows.open_manage(phone, "Providers")
        phone.wait_for_url(re.compile(r".*/manage/providers$"))
        assert phone.evaluate("document.documentElement.scrollWidth") <= flows.PHONE["width"]
        flows.screenshot(phone, "providers-phone")

    with flows.signed_in_page(browser, origin, tour.member, tour.member_password) as member:
        assert member.get_by_role("button", name="Manage").count() == 0
        flows.screenshot(member, "workspaces-member")
