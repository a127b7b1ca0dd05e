"""Two site managers changing one user's standing at the very same instant (PostgreSQL).

Each request read the user, decided, and wrote. Two suspensions of one user at once both wrote
and both recorded ``user.suspend``; two site managers demoting, or suspending, each other at
once both succeeded and left the deployment with no active site manager, which nobody could undo
from the API or the web UI. Here the users' rows are held locked while both requests arrive, so
that both have read before either can write: the race, every time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.helpers.polling import until
from tests.helpers.world import World, build_world

pytestmark = pytest.mark.postgres

NO_MANAGER_LEFT = {
    "error": "that would leave no active site manager",
    "detail": "another site manager's change came first; see hatchway users list",
}


@pytest.fixture
def world(tmp_path: Path, pg_url: str) -> Iterator[World]:
    w = build_world(tmp_path, members=("bob", "carol"), start_agents=False, db_url=pg_url)
    try:
        with w.api("alice") as c:
            c.put("/users/carol/role", json={"role": "site-manager"}).raise_for_status()
        yield w
    finally:
        w.close()
        log = w.server.log()
        assert "Traceback" not in log, log[-4000:]


@asynccontextmanager
async def rows_held(pg_url: str, *usernames: str) -> AsyncIterator[None]:
    """Hold these users' rows locked (as a long write would) until the block ends."""
    conn = await asyncpg.connect(pg_url)
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM users WHERE username = ANY($1::text[]) FOR NO KEY UPDATE", list(usernames))
            yield
    finally:
        await conn.close()


async def both_at_once(pg_url: str, held: tuple[str, ...], *calls: tuple[World, str, str, str, dict | None]) -> list[httpx.Response]:
    """Send ``calls`` (who, method, path, json) while ``held`` rows are locked, and let them go
    only once every one of them waits on a lock in PostgreSQL."""

    def send(w: World, who: str, method: str, path: str, body: dict | None) -> httpx.Response:
        with w.api(who) as c:
            return c.request(method, path, json=body)

    # Its own connection, outside any transaction: PostgreSQL shows a transaction one snapshot
    # of pg_stat_activity, taken at its first look.
    watcher = await asyncpg.connect(pg_url)
    try:
        async def all_waiting() -> bool:
            n = await watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return n == len(calls)

        async with rows_held(pg_url, *held):
            sent = [asyncio.create_task(asyncio.to_thread(send, *call)) for call in calls]
            await until(all_waiting, 30, f"{len(calls)} requests waiting on a lock")
    finally:
        await watcher.close()
    return list(await asyncio.gather(*sent))


def still_manager(w: World) -> str:
    """Whichever of alice and carol can still act as a site manager (the other may not)."""
    for who in ("alice", "carol"):
        with w.api(who) as c:
            if c.get("/users").status_code == 200:
                return who
    raise AssertionError("neither alice nor carol is an active site manager any more")


def audit_rows(w: World, action: str) -> list[tuple[str, str]]:
    with w.api(still_manager(w)) as c:
        return [(e["actor"], e["target"]) for e in c.get("/audit", params={"action": action}).json()]


def active_managers(w: World) -> list[str]:
    with w.api(still_manager(w)) as c:
        return sorted(u["username"] for u in c.get("/users").json() if u["role"] == "site-manager" and not u["suspended"])


async def test_two_suspensions_of_one_user_at_once_record_one(world: World, pg_url: str) -> None:
    replies = await both_at_once(pg_url, ("bob",), (world, "alice", "POST", "/users/bob/suspend", None),
                                 (world, "carol", "POST", "/users/bob/suspend", None))
    assert [(r.status_code, r.json()["suspended"]) for r in replies] == [(200, True), (200, True)]
    assert len(audit_rows(world, "user.suspend")) == 1, audit_rows(world, "user.suspend")


async def test_two_site_managers_demoting_each_other_at_once_leave_one(world: World, pg_url: str) -> None:
    replies = await both_at_once(pg_url, ("alice", "carol"),
                                 (world, "alice", "PUT", "/users/carol/role", {"role": "member"}),
                                 (world, "carol", "PUT", "/users/alice/role", {"role": "member"}))
    codes = sorted(r.status_code for r in replies)
    assert codes == [200, 409], [(r.status_code, r.text) for r in replies]
    refused = next(r for r in replies if r.status_code == 409)
    assert refused.json() == NO_MANAGER_LEFT
    assert len(active_managers(world)) == 1
    assert len([a for a in audit_rows(world, "user.set-role") if a[1] in ("alice", "carol")]) == 2  # carol's promotion and one demotion


async def test_two_site_managers_suspending_each_other_at_once_leave_one(world: World, pg_url: str) -> None:
    replies = await both_at_once(pg_url, ("alice", "carol"),
                                 (world, "alice", "POST", "/users/carol/suspend", None),
                                 (world, "carol", "POST", "/users/alice/suspend", None))
    assert sorted(r.status_code for r in replies) == [200, 409], [(r.status_code, r.text) for r in replies]
    assert next(r for r in replies if r.status_code == 409).json() == NO_MANAGER_LEFT
    assert len(active_managers(world)) == 1
    assert len(audit_rows(world, "user.suspend")) == 1
