"""Which replica supervises server-managed workspaces, and how the others reach it.

The supervisor (hatchway.providers.supervisor) starts agents and keeps them running; with several
replicas exactly one may do that, or each would launch its own agent for every workspace. The
replica holding a PostgreSQL advisory lock (on a connection of its own, so the lock goes when the
replica dies) supervises and says so in its ``replicas`` row; when it goes, another takes the
lock within seconds and brings the running workspaces back. API commands (start, stop, restart,
delete) that reach another replica are passed to the supervising one over signed HTTP and
answered when done, so the API behaves the same whichever replica a request lands on.

With SQLite the one process always supervises.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchway.db.models import Replica, utcnow
from hatchway.providers.base import SetupError, WorkspaceProvider
from hatchway.providers.supervisor import Supervisor
from hatchway.server import presence
from hatchway.server.cluster import FORGET_AFTER_S, Cluster
from hatchway.server.errors import APIError, db_error_text

log = logging.getLogger("hatchway.server.supervision")

#: PostgreSQL advisory lock key of the supervising replica ("hatchsup" in ASCII).
LEADER_LOCK_KEY = 0x6861746368737570
RETRY_S = 1.0
#: How long a supervising replica cut off from the database keeps its workspaces running.
STEP_DOWN_AFTER_S = 30.0
SUPERVISE_PATH = "/internal/v1/supervise"
ACTIONS = ("start", "stop", "restart", "delete")


class NotSupervising(Exception):
    """No replica supervises workspaces at the moment (one is taking over)."""


class SupervisionGate:
    """What the API sees as "the supervisor", on every replica."""

    def __init__(
        self,
        make: Callable[[], Supervisor],
        cluster: Cluster,
        sessions: async_sessionmaker[AsyncSession],
        engine: AsyncEngine,
    ) -> None:
        self._make = make
        self._cluster = cluster
        self._sessions = sessions
        self._engine = engine
        self._shape = make()  # answers manages()/provider() before (or without) leading
        self._active: Supervisor | None = None
        self._task: asyncio.Task[None] | None = None
        self.leading = asyncio.Event()

    # ---- what the API asks -------------------------------------------------------------------

    def is_leading(self) -> bool:
        return self._active is not None

    def manages(self, provider_kind: str) -> bool:
        return self._shape.manages(provider_kind)

    def provider(self, provider_kind: str) -> WorkspaceProvider | None:
        return (self._active or self._shape).provider(provider_kind)

    async def start(self, ws_id: str) -> None:
        await self.command("start", ws_id)

    async def stop(self, ws_id: str) -> None:
        await self.command("stop", ws_id)

    async def restart(self, ws_id: str) -> None:
        await self.command("restart", ws_id)

    async def delete(self, ws_id: str) -> None:
        await self.command("delete", ws_id)

    async def command(self, action: str, ws_id: str) -> None:
        """Run ``action`` here when this replica supervises, else on the one that does."""
        if action not in ACTIONS:
            raise ValueError(f"unknown supervisor action {action!r}")
        if self._active is not None:
            await getattr(self._active, action)(ws_id)
            return
        await self._forward(action, ws_id)

    async def _forward(self, action: str, ws_id: str) -> None:
        url = await self._leader_url()
        if url is None:
            raise APIError(
                503, "no replica supervises workspaces right now",
                "another replica is taking over (this takes a few seconds); try again",
                headers={"Retry-After": "2"},
            )
        try:
            body, headers = self._cluster.signed_json(SUPERVISE_PATH, {"action": action, "workspace_id": ws_id})
            async with httpx.AsyncClient(timeout=120.0) as http:
                r = await http.post(url + SUPERVISE_PATH, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise APIError(
                503, "the supervising replica did not answer", f"{exc or type(exc).__name__}; try again"
            ) from None
        if r.status_code == 204:
            return
        detail = ""
        with contextlib.suppress(ValueError):
            detail = str(r.json().get("detail", ""))
        if r.status_code == 422:
            raise SetupError(detail)
        raise APIError(503, "the supervising replica could not do it", detail or f"HTTP {r.status_code}; try again")

    async def _leader_url(self) -> str | None:
        cutoff = utcnow() - timedelta(seconds=FORGET_AFTER_S)
        async with self._sessions() as db:
            row = (await db.execute(
                select(Replica.relay_url).where(Replica.supervises.is_(True), Replica.heartbeat_at >= cutoff)
            )).first()
        return row[0] if row else None

    # ---- leading -----------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._engine.dialect.name != "postgresql":
            await self._take_over()
            return
        self._task = asyncio.create_task(self._lead_forever(), name="supervision-leadership")
        # The first replica of a deployment normally wins at once: wait a moment for that, so a
        # single replica on PostgreSQL behaves like the embedded one from its first request.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.leading.wait(), 3)

    async def shutdown(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._step_down()

    async def _take_over(self) -> None:
        self._active = self._make()
        try:
            await self._mark(True)
            self.leading.set()
            log.info("this replica supervises server-managed workspaces")
            await self._active.startup()
        except BaseException:
            await self._step_down()
            raise

    async def _step_down(self) -> None:
        active, self._active = self._active, None
        self.leading.clear()
        if active is not None:
            await active.shutdown()
            with contextlib.suppress(Exception):
                await self._mark(False)

    async def _other_supervisor(self) -> bool:
        async with self._sessions() as db:
            row = (await db.execute(
                select(Replica.id).where(Replica.supervises.is_(True), Replica.id != self._cluster.id)
            )).first()
        return row is not None

    async def reassert(self) -> None:
        """Say again that this replica supervises (its row may have been made anew)."""
        if self._active is not None:
            await self._mark(True)

    async def _mark(self, supervises: bool) -> None:
        async with self._sessions() as db:
            await db.execute(update(Replica).where(Replica.id == self._cluster.id).values(supervises=supervises))
            await db.commit()

    async def _lead_forever(self) -> None:
        """Hold the lock; ride out a database outage without stopping anyone's workspace.

        While PostgreSQL is unreachable nobody else can take the lock either, so the agents keep
        running. Once it is back the lock is taken again; only if another replica got it
        meanwhile (or the outage outlasts STEP_DOWN_AFTER_S) does this one stop supervising."""
        cut_off_at: float | None = None
        while True:
            conn = None
            try:
                conn = await presence.connect(self._engine, self._cluster.id)
                # A replica that supervised before a database outage takes the lock back first:
                # the others wait until it has been forgotten (dead), so a PostgreSQL restart
                # does not move, and restart, every workspace.
                while self._active is None and await self._other_supervisor():
                    await asyncio.sleep(RETRY_S)
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    if self._active is not None:
                        log.warning("another replica took over supervision while this one was cut off from "
                                    "the database; stopping this replica's workspaces")
                        await self._step_down()
                    cut_off_at = None
                    await asyncio.sleep(RETRY_S)
                if self._active is None:
                    await self._take_over()
                elif cut_off_at is not None:
                    log.info("supervision lock held again after the database outage")
                cut_off_at = None
                while True:  # the lock lives as long as this connection: prove it is alive
                    await asyncio.sleep(RETRY_S)
                    await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._active is None:
                    log.warning("cannot reach PostgreSQL for the supervision lock: %s", db_error_text(exc))
                else:
                    now = time.monotonic()
                    cut_off_at = cut_off_at or now
                    if now - cut_off_at >= STEP_DOWN_AFTER_S:
                        log.error("cut off from the database for %.0f s (%s): stopping this replica's workspaces; "
                                  "another replica may supervise them now", now - cut_off_at, exc)
                        await self._step_down()
                        cut_off_at = None
                    else:
                        log.warning("lost the supervision lock's connection (%s); workspaces keep running "
                                    "while it reconnects", exc)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(RETRY_S)


def command_args(body: Any) -> tuple[str, str]:
    """(action, workspace id) of a forwarded command, or a 400 saying what is wrong."""
    action = body.get("action") if isinstance(body, dict) else None
    ws_id = body.get("workspace_id") if isinstance(body, dict) else None
    if action not in ACTIONS or not isinstance(ws_id, str) or not 0 < len(ws_id) <= 32:
        raise APIError(400, "bad request", f"expected an action ({', '.join(ACTIONS)}) and a workspace_id")
    return action, ws_id
