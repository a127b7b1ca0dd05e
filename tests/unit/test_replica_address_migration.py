"""Migration 0007 (one registration per hand-over address), on SQLite and PostgreSQL: up from 0006
it keeps, of the replicas registered at one address (two servers started at once could both
register there before), the one that beat last, and lets go of what the others claimed as it
does a stopped replica's; from then on a second registration at an address is refused by the
database; and back down it goes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from hatchway.db.engine import create_engine
from hatchway.server.cluster import LOST_REPLICA_REASON
from tests.helpers.migrations import ON_BOTH_DATABASES, migrate

SHARED = "http://127.0.0.1:7080"


async def _register(conn: Any, replica_id: str, address: str, second: int) -> None:
    beat = datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)
    await conn.execute(text(
        "INSERT INTO replicas (id, relay_url, secret_check, supervises, started_at, heartbeat_at)"
        " VALUES (:id, :address, :check, false, :beat, :beat)"
    ), {"id": replica_id, "address": address, "check": "a" * 64, "beat": beat})


async def _claim(conn: Any, replica_id: str) -> None:
    """A workspace's agent connected through ``replica_id``, and an SSH connection open on it."""
    await conn.execute(text(
        "INSERT INTO workspaces (id, name, owner_id, provider_id, env, state, agent_connected, host_keys, diagnostics,"
        " created_at, agent_replica_id) VALUES (:id, :id, 'u1', 'p1', '{}', 'running', true, '[]', '[]',"
        " CURRENT_TIMESTAMP, :replica)"
    ), {"id": "w-" + replica_id, "replica": replica_id})
    await conn.execute(text(
        "INSERT INTO ssh_connections (id, workspace_name, started_at, bytes_to_workspace, bytes_from_workspace, result,"
        " replica_id) VALUES (:id, 'dev', CURRENT_TIMESTAMP, 0, 0, 'open', :replica)"
    ), {"id": "c-" + replica_id, "replica": replica_id})


async def _claims(conn: Any) -> dict[str, tuple[Any, ...]]:
    """Each claim's holder: (agent connected, through which replica, connection result, reason)."""
    rows = await conn.execute(text(
        "SELECT w.id, w.agent_connected, w.agent_replica_id, c.result, c.reason, c.ended_at IS NOT NULL"
        " FROM workspaces w JOIN ssh_connections c ON c.id = 'c-' || substr(w.id, 3) ORDER BY w.id"
    ))
    return {r[0][2:]: (bool(r[1]), r[2], r[3], r[4], bool(r[5])) for r in rows}


async def _registered(conn: Any) -> list[tuple[str, str]]:
    return [tuple(r) for r in await conn.execute(text("SELECT id, relay_url FROM replicas ORDER BY id"))]


@ON_BOTH_DATABASES
async def test_0007_keeps_the_replica_that_beat_last_at_each_address_and_then_refuses_a_second_one(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0006")
            await conn.execute(text(
                "INSERT INTO users (id, username, email, role, suspended, ssh_public_key, ssh_private_key_sealed,"
                " ssh_key_fingerprint, ssh_key_updated_at, created_at) VALUES ('u1', 'bob', 'bob@example.com',"
                " 'member', false, 'ssh-ed25519 AAAA', 'sealed', 'SHA256:x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ))
            await conn.execute(text(
                "INSERT INTO providers (id, name, kind, external_connect, config, created_at)"
                " VALUES ('p1', 'manual', 'manual', true, '{}', CURRENT_TIMESTAMP)"
            ))
            for replica_id, address, second in (("r1", SHARED, 9), ("r2", SHARED, 10), ("r3", "http://127.0.0.1:7081", 8)):
                await _register(conn, replica_id, address, second)
                await _claim(conn, replica_id)
            await conn.run_sync(migrate, "0007")
            assert await _registered(conn) == [("r2", SHARED), ("r3", "http://127.0.0.1:7081")]
            assert await _claims(conn) == {
                "r1": (False, None, "failed", LOST_REPLICA_REASON, True),
                "r2": (True, "r2", "open", None, False),
                "r3": (True, "r3", "open", None, False),
            }
        with pytest.raises(IntegrityError):
            async with engine.begin() as conn:
                await _register(conn, "r4", SHARED, 11)
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0006", True)
            await _register(conn, "r4", SHARED, 11)
            assert await _registered(conn) == [("r2", SHARED), ("r3", "http://127.0.0.1:7081"), ("r4", SHARED)]
    finally:
        await engine.dispose()
