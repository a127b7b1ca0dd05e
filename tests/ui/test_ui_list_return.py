"""An action taken from a page of a long list comes back to that page and its filter, through a
confirmation page or a form on the way, in a real browser: a site manager working through page 2
of "dev" is not sent back to page 1 of everyone after each click. The list's page is carried as
``next``, and anything in ``next`` but that list's own address is ignored (no open redirect)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from playwright.sync_api import expect

from tests.ui.conftest import UIServer
from tests.ui.flows import expect_list_page, filter_list

USERS_PAGE_2 = "/manage/users?search=dev&page=2"  # dev-25 to dev-49
EVERYONE_PAGE_2 = "/workspaces?all=1&search=ws&page=2"  # ws-25 to ws-29


def _users_page_2(page: Any, url: str) -> Any:
    """Manage > Users, filtered to "dev", then Next: the way a person gets to page 2."""
    page.goto(url + "/manage/users")
    filter_list(page, "Filter users", "dev")
    page.get_by_role("link", name="Next →").click()
    expect(page).to_have_url(url + USERS_PAGE_2)
    return page.get_by_role("table", name="Users").locator("tbody tr")


def _pick(page: Any, user: str, item: str) -> None:
    row = page.locator(f'tr[data-user="{user}"]')
    row.get_by_role("button", name=f"Actions for user {user}").click()
    row.get_by_role("menuitem", name=item).click()


def _still_on_page_2(page: Any, url: str, rows: Any, flash: str) -> None:
    expect(page).to_have_url(url + USERS_PAGE_2)
    expect(page.locator(".flash")).to_have_text(flash)
    expect_list_page(page, rows, 25, "26–50 of 55", "Page 2 of 3")
    expect(page.get_by_label("Filter users")).to_have_value("dev")


def test_user_actions_come_back_to_the_page_and_filter_they_were_taken_from(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    with crowded.api() as c:
        c.put("/users/dev-32/role", json={"role": "site-manager"}).raise_for_status()
    rows = _users_page_2(page, url)
    status = page.locator('tr[data-user="dev-30"] td[data-label="Status"] .badge')

    _pick(page, "dev-30", "Suspend…")
    expect(page).to_have_url(url + "/manage/users/dev-30/suspend?next=" + quote(USERS_PAGE_2, safe=""))
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(url + USERS_PAGE_2)
    expect_list_page(page, rows, 25, "26–50 of 55", "Page 2 of 3")
    _pick(page, "dev-30", "Suspend…")
    page.get_by_role("button", name="Suspend user").click()
    _still_on_page_2(page, url, rows, 'User "dev-30" suspended: they cannot sign in or connect, and their live sessions were ended.')
    expect(status).to_have_text(["Suspended", "No password"])

    _pick(page, "dev-30", "Activate")
    _still_on_page_2(page, url, rows, 'User "dev-30" activated: they can sign in again (sessions from before the suspension stay ended).')
    expect(status).to_have_text(["Active", "No password"])

    _pick(page, "dev-32", "Make member…")
    page.get_by_role("button", name="Make member").click()
    _still_on_page_2(page, url, rows, 'User "dev-32" is now a member.')
    expect(page.locator('tr[data-user="dev-32"] td[data-label="Role"]')).to_have_text("member")

    _pick(page, "dev-31", "Set password")
    expect(page).to_have_url(url + "/manage/users/dev-31/password?next=" + quote(USERS_PAGE_2, safe=""))
    expect(page.get_by_role("link", name="Cancel")).to_have_attribute("href", USERS_PAGE_2)
    expect(page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Users")).to_have_attribute("href", USERS_PAGE_2)
    page.get_by_label("New password", exact=True).fill("dev-31-password")
    page.get_by_label("Repeat new password").fill("dev-31-other")
    page.get_by_role("button", name="Set password").click()  # refused: the form keeps where it goes back to
    expect(page.get_by_role("alert")).to_have_text("The two passwords do not match.")
    page.get_by_label("New password", exact=True).fill("dev-31-password")
    page.get_by_label("Repeat new password").fill("dev-31-password")
    page.get_by_role("button", name="Set password").click()
    _still_on_page_2(page, url, rows, 'Password of "dev-31" set; 0 sign-in sessions of theirs ended.')
    expect(page.locator('tr[data-user="dev-31"] td[data-label="Status"] .badge')).to_have_text(["Active"])


def test_make_site_manager_comes_back_to_the_page_and_filter(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    rows = _users_page_2(page, url)
    _pick(page, "dev-33", "Make site manager…")
    expect(page).to_have_url(url + "/manage/users/dev-33/make-site-manager?next=" + quote(USERS_PAGE_2, safe=""))
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(url + USERS_PAGE_2)
    expect(page.locator('tr[data-user="dev-33"] td[data-label="Role"]')).to_have_text("member")
    _pick(page, "dev-33", "Make site manager…")
    page.get_by_role("button", name="Make site manager").click()
    _still_on_page_2(page, url, rows, 'User "dev-33" is now a site manager.')
    expect(page.locator('tr[data-user="dev-33"] td[data-label="Role"]')).to_have_text("site manager")


def test_deleting_from_everyones_workspaces_comes_back_to_the_page_or_the_last_one_left(
    crowded_page: Any, crowded: UIServer
) -> None:
    page, url = crowded_page, crowded.url
    page.goto(url + "/workspaces?all=1")
    filter_list(page, "Filter workspaces", "ws")
    page.get_by_role("link", name="Next →").click()
    expect(page).to_have_url(url + EVERYONE_PAGE_2)
    rows = page.get_by_role("table", name="Workspaces").locator("tbody tr")
    names = rows.locator('td[data-label="Name"] a')

    def delete(name: str) -> None:
        row = page.locator(f'tr[data-workspace="dev-{name[3:]}/{name}"]')
        row.get_by_role("button", name=f"Actions for workspace {name}").click()
        row.get_by_role("menuitem", name="Delete…").click()
        expect(page.get_by_role("heading", level=1)).to_have_text(f'Delete workspace "{name}"?')

    delete("ws-27")
    expect(page).to_have_url(url + "/workspaces/dev-27/ws-27/delete?next=" + quote(EVERYONE_PAGE_2, safe=""))
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(url + EVERYONE_PAGE_2)
    delete("ws-27")
    page.get_by_role("button", name="Delete workspace").click()
    expect(page).to_have_url(url + EVERYONE_PAGE_2)
    expect(page.locator(".flash")).to_have_text('Workspace "dev-27/ws-27" deleted.')
    expect_list_page(page, rows, 4, "26–29 of 29", "Page 2 of 2")
    expect(names).to_have_text(["ws-25", "ws-26", "ws-28", "ws-29"])
    expect(page.get_by_label("Filter workspaces")).to_have_value("ws")

    # The last row of the last page: the list lands on the page that is now its last.
    with crowded.api() as c:
        for n in ("25", "26", "28"):
            c.delete(f"/workspaces/ws-{n}", params={"owner": f"dev-{n}"}).raise_for_status()
    page.reload()
    expect(names).to_have_text(["ws-29"])
    delete("ws-29")
    page.get_by_role("button", name="Delete workspace").click()
    expect(page).to_have_url(url + "/workspaces?all=1&search=ws&page=1")  # not page 2, which is gone
    expect(page.locator(".flash")).to_have_text('Workspace "dev-29/ws-29" deleted.')
    expect_list_page(page, rows, 25, "1–25 of 25", "Page 1 of 1")
    expect(names.first).to_have_text("ws-00")
    expect(names.last).to_have_text("ws-24")
    expect(page.get_by_label("Filter workspaces")).to_have_value("ws")
    # Its buttons go back to the page it shows, not to the one that is gone.
    expect(rows.first.locator('a[href*="/delete"]')).to_have_attribute(
        "href", "/workspaces/dev-00/ws-00/delete?next=" + quote("/workspaces?all=1&search=ws", safe=""))


def test_next_is_only_ever_the_lists_own_page(crowded_page: Any, crowded: UIServer) -> None:
    """``next`` as a hostile link or a forged form would send it: another site, another page of
    this one, unknown parameters. Each action goes to its list's page as written anew, or to the
    list's first page."""
    page, url = crowded_page, crowded.url
    page.goto(url + "/manage/users/dev-01/suspend?next=" + quote("https://evil.example/manage/users", safe=""))
    expect(page.locator('.confirm-card input[name="next"]')).to_have_value("/manage/users")
    expect(page.get_by_role("link", name="Cancel")).to_have_attribute("href", "/manage/users")
    page.goto(url + "/workspaces/dev-01/ws-01/delete?next=" + quote("//evil.example/workspaces?all=1", safe=""))
    expect(page.locator('.confirm-card input[name="next"]')).to_have_count(0)
    expect(page.get_by_role("link", name="Cancel")).to_have_attribute("href", "/workspaces/dev-01/ws-01")
    csrf = page.locator('input[name="csrf_token"]').first.get_attribute("value")

    def where(path: str, **form: str) -> str:
        r = page.context.request.post(url + path, form={"csrf_token": csrf, **form}, max_redirects=0)
        assert r.status == 303, (path, r.status, r.text())
        return r.headers["location"]

    assert where("/manage/users/dev-01/suspend", next="https://evil.example/manage/users?page=2") == "/manage/users"
    assert where("/manage/users/dev-01/activate", next="//evil.example/manage/users") == "/manage/users"
    assert where("/manage/users/dev-01/activate", next="/manage/users?page=3&search=dev&next=//evil.example&x=1") == (
        "/manage/users?search=dev&page=3")
    assert where("/manage/users/dev-01/role", role="member", next="/workspaces?all=1") == "/manage/users"
    assert where("/manage/users/dev-01/password", password="dev-01-password", password_confirm="dev-01-password",
                 next="/\\evil.example/manage/users") == "/manage/users"
    assert where("/workspaces/dev-01/ws-01/start", next="/workspaces/../manage/users") == "/workspaces/dev-01/ws-01"
    assert where("/workspaces/dev-01/ws-01/delete", next="/manage/users?page=2") == "/workspaces?all=1"
    assert where("/workspaces/dev-02/ws-02/delete", next="/workspaces?page=2&all=1&search=ws-0") == (
        "/workspaces?all=1&search=ws-0&page=2")
