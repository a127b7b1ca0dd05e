"""Running Alembic migrations inside a test's connection, on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from alembic import command

from hatchway.db.engine import _alembic_config

#: Parametrize a test taking ``db_url`` over both databases (PostgreSQL tests are marked).
ON_BOTH_DATABASES = pytest.mark.parametrize(
    "db_url", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


def migrate(conn: Any, target: str, down: bool = False) -> None:
    """Upgrade (or with ``down``, downgrade) the database of ``conn`` to revision ``target``;
    for ``AsyncConnection.run_sync``."""
    cfg = _alembic_config()
    cfg.attributes["connection"] = conn
    (command.downgrade if down else command.upgrade)(cfg, target)
