"""What PostgreSQL knows about the replicas that their rows cannot say: which are still connected.

A replica's heartbeat stops when it dies, but also when the database is out of its reach, and a
row cannot tell the two apart: that is why a replica forgets another only after it has itself
reached the database for FORGET_AFTER_S (hatchway.server.cluster). PostgreSQL can tell them
apart sooner. Every connection a replica opens carries its id in ``application_name``; a
connection ends when the process at its other end exits (its kernel closes the socket), but it
outlives a network outage (one longer than keepalive.DEAD_PEER_S ends it, as the loss of the
replica's host does, long after the replica's silence had it forgotten anyway), and
PostgreSQL's own outage shows as a recent start. So a replica
silent for FORGET_AFTER_S with no connection open, on a PostgreSQL up since well before its last
beat, is gone: its successor need not wait to see that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hatchway.db import keepalive

if TYPE_CHECKING:
    import asyncpg

#: ``application_name`` of a replica's connections is this and its id.
PREFIX = "hatchway replica "


def application_name(replica_id: str) -> str:
    return PREFIX + replica_id


async def connect(engine: AsyncEngine, replica_id: str, timeout: float = 10) -> asyncpg.Connection:
    """A long-lived connection of the replica's own (the event listener's, the supervision
    lock's) to ``engine``'s database, named like the replica's pooled connections, and like
    them dropped by either end when the other vanishes (hatchway.db.keepalive): so the lock of a
    supervising replica whose host is lost goes within a minute."""
    import asyncpg  # the PostgreSQL driver; only replicas on PostgreSQL load it

    dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    settings = {**keepalive.server_settings(), "application_name": application_name(replica_id)}
    conn = await asyncpg.connect(dsn, timeout=timeout, server_settings=settings)
    keepalive.watch_peer(conn)
    return conn


@dataclass(frozen=True)
class DatabaseView:
    """Which replicas have a connection open to the database, and how long PostgreSQL has been up."""

    connected: frozenset[str]
    up_s: float


async def look(db: AsyncSession) -> DatabaseView | None:
    """PostgreSQL's view, or None on SQLite (one process: there is nobody else to judge)."""
    if db.get_bind().dialect.name != "postgresql":
        return None
    names = (await db.execute(
        text("SELECT application_name FROM pg_stat_activity WHERE datname = current_database() "
             "AND application_name LIKE :pattern"),
        {"pattern": PREFIX + "%"},
    )).scalars()
    up_s = (await db.execute(text("SELECT EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())"))).scalar_one()
    return DatabaseView(frozenset(name.removeprefix(PREFIX) for name in names), float(up_s))
