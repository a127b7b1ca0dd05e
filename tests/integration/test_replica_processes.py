"""Replicas as real ``hatchway server`` processes on one PostgreSQL: a second server started with
a running one's hand-over address; a replica started after the supervising one died.

The database is watched from the test on a connection of its own while the servers start, so a
row that goes missing for a moment is seen."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from hatchway.server.cluster import FORGET_AFTER_S
from tests.helpers.polling import until
from tests.helpers.server import RunningServer

pytestmark = pytest.mark.postgres


def said(server: RunningServer) -> list[str]:
    """What its log lines say, without the time, level and logger."""
    return [line.split(": ", 1)[1] for line in server.log().splitlines() if ": " in line]


def replica_id(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/api/v1/deployment", timeout=10).json()["replica"]


class Fleet:
    """Servers on one database, each with the first one's deployment secret."""

    def __init__(self, tmp_path: Path, db_url: str) -> None:
        self.tmp_path = tmp_path
        self.db_url = db_url
        self.servers: list[RunningServer] = []

    def server(self, name: str, env: dict[str, str] | None = None) -> RunningServer:
        server = RunningServer(self.tmp_path / name, db_url=self.db_url, extra_env=env)
        if self.servers:
            server.data_dir.mkdir(mode=0o700)
            shutil.copy2(self.servers[0].data_dir / "deployment.secret", server.data_dir / "deployment.secret")
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            if server.proc is not None:
                server.stop()


@pytest.fixture
def fleet(pg_url: str, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path, pg_url)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()


async def registered(db: asyncpg.Connection) -> list[str]:
    return [r["id"] for r in await db.fetch("SELECT id FROM replicas ORDER BY id")]


async def test_a_second_server_with_a_running_ones_hand_over_address_is_refused_and_the_running_one_keeps_its_row(
    fleet: Fleet, db: asyncpg.Connection,
) -> None:
    running = fleet.server("running")
    await asyncio.to_thread(running.start)
    running_id = replica_id(running)
    second = fleet.server("second", {"HATCHWAY_INTERNAL_URL": running.url})
    seen: list[list[str]] = []

    async def watch() -> None:
        while True:
            seen.append(await registered(db))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        with pytest.raises(RuntimeError, match="server exited with"):
            await asyncio.to_thread(second.start)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert (
        f"cannot start: another Hatchway server, replica {running_id}, is running with this server's hand-over "
        f"address {running.url}: stop it before starting this one, or give each server its own address with "
        "--internal-url (or --listen)"
    ) in said(second)
    assert seen and all(ids == [running_id] for ids in seen), [ids for ids in seen if ids != [running_id]]
    assert await registered(db) == [running_id]
    assert "had been forgotten by the others" not in running.log()


async def replicas(db: asyncpg.Connection) -> dict[str, bool]:
    """Each registered replica: whether it supervises."""
    return {r["id"]: r["supervises"] for r in await db.fetch("SELECT id, supervises FROM replicas")}


async def test_a_new_replica_supervises_as_it_starts_when_postgresql_shows_the_supervisor_is_gone(
    fleet: Fleet, db: asyncpg.Connection,
) -> None:
    """The supervising replica was killed and has been silent for FORGET_AFTER_S: PostgreSQL
    holds no connection of it and has been up all along, so it is dead, and a replica started
    now supervises before it reports ready (it used to wait FORGET_AFTER_S more, answering
    workspace commands with "no replica supervises"). A replica frozen as long beside it (its
    connections open: it may be alive, cut off by a network outage) is not forgotten."""
    supervisor = fleet.server("supervisor")
    await asyncio.to_thread(supervisor.start)
    supervisor_id = replica_id(supervisor)
    frozen = fleet.server("frozen")
    await asyncio.to_thread(frozen.start)
    frozen_id = replica_id(frozen)
    assert await replicas(db) == {supervisor_id: True, frozen_id: False}
    assert frozen.proc is not None
    os.kill(frozen.proc.pid, signal.SIGSTOP)
    try:
        supervisor.stop(signal.SIGKILL)

        async def both_silent() -> bool:
            return await db.fetchval(
                "SELECT count(*) FROM replicas WHERE heartbeat_at < now() - make_interval(secs => $1)", FORGET_AFTER_S + 0.5,
            ) == 2

        await until(both_silent, FORGET_AFTER_S + 5, "both replicas silent for FORGET_AFTER_S")
        newcomer = fleet.server("newcomer")
        await asyncio.to_thread(newcomer.start)
        newcomer_id = replica_id(newcomer)
        assert await replicas(db) == {newcomer_id: True, frozen_id: False}
        said_by_newcomer = said(newcomer)
        assert said_by_newcomer.index("this replica supervises server-managed workspaces") < next(
            i for i, line in enumerate(said_by_newcomer) if line.startswith("Hatchway ") and " ready at " in line
        ), said_by_newcomer
    finally:
        frozen.stop(signal.SIGKILL)
