"""Stream rendezvous and splice: the server's whole part in an SSH connection.

A client stream (from ``hatchway proxy``) waits while the workspace's agent is asked, over its
control channel, to dial back; the agent's data WebSocket for that stream id is then spliced to
the client's. Bytes are copied, never parsed: SSH stays end to end. Each direction moves one
frame at a time and awaits the send before receiving the next, so memory per stream is bounded by
the WebSocket layers' own small queues, and a slow reader slows the writer through TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket

from hatchway.server.hub import AgentHub

log = logging.getLogger("hatchway.server.relay")


class DialError(Exception):
    """The agent could not be reached for this stream; the message is for the user."""


@dataclass
class LiveStream:
    id: str
    user_id: str
    workspace_id: str
    provider_id: str
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str | None = None
    to_workspace: int = 0
    from_workspace: int = 0


@dataclass
class _Pending:
    workspace_id: str
    arrived: asyncio.Future[WebSocket]
    released: asyncio.Event = field(default_factory=asyncio.Event)


class Relay:
    def __init__(self, hub: AgentHub, dial_timeout_s: float) -> None:
        self._hub = hub
        self._dial_timeout = dial_timeout_s
        self._pending: dict[str, _Pending] = {}
        self._live: dict[str, LiveStream] = {}

    # ---- rendezvous -------------------------------------------------------------------------

    async def dial(self, workspace_id: str, workspace_name: str, client: str) -> tuple[str, WebSocket, asyncio.Event]:
        """Ask the workspace's agent to dial back; returns (stream id, agent socket, release).

        The caller must set ``release`` when done with the agent socket, which lets the agent's
        request handler finish."""
        conn = self._hub.get(workspace_id)
        if conn is None:
            raise DialError(
                f'workspace "{workspace_name}" is not reachable: its agent is not connected; '
                f'start the agent in the workspace (see "hatchway workspaces show {workspace_name}")'
            )
        stream_id = secrets.token_hex(16)
        pending = _Pending(workspace_id, asyncio.get_running_loop().create_future())
        self._pending[stream_id] = pending
        try:
            if not await conn.send({"type": "dial", "stream": stream_id, "client": client}):
                raise DialError(f'workspace "{workspace_name}": lost the connection to its agent; try again')
            try:
                agent_ws = await asyncio.wait_for(asyncio.shield(pending.arrived), self._dial_timeout)
            except asyncio.TimeoutError:
                raise DialError(
                    f'workspace "{workspace_name}": its agent did not answer within '
                    f"{self._dial_timeout:.0f} s; check the agent's log in the workspace"
                ) from None
        finally:
            self._pending.pop(stream_id, None)
            if not pending.arrived.done():
                pending.arrived.cancel()
        return stream_id, agent_ws, pending.released

    async def agent_arrived(self, stream_id: str, workspace_id: str, websocket: WebSocket) -> bool:
        """Hand the agent's data socket to the waiting client stream and hold it until released.

        Returns False (and holds nothing) when no such stream waits for this workspace: an agent
        can only answer dials addressed to its own workspace."""
        pending = self._pending.get(stream_id)
        if pending is None or pending.workspace_id != workspace_id or pending.arrived.done():
            return False
        pending.arrived.set_result(websocket)
        await pending.released.wait()
        return True

    # ---- live streams -----------------------------------------------------------------------

    def register(self, stream: LiveStream) -> None:
        self._live[stream.id] = stream

    def unregister(self, stream: LiveStream) -> None:
        self._live.pop(stream.id, None)

    def live_count(self) -> int:
        return len(self._live)

    async def end_sessions(
        self,
        *,
        reason: str,
        user_id: str | None = None,
        provider_id: str | None = None,
        workspace_id: str | None = None,
    ) -> int:
        """End every live stream matching all the given criteria; returns how many."""
        n = 0
        for s in list(self._live.values()):
            if user_id and s.user_id != user_id:
                continue
            if provider_id and s.provider_id != provider_id:
                continue
            if workspace_id and s.workspace_id != workspace_id:
                continue
            s.end_reason = reason
            s.ended.set()
            n += 1
        if n:
            log.info("ending %d live SSH stream(s): %s", n, reason)
        return n


async def _pump(src: WebSocket, dst: WebSocket, stream: LiveStream, to_workspace: bool) -> None:
    while True:
        message: dict[str, Any] = await src.receive()
        if message["type"] != "websocket.receive":
            return
        data = message.get("bytes")
        if not data:
            continue  # text frames carry no SSH bytes
        if to_workspace:
            stream.to_workspace += len(data)
        else:
            stream.from_workspace += len(data)
        await dst.send({"type": "websocket.send", "bytes": data})


async def splice(client: WebSocket, agent: WebSocket, stream: LiveStream) -> str | None:
    """Copy both ways until either side ends or the stream is ended by policy.

    Returns the policy reason when the stream was ended from outside, else None."""
    up = asyncio.create_task(_pump(client, agent, stream, True))
    down = asyncio.create_task(_pump(agent, client, stream, False))
    ended = asyncio.create_task(stream.ended.wait())
    try:
        await asyncio.wait({up, down, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (up, down, ended):
            t.cancel()
        for t in (up, down, ended):
            with contextlib.suppress(BaseException):
                await t
    for t in (up, down):
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("stream %s: %s", stream.id, t.exception())
    return stream.end_reason
