"""Migration 0003 (docker provider columns): up from 0002 with existing rows, and back down, on
SQLite and PostgreSQL; the result matches the models."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from hatchway.db.engine import create_engine
from hatchway.db.models import Base
from tests.helpers.migrations import ON_BOTH_DATABASES, migrate

NEW = {"workspaces": {"image", "cvm"}, "providers": {"docker_host", "docker_network"}}


def _columns(conn: Any) -> dict[str, set[str]]:
    insp = inspect(conn)
    return {t: {c["name"] for c in insp.get_columns(t)} for t in NEW}


@ON_BOTH_DATABASES
async def test_0003_up_and_down_keeps_rows(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, "0002")
            await conn.execute(text(
                "INSERT INTO providers (id, name, kind, external_connect, config, created_at) "
                "VALUES ('p1', 'local', 'local', true, '{}', CURRENT_TIMESTAMP)"
            ))
            cols = await conn.run_sync(_columns)
            assert not (cols["workspaces"] & NEW["workspaces"]) and not (cols["providers"] & NEW["providers"])
            await conn.run_sync(migrate, "0003")
            cols = await conn.run_sync(_columns)
            assert NEW["workspaces"] <= cols["workspaces"] and NEW["providers"] <= cols["providers"]
            row = (await conn.execute(text("SELECT name, docker_host, docker_network FROM providers"))).one()
            assert tuple(row) == ("local", None, None)
            # The models say what 0003 made: nothing of these tables differs.
            diff = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
            ours = [d for d in diff if any(name in repr(d) for cols_ in NEW.values() for name in cols_)]
            assert ours == []
            await conn.run_sync(migrate, "0002", True)
            cols = await conn.run_sync(_columns)
            assert not (cols["workspaces"] & NEW["workspaces"]) and not (cols["providers"] & NEW["providers"])
            assert (await conn.execute(text("SELECT count(*) FROM providers"))).scalar() == 1
    finally:
        await engine.dispose()
