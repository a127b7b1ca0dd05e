"""Migration 0006 (the deployment secret's record), on SQLite and PostgreSQL: up from 0005 it
records the secret check of the replica that beat last (earlier versions kept the live replicas'
secrets equal), nothing when no replica is registered, and back down it goes; only one record
can ever be made."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import inspect, text
from sqlalchemy.exc import IntegrityError

from hatchway.db.engine import create_engine
from tests.helpers.migrations import ON_BOTH_DATABASES, migrate


def _has_record_table(conn: Any) -> bool:
    return inspect(conn).has_table("deployment_secret")


async def _records(conn: Any) -> list[tuple[int, str]]:
    return [tuple(r) for r in (await conn.execute(text("SELECT id, secret_check FROM deployment_secret")))]


@ON_BOTH_DATABASES
async def test_0006_records_the_secret_check_of_the_replica_that_beat_last(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0006")
            assert await _records(conn) == []  # a database no replica ran on: the first to start records its own
            await conn.run_sync(migrate, "0005", True)
            assert not await conn.run_sync(_has_record_table)
            for rid, check, second in (("r1", "a" * 64, 9), ("r2", "b" * 64, 10), ("r3", "c" * 64, 8)):
                beat = datetime(2026, 1, 1, 0, 0, second, tzinfo=UTC)
                await conn.execute(text(
                    "INSERT INTO replicas (id, relay_url, secret_check, supervises, started_at, heartbeat_at)"
                    " VALUES (:id, 'http://127.0.0.1:7080', :check, false, :beat, :beat)"
                ), {"id": rid, "check": check, "beat": beat})
            await conn.run_sync(migrate, "0006")
            assert await _records(conn) == [(1, "b" * 64)]
        with pytest.raises(IntegrityError):  # one row: id 1 is taken, and no other id is allowed
            async with engine.begin() as conn:
                await conn.execute(text("INSERT INTO deployment_secret (id, secret_check) VALUES (2, :c)"), {"c": "d" * 64})
    finally:
        await engine.dispose()
