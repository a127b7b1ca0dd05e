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
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchway.db.models import Replica, utcnow
from hatchway.providers.base import SetupError, WorkspaceProvider
from hatchway.providers.supervisor import Supervisor
from hatchway.server.cluster import FORGET_AFTER_S, Cluster
from hatchway.server.errors import APIError

log = logging.getLogger("hatchway.server.supervision")

#: PostgreSQL advisory lock key of the supervising replica ("hatchsup" in ASCII).
LEADER_LOCK_KEY = 0x6861746368737570
RETRY_S = 1.0
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
            async with httpx.AsyncClient(timeout=120.0) as http:
                r = await http.post(
                    url + SUPERVISE_PATH, json={"action": action, "workspace_id": ws_id},
                    headers=self._cluster.auth_header(SUPERVISE_PATH),
                )
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
        await self._mark(True)
        self.leading.set()
        log.info("this replica supervises server-managed workspaces")
        await self._active.startup()

    async def _step_down(self) -> None:
        active, self._active = self._active, None
        self.leading.clear()
        if active is not None:
            await active.shutdown()
            with contextlib.suppress(Exception):
                await self._mark(False)

    async def _mark(self, supervises: bool) -> None:
        async with self._sessions() as db:
            await db.execute(update(Replica).where(Replica.id == self._cluster.id).values(supervises=supervises))
            await db.commit()

    async def _lead_forever(self) -> None:
        import asyncpg

        dsn = self._engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=10)
                while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY):
                    await asyncio.sleep(RETRY_S)
                await self._take_over()
                while True:  # the lock lives as long as this connection: prove it is alive
                    await asyncio.sleep(RETRY_S)
                    await conn.fetchval("SELECT 1", timeout=5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._active is not None:
                    log.error("lost the supervision lock (%s): stopping this replica's agents; "
                              "another replica takes over", exc)
                else:
                    log.warning("cannot reach PostgreSQL for the supervision lock: %s", exc)
                await self._step_down()
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
