"""Names no account or workspace can have (here, with a NUL) on SQLite and PostgreSQL.

PostgreSQL cannot hold a NUL in text: a query comparing a column with such a name fails with an
error instead of finding no row. So a sign-in with one was a 500, every time: neither throttled
nor audited, as a failed sign-in must be; and a site manager's ``?owner=`` (creating a
workspace for another user, or opening one) was a 500 with a traceback in the log, and so were the
audit and connection-log filters, and so was a provider's name in the API's and the web UI's
addresses (Manage > Providers > Delete…) or in a new workspace. Such a name is now no account's
(no provider's), as any unknown name is, and such a filter matches nothing."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.server import api, csrf_token
from tests.helpers.world import World, build_world

pytestmark = ON_BOTH_DATABASES

WRONG = {"error": "wrong username or password", "detail": "check both and try again"}
IMPOSSIBLE = ("bo\x00b", "b\x00")


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    w = build_world(tmp_path, members=("bob",), start_agents=False, db_url=None if db_url.startswith("sqlite") else db_url)
    try:
        yield w
    finally:
        w.close()
        log = w.server.log()
        assert "Traceback" not in log, log[-4000:]


def test_a_sign_in_with_a_name_no_account_can_have_is_a_failed_sign_in_throttled_and_audited(world: World) -> None:
    for name in IMPOSSIBLE:
        with api(world.url) as c:
            replies = [c.post("/auth/login", json={"username": name, "password": "guess-Wq3z-pw"}) for _ in range(6)]
        assert [r.status_code for r in replies] == [401] * 5 + [429], [(r.status_code, r.text[:200]) for r in replies]
        assert [r.json() for r in replies[:5]] == [WRONG] * 5
    with world.api("alice") as c:
        rows = c.get("/audit", params={"action": "session.sign-in-failed", "limit": 5000}).json()
    own = [(e["actor"], e["target"], e["detail"]["reason"], e["detail"].get("name_length")) for e in reversed(rows)
           if e["detail"]["reason"] != "counted"]
    assert own[:5] == [(None, "(unknown name)", "unknown-user", 4)] * 5  # bo\x00b's, each with a row of its own


def test_a_site_manager_naming_an_owner_no_account_can_have_gets_a_404(world: World) -> None:
    with world.api("alice") as c:
        created = c.post("/workspaces", params={"owner": "bo\x00b"}, json={"name": "dev", "provider": "byo"})
        assert (created.status_code, created.json()) == (404, {
            "error": "no user named 'bo\\x00b'",
            "detail": "create the user first (hatchway users create NAME --email EMAIL), or see hatchway users list",
        })
        shown = c.get("/workspaces/dev", params={"owner": "bo\x00b"})
        assert (shown.status_code, shown.json()["error"]) == (404, 'no workspace named "dev"')
        assert c.get("/workspaces/d%00v").status_code == 404
        assert c.post("/users/bo%00b/suspend").status_code == 404
    with world.api("bob") as c:  # a member is refused before any lookup, as for any other name
        refused = c.post("/workspaces", params={"owner": "bo\x00b"}, json={"name": "dev", "provider": "byo"})
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")


def test_audit_and_connection_filters_holding_a_nul_match_nothing(world: World) -> None:
    """A NUL no stored row can hold: the filter matches nothing (on PostgreSQL it was a 500)."""
    with world.api("alice") as c:
        for path, params in (("/audit", {"actor": "ali\x00ce"}), ("/audit", {"action": "user.\x00create"}),
                             ("/audit", {"target": "b\x00ob"}), ("/connections", {"user": "b\x00ob"}),
                             ("/connections", {"workspace": "bob/d\x00ev"})):
            r = c.get(path, params=params)
            assert (path, params, r.status_code, r.json()) == (path, params, 200, [])
        assert c.get("/audit", params={"actor": "alice"}).json() != []  # the same filter without a NUL matches


def test_a_provider_name_no_provider_can_have_is_a_404_in_the_api_and_the_web_ui(world: World) -> None:
    nobody = {"error": "no provider named 'by\\x00o'", "detail": "see hatchway providers list"}
    with world.api("alice") as c:
        for r in (c.delete("/providers/by%00o"), c.patch("/providers/by%00o", json={"external_connect": False})):
            assert (r.status_code, r.json()) == (404, nobody)
        created = c.post("/workspaces", json={"name": "nul", "provider": "by\x00o"})
        assert (created.status_code, created.json()) == (404, nobody)
        assert [p["name"] for p in c.get("/providers").json()] == ["byo", "local"]
    with httpx.Client(base_url=world.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "alice", "password": "alice-password-1"}
        assert browser.post("/sign-in", data=form).status_code == 303
        page = browser.get("/manage/providers/by%00o/delete")
        assert page.status_code == 404
        assert [html.unescape(t) for t in re.findall(r"<h1>(.*?)</h1>", page.text)] == ["No provider named 'by\\x00o'"]
        posted = browser.post("/manage/providers/by%00o/delete", data={"csrf_token": csrf_token(page)})
        assert (posted.status_code, posted.headers["location"]) == (303, "/manage/providers")
        listed = browser.get("/manage/providers")
        flashes = re.findall(r'role="alert">\s*<span[^>]*></span>\s*<p>(.*?)</p>', listed.text)
        assert [html.unescape(t) for t in flashes] == ["No provider named 'by\\x00o': see hatchway providers list"]
