"""A consistent copy of a live SQLite database, and the facts a backup records about a database.

Copying ``hatchway.db`` with cp while the server writes gives a torn file (and misses what is
still in ``hatchway.db-wal``). SQLite's online backup API copies the pages of one read
transaction instead: in WAL mode a reader never blocks the server's writers, so the server keeps
running and writing meanwhile, and the copy is the database as of one instant.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.script import ScriptDirectory
from sqlalchemy import text

from hatchway.db.engine import _alembic_config, create_engine

#: What a backup says about the database it holds (or, for PostgreSQL, the one it belongs to).
_REVISION = "SELECT version_num FROM alembic_version"
_COUNTS = (
    ("users", "SELECT count(*) FROM users"),
    ("workspaces", "SELECT count(*) FROM workspaces"),
)
_SECRET_CHECK = "SELECT secret_check FROM deployment_secret WHERE id = 1"
#: The schema revision that added the record of the deployment secret (hatchway.server.secret_record):
#: a database from before it has no table to read the record from.
SECRET_RECORD_REVISION = "0006"


@dataclass(frozen=True)
class DbFacts:
    revision: str | None  # the Alembic revision the schema is at
    users: int
    workspaces: int
    secret_check: str | None  # the deployment secret's check it records (hatchway.server.secret_record)


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)


def copy_sqlite(source: Path, target: Path) -> None:
    """Copy the live database ``source`` into the new file ``target`` with the online backup API.

    The copy is left in rollback-journal mode, one self-contained file (the server switches it
    back to WAL when it opens it). ``source`` is opened read-write only because a WAL reader
    needs its shared-memory file; it is never written, and never created when missing."""
    src = sqlite3.connect(f"{source.absolute().as_uri()}?mode=rw", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # one step: the whole database as of one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def integrity_problems(path: Path) -> list[str]:
    """What ``PRAGMA integrity_check`` finds wrong with the database file ``path`` (empty: none)."""
    conn = _read_only(path)
    try:
        rows = [r[0] for r in conn.execute("PRAGMA integrity_check").fetchall()]
    finally:
        conn.close()
    return [] if rows == ["ok"] else rows


def predates_secret_record(revision: str | None) -> bool:
    """Whether a database at schema ``revision`` (None: no revision recorded) is known to be older
    than SECRET_RECORD_REVISION, so that it cannot hold the deployment secret's record yet. A
    revision this Hatchway does not know is a newer one's."""
    if revision is None or revision not in known_revisions():
        return False
    script = ScriptDirectory.from_config(_alembic_config())
    return SECRET_RECORD_REVISION not in {rev.revision for rev in script.iterate_revisions(revision, "base")}


def _scalar(conn: sqlite3.Connection, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def sqlite_facts(path: Path) -> DbFacts:
    """The facts of the SQLite database file ``path`` (sqlite3.Error if it is not Hatchway's)."""
    conn = _read_only(path)
    try:
        revision = _scalar(conn, _REVISION)
        counts = {key: _scalar(conn, query) for key, query in _COUNTS}
        check = None if predates_secret_record(revision) else _scalar(conn, _SECRET_CHECK)
    finally:
        conn.close()
    return DbFacts(revision=revision, secret_check=check, **counts)


async def postgres_facts(url: str) -> DbFacts:
    """The facts of the database at ``url`` (read only; no migration is run)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            revision = (await conn.execute(text(_REVISION))).scalar()
            counts = {key: (await conn.execute(text(query))).scalar() for key, query in _COUNTS}
            check = None if predates_secret_record(revision) else (await conn.execute(text(_SECRET_CHECK))).scalar()
    finally:
        await engine.dispose()
    return DbFacts(revision=revision, secret_check=check, **counts)


def known_revisions() -> set[str]:
    """Every schema revision this version of Hatchway can migrate from."""
    return {rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}
