"""Manage > Users > ⋮ > Make site manager…, in a real browser: a look at what the person gains
before the role changes, as Make member… does before taking it away."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from tests.ui.conftest import SignedIn, UIServer


@pytest.fixture
def pia(ui_server: UIServer) -> Iterator[str]:
    """A member of this test's own, a member again afterwards (the server is shared)."""
    with ui_server.api() as c:
        r = c.post("/users", json={"username": "pia", "email": "pia@example.com", "password": "pia-password-1"})
        if r.status_code != 409:  # made by an earlier test on this server
            r.raise_for_status()
    try:
        yield "pia"
    finally:
        with ui_server.api() as c:
            c.put("/users/pia/role", json={"role": "member"}).raise_for_status()


def _role(srv: UIServer, username: str) -> str:
    with srv.api() as c:
        return next(u for u in c.get("/users").json() if u["username"] == username)["role"]


def test_make_site_manager_asks_first_and_cancel_changes_nothing(manager_page: SignedIn, pia: str) -> None:
    page, srv = manager_page.page, manager_page.srv

    def open_confirm() -> None:
        page.goto(srv.url + "/manage/users?search=pia")
        row = page.locator('tr[data-user="pia"]')
        row.get_by_role("button", name="Actions for user pia").click()
        row.get_by_role("menuitem", name="Make site manager…").click()
        expect(page).to_have_url(srv.url + "/manage/users/pia/make-site-manager?next=%2Fmanage%2Fusers%3Fsearch%3Dpia")
        assert page.get_by_role("heading", level=1).inner_text() == 'Make "pia" a site manager?'
        assert page.locator(".confirm-card p").all_inner_texts() == [
            "pia (pia@example.com) becomes a site manager: they can administer every user, workspace and provider "
            "(suspend users, set their passwords, turn SSH off for a provider) and see the audit log.",
            "Their own workspaces, SSH key and sessions stay as they are. Make them a member again from the same menu."]

    open_confirm()
    assert _role(srv, pia) == "member"  # a look first, nothing done yet
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(srv.url + "/manage/users?search=pia")  # back to the list as it was filtered
    assert _role(srv, pia) == "member"

    open_confirm()
    with page.expect_response(lambda r: r.url.endswith("/manage/users/pia/role") and r.request.method == "POST") as resp:
        page.get_by_role("button", name="Make site manager").click()
    assert resp.value.status == 303
    expect(page.get_by_role("status")).to_have_text('User "pia" is now a site manager.')
    assert _role(srv, pia) == "site-manager"
    page.goto(srv.url + "/manage/users?search=pia")
    assert page.locator('tr[data-user="pia"] td[data-label="Role"]').inner_text().strip() == "site manager"
    with srv.api() as c:
        event = next(e for e in c.get("/audit").json() if e["action"] == "user.set-role" and e["target"] == "pia")
    assert (event["actor"], event["detail"]) == (srv.manager, {"old": "member", "new": "site-manager"})


def test_a_member_cannot_open_the_make_site_manager_page(manager_page: SignedIn, pia: str) -> None:
    srv = manager_page.srv
    for who in (srv.member, pia):
        with httpx.Client(base_url=srv.url, timeout=30, cookies={"hatchway_session": srv.member_token}) as c:
            r = c.get(f"/manage/users/{who}/make-site-manager")
            assert r.status_code == 403 and "Only site managers can open this page" in r.text
    assert _role(srv, pia) == "member"
    resp = manager_page.page.goto(srv.url + "/manage/users/nobody/make-site-manager")
    assert resp is not None and resp.status == 404
    expect(manager_page.page.get_by_role("heading", level=1)).to_have_text('No user named "nobody"')
