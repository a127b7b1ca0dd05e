"""Pruning the connection log and the audit log down to what the operator keeps.

A task owned by the app's lifespan (:meth:`LogPruner.start`, :meth:`LogPruner.close`) prunes
FIRST_PRUNE_AFTER_S after start, then every PRUNE_EVERY_S, deleting BATCH_ROWS rows at a time,
oldest first, each batch its own short transaction: SQLite has one writer, and a prune of a
year's backlog taken in one transaction would hold up every request that writes meanwhile.
Each batch picks its rows through the index on the log's time column
(``ix_ssh_connections_started_at``, ``ix_audit_events_at``, there since the first schema), so a
batch costs the rows it deletes and the few older ones still kept (open connections, long ones
that ended lately), not a scan of the table.

A connection still open is never deleted, whatever its age (a week-long VS Code session is
live). One that ended is deleted once it ended before the cutoff; a refused attempt, which has
no end time, ended when it was refused.

Replicas on PostgreSQL all prune: each batch takes rows no other transaction holds
(``FOR UPDATE SKIP LOCKED``; SQLite has one writer anyway), so replicas pruning at once share
the rows and neither waits nor fails, and what each records adds up to what went.

A prune that deletes something says so in one audit event, ``log.prune``, inserted by its first
batch and kept up to date by each later one in that batch's transaction: however a prune is cut
short (the server stopping, the database going away), its event counts exactly the rows gone. The
event is dated when the prune ran, so it lives as long as any other admin action, and one INFO
line says the same once the prune is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Delete, and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from hatchway.db.models import AuditEvent, SSHConnection, utcnow
from hatchway.server.audit import record
from hatchway.server.errors import db_failure, log_db_failure
from hatchway.server.retention import cutoff

log = logging.getLogger("hatchway.server.pruning")

#: Seconds after start before the first prune: start-up (agents reconnecting) comes first.
FIRST_PRUNE_AFTER_S = 5.0
#: Seconds between prunes.
PRUNE_EVERY_S = 3600.0
#: Rows deleted per transaction.
BATCH_ROWS = 500
#: Seconds between batches: SQLite's other writers wait for the lock in sleeps of their own, and
#: a next batch begun at once could take it from them again and again.
BATCH_PAUSE_S = 0.05
#: The audit event a prune that deleted something writes.
PRUNE_ACTION = "log.prune"


def _connections_over(before: datetime) -> ColumnElement[bool]:
    """Connection records of connections over before ``before``: ended then, or refused then
    (a refused attempt has no end time); never an open one."""
    return and_(
        SSHConnection.started_at < before,  # what the index serves: ended_at is never before started_at
        SSHConnection.result != "open",
        or_(SSHConnection.ended_at < before, and_(SSHConnection.ended_at.is_(None), SSHConnection.result == "refused")),
    )


def _audit_events_over(before: datetime) -> ColumnElement[bool]:
    return AuditEvent.at < before


@dataclass(frozen=True)
class Log:
    """One of the two logs, as pruning sees it."""

    target: str  # the prune event's target: the log as the CLI names it (hatchway audit connections / list)
    rows: str  # what its prunable rows are, for the log line
    option: str  # the setting that bounds it
    table: type[Any]
    key: InstrumentedAttribute[Any]
    at: InstrumentedAttribute[Any]  # its indexed time column: batches go oldest first along it
    over: Callable[[datetime], ColumnElement[bool]]  # its rows over before a cutoff


CONNECTIONS = Log("connections", "SSH connection records of connections that ended", "--keep-connections",
                  SSHConnection, SSHConnection.id, SSHConnection.started_at, _connections_over)
AUDIT = Log("audit", "audit events recorded", "--keep-audit", AuditEvent, AuditEvent.id, AuditEvent.at, _audit_events_over)


@dataclass(frozen=True)
class Pruned:
    """What one prune of one log deleted."""

    before: datetime
    keep_days: int
    deleted: int

    def detail(self) -> dict[str, Any]:
        """The prune event's detail."""
        return {"deleted": self.deleted, "before": self.before.isoformat(), "keep_days": self.keep_days}


class LogPruner:
    """Prunes the logs the settings bound; owned by the app's lifespan."""

    def __init__(self, sessions: async_sessionmaker[Any], keep_connections_days: int | None,
                 keep_audit_days: int | None, sqlite_path: str | None) -> None:
        self._sessions = sessions
        self._limits = [(lg, days) for lg, days in ((CONNECTIONS, keep_connections_days), (AUDIT, keep_audit_days)) if days]
        self._sqlite_path = sqlite_path
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Prune in the background from now on; nothing runs while every record is kept."""
        if self._limits:
            self._task = asyncio.create_task(self._prune_forever(), name="log-pruning")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _prune_forever(self) -> None:
        await asyncio.sleep(FIRST_PRUNE_AFTER_S)
        while True:
            await self.prune_all()
            await asyncio.sleep(PRUNE_EVERY_S)

    async def prune_all(self) -> None:
        """Prune each bounded log now. A log that fails to prune (the database down or full, or
        a bug) is said in the log and left for the next round."""
        for lg, days in self._limits:
            try:
                await prune(self._sessions, lg, days, utcnow())
            except Exception as exc:  # the next round tries again, whatever it was
                where = f"pruning the {lg.target} log ({lg.option} {days})"
                then = f"; tried again in {PRUNE_EVERY_S / 60:.0f} minutes"
                if db_failure(exc, self._sqlite_path) is None:
                    log.exception("%s failed%s", where, then)
                else:
                    log_db_failure(where, exc, self._sqlite_path, then=then)


def batch_delete(lg: Log, before: datetime) -> Delete:
    """The statement deleting one batch: ``lg``'s oldest BATCH_ROWS rows over before
    ``before``, that no other transaction holds (on SQLite, the one writer, any)."""
    batch = select(lg.key).where(lg.over(before)).order_by(lg.at).limit(BATCH_ROWS).with_for_update(skip_locked=True)
    return delete(lg.table).where(lg.key.in_(batch)).execution_options(synchronize_session=False)


async def prune(sessions: async_sessionmaker[Any], lg: Log, keep_days: int, now: datetime) -> Pruned:
    """Delete ``lg``'s rows older than ``keep_days`` days at ``now``, a batch at a time."""
    pruned = Pruned(cutoff(now, keep_days), keep_days, 0)
    event_id: int | None = None
    while True:
        async with sessions() as db:
            gone = (await db.execute(batch_delete(lg, pruned.before))).rowcount
            if gone:
                pruned = replace(pruned, deleted=pruned.deleted + gone)
                if event_id is None:
                    event = record(db, None, PRUNE_ACTION, lg.target, **pruned.detail())
                    await db.flush()
                    event_id = event.id
                else:
                    await db.execute(update(AuditEvent).where(AuditEvent.id == event_id).values(detail=pruned.detail()))
            await db.commit()
        if gone < BATCH_ROWS:
            break
        await asyncio.sleep(BATCH_PAUSE_S)
    if pruned.deleted:
        log.info("pruned the %s log: %d %s before %s UTC (%s %d)", lg.target, pruned.deleted, lg.rows,
                 f"{pruned.before:%Y-%m-%d %H:%M:%S}", lg.option, keep_days)
    return pruned
