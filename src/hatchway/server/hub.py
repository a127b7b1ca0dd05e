"""The agents connected to this server process, and how to talk to them.

Kept behind this small interface so that, with several replicas, "which replica holds the
agent" can be answered through the database without touching the relay or the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import WebSocket
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchway.bytepath.frames import close_reason
from hatchway.db.models import Workspace
from hatchway.server.manifest import build_manifest

log = logging.getLogger("hatchway.server.hub")

#: The goodbye code telling an agent another agent with its token took over.
GOODBYE_REPLACED = "replaced"


class AgentConnection:
    """One agent's control WebSocket; sends are serialised so JSON messages never interleave."""

    def __init__(self, workspace_id: str, websocket: WebSocket) -> None:
        self.workspace_id = workspace_id
        self.websocket = websocket
        self._lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> bool:
        if self.closed.is_set():
            return False
        try:
            async with self._lock:
                await self.websocket.send_text(json.dumps(message))
            return True
        except Exception as exc:  # a dead socket is noticed by the receive loop too
            log.debug("send to agent of %s failed: %s", self.workspace_id, exc)
            return False

    async def close(self, reason: str, code: str = "closed") -> None:
        """Say goodbye and close; ``code`` is for the agent's logic, ``reason`` for people."""
        if self.closed.is_set():
            return
        self.closed.set()
        try:
            async with self._lock:
                await self.websocket.send_text(json.dumps({"type": "goodbye", "code": code, "reason": reason}))
                await self.websocket.close(code=4000, reason=close_reason(reason))
        except Exception:
            pass


class AgentHub:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], url: str) -> None:
        self._sessions = sessions
        self._url = url
        self._conns: dict[str, AgentConnection] = {}

    def get(self, workspace_id: str) -> AgentConnection | None:
        conn = self._conns.get(workspace_id)
        return conn if conn and not conn.closed.is_set() else None

    def connected_ids(self) -> list[str]:
        return [ws_id for ws_id, conn in self._conns.items() if not conn.closed.is_set()]

    async def attach(self, conn: AgentConnection) -> None:
        """Register a freshly connected agent; an older connection of the same workspace (a
        restarted agent whose old socket has not timed out yet) is closed."""
        old = self._conns.get(conn.workspace_id)
        self._conns[conn.workspace_id] = conn
        if old is not None and old is not conn:
            await old.close("replaced by a newer connection of the same agent", code=GOODBYE_REPLACED)

    def detach(self, conn: AgentConnection) -> bool:
        """Forget ``conn``; True when it was the current connection of its workspace."""
        conn.closed.set()
        if self._conns.get(conn.workspace_id) is conn:
            del self._conns[conn.workspace_id]
            return True
        return False

    async def disconnect(self, workspace_id: str, reason: str, code: str = "closed") -> None:
        conn = self._conns.get(workspace_id)
        if conn is not None:
            await conn.close(reason, code=code)

    async def push_manifests(
        self, *, owner_id: str | None = None, provider_id: str | None = None, workspace_id: str | None = None
    ) -> int:
        """Send fresh manifests to the connected agents the change concerns."""
        q = select(Workspace)
        if owner_id:
            q = q.where(Workspace.owner_id == owner_id)
        if provider_id:
            q = q.where(Workspace.provider_id == provider_id)
        if workspace_id:
            q = q.where(Workspace.id == workspace_id)
        async with self._sessions() as db:
            rows = [w for w in (await db.execute(q)).scalars() if w.id in self._conns]
            manifests = {w.id: build_manifest(w, self._url) for w in rows}
        sent = 0
        for ws_id, manifest in manifests.items():
            conn = self.get(ws_id)
            if conn and await conn.send({"type": "manifest", "manifest": manifest}):
                sent += 1
        return sent

    async def close_all(self, reason: str) -> None:
        for conn in list(self._conns.values()):
            await conn.close(reason)
