"""Long lists in a real browser: Manage > Users and Workspaces > Everyone show a page of 25 at
a time, as the audit log does, with first and last page jumps and a filter box that keeps its
filter from page to page. Its own server (``crowded``): the shared one's lists are other tests'
business."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.ui.conftest import UIServer
from tests.ui.flows import expect_list_page, filter_list


def test_users_come_a_page_at_a_time_and_the_filter_stays(crowded_page: Any, crowded: UIServer) -> None:
    page = crowded_page
    page.goto(crowded.url + "/manage/users")
    rows = page.get_by_role("table", name="Users").locator("tbody tr")
    expect_list_page(page, rows, 25, "1–25 of 57", "Page 1 of 3")
    expect(rows.first).to_have_attribute("data-user", "alice")
    expect(page.locator('.pager [aria-disabled="true"]')).to_have_text(["« First", "← Previous"])

    page.get_by_role("link", name="Last »").click()
    expect_list_page(page, rows, 7, "51–57 of 57", "Page 3 of 3")
    expect(rows.last).to_have_attribute("data-user", "dev-54")
    expect(page.locator('.pager [aria-disabled="true"]')).to_have_text(["Next →", "Last »"])
    page.get_by_role("link", name="← Previous").click()
    expect_list_page(page, rows, 25, "26–50 of 57", "Page 2 of 3")
    page.get_by_role("link", name="« First").click()
    expect_list_page(page, rows, 25, "1–25 of 57", "Page 1 of 3")

    filter_list(page, "Filter users", "DEV-1")
    expect_list_page(page, rows, 10, "1–10 of 10", "Page 1 of 1")
    expect(rows.locator('td[data-label="User"] .strong')).to_have_text([f"dev-1{i}" for i in range(10)])

    filter_list(page, "Filter users", "dev")
    expect_list_page(page, rows, 25, "1–25 of 55", "Page 1 of 3")
    page.get_by_role("link", name="Next →").click()
    expect_list_page(page, rows, 25, "26–50 of 55", "Page 2 of 3")
    expect(rows.first).to_have_attribute("data-user", "dev-25")
    expect(page.get_by_label("Filter users")).to_have_value("dev")

    filter_list(page, "Filter users", "nobody")
    expect(page.get_by_role("heading", level=2)).to_have_text("No user’s name contains “nobody”")
    page.get_by_role("link", name="Clear", exact=True).click()
    expect_list_page(page, rows, 25, "1–25 of 57", "Page 1 of 3")
    expect(page.get_by_label("Filter users")).to_have_value("")


def test_everyones_workspaces_page_and_filter_by_name_or_owner(crowded_page: Any, crowded: UIServer) -> None:
    page = crowded_page
    page.goto(crowded.url + "/workspaces")
    expect(page.get_by_label("Filter workspaces")).to_have_count(0)  # Mine: a member's few
    page.get_by_role("link", name="Everyone").click()
    rows = page.get_by_role("table", name="Workspaces").locator("tbody tr")
    expect_list_page(page, rows, 25, "1–25 of 30", "Page 1 of 2")
    page.get_by_role("link", name="Last »").click()
    expect_list_page(page, rows, 5, "26–30 of 30", "Page 2 of 2")
    names = rows.locator('td[data-label="Name"]')
    expect(names).to_have_text([f"ws-{i}\nowner dev-{i}" for i in range(25, 30)])
    expect(page).to_have_url(crowded.url + "/workspaces?all=1&page=2")

    filter_list(page, "Filter workspaces", "DEV-0")  # owners
    expect_list_page(page, rows, 10, "1–10 of 10", "Page 1 of 1")
    filter_list(page, "Filter workspaces", "ws-2")  # names
    expect(names).to_have_text([f"ws-2{i}\nowner dev-2{i}" for i in range(10)])
    filter_list(page, "Filter workspaces", "dev-01/ws")  # both
    expect(names).to_have_text(["ws-01\nowner dev-01"])
    filter_list(page, "Filter workspaces", "ws")
    page.get_by_role("link", name="Next →").click()
    expect_list_page(page, rows, 5, "26–30 of 30", "Page 2 of 2")
    expect(page).to_have_url(crowded.url + "/workspaces?all=1&search=ws&page=2")
    filter_list(page, "Filter workspaces", "zzz")
    expect(page.get_by_role("heading", level=2)).to_have_text("No workspace’s name or owner contains “zzz”")
    page.get_by_role("link", name="Clear", exact=True).click()
    expect(page).to_have_url(crowded.url + "/workspaces?all=1")
    expect_list_page(page, rows, 25, "1–25 of 30", "Page 1 of 2")


def test_the_audit_log_jumps_to_its_oldest_page_with_the_same_pager(crowded_page: Any, crowded: UIServer) -> None:
    page = crowded_page
    page.goto(crowded.url + "/manage/audit?view=admin")
    rows = page.get_by_role("table", name="Admin actions").locator("tbody tr")
    expect(rows).to_have_count(25)
    page.get_by_role("link", name="Oldest »").click()
    pages = page.locator(".pager-links > span.muted")
    expect(pages).to_have_text("Page 4 of 4")
    expect(rows.last).to_contain_text("role: site-manager; first user: on")
    page.get_by_role("link", name="« Newest").click()
    expect(pages).to_have_text("Page 1 of 4")
    expect(page).to_have_url(crowded.url + "/manage/audit?view=admin&page=1")


def test_a_page_past_the_last_goes_to_the_last_on_every_list(crowded_page: Any, crowded: UIServer) -> None:
    """An address naming a page the list no longer has (its last rows gone, an old bookmark, a
    filter that now matches fewer) lands on the page that is now its last, and says so."""
    page, url = crowded_page, crowded.url
    users = page.get_by_role("table", name="Users").locator("tbody tr")
    page.goto(url + "/manage/users?search=dev&page=9")
    expect(page).to_have_url(url + "/manage/users?search=dev&page=3")
    expect_list_page(page, users, 5, "51–55 of 55", "Page 3 of 3")
    expect(page.get_by_label("Filter users")).to_have_value("dev")
    page.goto(url + "/manage/users?page=2&search=nobody")
    expect(page).to_have_url(url + "/manage/users?search=nobody&page=1")
    expect(page.get_by_role("heading", level=2)).to_have_text("No user’s name contains “nobody”")

    workspaces = page.get_by_role("table", name="Workspaces").locator("tbody tr")
    page.goto(url + "/workspaces?all=1&search=ws&page=5")
    expect(page).to_have_url(url + "/workspaces?all=1&search=ws&page=2")
    expect_list_page(page, workspaces, 5, "26–30 of 30", "Page 2 of 2")
    page.goto(url + "/workspaces?page=2")  # Mine: alice has none
    expect(page).to_have_url(url + "/workspaces?page=1")
    expect(page.get_by_role("heading", level=2)).to_have_text("You have no workspaces yet")

    page.goto(url + "/manage/audit?view=admin&page=40")
    expect(page).to_have_url(url + "/manage/audit?view=admin&page=4")
    expect(page.locator(".pager-links > span.muted")).to_have_text("Page 4 of 4")
