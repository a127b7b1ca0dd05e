"""A provider's deletion racing a workspace's creation, on SQLite and PostgreSQL.

``remove_provider`` (the API's DELETE and Manage > Providers > Delete…) counts the provider's
workspaces, then deletes it; a workspace created between the two is caught by its foreign key
when the deletion commits. That refusal read the provider's name after the failed commit had
expired it: a 500 with a traceback (the web UI's "Something went wrong") instead of the 409 it
was written to be. The other way round, a create whose provider was deleted after it was found
was told that the workspace's name was taken; and a deletion whose provider someone else
deleted first was answered and audited as if it had deleted it. Here the other side holds its transaction open in
the database itself, so the race is taken every time rather than by luck."""

from __future__ import annotations

import asyncio
import html
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.server import csrf_token, wait_for
from tests.helpers.world import World, build_world

pytestmark = ON_BOTH_DATABASES

#: bob's workspace "dev" copied as "raced" onto provider "spare", as a create would add it.
RACED_WORKSPACE = (
    "INSERT INTO workspaces (id, name, owner_id, provider_id, env, state, agent_connected, host_keys, diagnostics, "
    "created_at, desired_state, openssh, cvm) SELECT 'raced00000000000000000000000000a', 'raced', owner_id, "
    "(SELECT id FROM providers WHERE name = 'spare'), env, state, agent_connected, host_keys, diagnostics, "
    "created_at, desired_state, openssh, cvm FROM workspaces WHERE name = 'dev'"
)


class HeldTransaction:
    """Another client of the server's database, whose transaction stays open until :meth:`commit`."""

    def __init__(self, db_url: str) -> None:
        self.postgres = db_url.startswith("postgresql")
        if self.postgres:
            import asyncpg

            self.loop = asyncio.new_event_loop()
            self.conn: Any = self.loop.run_until_complete(asyncpg.connect(db_url))
        else:
            self.conn = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None, timeout=30)
            self.conn.execute("PRAGMA foreign_keys=ON")

    def execute(self, sql: str) -> Any:
        if self.postgres:
            return self.loop.run_until_complete(self.conn.fetch(sql))
        return self.conn.execute(sql).fetchall()

    def begin(self, sql: str) -> None:
        self.execute("BEGIN")
        self.execute(sql)

    def commit(self) -> None:
        self.execute("COMMIT")

    def close(self) -> None:
        if self.postgres:
            self.loop.run_until_complete(self.conn.close())
            self.loop.close()
        else:
            self.conn.close()

    def wait_until_blocked(self) -> None:
        """Until the server's statement waits on this transaction's lock. PostgreSQL shows it
        waiting; SQLite cannot, so it is given ample time to get there (its write waits up to
        the server's busy_timeout of 30 s)."""
        if self.postgres:
            waiting = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
            wait_for(lambda: self.execute(waiting)[0][0] > 0, 15, what="the server to wait on the held lock")
        else:
            time.sleep(2)


@pytest.fixture
def world(tmp_path: Path, db_url: str) -> Iterator[World]:
    w = build_world(tmp_path, members=("bob",), start_agents=False, db_url=db_url)
    try:
        with w.api("alice") as c:
            c.post("/providers", json={"name": "spare", "kind": "manual"}).raise_for_status()
        yield w
    finally:
        w.close()
        log = w.server.log()
        assert "Traceback" not in log, log[-4000:]


@pytest.fixture
def held(db_url: str) -> Iterator[HeldTransaction]:
    h = HeldTransaction(db_url)
    try:
        yield h
    finally:
        h.close()


def _during(held: HeldTransaction, sql: str, request: Callable[[], httpx.Response]) -> httpx.Response:
    """``request``, sent while ``sql`` is done and not yet committed; committed once the server waits on it."""
    held.begin(sql)
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(target=lambda: answer.setdefault("r", request()))
    sender.start()
    try:
        held.wait_until_blocked()
        assert sender.is_alive(), "the request did not wait for the held transaction"
    finally:
        held.commit()
        sender.join(60)
    return answer["r"]


