"""Manage > Providers > ⋮ > Delete…, in a real browser: one look first, then the API's own
delete (its refusals in its words, its audit event); never offered for the built-in provider,
and a site manager's page and form like the others (members refused, CSRF checked)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.ui.conftest import LAB, SignedIn, UIServer

BUSY = 'Provider "{name}" still has 1 workspace: delete them first; see hatchway workspaces list --all'


@pytest.fixture
def spare(ui_server: UIServer) -> Iterator[str]:
    """An empty manual provider of this test's own; whatever the test left of it is removed."""
    with ui_server.api() as c:
        c.post("/providers", json={"name": "spare", "kind": "manual"}).raise_for_status()
    try:
        yield "spare"
    finally:
        with ui_server.api() as c:
            c.delete("/workspaces/on-spare")
            c.delete("/providers/spare")


def _deletions(srv: UIServer, name: str) -> int:
    """How many provider.delete events the audit log has for ``name`` (each test makes its own)."""
    with srv.api() as c:
        return sum(1 for e in c.get("/audit").json() if e["action"] == "provider.delete" and e["target"] == name)


def _provider_names(srv: UIServer) -> list[str]:
    with srv.api() as c:
        return [p["name"] for p in c.get("/providers").json()]


def _open_delete(page: Any, url: str, name: str) -> None:
    """Manage > Providers > ⋮ (the provider's row) > Delete…"""
    page.goto(url + "/manage/providers")
    row = page.locator(f'tr[data-provider="{name}"]')
    row.get_by_role("button", name=f"Actions for provider {name}").click()
    row.get_by_role("menuitem", name="Delete…").click()


def test_an_empty_provider_is_deleted_after_a_look_and_audited(manager_page: SignedIn, spare: str) -> None:
    page, srv = manager_page.page, manager_page.srv

    def open_confirm() -> None:
        _open_delete(page, srv.url, spare)
        expect(page).to_have_url(srv.url + "/manage/providers/spare/delete")
        assert page.get_by_role("heading", level=1).inner_text() == 'Delete provider "spare"?'
        assert page.locator(".confirm-card p").all_inner_texts() == [
            'Provider "spare" (manual) will be deleted. It has no workspaces, so no one loses access to anything.',
            "Workspaces can no longer be created on it; its past SSH connections and admin actions stay in the "
            "audit log. To use it again, add it again with Add provider."]

    open_confirm()
    assert spare in _provider_names(srv)  # a look first, nothing done yet
    page.get_by_role("link", name="Cancel").click()
    expect(page).to_have_url(srv.url + "/manage/providers")
    assert spare in _provider_names(srv)

    open_confirm()
    with page.expect_response(lambda r: r.url.endswith("/manage/providers/spare/delete") and r.request.method == "POST") as resp:
        page.get_by_role("button", name="Delete provider").click()
    assert resp.value.status == 303
    expect(page).to_have_url(srv.url + "/manage/providers")
    expect(page.get_by_role("status")).to_have_text('Provider "spare" deleted.')
    expect(page.locator('tr[data-provider="spare"]')).to_have_count(0)
    assert spare not in _provider_names(srv)

    with srv.api() as c:
        event = next(e for e in c.get("/audit").json() if e["action"] == "provider.delete" and e["target"] == "spare")
    assert (event["actor"], event["detail"]) == (srv.manager, {"kind": "manual"})
    page.goto(srv.url + "/manage/audit?view=admin")
    newest = page.get_by_role("table", name="Admin actions").locator("tbody tr").first
    assert newest.locator('td[data-label="Action"]').inner_text() == "provider.delete"
    assert newest.locator('td[data-label="Target"]').inner_text() == "spare"
    assert newest.locator('td[data-label="Who"]').inner_text() == srv.manager


