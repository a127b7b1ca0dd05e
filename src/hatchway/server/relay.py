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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import WebSocket

from hatchway.names import stream_label
from hatchway.server.dialslots import DialSlots, NoSlot
from hatchway.server.fastsplice import FastSplice
from hatchway.server.hub import AgentConnection, AgentHub
from hatchway.server.policy import AGENT_UNREACHABLE, ENDED_DURING_SETUP, TOO_MANY

log = logging.getLogger("hatchway.server.relay")


#: Why a dial-back is closed (4404) when no client waits for its stream: it came too late.
NO_SUCH_STREAM = "no client waits for this stream any more: it ended, or gave up waiting for the dial-back"


class DialError(Exception):
    """The agent could not be reached for this stream; the message is for the user, ``reason``
    (one of hatchway.server.policy.REFUSAL_REASONS) for the operator's count."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DialEnded(DialError):
    """The stream was ended while its agent was being asked to dial back (a policy change, a
    sign-out, the server shutting down): as it would have been had it been relayed already."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ENDED_DURING_SETUP)


@dataclass(slots=True)
class LiveStream:
    id: str
    user_id: str
    workspace_id: str
    provider_id: str
    # The sign-in session whose token opened the stream: signing it out ends the stream.
    session_id: str = ""
    end_reason: str | None = None
    to_workspace: int = 0
    from_workspace: int = 0
    relaying: bool = False  # set when its splice starts: what the metrics call relayed now
    # Set by splice(): stops both copies at once when a policy ends the stream.
    interrupt: Callable[[], None] | None = None

    def end(self, reason: str) -> None:
        self.end_reason = reason
        if self.interrupt is not None:
            self.interrupt()


@dataclass(frozen=True, slots=True)
class StreamMatch:
    """Which live streams a policy change ends: those meeting every criterion given."""

    user_id: str | None = None
    provider_id: str | None = None
    workspace_id: str | None = None
    session_id: str | None = None
    keep_session_id: str | None = None  # ...but not the ones this sign-in session opened

    def __call__(self, s: LiveStream) -> bool:
        return (
            (not self.user_id or s.user_id == self.user_id)
            and (not self.provider_id or s.provider_id == self.provider_id)
            and (not self.workspace_id or s.workspace_id == self.workspace_id)
            and (not self.session_id or s.session_id == self.session_id)
            and (not self.keep_session_id or s.session_id != self.keep_session_id)
        )


@dataclass
class _Pending:
    workspace_id: str
    arrived: asyncio.Future[WebSocket]
    released: asyncio.Event = field(default_factory=asyncio.Event)
    user_id: str = ""


class Peers(Protocol):
    """The other replicas, as the relay needs them (see hatchway.server.cluster.Cluster)."""

    id: str

    async def agent_replica(self, workspace_id: str) -> str | None: ...

    async def request_dial(self, relay_url: str, workspace_id: str, stream_id: str, client: str) -> bool: ...