def _web_alice(w: World) -> httpx.Client:
    browser = httpx.Client(base_url=w.url, follow_redirects=False, timeout=60)
    form = {"csrf_token": csrf_token(browser.get("/")), "username": "alice", "password": "alice-password-1"}
    assert browser.post("/sign-in", data=form).status_code == 303
    return browser


def _spare_state(w: World) -> tuple[list[str], list[str], list[str]]:
    """The providers, spare's workspaces and spare's audit events."""
    with w.api("alice") as c:
        providers = [p["name"] for p in c.get("/providers").json()]
        on_spare = [f"{x['owner']}/{x['name']}" for x in c.get("/workspaces", params={"all": "true"}).json()
                    if x["provider"] == "spare"]
        events = [e["action"] for e in c.get("/audit", params={"target": "spare"}).json()]
    return providers, on_spare, events


def test_a_workspace_created_between_the_count_and_the_delete_is_a_409_from_the_api(
    world: World, held: HeldTransaction
) -> None:
    with world.api("alice") as c:
        r = _during(held, RACED_WORKSPACE, lambda: c.delete("/providers/spare"))
    assert (r.status_code, r.json()) == (409, {"error": 'provider "spare" got a workspace meanwhile', "detail": "delete it first; see hatchway workspaces list --all"})
    assert _spare_state(world) == (["byo", "local", "spare"], ["bob/raced"], ["provider.create"])


def test_a_workspace_created_between_the_count_and_the_delete_is_refused_by_the_web_ui(
    world: World, held: HeldTransaction
) -> None:
    browser = _web_alice(world)
    try:
        confirm = browser.get("/manage/providers/spare/delete")
        assert confirm.status_code == 200
        r = _during(held, RACED_WORKSPACE,
                    lambda: browser.post("/manage/providers/spare/delete", data={"csrf_token": csrf_token(confirm)}))
        assert (r.status_code, r.headers.get("location")) == (303, "/manage/providers")
        flashes = re.findall(r'role="alert">\s*<span[^>]*></span>\s*<p>(.*?)</p>', browser.get("/manage/providers").text)
    finally:
        browser.close()
    assert [html.unescape(t) for t in flashes] == ['Provider "spare" got a workspace meanwhile: delete it first; see hatchway workspaces list --all']
    assert _spare_state(world) == (["byo", "local", "spare"], ["bob/raced"], ["provider.create"])


def test_a_provider_deleted_while_a_workspace_is_created_on_it_is_said_so_not_a_name_clash(
    world: World, held: HeldTransaction
) -> None:
    """The other way round: the create found the provider, and its insert then met the foreign
    key of a deletion committed meanwhile. It was told 'workspace "late" already exists'."""
    with world.api("bob") as c:
        r = _during(held, "DELETE FROM providers WHERE name = 'spare'",
                    lambda: c.post("/workspaces", json={"name": "late", "provider": "spare"}))
        assert (r.status_code, r.json()) == (404, {
            "error": 'no provider named "spare"', "detail": "it was deleted meanwhile; see hatchway providers list"})
        assert [w["name"] for w in c.get("/workspaces").json()] == ["dev"]
    with world.api("alice") as c:
        assert [e["action"] for e in c.get("/audit", params={"target": "bob/late"}).json()] == []


def test_a_provider_deleted_by_someone_else_meanwhile_is_neither_answered_nor_audited_as_this_deletion(
    world: World, held: HeldTransaction
) -> None:
    """Two deletions of one provider (two site managers, a second click): the one whose delete
    found no row any more deleted nothing. It was answered 200 and audited, the session's delete
    only warning that no row matched: two provider.delete events for one deletion."""
    with world.api("alice") as c:
        r = _during(held, "DELETE FROM providers WHERE name = 'spare'", lambda: c.delete("/providers/spare"))
    assert (r.status_code, r.json()) == (404, {
        "error": 'no provider named "spare"', "detail": "it was deleted meanwhile; see hatchway providers list"})
    assert _spare_state(world) == (["byo", "local"], [], ["provider.create"])
