"""Replicas as real ``hatchway server`` processes on one PostgreSQL: a second server started with
a running one's hand-over address; a replica started after the supervising one died; the
supervising one's host lost (no FIN or RST ever reaching PostgreSQL).

The database is watched from the test on a connection of its own while the servers start, so a
row that goes missing for a moment is seen."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from hatchway.db.keepalive import DEAD_PEER_S
from hatchway.server import presence
from hatchway.server.cluster import FORGET_AFTER_S
from hatchway.server.supervision import STEP_DOWN_AFTER_S
from tests.helpers import packetdrop
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


async def test_the_lock_of_a_supervisor_whose_host_vanished_goes_to_another_replica_within_dead_peer_s(
    fleet: Fleet, db: asyncpg.Connection, pg_url: str,
) -> None:
    """The supervising replica's host is lost: its process frozen (no beat, no goodbye) and every
    packet of its PostgreSQL connections dropped (its kernel answers no keepalive probe either).
    PostgreSQL ends its sessions, the supervision lock's among them, DEAD_PEER_S after their last
    packet, and another replica supervises at once; it used to wait for Linux's keepalive
    defaults, over two hours. Not sooner either: a supervisor only cut off from the database
    must have stopped its workspaces (STEP_DOWN_AFTER_S) before another may start them."""
    reason = packetdrop.missing_reason()
    if reason:
        pytest.fail(reason)
    url = make_url(pg_url)
    assert url.host == "127.0.0.1", "the packets are dropped on loopback: the test's PostgreSQL must be local"
    supervisor = fleet.server("supervisor")
    await asyncio.to_thread(supervisor.start)
    supervisor_id = replica_id(supervisor)
    other = fleet.server("other")
    await asyncio.to_thread(other.start)
    other_id = replica_id(other)
    assert await replicas(db) == {supervisor_id: True, other_id: False}

    async def sessions_of_supervisor() -> list[int]:
        return [r["client_port"] for r in await db.fetch(
            "SELECT client_port FROM pg_stat_activity WHERE application_name = $1",
            presence.application_name(supervisor_id),
        )]

    async def supervisor_sessions_ended() -> bool:
        return not await sessions_of_supervisor()

    async def other_supervises() -> bool:
        return await replicas(db) == {other_id: True}

    assert supervisor.proc is not None
    try:
        os.kill(supervisor.proc.pid, signal.SIGSTOP)
        ports = await sessions_of_supervisor()
        assert ports, "the supervising replica holds connections (the lock's, the listener's, its pool's)"
        with packetdrop.dropped(ports, url.port or 5432):
            lost_at = time.monotonic()
            await until(other_supervises, DEAD_PEER_S + 10, "the other replica supervises")
            took_s = time.monotonic() - lost_at
            # The others end as theirs do (their last packet may be a little later than the lock's).
            await until(supervisor_sessions_ended, DEAD_PEER_S, "PostgreSQL ended every session of the lost replica")
    finally:
        supervisor.stop(signal.SIGKILL)
    # Its last beat came up to RETRY_S before the freeze, and the rules went in after it: the
    # bounds leave room for that and for a loaded machine, and keep what matters, that no other
    # replica supervised before this one had stepped down.
    assert STEP_DOWN_AFTER_S < took_s <= DEAD_PEER_S + 10, took_s
    assert "this replica supervises server-managed workspaces" in said(other)


def errors(server: RunningServer) -> list[str]:
    """Its ERROR log lines' messages."""
    return [line.split(": ", 1)[1] for line in server.log().splitlines() if line.split(" ")[2:3] == ["ERROR"]]


async def test_a_replica_back_to_find_a_live_server_at_its_address_stops_and_exits_non_zero(
    fleet: Fleet, db: asyncpg.Connection,
) -> None:
    """The supervising replica is frozen long enough to be forgotten, and meanwhile another
    server starts with its hand-over address (which it takes, the frozen one staying silent).
    Back, the first finds that live server registered there: it says so in one line and stops,
    exiting with a failure, its supervision lock going with its connections; the other keeps
    its row and serves, and supervises. The first used to serve on unregistered, repeating
    every second that it could not register."""
    first = fleet.server("first")
    await asyncio.to_thread(first.start)
    first_id = replica_id(first)
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGSTOP)
    try:
        successor = fleet.server("successor", {"HATCHWAY_INTERNAL_URL": first.url})
        await asyncio.to_thread(successor.start)
        successor_id = replica_id(successor)
        assert await replicas(db) == {successor_id: False}
    finally:
        os.kill(first.proc.pid, signal.SIGCONT)

    async def first_exited() -> bool:
        return first.proc is not None and first.proc.poll() is not None

    await until(first_exited, 30, "the replica whose address was taken exits")
    assert first.proc.returncode == 1
    assert errors(first) == [
        f"replica {first_id} stops: the other replicas forgot it (cut off from the database, or frozen, for over 4 s) "
        f"and meanwhile another Hatchway server, replica {successor_id}, started with its hand-over address "
        f"{first.url}; give each server its own address with --internal-url (or --listen), or stop the other one, "
        "then start this one again"
    ]
    assert said(first)[-1] == "stopped"

    async def successor_supervises() -> bool:
        return await replicas(db) == {successor_id: True}

    await until(successor_supervises, 10, "the other replica supervises once the first let the lock go")
    assert [tuple(r) for r in await db.fetch("SELECT id, relay_url FROM replicas")] == [(successor_id, first.url)]
    assert replica_id(successor) == successor_id
    assert successor.proc is not None and successor.proc.poll() is None
    assert errors(successor) == []
