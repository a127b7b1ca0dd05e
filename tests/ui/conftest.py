"""Browser fixtures: Debian's Chromium driven by Playwright against a real ``hatchway server``.

Reusable by other layers (SSH end to end, for one): ``ui_server`` is a running server with a
site manager and a member; ``manager_page`` / ``member_page`` yield a signed-in page with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.server import RunningServer, api, first_user
from tests.ui import flows

MANAGER, MANAGER_PW = "alice", "alice-password-1"
MEMBER, MEMBER_PW = "bob", "bob-password-1"
LAB = "lab"  # a "manual" provider: its workspaces are whatever runs the agent


@dataclass
class UIServer:
    server: RunningServer
    manager: str
    manager_password: str
    manager_token: str
    member: str
    member_password: str
    member_token: str

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, token: str | None = None) -> httpx.Client:
        return api(self.url, token if token is not None else self.manager_token)


@dataclass
class SignedIn:
    page: Any  # playwright.sync_api.Page
    srv: UIServer
    username: str
    password: str

    @property
    def url(self) -> str:
        return self.srv.url

    def session_cookie(self) -> str:
        return next(c["value"] for c in self.page.context.cookies() if c["name"] == "hatchway_session")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Per module: Playwright's sync API keeps an asyncio loop running in the main thread while
    it is open, which would break every asyncio test collected after the UI tests."""
    flows.require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=flows.CHROMIUM, headless=True, args=flows.CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def start_ui_server(data_dir: Path, **kw: Any) -> UIServer:
    srv = RunningServer(data_dir, **kw)
    srv.start()
    token = first_user(srv.url, MANAGER, MANAGER_PW)
    with api(srv.url, token) as c:
        c.post("/users", json={"username": MEMBER, "email": f"{MEMBER}@example.com", "password": MEMBER_PW}).raise_for_status()
        # Workspaces in UI tests live on a manual provider: nothing is started on this machine.
        c.post("/providers", json={"name": LAB, "kind": "manual"}).raise_for_status()
    with api(srv.url) as c:
        r = c.post("/auth/login", json={"username": MEMBER, "password": MEMBER_PW})
        r.raise_for_status()
        member_token = r.json()["token"]
    return UIServer(srv, MANAGER, MANAGER_PW, token, MEMBER, MEMBER_PW, member_token)


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """One server for the UI tests: alice (site manager), bob (member), provider "lab"."""
    flows.require_browser()
    s = start_ui_server(tmp_path_factory.mktemp("ui") / "data")
    try:
        yield s
    finally:
        s.server.stop()


#: The crowded deployment's users besides alice (site manager) and bob (member): 57 in all, three
#: pages of the users list.
CROWD = [f"dev-{i:02}" for i in range(55)]
#: Its workspaces (owner, name), one each for the first 30 of them: two pages of Everyone's.
CROWD_WORKSPACES = [(f"dev-{i:02}", f"ws-{i:02}") for i in range(30)]


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UIServer]:
    """A server of its own for each module that asks, with lists long enough to page (``CROWD``,
    ``CROWD_WORKSPACES``): what one module changes in them no other module sees."""
    flows.require_browser()
    srv = start_ui_server(tmp_path_factory.mktemp("crowded") / "data")
    try:
        with srv.api() as c:
            for name in CROWD:
                c.post("/users", json={"username": name, "email": f"{name}@example.com"}).raise_for_status()
            for owner, name in CROWD_WORKSPACES:
                c.post("/workspaces", params={"owner": owner}, json={"name": name, "provider": LAB}).raise_for_status()
        yield srv
    finally:
        srv.server.stop()


@pytest.fixture
def crowded_page(browser: Any, crowded: UIServer) -> Iterator[Any]:
    """A 1280 px page signed in as the crowded deployment's site manager."""
    with flows.signed_in_page(browser, crowded.url, crowded.manager, crowded.manager_password) as p:
        yield p


@pytest.fixture(scope="module")
def _signed_in_states(browser: Any, ui_server: UIServer) -> dict[str, Any]:
    """Sign in through the UI once per user; later pages start from the saved cookies."""
    states = {}
    for user, pw in ((ui_server.manager, ui_server.manager_password), (ui_server.member, ui_server.member_password)):
        with flows.signed_in_page(browser, ui_server.url, user, pw) as page:
            states[user] = page.context.storage_state()
    return states


@contextmanager
def _page_as(browser: Any, srv: UIServer, state: Any, user: str, password: str) -> Iterator[SignedIn]:
    context = browser.new_context(viewport=flows.DESKTOP, accept_downloads=True, storage_state=state)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(srv.url + "/workspaces")
        assert page.url.endswith("/workspaces"), f"{user}'s saved session no longer works"
        yield SignedIn(page, srv, user, password)
    finally:
        context.close()


@pytest.fixture
def manager_page(browser: Any, ui_server: UIServer, _signed_in_states: dict[str, Any]) -> Iterator[SignedIn]:
    """A 1280 px page signed in as the site manager (on /workspaces), plus the server."""
    with _page_as(browser, ui_server, _signed_in_states[ui_server.manager], ui_server.manager, ui_server.manager_password) as s:
        yield s


@pytest.fixture
def member_page(browser: Any, ui_server: UIServer, _signed_in_states: dict[str, Any]) -> Iterator[SignedIn]:
    """A 1280 px page signed in as the member (on /workspaces), plus the server."""
    with _page_as(browser, ui_server, _signed_in_states[ui_server.member], ui_server.member, ui_server.member_password) as s:
        yield s


@pytest.fixture
def anon_page(browser: Any, ui_server: UIServer) -> Iterator[Any]:
    context = browser.new_context(viewport=flows.DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    try:
        yield page
    finally:
        context.close()
