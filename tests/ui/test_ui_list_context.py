"""Creating from a page of a long list, and opening a workspace from one, keep that page: a site
manager working through page 2 of "ws" who creates a user or a workspace, or opens a workspace
and acts on it, comes back to page 2 of "ws", not to page 1 of everyone. The page rides in the
forms' and links' addresses, written anew by ``web/listback`` (never another site or page)."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from playwright.sync_api import expect

from tests.helpers.server import wait_for
from tests.ui.conftest import LAB, UIServer
from tests.ui.flows import expect_list_page, filter_list

USERS_PAGE_2 = "/manage/users?search=dev&page=2"  # dev-25 to dev-49
EVERYONE_PAGE_2 = "/workspaces?all=1&search=ws&page=2"  # ws-25 to ws-29


def _open(page: Any, url: str, list_path: str, label: str, text: str) -> None:
    """The list at ``list_path``, filtered to ``text``, then Next: the way a person gets to page 2."""
    page.goto(url + list_path)
    filter_list(page, label, text)
    page.get_by_role("link", name="Next →").click()


def test_a_user_created_from_a_page_of_the_list_comes_back_to_that_page(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    _open(page, url, "/manage/users", "Filter users", "dev")
    expect(page).to_have_url(url + USERS_PAGE_2)
    rows = page.get_by_role("table", name="Users").locator("tbody tr")
    form = page.locator("#new-user form")

    def create(username: str) -> None:
        if page.locator("#new-user").get_attribute("open") is None:
            page.locator("#new-user > summary").click()
        form.get_by_label("Username").fill(username)
        form.get_by_label("Email").fill(f"{username}@example.com")
        form.get_by_label("Initial password").fill(f"{username}-password")
        form.get_by_role("button", name="Create user").click()

    create("dev-new")
    expect(page).to_have_url(url + USERS_PAGE_2)
    # After dev-54, on page 3: the notice says so (test_ui_created_notice follows its link).
    expect(page.locator(".flash")).to_have_text('User "dev-new" created as member. It is on page 3 of this list. — Go to page 3')
    expect_list_page(page, rows, 25, "26–50 of 56", "Page 2 of 3")
    expect(page.get_by_label("Filter users")).to_have_value("dev")

    create("dev-new")  # refused: the form stays on the page it was on, and keeps what was typed
    expect(page.get_by_role("alert")).to_have_text('User "dev-new" already exists: pick another username')
    expect(page).to_have_url(url + USERS_PAGE_2)
    expect_list_page(page, rows, 25, "26–50 of 56", "Page 2 of 3")
    expect(form.get_by_label("Email")).to_have_value("dev-new@example.com")
    expect(page.get_by_label("Filter users")).to_have_value("dev")


def test_a_workspace_created_from_a_page_of_everyones_comes_back_to_that_page(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    name = "ws-" + secrets.token_hex(3)  # a local one runs as hw-dev-40-<name>: unique per run
    _open(page, url, "/workspaces?all=1", "Filter workspaces", "ws")
    expect(page).to_have_url(url + EVERYONE_PAGE_2)
    rows = page.get_by_role("table", name="Workspaces").locator("tbody tr")

    def create(owner: str, workspace: str, provider: str) -> None:
        if page.locator("#new-workspace").get_attribute("open") is None:
            page.locator("#new-workspace > summary").click()
        page.get_by_label("Owner").fill(owner)
        page.get_by_label("Name").fill(workspace)
        page.get_by_label("Provider", exact=True).select_option(provider)
        page.get_by_role("button", name="Create workspace").click()

    try:
        create("dev-40", "Bad Name", "local")  # refused: the form stays on the page it was on
        expect(page.get_by_role("alert")).to_contain_text('Name "Bad Name" is not valid')
        expect(page).to_have_url(url + EVERYONE_PAGE_2)
        expect_list_page(page, rows, 5, "26–30 of 30", "Page 2 of 2")
        expect(page.get_by_label("Filter workspaces")).to_have_value("ws")

        create("dev-40", name, "local")
        expect(page).to_have_url(url + EVERYONE_PAGE_2)
        expect(page.locator(".flash")).to_have_text(
            f'Workspace "dev-40/{name}" created for dev-40 on provider "local". dev-40 connects after running '
            "hatchway config-ssh.")
        expect(page.locator(".pager > span.muted")).to_have_text("26–31 of 31")
        expect(page.get_by_label("Filter workspaces")).to_have_value("ws")

        # A manual provider's agent command is shown once; its way back is the same page.
        create("dev-41", "ws-handed", LAB)
        expect(page.get_by_role("heading", level=1)).to_have_text("Workspace “ws-handed” created for dev-41")
        crumbs = page.get_by_role("navigation", name="Breadcrumb")
        expect(crumbs.get_by_role("link", name="Workspaces")).to_have_attribute("href", EVERYONE_PAGE_2)
        expect(page.get_by_role("link", name="Go to the workspace")).to_have_attribute(
            "href", "/workspaces/dev-41/ws-handed?next=" + quote(EVERYONE_PAGE_2, safe=""))
    finally:
        with crowded.api() as c:
            c.delete(f"/workspaces/{name}", params={"owner": "dev-40"})
            c.delete("/workspaces/ws-handed", params={"owner": "dev-41"})


def test_a_workspace_opened_from_a_page_of_everyones_keeps_it_through_its_buttons(
    crowded_page: Any, crowded: UIServer
) -> None:
    page, url = crowded_page, crowded.url
    name = "ws-" + secrets.token_hex(3)  # runs as hw-dev-42-<name>: unique per run
    own = f"/workspaces/dev-42/{name}?next=" + quote(EVERYONE_PAGE_2, safe="")
    crumb = page.get_by_role("navigation", name="Breadcrumb").get_by_role("link", name="Workspaces")
    flash = page.locator(".flash")

    def state() -> tuple[str, bool]:
        with crowded.api() as c:
            w = c.get(f"/workspaces/{name}", params={"owner": "dev-42"}).json()
        return w["state"], w["agent_connected"]

    def open_from_page_2() -> None:
        _open(page, url, "/workspaces?all=1", "Filter workspaces", "ws")
        page.locator(f'tr[data-workspace="dev-42/{name}"]').get_by_role("link", name=name).click()
        expect(page).to_have_url(url + own)

    with crowded.api() as c:
        c.post("/workspaces", params={"owner": "dev-42"}, json={"name": name, "provider": "local"}).raise_for_status()
    try:
        open_from_page_2()
        expect(crumb).to_have_attribute("href", EVERYONE_PAGE_2)
        crumb.click()
        expect(page).to_have_url(url + EVERYONE_PAGE_2)
        expect(page.get_by_label("Filter workspaces")).to_have_value("ws")

        wait_for(lambda: state() == ("running", True), 60, what="the local workspace to run")
        open_from_page_2()
        page.get_by_role("button", name="Stop", exact=True).click()
        expect(flash).to_have_text(f'Workspace "dev-42/{name}" stopped.')
        expect(page).to_have_url(url + own)  # its own page, still remembering the list's
        expect(crumb).to_have_attribute("href", EVERYONE_PAGE_2)
        page.get_by_role("button", name="Start", exact=True).click()
        expect(flash).to_have_text(f'Starting workspace "dev-42/{name}".')
        expect(page).to_have_url(url + own)

        page.get_by_role("link", name="Delete…").click()
        expect(page).to_have_url(url + f"/workspaces/dev-42/{name}/delete?next=" + quote(own, safe=""))
        page.get_by_role("link", name="Cancel").click()
        expect(page).to_have_url(url + own)
        page.get_by_role("link", name="Delete…").click()
        page.get_by_role("button", name="Delete workspace").click()
        expect(page).to_have_url(url + EVERYONE_PAGE_2)
        expect(flash).to_have_text(f'Workspace "dev-42/{name}" deleted.')
        expect(page.get_by_label("Filter workspaces")).to_have_value("ws")
    finally:
        with crowded.api() as c:
            c.delete(f"/workspaces/{name}", params={"owner": "dev-42"})


def test_a_manual_workspaces_new_agent_token_keeps_the_list_page(crowded_page: Any, crowded: UIServer) -> None:
    page, url = crowded_page, crowded.url
    own = "/workspaces/dev-26/ws-26?next=" + quote(EVERYONE_PAGE_2, safe="")
    _open(page, url, "/workspaces?all=1", "Filter workspaces", "ws")
    page.locator('tr[data-workspace="dev-26/ws-26"]').get_by_role("button", name="Actions for workspace ws-26").click()
    page.get_by_role("menuitem", name="Details").click()
    expect(page).to_have_url(url + own)
    page.get_by_role("link", name="New agent token…").click()
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(url + own)
    page.get_by_role("link", name="New agent token…").click()
    page.get_by_role("button", name="Generate new token").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New agent token for “ws-26”")
    crumbs = page.get_by_role("navigation", name="Breadcrumb")
    expect(crumbs.get_by_role("link", name="Workspaces")).to_have_attribute("href", EVERYONE_PAGE_2)
    page.get_by_role("link", name="Go to the workspace").click()
    expect(page).to_have_url(url + own)