def test_a_provider_with_a_workspace_is_refused_in_the_apis_words(manager_page: SignedIn, spare: str) -> None:
    page, srv = manager_page.page, manager_page.srv
    deletions = _deletions(srv, spare)
    # A workspace created while the confirmation page is open: the click is refused, nothing deleted.
    _open_delete(page, srv.url, spare)
    expect(page.get_by_role("heading", level=1)).to_have_text('Delete provider "spare"?')
    with srv.api() as c:
        c.post("/workspaces", json={"name": "on-spare", "provider": spare}).raise_for_status()
    page.get_by_role("button", name="Delete provider").click()
    expect(page).to_have_url(srv.url + "/manage/providers")
    expect(page.get_by_role("alert")).to_have_text(BUSY.format(name=spare))
    expect(page.locator('tr[data-provider="spare"] td[data-label="Workspaces"]')).to_have_text("1")

    # Asked again, it is refused before the confirmation page, in the same words.
    _open_delete(page, srv.url, spare)
    expect(page).to_have_url(srv.url + "/manage/providers")
    expect(page.get_by_role("alert")).to_have_text(BUSY.format(name=spare))
    expect(page.get_by_role("button", name="Delete provider")).to_have_count(0)
    assert spare in _provider_names(srv)
    assert _deletions(srv, spare) == deletions


def test_the_built_in_provider_offers_no_delete(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    page.goto(srv.url + "/manage/providers")
    row = page.locator('tr[data-provider="local"]')
    row.get_by_role("button", name="Actions for provider local").click()
    expect(row.get_by_role("menuitem", name="Edit")).to_be_visible()
    expect(row.get_by_role("menuitem", name="Delete…")).to_have_count(0)
    lab = page.locator(f'tr[data-provider="{LAB}"]')  # every other provider offers it
    lab.get_by_role("button", name=f"Actions for provider {LAB}").click()
    expect(lab.get_by_role("menuitem", name="Delete…")).to_be_visible()

    # Its address, typed: the API's refusal, with what to do instead.
    page.goto(srv.url + "/manage/providers/local/delete")
    expect(page).to_have_url(srv.url + "/manage/providers")
    expect(page.get_by_role("alert")).to_have_text(
        'The built-in "local" provider cannot be deleted: turn its External Connect off to refuse SSH to its '
        "workspaces: hatchway providers edit local --external-connect off")
    assert "local" in _provider_names(srv)

    resp = page.goto(srv.url + "/manage/providers/nope/delete")
    assert resp is not None and resp.status == 404
    expect(page.get_by_role("heading", level=1)).to_have_text('No provider named "nope"')


def test_a_member_can_reach_neither_the_page_nor_the_form(member_page: SignedIn, spare: str) -> None:
    page, srv = member_page.page, member_page.srv
    resp = page.goto(srv.url + "/manage/providers/spare/delete")
    assert resp is not None and resp.status == 403
    expect(page.get_by_role("heading", level=1)).to_have_text("Only site managers can open this page")

    # The post a page left open from before a demotion would send, with the member's own token.
    page.goto(srv.url + "/workspaces")
    token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
    r = page.context.request.post(srv.url + "/manage/providers/spare/delete", form={"csrf_token": token}, max_redirects=0)
    assert r.status == 403 and "Only site managers can do this" in r.text()
    assert spare in _provider_names(srv)


def test_the_delete_form_needs_its_csrf_token(manager_page: SignedIn, spare: str) -> None:
    page, srv = manager_page.page, manager_page.srv
    _open_delete(page, srv.url, spare)
    form = page.locator(".confirm-card form")
    token = form.locator('input[name="csrf_token"]').get_attribute("value")
    for fields in ({}, {"csrf_token": "0" * 64}):
        r = page.context.request.post(srv.url + "/manage/providers/spare/delete", form=fields, max_redirects=0)
        assert r.status == 403 and "This form was out of date" in r.text(), fields
    assert spare in _provider_names(srv)
    r = page.context.request.post(srv.url + "/manage/providers/spare/delete", form={"csrf_token": token}, max_redirects=0)
    assert (r.status, r.headers["location"]) == (303, "/manage/providers")
    assert spare not in _provider_names(srv)
