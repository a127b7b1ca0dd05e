"""hatchway.db.snapshot: the copy of a live SQLite database holds what is still only in its
WAL (a file copy of hatchway.db would miss it) and is one self-contained file."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from hatchway.db.snapshot import copy_sqlite, integrity_problems, known_revisions, predates_secret_record, sqlite_facts


def test_the_copy_holds_what_is_still_in_the_wal(tmp_path: Path) -> None:
    live = sqlite3.connect(tmp_path / "live.db")
    try:
        live.execute("PRAGMA journal_mode=WAL")
        live.execute("PRAGMA wal_autocheckpoint=0")  # as between the server's checkpoints
        live.execute("CREATE TABLE alembic_version (version_num TEXT)")
        for table in ("users", "workspaces"):
            live.execute(f"CREATE TABLE {table} (id INTEGER)")
        live.execute("CREATE TABLE deployment_secret (id INTEGER, secret_check TEXT)")
        live.execute("INSERT INTO alembic_version VALUES ('0007')")
        live.executemany("INSERT INTO users VALUES (?)", [(i,) for i in range(5)])
        live.execute("INSERT INTO workspaces VALUES (1)")
        live.execute("INSERT INTO deployment_secret VALUES (1, 'cafe')")
        live.commit()
        assert (tmp_path / "live.db-wal").stat().st_size > 0

        shutil.copy(tmp_path / "live.db", tmp_path / "cp.db")  # what cp gives: the WAL's rows are not there
        assert sqlite3.connect(tmp_path / "cp.db").execute("SELECT name FROM sqlite_master").fetchall() == []

        copy_sqlite(tmp_path / "live.db", tmp_path / "copy.db")
    finally:
        live.close()
    assert not (tmp_path / "copy.db-wal").exists()
    assert sqlite3.connect(tmp_path / "copy.db").execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert integrity_problems(tmp_path / "copy.db") == []
    facts = sqlite_facts(tmp_path / "copy.db")
    assert (facts.revision, facts.users, facts.workspaces, facts.secret_check) == ("0007", 5, 1, "cafe")


def test_a_missing_database_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="^unable to open database file$"):
        copy_sqlite(tmp_path / "absent.db", tmp_path / "copy.db")
    assert not (tmp_path / "absent.db").exists()


def test_every_shipped_migration_is_known() -> None:
    shipped = {p.name[:4] for p in (Path(__file__).parents[2] / "src/hatchway/db/migrations/versions").glob("0*.py")}
    assert known_revisions() == shipped and "0007" in shipped


def test_only_known_revisions_before_0006_lack_the_secret_record() -> None:
    revisions = ("0001", "0005", "0006", "0007", None, "9999")  # None: none recorded; 9999: a newer Hatchway's
    assert [predates_secret_record(r) for r in revisions] == [True, True, False, False, False, False]
