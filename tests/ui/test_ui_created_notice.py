"""After creating a user or a workspace from a page of a long list, the notice says where the
new one is, in a real browser: on the page shown, the plain "created" (its row is there); left
out by the list's filter, or sorted onto another page, why it is not shown and a link that shows
it. People who saw "created" and no row thought it had failed, and created it again."""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import quote, urlencode

from playwright.sync_api import expect

from tests.ui.conftest import UIServer
from tests.ui.flows import filter_list


def _create_user(page: Any, username: str) -> None:
    if page.locator("#new-user").get_attribute("open") is None:
        page.locator("#new-user > summary").click()
    form = page.locator("#new-user form")
    form.get_by_label("Username").fill(username)
    form.get_by_label("Email").fill(f"{username}@example.com")
    form.get_by_label("Initial password").fill(f"{username}-password")
    form.get_by_role("button", name="Create user").click()


def _users_filtered(page: Any, url: str, text: str) -> None:
    page.goto(url + "/manage/users")
    filter_list(page, "Filter users", text)
    expect(page).to_have_url(url + "/manage/users?" + urlencode({"search": text}))


def test_a_user_on_the_page_shown_gets_the_plain_notice(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    _users_filtered(page, url, "dev-5")  # dev-50 to dev-54: one page
    _create_user(page, "dev-5a")
    expect(page).to_have_url(url + "/manage/users?search=dev-5")
    flash = page.locator(".flash")
    expect(flash).to_have_text('User "dev-5a" created as member.')
    expect(flash.get_by_role("link")).to_have_count(0)
    expect(page.locator('tr[data-user="dev-5a"]')).to_be_visible()


def test_a_user_the_filter_leaves_out_is_one_click_away(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    _users_filtered(page, url, "dev")
    _create_user(page, "carol")
    expect(page).to_have_url(url + "/manage/users?search=dev")
    flash = page.locator(".flash")
    expect(flash).to_have_text(
        'User "carol" created as member. It is not shown here because the list is filtered to names containing "dev". '
        "— Show all")
    expect(page.locator('tr[data-user="carol"]')).to_have_count(0)
    flash.get_by_role("link", name="Show all").click()
    expect(page).to_have_url(url + "/manage/users")  # alice, bob, carol: page 1
    expect(page.locator('tr[data-user="carol"]')).to_be_visible()
    expect(page.get_by_label("Filter users")).to_have_value("")


def test_a_user_on_another_page_is_one_click_away(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    _users_filtered(page, url, "dev")  # dev-00 to dev-24 of 55 or more
    _create_user(page, "dev-99")  # after every dev-NN: the last page
    expect(page).to_have_url(url + "/manage/users?search=dev")
    flash = page.locator(".flash")
    expect(flash).to_have_text('User "dev-99" created as member. It is on page 3 of this list. — Go to page 3')
    expect(page.locator('tr[data-user="dev-99"]')).to_have_count(0)
    flash.get_by_role("link", name="Go to page 3").click()
    expect(page).to_have_url(url + "/manage/users?search=dev&page=3")
    expect(page.locator('tr[data-user="dev-99"]')).to_be_visible()
    expect(page.get_by_label("Filter users")).to_have_value("dev")


def test_the_filter_in_the_notice_is_text_not_markup(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    hostile = '"><b>dev</b><a href="//evil.example">'
    _users_filtered(page, url, hostile)
    _create_user(page, "carol-b")
    flash = page.locator(".flash")
    expect(flash).to_have_text(
        f'User "carol-b" created as member. It is not shown here because the list is filtered to names containing "{hostile}". '
        "— Show all")
    expect(flash.locator("b")).to_have_count(0)
    expect(flash.get_by_role("link")).to_have_count(1)
    expect(flash.get_by_role("link", name="Show all")).to_have_attribute("href", "/manage/users")


def test_a_workspace_the_filter_leaves_out_is_one_click_away(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    name = "box-" + secrets.token_hex(3)  # a local one runs as hw-dev-40-<name>: unique per run
    filtered = "/workspaces?all=1&search=ws-1"  # ws-10 to ws-19
    page.goto(url + "/workspaces?all=1")
    filter_list(page, "Filter workspaces", "ws-1")
    expect(page).to_have_url(url + filtered)
    rows = page.get_by_role("table", name="Workspaces").locator("tbody tr")
    expect(rows).to_have_count(10)
    page.locator("#new-workspace > summary").click()
    page.get_by_label("Owner").fill("dev-40")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Provider", exact=True).select_option("local")
    page.get_by_role("button", name="Create workspace").click()
    try:
        expect(page).to_have_url(url + filtered)
        flash = page.locator(".flash")
        expect(flash).to_have_text(
            f'Workspace "dev-40/{name}" created for dev-40 on provider "local". dev-40 connects after running '
            'hatchway config-ssh. It is not shown here because the list is filtered to names and owners containing "ws-1". '
            "— Show all (page 2) · Go to the workspace")
        expect(rows).to_have_count(10)
        own = f"/workspaces/dev-40/{name}?next=" + quote(filtered, safe="")
        expect(flash.get_by_role("link", name="Go to the workspace")).to_have_attribute("href", own)
        flash.get_by_role("link", name="Show all (page 2)").click()  # after dev-00/ws-00 to dev-29/ws-29
        expect(page).to_have_url(url + "/workspaces?all=1&page=2")
        expect(page.locator(f'tr[data-workspace="dev-40/{name}"]')).to_be_visible()
        expect(page.get_by_label("Filter workspaces")).to_have_value("")
        page.goto(url + own)
        expect(page.get_by_role("heading", level=1)).to_have_text(re.compile(rf"^{name}\s"))  # and its state
    finally:
        with crowded.api() as c:
            c.delete(f"/workspaces/{name}", params={"owner": "dev-40"})
