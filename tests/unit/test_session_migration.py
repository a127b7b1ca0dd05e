"""Migration 0005 (a session's client and source): up from 0004 with a signed-in session kept,
and back down, on SQLite and PostgreSQL; at the head, the schema is exactly the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hatchway.db.engine import create_engine
from hatchway.db.models import Base
from tests.helpers.migrations import ON_BOTH_DATABASES, migrate

NEW = {"client", "source"}


def _columns(conn: Any) -> set[str]:
    return {c["name"] for c in inspect(conn).get_columns("api_tokens")}


@ON_BOTH_DATABASES
async def test_0005_up_and_down_keeps_sessions(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0004")
            await conn.execute(text(
                "INSERT INTO users (id, username, email, role, suspended, ssh_public_key, ssh_private_key_sealed,"
                " ssh_key_fingerprint, ssh_key_updated_at, created_at) VALUES ('u1', 'bob', 'bob@example.com',"
                " 'member', false, 'ssh-ed25519 AAAA', 'sealed', 'SHA256:x', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ))
            await conn.execute(text(
                "INSERT INTO api_tokens (id, user_id, token_hash, created_at, expires_at)"
                " VALUES ('t1', 'u1', 'h1', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            ))
            assert not (await conn.run_sync(_columns)) & NEW
            await conn.run_sync(migrate, "0005")
            assert NEW <= await conn.run_sync(_columns)
            row = (await conn.execute(text("SELECT id, token_hash, client, source FROM api_tokens"))).one()
            assert tuple(row) == ("t1", "h1", None, None)
            await conn.run_sync(migrate, "0004", True)
            assert not (await conn.run_sync(_columns)) & NEW
            assert (await conn.execute(text("SELECT token_hash FROM api_tokens"))).scalar() == "h1"
    finally:
        await engine.dispose()


@ON_BOTH_DATABASES
async def test_the_migrated_schema_is_the_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "head")
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
        assert diff == []
    finally:
        await engine.dispose()
