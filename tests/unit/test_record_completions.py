"""Completing connection-log records when the database refuses the write, on a real SQLite
database made to refuse writes (``PRAGMA query_only``, as a full disk or an outage would):
what is kept, what is not past the limit, what is written once it takes writes again, that a
record is completed once, and the one line each for what is still refused at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import SSHConnection
from hatchway.server.cluster import LOST_REPLICA_REASON
from hatchway.server.completions import Completion, RecordCompletions

ENDED = datetime(2026, 11, 1, 12, 30, 5, tzinfo=timezone.utc)


@dataclass
class Db:
    """A SQLite database whose connections refuse writes while ``read_only`` is set."""

    engine: Any
    sessions: Any
    read_only: bool = False

    async def refuse_writes(self, refuse: bool) -> None:
        self.read_only = refuse
        await self.engine.dispose()  # the pragma is set as each connection is made

    async def add(self, result: str = "open", reason: str | None = None) -> str:
        row = SSHConnection(workspace_name="dev", username="bob", result=result, reason=reason, replica_id="r" * 16)
        async with self.sessions() as db:
            db.add(row)
            await db.commit()
        return row.id

    async def row(self, row_id: str) -> SSHConnection:
        async with self.sessions() as db:
            found = await db.get(SSHConnection, row_id)
        assert found is not None
        return found


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Db]:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    made = Db(engine, sessionmaker(engine))

    @event.listens_for(engine.sync_engine, "connect")
    def _query_only(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA query_only={int(made.read_only)}")
        cur.close()

    await migrate(engine)
    try:
        yield made
    finally:
        await engine.dispose()


def completion(row_id: str, to_workspace: int = 1, reason: str | None = None) -> Completion:
    return Completion(row_id, "SSH to bob/dev by bob", ENDED, "built-in", to_workspace, 2, reason)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    assert all(r.exc_info is None for r in caplog.records)  # no tracebacks
    return [r.getMessage() for r in caplog.records]


async def until_complete(db: Db, row_id: str, timeout: float = 5.0) -> SSHConnection:
    """The record once it is no longer open (the retry's first try comes after a second)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while (row := await db.row(row_id)).result == "open":
        assert asyncio.get_running_loop().time() < deadline, f"still open after {timeout} s"
        await asyncio.sleep(0.05)
    return row


async def test_a_refused_completion_is_kept_and_written_as_it_was_once_the_database_takes_it(
    db: Db, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hatchway")
    row_id = await db.add()
    completions = RecordCompletions(db.sessions, None)
    completions.start()
    try:
        await db.refuse_writes(True)
        await completions.complete(completion(row_id, reason="the workspace's agent went away"))
        assert (await db.row(row_id)).result == "open"
        await db.refuse_writes(False)
        row = await until_complete(db, row_id)
    finally:
        await completions.close()
    assert (row.result, row.reason, row.mode, row.ended_at, row.bytes_to_workspace, row.bytes_from_workspace) == (
        "ended", "the workspace's agent went away", "built-in", ENDED, 1, 2)
    assert lines(caplog) == [
        "completing the record of SSH to bob/dev by bob: database unavailable (OperationalError); it is kept and "
        "written once the database takes it (1 waiting)",
        "completed the record of SSH to bob/dev by bob now that the database takes it: ended 2026-11-01 12:30:05 UTC, "
        "1 bytes in, 2 bytes out, ended",
    ]


async def test_past_the_limit_a_refused_completion_is_not_kept_and_the_log_says_so(
    db: Db, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "hatchway")
    kept, dropped = await db.add(), await db.add()
    completions = RecordCompletions(db.sessions, None, max_kept=1)
    completions.start()
    try:
        await db.refuse_writes(True)
        await completions.complete(completion(kept))
        await completions.complete(completion(dropped, to_workspace=7))
        await db.refuse_writes(False)
        assert (await until_complete(db, kept)).result == "closed"
    finally:
        await completions.close()
    assert (await db.row(dropped)).result == "open"
    assert lines(caplog)[1] == (
        "completing the record of SSH to bob/dev by bob: database unavailable (OperationalError); 1 completions "
        "already wait for the database (at most 1), so this one is not kept: its record stays open (ended "
        "2026-11-01 12:30:05 UTC, 7 bytes in, 2 bytes out, closed) until a server sweeps it"
    )
    assert len(lines(caplog)) == 3  # and the kept one's completion


async def test_a_record_is_completed_once_and_a_sweeps_guess_gives_way_to_the_relaying_replica(db: Db) -> None:
    done, guessed, failed = await db.add("closed"), await db.add("failed", LOST_REPLICA_REASON), await db.add("failed", "x")
    completions = RecordCompletions(db.sessions, None)
    for row_id in (done, guessed, failed):
        await completions.complete(completion(row_id, to_workspace=9))
    assert [((r := await db.row(i)).result, r.reason, r.bytes_to_workspace) for i in (done, guessed, failed)] == [
        ("closed", None, 0), ("closed", None, 9), ("failed", "x", 0),
    ]


async def test_what_is_still_refused_at_shutdown_is_named_in_one_line_each(
    db: Db, caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, late = await db.add(), await db.add(), await db.add()
    completions = RecordCompletions(db.sessions, None)
    completions.start()
    await db.refuse_writes(True)
    await completions.complete(completion(first))
    await completions.complete(completion(second, to_workspace=3))
    caplog.clear()
    await completions.close()
    await completions.complete(completion(late))  # a connection that ends after that is not kept
    assert lines(caplog) == [
        "could not complete the record of SSH to bob/dev by bob before stopping (database unavailable): it ended "
        f"2026-11-01 12:30:05 UTC, {n} bytes in, 2 bytes out, closed; the record shows it open until a server "
        "sweeps it and marks it failed"
        for n in (1, 3)
    ] + [
        "completing the record of SSH to bob/dev by bob: database unavailable (OperationalError); the server is "
        "stopping, so its record stays open (ended 2026-11-01 12:30:05 UTC, 1 bytes in, 2 bytes out, closed)"
    ]
    await db.refuse_writes(False)
    assert [(await db.row(i)).result for i in (first, second, late)] == ["open"] * 3
