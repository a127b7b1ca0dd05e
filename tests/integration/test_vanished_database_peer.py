"""Either end of a replica's PostgreSQL connection drops the other once it vanished without a word
(hatchway.db.keepalive): the settings on both kinds of connection (the engine's pool, and a
replica's own long-lived ones), and a pooled connection whose packets are dropped, as when a
host loses power or its network, ended on both sides within DEAD_PEER_S, where Linux's
defaults left PostgreSQL holding it for over two hours and the replica waiting on its query
for a quarter of one."""

from __future__ import annotations

import asyncio
import socket
import time

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from hatchway.db import keepalive
from hatchway.db.engine import create_engine
from hatchway.server import presence
from tests.helpers import packetdrop
from tests.helpers.polling import until

pytestmark = pytest.mark.postgres

SETTINGS = ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count", "tcp_user_timeout")
#: What PostgreSQL shows for them: seconds, and milliseconds for the user timeout.
SHOWN = {
    "tcp_keepalives_idle": str(keepalive.IDLE_S),
    "tcp_keepalives_interval": str(keepalive.INTERVAL_S),
    "tcp_keepalives_count": str(keepalive.COUNT),
    "tcp_user_timeout": str(keepalive.DEAD_PEER_S * 1000),
}
#: What the replica's socket holds.
SOCKET = {
    (socket.SOL_SOCKET, socket.SO_KEEPALIVE): 1,
    (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE): keepalive.IDLE_S,
    (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL): keepalive.INTERVAL_S,
    (socket.IPPROTO_TCP, socket.TCP_KEEPCNT): keepalive.COUNT,
    (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT): keepalive.DEAD_PEER_S * 1000,
}


async def shown(conn: asyncpg.Connection) -> dict[str, str]:
    return {name: await conn.fetchval(f"SHOW {name}") for name in SETTINGS}


def socket_options(conn: asyncpg.Connection) -> dict[tuple[int, int], int]:
    sock = conn._transport.get_extra_info("socket")
    return {option: sock.getsockopt(*option) for option in SOCKET}


async def test_pooled_and_own_connections_of_a_replica_drop_a_silent_peer_on_both_ends(pg_url: str) -> None:
    engine = create_engine(pg_url, application_name=presence.application_name("0123456789abcdef"))
    own = await presence.connect(engine, "0123456789abcdef")
    try:
        async with engine.connect() as pooled:
            raw = await pooled.get_raw_connection()
            driver = raw.driver_connection
            assert await shown(driver) == SHOWN
            assert socket_options(driver) == SOCKET
            assert await driver.fetchval("SHOW application_name") == "hatchway replica 0123456789abcdef"
        assert await shown(own) == SHOWN
        assert socket_options(own) == SOCKET
        assert await own.fetchval("SHOW application_name") == "hatchway replica 0123456789abcdef"
    finally:
        await own.close()
        await engine.dispose()


async def test_a_pooled_connection_whose_peer_vanished_ends_on_both_sides_within_dead_peer_s(pg_url: str) -> None:
    reason = packetdrop.missing_reason()
    if reason:
        pytest.fail(reason)
    url = make_url(pg_url)
    assert url.host == "127.0.0.1", "the packets are dropped on loopback: the test's PostgreSQL must be local"
    engine = create_engine(pg_url)
    watcher = await asyncpg.connect(pg_url)
    try:
        async with engine.connect() as conn:
            port, pid = (await conn.execute(text("SELECT inet_client_port(), pg_backend_pid()"))).one()

            async def backend_ended() -> bool:
                return not await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)

            with packetdrop.dropped([port], url.port or 5432):
                lost_at = time.monotonic()
                with pytest.raises(DBAPIError, match="connection was closed in the middle of operation"):
                    await asyncio.wait_for(conn.execute(text("SELECT 1")), keepalive.DEAD_PEER_S + 30)
                noticed_s = time.monotonic() - lost_at
                await until(backend_ended, keepalive.DEAD_PEER_S + 10 - (time.monotonic() - lost_at),
                            "PostgreSQL ended the backend of the vanished client")
                ended_s = time.monotonic() - lost_at
            assert keepalive.DEAD_PEER_S - 5 <= noticed_s <= keepalive.DEAD_PEER_S + 10, noticed_s
            assert keepalive.DEAD_PEER_S - 5 <= ended_s <= keepalive.DEAD_PEER_S + 10, ended_s
    finally:
        await watcher.close()
        await engine.dispose()
