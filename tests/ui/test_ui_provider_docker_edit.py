"""A docker provider's Edit page shows its Docker host and network, read-only (the API's edit
changes only External Connect), with the Add form's hints and how to get others."""

from __future__ import annotations

from playwright.sync_api import expect

from tests.ui.conftest import LAB, SignedIn

CHANGE = (
    "These cannot be changed: this provider's containers run on that engine and network. To use others, add a "
    "docker provider with them (Manage > Providers > Add provider) and create workspaces there; once this one has "
    "no workspaces left, delete it (its ⋮ menu > Delete…, or hatchway providers delete rack).")


def test_docker_host_and_network_are_shown_read_only_with_how_to_change_them(manager_page: SignedIn) -> None:
    page, srv = manager_page.page, manager_page.srv
    with srv.api() as c:
        c.post("/providers", json={"name": "rack", "kind": "docker", "docker_host": "unix:///run/rack/docker.sock",
                                   "docker_network": "devnet"}).raise_for_status()
    try:
        page.goto(srv.url + "/manage/providers/rack/edit")
        host, network = page.get_by_label("Docker host"), page.get_by_label("Docker network")
        expect(host).to_have_value("unix:///run/rack/docker.sock")
        expect(network).to_have_value("devnet")
        expect(host).not_to_be_editable()
        expect(network).not_to_be_editable()
        expect(page.locator("#p-docker-host-hint")).to_have_text(
            "The engine's Unix socket on this machine. Empty: the server's DOCKER_HOST, else /var/run/docker.sock.")
        expect(page.locator("#p-docker-change")).to_have_text(CHANGE)
        page.get_by_role("button", name="Save").click()
        expect(page.get_by_role("status")).to_have_text('No changes to provider "rack".')
        with srv.api() as c:
            rack = next(p for p in c.get("/providers").json() if p["name"] == "rack")
            assert (rack["docker_host"], rack["docker_network"]) == ("unix:///run/rack/docker.sock", "devnet")

        page.goto(srv.url + f"/manage/providers/{LAB}/edit")  # a manual provider has no Docker section
        expect(page.get_by_role("heading", name="Features")).to_be_visible()
        expect(page.get_by_label("Docker host")).to_have_count(0)
    finally:
        with srv.api() as c:
            c.delete("/providers/rack")
