"""A page left open across ``hatchway server rotate-secret`` (its forms' CSRF tokens derive from
the deployment secret) or a form whose token is stale or forged: the post does nothing, and the
browser gets a page that says the form was out of date and how to go on, still signed in; the
page reloaded, the same form works."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.helpers.server import HATCHWAY
from tests.ui import flows
from tests.ui.conftest import LAB, UIServer, start_ui_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """A server of its own: its deployment secret is rotated."""
    flows.require_browser()
    srv = start_ui_server(tmp_path_factory.mktemp("stale") / "data")
    try:
        yield srv
    finally:
        srv.server.stop()


def _workspaces(srv: UIServer) -> list[str]:
    with srv.api() as c:
        return [w["name"] for w in c.get("/workspaces").json()]


def _new_workspace(page: Any, name: str) -> None:
    if page.locator("#new-workspace").get_attribute("open") is None:
        page.locator("#new-workspace > summary").click()
    page.get_by_label("Name").fill(name)
    page.get_by_label("Provider", exact=True).select_option(LAB)


def _expect_out_of_date(page: Any, srv: UIServer, back: str) -> None:
    """The refusal page: what happened, that nothing was done, the way back to the form; and the
    header of the signed-in user (no "Sign in": the session is as it was)."""
    expect(page.locator(".error-code")).to_have_text("403")
    expect(page.get_by_role("heading", level=1)).to_have_text("This form was out of date")
    expect(page.locator(".error-state p.muted")).to_have_text(
        "Nothing was done. The page it was on was opened before the server's keys changed (a secret rotation "
        "or a reinstall), or it was not sent from a Hatchway page. Reload the page and try again.")
    expect(page.get_by_role("link", name="Reload the page")).to_have_attribute("href", back)
    expect(page.locator(".whoami-name")).to_have_text(srv.manager)
    expect(page.get_by_role("link", name="Sign in")).to_have_count(0)


def test_a_form_left_open_across_a_secret_rotation_says_so_and_works_once_reloaded(
    browser: Any, server: UIServer
) -> None:
    srv = server
    with flows.signed_in_page(browser, srv.url, srv.manager, srv.manager_password) as page:
        page.goto(srv.url + "/workspaces?all=1")
        _new_workspace(page, "after-rotation")
        srv.server.stop()
        rotated = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(srv.server.data_dir)],
                                 capture_output=True, text=True, timeout=120, check=False)
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        srv.server.start()

        page.get_by_role("button", name="Create workspace").click()
        _expect_out_of_date(page, srv, "/workspaces?all=1")
        assert "after-rotation" not in _workspaces(srv)

        page.get_by_role("link", name="Reload the page").click()
        expect(page).to_have_url(srv.url + "/workspaces?all=1")
        _new_workspace(page, "after-rotation")
        page.get_by_role("button", name="Create workspace").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Workspace “after-rotation” created")
        assert "after-rotation" in _workspaces(srv)
    with srv.api() as c:
        c.delete("/workspaces/after-rotation").raise_for_status()


def test_a_stale_or_forged_token_is_refused_and_nothing_is_done(browser: Any, server: UIServer) -> None:
    srv = server
    with flows.signed_in_page(browser, srv.url, srv.manager, srv.manager_password) as page:
        page.goto(srv.url + "/workspaces")
        _new_workspace(page, "forged")
        page.locator('#new-workspace input[name="csrf_token"]').evaluate("e => e.value = 'f'.repeat(64)")
        page.get_by_role("button", name="Create workspace").click()
        _expect_out_of_date(page, srv, "/workspaces")
        assert "forged" not in _workspaces(srv)

        # From another site: no way back is offered to it, only the user's own pages.
        r = page.context.request.post(srv.url + "/workspaces", form={"csrf_token": "0" * 64, "name": "forged"},
                                      headers={"Referer": "https://evil.example/workspaces"}, max_redirects=0)
        assert r.status == 403 and "This form was out of date" in r.text() and "evil.example" not in r.text()
        assert 'href="/workspaces">Reload the page' not in r.text()
        assert "forged" not in _workspaces(srv)