class Relay:
    def __init__(
        self,
        hub: AgentHub,
        peers: Peers,
        dial_timeout_s: float,
        max_pending_per_user: int = 32,
        max_pending_per_workspace: int = 32,
        max_queued: int = 1024,
    ) -> None:
        self._hub = hub
        self._peers = peers
        self._dial_timeout = dial_timeout_s
        self._pending: dict[str, _Pending] = {}
        self._live: dict[str, LiveStream] = {}
        self._none_live = asyncio.Event()
        self._none_live.set()
        # Bytes of the streams that are no longer live, so totals survive them (bytes_relayed).
        self._ended_to_workspace = self._ended_from_workspace = 0
        self.slots = DialSlots(max_pending_per_user, max_pending_per_workspace, max_queued)

    def pending_count(self) -> int:
        return len(self._pending)

    # ---- rendezvous -------------------------------------------------------------------------

    async def _route(self, workspace_id: str, workspace_name: str) -> tuple[AgentConnection | None, str | None]:
        """The agent's control channel here, or the replica holding it."""
        conn = self._hub.get(workspace_id)
        holder = None if conn is not None else await self._peers.agent_replica(workspace_id)
        if conn is None and holder is None:
            raise DialError(
                f'workspace "{workspace_name}" is not reachable: its agent is not connected; '
                f'start the agent in the workspace (see "hatchway workspaces show {workspace_name}")',
                AGENT_UNREACHABLE,
            )
        return conn, holder

    def _no_slot(self, refused: NoSlot, workspace_name: str) -> DialError:
        slots = self.slots
        if refused.which == "user":
            what, cap = "too many SSH connections of yours are being set up at once", slots.per_user
        else:
            what, cap = f'too many SSH connections to workspace "{workspace_name}" are being set up at once', slots.per_workspace
        if refused.waited is None:
            return DialError(f"{what} (at most {cap}, and {slots.max_queued} more waiting); wait for them to finish and try again",
                             TOO_MANY)
        return DialError(
            f"{what} (at most {cap}): this one waited {refused.waited:.0f} s for its turn; "
            "wait for them to finish and try again",
            TOO_MANY,
        )

    async def dial(self, stream: LiveStream, workspace_name: str, client: str) -> tuple[WebSocket, asyncio.Event]:
        """Ask the workspace's agent to dial back for ``stream`` (which gets its id); returns
        the agent's socket and its release.

        Over the per-user or per-workspace cap of connections being set up, the stream first
        waits its turn (at most the dial timeout). The stream is live from the moment it
        arrives: a policy that ends sessions while it waits or while the agent dials back
        (External Connect off, a suspension, a deletion, a sign-out) ends this one at once, with
        its reason as the :class:`DialEnded`. What was committed before it arrived here (after
        the caller checked the token) no sweep saw: the caller re-reads it once dialled
        (hatchway.server.api.ssh). On success the caller must set the release when done with
        the agent socket, which lets the agent's request handler finish, and unregister the
        stream. The agent's control channel may be held by another replica (asked over HTTP to
        pass the dial on), and its dial-back may land on any replica (which hands it over here:
        the stream id starts with this replica's id)."""
        workspace_id, user_id = stream.workspace_id, stream.user_id
        conn, holder = await self._route(workspace_id, workspace_name)
        loop = asyncio.get_running_loop()
        stream.id = stream_id = self._peers.id + secrets.token_hex(16)
        pending = _Pending(workspace_id, loop.create_future(), user_id=user_id)
        ended: asyncio.Future[None] = loop.create_future()

        def interrupt() -> None:
            if not ended.done():
                ended.set_result(None)

        stream.interrupt = interrupt
        self.register(stream)
        agent_ws: WebSocket | None = None
        slot = False
        try:
            waits = self.slots.full(user_id, workspace_id) is not None
            try:
                slot = await self.slots.acquire(user_id, workspace_id, self._dial_timeout, ended)
            except NoSlot as refused:
                raise self._no_slot(refused, workspace_name) from None
            if stream.end_reason is not None:
                raise DialEnded(stream.end_reason)
            if waits:  # the agent may have moved or gone meanwhile
                conn, holder = await self._route(workspace_id, workspace_name)
            self._pending[stream_id] = pending
            if conn is not None:
                sent = await conn.send({"type": "dial", "stream": stream_id, "client": client})
            else:
                assert holder is not None
                sent = await self._peers.request_dial(holder, workspace_id, stream_id, client)
            if not sent:
                raise DialError(f'workspace "{workspace_name}": lost the connection to its agent; try again', AGENT_UNREACHABLE)
            if not ended.done():
                await asyncio.wait((pending.arrived, ended), timeout=self._dial_timeout, return_when=asyncio.FIRST_COMPLETED)
            if stream.end_reason is not None:
                raise DialEnded(stream.end_reason)
            if not pending.arrived.done():
                raise DialError(
                    f'workspace "{workspace_name}": its agent did not answer within '
                    f"{self._dial_timeout:.0f} s; check the agent's log in the workspace",
                    AGENT_UNREACHABLE,
                )
            agent_ws = pending.arrived.result()
        finally:
            stream.interrupt = None
            self._pending.pop(stream_id, None)
            if slot:
                self.slots.release(user_id, workspace_id)
            if not pending.arrived.done():
                pending.arrived.cancel()
            if agent_ws is None:  # failed or cancelled: no stream, and an agent that came goes
                self.unregister(stream)
                pending.released.set()
        return agent_ws, pending.released

    def is_waiting(self, stream_id: str, workspace_id: str) -> bool:
        """Whether a client stream waits for this workspace's agent under ``stream_id``."""
        pending = self._pending.get(stream_id)
        return pending is not None and pending.workspace_id == workspace_id and not pending.arrived.done()

    async def agent_arrived(self, stream_id: str, workspace_id: str, websocket: WebSocket) -> bool:
        """Hand the agent's data socket to the waiting client stream and hold it until released.

        Returns False (and holds nothing) when no such stream waits for this workspace: an agent
        can only answer dials addressed to its own workspace."""
        if not self.is_waiting(stream_id, workspace_id):
            return False
        pending = self._pending[stream_id]
        pending.arrived.set_result(websocket)
        await pending.released.wait()
        return True

    # ---- live streams -----------------------------------------------------------------------

    def register(self, stream: LiveStream) -> None:
        """Make ``stream`` (its id set) one that policy sweeps, metrics and drains see."""
        self._live[stream.id] = stream
        self._none_live.clear()

    def unregister(self, stream: LiveStream) -> None:
        """Forget ``stream``, keeping its byte counts in the ended streams' totals."""
        live = self._live.pop(stream.id, None)  # None when already forgotten: count it once
        if live is not None:
            self._ended_to_workspace += live.to_workspace
            self._ended_from_workspace += live.from_workspace
        if not self._live:
            self._none_live.set()

    async def drained(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every live stream to be unregistered (each ended
        stream's endpoint closes it with its reason, then lets go); True if none is left."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._none_live.wait(), timeout)
        return not self._live

    def live_count(self) -> int:
        return len(self._live)

    def relaying_count(self) -> int:
        """Live streams whose splice has started."""
        return sum(1 for s in self._live.values() if s.relaying)

    def bytes_relayed(self) -> tuple[int, int]:
        """Bytes copied to workspaces and from them by every stream this process has relayed:
        the ended streams' totals plus the live ones' counters. Summed when asked (a metrics
        scrape), so the byte path keeps counting per stream only, as it does for the log."""
        up, down = self._ended_to_workspace, self._ended_from_workspace
        for s in self._live.values():
            up += s.to_workspace
            down += s.from_workspace
        return up, down

    async def end_sessions(self, match: StreamMatch, reason: str) -> int:
        """End every live stream ``match`` selects; returns how many."""
        n = 0
        for s in list(self._live.values()):
            if match(s):
                s.end(reason)
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


def _fast_splice(client: WebSocket, agent: WebSocket, stream: LiveStream) -> FastSplice | None:
    a, b = FastSplice.protocol_of(client), FastSplice.protocol_of(agent)
    if a is None or b is None:
        return None

    def up(n: int) -> None:
        stream.to_workspace += n

    def down(n: int) -> None:
        stream.from_workspace += n

    return FastSplice(a, b, up, down)


async def splice(client: WebSocket, agent: WebSocket, stream: LiveStream) -> str | None:
    """Copy both ways until either side ends or the stream is ended by policy; returns the
    policy reason when ended from outside, else None.

    Both ends are normally uvicorn WebSockets, spliced in the transports' callbacks
    (hatchway.server.fastsplice). Otherwise (another ASGI server) two tasks copy through ASGI
    and nothing else: a policy end cancels them through ``interrupt`` rather than a third task
    waiting on an event (memory per idle stream is what bounds how many one server relays)."""
    fast = _fast_splice(client, agent, stream)
    if fast is not None:
        stream.interrupt = fast.stop
        try:
            if stream.end_reason is not None:  # ended before the copy started
                fast.stop()
            await fast.run()
        finally:
            stream.interrupt = None
        return stream.end_reason
    up = asyncio.create_task(_pump(client, agent, stream, True))
    down = asyncio.create_task(_pump(agent, client, stream, False))

    def interrupt() -> None:
        up.cancel()
        down.cancel()

    stream.interrupt = interrupt
    try:
        if stream.end_reason is not None:  # ended before the copies started
            interrupt()
        await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stream.interrupt = None
        interrupt()
        for t in (up, down):
            with contextlib.suppress(BaseException):
                await t
    for t in (up, down):
        if t.done() and not t.cancelled() and t.exception() is not None:
            log.debug("stream %s: %s", stream_label(stream.id), t.exception())
    return stream.end_reason
