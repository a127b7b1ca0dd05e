"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import postgres


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A PostgreSQL server for the whole session (skipped, saying why, when not root)."""
    reason = postgres.can_run()
    if reason:
        pytest.skip(reason)
    external = os.environ.get("HATCHWAY_TEST_PG_URL")
    if external:
        yield external
        return
    pg = postgres.TempPostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(pg_cluster: object) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    if isinstance(pg_cluster, str):
        import asyncio

        import asyncpg

        name = "t_" + uuid.uuid4().hex[:12]

        async def create() -> None:
            conn = await asyncpg.connect(pg_cluster)
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()

        asyncio.run(create())
        return pg_cluster.rsplit("/", 1)[0] + "/" + name
    return pg_cluster.new_database()  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")
