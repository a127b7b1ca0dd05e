"""Retention of the connection log and the audit log (``--keep-connections``, ``--keep-audit``).

A real server on SQLite and on PostgreSQL, started on a database holding old and recent records,
prunes soon after it starts exactly the records older than its limits: never a connection still
open, however old, nor one that ended lately after starting long ago; it says so in one audit
event per log and one log line each, with the counts. The pruning itself deletes in batches, each
its own transaction, once (a second prune finds nothing and says nothing), along the index on each
log's time column; replicas pruning one PostgreSQL database at once share the rows. Bad limits are
refused before the server touches anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import AuditEvent, SSHConnection, utcnow
from hatchway.server.cluster import LOST_REPLICA_REASON
from hatchway.server.pruning import AUDIT, BATCH_ROWS, CONNECTIONS, PRUNE_ACTION, batch_delete, prune
from tests.helpers.cli import Cli
from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.polling import until
from tests.helpers.server import HATCHWAY, RunningServer, first_user, free_port

DAY = timedelta(days=1)


def _connection(row_id: str, started: timedelta, result: str, ended: timedelta | None, now: datetime,
                **more: Any) -> SSHConnection:
    """A connection record that started ``started`` ago and ended ``ended`` ago (None: no end)."""
    return SSHConnection(id=row_id, user_id="u-bob", username="bob", workspace_name="dev", result=result,
                         started_at=now - started, ended_at=None if ended is None else now - ended, **more)


def _event(action: str, target: str, age: timedelta, now: datetime) -> AuditEvent:
    return AuditEvent(at=now - age, actor="alice", action=action, target=target, detail={})


async def _seed(db_url: str, rows: Iterable[Any]) -> None:
    """Bring the database to the newest schema and add ``rows`` to it, as a server would have."""
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        async with sessionmaker(engine)() as db:
            db.add_all(list(rows))
            await db.commit()
    finally:
        await engine.dispose()


async def _query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


def _connections_seeded(now: datetime) -> list[SSHConnection]:
    return [
        _connection("old-closed", 200 * DAY, "closed", 200 * DAY - timedelta(hours=1), now),
        _connection("old-refused", 200 * DAY, "refused", None, now, reason="session expired"),
        _connection("old-failed", 120 * DAY, "failed", 100 * DAY, now, reason=LOST_REPLICA_REASON),
        # Open for 200 days, relayed by a replica this server does not sweep: live, whatever its age.
        _connection("old-open", 200 * DAY, "open", None, now, replica_id="elsewhere"),
        _connection("long-ended-lately", 200 * DAY, "closed", 10 * DAY, now),
        _connection("recent-refused", 5 * DAY, "refused", None, now, reason="session expired"),
        _connection("recent-closed", 3 * DAY, "closed", 3 * DAY - timedelta(minutes=5), now),
    ]


KEPT_CONNECTIONS = ["long-ended-lately", "old-open", "recent-closed", "recent-refused"]


def _events_seeded(now: datetime) -> list[AuditEvent]:
    return [
        _event("user.create", "bob", 400 * DAY, now),
        _event("provider.edit", "gpu", 366 * DAY, now),
        _event("user.suspend", "bob", 364 * DAY, now),
    ]


def _prune_lines(log: str) -> list[str]:
    return re.findall(r"pruned the \w+ log: .*", log)


@ON_BOTH_DATABASES
async def test_a_server_prunes_exactly_the_records_older_than_its_limits(db_url: str, tmp_path: Path) -> None:
    now = utcnow()
    await _seed(db_url, [*_connections_seeded(now), *_events_seeded(now)])
    srv = RunningServer(tmp_path / "data", db_url=db_url,
                        extra_env={"HATCHWAY_KEEP_CONNECTIONS": "90", "HATCHWAY_KEEP_AUDIT": "365"})
    srv.start()
    try:
        started = utcnow()
        cli = Cli(tmp_path / "alice")
        first_user(srv.url, "alice", "alice-password")
        cli.login(srv.url, "alice", "alice-password")

        async def both_pruned() -> bool:
            return len(_prune_lines(srv.log())) == 2

        await until(both_pruned, 30, "the server to prune both logs")
        assert await _query(db_url, "SELECT id FROM ssh_connections ORDER BY id") == [(i,) for i in KEPT_CONNECTIONS]
        assert await _query(db_url, "SELECT result FROM ssh_connections WHERE id = 'old-open'") == [("open",)]
        shown = cli.ok("audit", "connections", "--json").json()
        assert sorted(c["id"] for c in shown) == KEPT_CONNECTIONS

        events = [(e["actor"], e["action"], e["target"]) for e in cli.ok("audit", "list", "--json").json()]
        assert sorted(events, key=str) == sorted([
            ("alice", "user.suspend", "bob"),  # 364 days old: kept; those of 400 and 366 days went
            # this server's own: the first user made, signed in by the API and then by the CLI
            ("alice", "user.create", "alice"), ("alice", "session.sign-in", "alice"), ("alice", "session.sign-in", "alice"),
            (None, PRUNE_ACTION, "connections"), (None, PRUNE_ACTION, "audit"),
        ], key=str)
        pruned = cli.ok("audit", "list", "--action", PRUNE_ACTION, "--json").json()
        assert [(e["actor"], e["target"], e["detail"]["deleted"], e["detail"]["keep_days"]) for e in pruned] == [
            (None, "audit", 2, 365), (None, "connections", 3, 90)
        ]
        for event, days in zip(pruned, (365, 90), strict=True):
            before = datetime.fromisoformat(event["detail"]["before"])
            assert started - timedelta(days=days, seconds=5) <= before <= utcnow() - timedelta(days=days)
            assert started - timedelta(seconds=5) <= datetime.fromisoformat(event["at"]) <= utcnow()
        table = cli.ok("audit", "list", "--action", PRUNE_ACTION).out
        assert f"deleted=3 before={pruned[1]['detail']['before']} keep_days=90" in table
        audit_before, connections_before = (datetime.fromisoformat(e["detail"]["before"]) for e in pruned)
        assert _prune_lines(srv.log()) == [
            "pruned the connections log: 3 SSH connection records of connections that ended before "
            f"{connections_before:%Y-%m-%d %H:%M:%S} UTC (--keep-connections 90)",
            f"pruned the audit log: 2 audit events recorded before {audit_before:%Y-%m-%d %H:%M:%S} UTC (--keep-audit 365)",
        ]
    finally:
        srv.stop()


@ON_BOTH_DATABASES
async def test_prune_goes_in_batches_once_and_keeps_what_is_open(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    now = utcnow()
    old = [_connection(f"old-{i:05d}", 40 * DAY, "refused", None, now) for i in range(2 * BATCH_ROWS + 7)]
    live = [_connection(f"open-{i}", 40 * DAY, "open", None, now, replica_id="elsewhere") for i in range(3)]
    await _seed(db_url, [*old, *live])
    engine = create_engine(db_url)
    try:
        sessions = sessionmaker(engine)
        with caplog.at_level(logging.INFO, logger="hatchway.server.pruning"):
            first = await prune(sessions, CONNECTIONS, 30, utcnow())
            again = await prune(sessions, CONNECTIONS, 30, utcnow())
        assert (first.deleted, again.deleted) == (2 * BATCH_ROWS + 7, 0)
        assert [r.getMessage() for r in caplog.records] == [
            f"pruned the connections log: {2 * BATCH_ROWS + 7} SSH connection records of connections that ended "
            f"before {first.before:%Y-%m-%d %H:%M:%S} UTC (--keep-connections 30)"
        ]
        async with sessions() as db:
            remaining = (await db.execute(select(SSHConnection.id).order_by(SSHConnection.id))).scalars().all()
            events = (await db.execute(select(AuditEvent))).scalars().all()
        assert remaining == ["open-0", "open-1", "open-2"]
        assert [(e.action, e.target, e.detail) for e in events] == [
            (PRUNE_ACTION, "connections", {"deleted": 2 * BATCH_ROWS + 7, "before": first.before.isoformat(), "keep_days": 30})
        ]
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_replicas_pruning_at_once_share_the_rows(pg_url: str) -> None:
    now = utcnow()
    n = 4 * BATCH_ROWS + 3
    await _seed(pg_url, [_event("user.create", f"u{i}", 10 * DAY, now) for i in range(n)])
    engines = [create_engine(pg_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(prune(sessionmaker(e), AUDIT, 7, utcnow()) for e in engines))
        assert sum(r.deleted for r in results) == n
        async with sessionmaker(engines[0])() as db:
            left = (await db.execute(select(AuditEvent.action, AuditEvent.detail))).all()
        assert all(action == PRUNE_ACTION for action, _ in left)
        assert sorted(d["deleted"] for _, d in left) == sorted(r.deleted for r in results if r.deleted)
    finally:
        for e in engines:
            await e.dispose()


@ON_BOTH_DATABASES
async def test_each_batch_is_found_through_the_index_on_its_time_column(db_url: str) -> None:
    await _seed(db_url, [])
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            for lg, index in ((CONNECTIONS, "ix_ssh_connections_started_at"), (AUDIT, "ix_audit_events_at")):
                sql = str(batch_delete(lg, utcnow()).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
                if conn.dialect.name == "sqlite":
                    plan = " ".join(str(r[-1]) for r in await conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
                else:  # on a table this small the planner would rather scan: ask whether it can use the index
                    await conn.execute(text("SET enable_seqscan = off"))
                    plan = " ".join(r[0] for r in await conn.execute(text("EXPLAIN " + sql)))
                assert index in plan, plan
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--keep-connections", "0"], {}, "invalid --keep-connections (env HATCHWAY_KEEP_CONNECTIONS) '0': records must "
     "be kept at least 1 day; leave it unset to keep every record"),
    (["--keep-audit", "-7"], {}, "invalid --keep-audit (env HATCHWAY_KEEP_AUDIT) '-7': records must be kept at least "
     "1 day; leave it unset to keep every record"),
    ([], {"HATCHWAY_KEEP_AUDIT": "1000000"}, "invalid --keep-audit (env HATCHWAY_KEEP_AUDIT) '1000000': at most 36500 "
     "days (100 years); leave it unset to keep every record"),
    ([], {"HATCHWAY_KEEP_CONNECTIONS": "90 days"}, "invalid --keep-connections (env HATCHWAY_KEEP_CONNECTIONS) "
     "'90 days': expected a whole number of days, e.g. 90; leave it unset to keep every record"),
])
def test_bad_limits_are_refused_before_anything_is_touched(tmp_path: Path, args: list[str], env: dict[str, str],
                                                           message: str) -> None:
    data = tmp_path / "data"
    p = subprocess.run([HATCHWAY, "server", "--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data), *args],
                       capture_output=True, text=True, timeout=30, env={**_without_limits(), **env})
    assert (p.returncode, p.stdout, p.stderr.splitlines()[-1]) == (2, "", f"Error: {message}")
    assert not data.exists()


def _without_limits() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("HATCHWAY_KEEP_CONNECTIONS", "HATCHWAY_KEEP_AUDIT")}
