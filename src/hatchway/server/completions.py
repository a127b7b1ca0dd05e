"""The last word of a connection-log record, kept until the database takes it.

A relayed SSH connection that ends writes its record's end time, bytes each way and outcome.
When the database cannot take that write (its disk is full, or it is down), the connection is
over all the same; without this, its record would show it open, with no bytes, until a server
start marked it failed. So the completion is kept here and tried again on a timer that backs off
(RETRY_FIRST_S doubling up to RETRY_MAX_S) while the database still refuses it: once it takes
it, the record gets its real end time, bytes and outcome, and the log says so in one line. At
shutdown what is kept is tried once more, and each completion that still cannot be written is
named in one line.

Memory is bounded: at most MAX_KEPT completions wait (a few hundred bytes each). Past that a
completion that fails is not kept: the log says so, and its record stays open until a sweep
marks it failed (the next server start on SQLite; with replicas, the others once this one stops).

Each record is completed once, by the replica that relayed it: the write lands only on a record
still open, or on one that another replica's sweep marked failed because it took this one for
gone (its heartbeat stopped during a database outage): the relaying replica's account replaces
that guess. A record already completed (a retried write whose first try reached the database
though its commit reported an error) is left as it is.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from hatchway.db.models import SSHConnection
from hatchway.server.cluster import LOST_REPLICA_REASON
from hatchway.server.errors import db_failure, log_db_failure

log = logging.getLogger("hatchway.server.completions")

#: Completions kept at once while the database refuses them.
MAX_KEPT = 10_000
#: The first retry's delay, doubled after each retry the database refuses, up to RETRY_MAX_S.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class Completion:
    """What a relayed connection's record says once it ended, taken when it ended."""

    row_id: str
    connection: str  # how the log names it: "SSH to OWNER/NAME by USER"
    ended_at: datetime
    mode: str | None
    bytes_to_workspace: int
    bytes_from_workspace: int
    reason: str | None  # why the server ended it; None: the client or the workspace closed it

    @property
    def result(self) -> str:
        return "ended" if self.reason else "closed"

    def summary(self) -> str:
        """The record's last word as the log shows it (the record itself keeps the reason)."""
        return (
            f"ended {self.ended_at:%Y-%m-%d %H:%M:%S} UTC, {self.bytes_to_workspace} bytes in, "
            f"{self.bytes_from_workspace} bytes out, {self.result}"
        )


def _completable() -> ColumnElement[bool]:
    """Records a completion may be written to: open, or marked failed by a sweep that took the
    replica relaying them for gone (see the module's docstring)."""
    return or_(
        SSHConnection.result == "open",
        and_(SSHConnection.result == "failed", SSHConnection.reason == LOST_REPLICA_REASON),
    )


class RecordCompletions:
    """Writes completions, keeps those the database refuses and retries them; owned by the app's
    lifespan (:meth:`start`, :meth:`close`)."""

    def __init__(self, sessions: async_sessionmaker[Any], sqlite_path: str | None, max_kept: int = MAX_KEPT) -> None:
        self._sessions = sessions
        self._sqlite_path = sqlite_path
        self._max_kept = max_kept
        self._kept: deque[Completion] = deque()
        self._some_kept = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._retry_forever(), name="connection-log-completions")

    async def complete(self, completion: Completion) -> None:
        """Write ``completion``; when the database refuses it, keep it for the retries (or say
        in one line why it is not kept)."""
        try:
            await self._write(completion)
        except Exception as exc:
            if db_failure(exc, self._sqlite_path) is None:
                raise
            self._keep(completion, exc)

    async def close(self) -> None:
        """At shutdown: stop the retries and try each kept completion one last time; each that
        still cannot be written is named in one line, with what its record misses."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        while self._kept:
            completion = self._kept.popleft()
            try:
                await self._written(completion)
            except Exception as exc:  # one line each, whatever it is: the process is going away
                failure = db_failure(exc, self._sqlite_path)
                log.error("could not complete the record of %s before stopping (%s): it %s; the record shows it "
                          "open until a server sweeps it and marks it failed",
                          completion.connection, failure[0] if failure else type(exc).__name__, completion.summary())

    def _keep(self, completion: Completion, exc: Exception) -> None:
        """Keep a refused completion, unless shutting down or MAX_KEPT wait already."""
        if self._closed:
            then = f"; the server is stopping, so its record stays open ({completion.summary()})"
        elif len(self._kept) >= self._max_kept:
            then = (f"; {len(self._kept)} completions already wait for the database (at most {self._max_kept}), "
                    f"so this one is not kept: its record stays open ({completion.summary()}) until a server sweeps it")
        else:
            self._kept.append(completion)
            self._some_kept.set()
            then = f"; it is kept and written once the database takes it ({len(self._kept)} waiting)"
        log_db_failure(f"completing the record of {completion.connection}", exc, self._sqlite_path, then=then)

    async def _retry_forever(self) -> None:
        """While completions are kept, retry them, backing off while the database refuses."""
        delay = RETRY_FIRST_S
        while True:
            await self._some_kept.wait()
            await asyncio.sleep(delay)
            delay = RETRY_FIRST_S if await self._retry_kept() else min(delay * 2, RETRY_MAX_S)

    async def _retry_kept(self) -> bool:
        """Write the kept completions in order; False when the database still refuses them."""
        while self._kept:
            completion = self._kept[0]
            try:
                await self._written(completion)
            except Exception as exc:
                if db_failure(exc, self._sqlite_path) is not None:
                    return False
                log.exception("completing the record of %s failed; giving it up", completion.connection)
            self._kept.popleft()
        self._some_kept.clear()
        return True

    async def _written(self, completion: Completion) -> None:
        """Write a kept completion and say in one line what became of its record."""
        if await self._write(completion):
            log.info("completed the record of %s now that the database takes it: %s", completion.connection,
                     completion.summary())
        else:
            log.info("the record of %s was already complete (or deleted); left as it is", completion.connection)

    async def _write(self, completion: Completion) -> bool:
        """Write ``completion`` to its record; False when the record was not there to complete."""
        async with self._sessions() as db:
            done = await db.execute(
                update(SSHConnection)
                .where(SSHConnection.id == completion.row_id, _completable())
                .values(
                    mode=completion.mode, ended_at=completion.ended_at, result=completion.result,
                    reason=completion.reason, bytes_to_workspace=completion.bytes_to_workspace,
                    bytes_from_workspace=completion.bytes_from_workspace,
                )
            )
            await db.commit()
        return bool(done.rowcount)
