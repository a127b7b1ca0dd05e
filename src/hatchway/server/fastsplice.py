"""Splice accepted WebSockets in the event loop's callbacks instead of through ASGI.

Through ASGI every frame of a relayed stream costs a message dict on a queue, a task wake-up on
each side, and a pause and resume of the socket's reading (uvicorn stops reading after each
message until the app takes it). Once both ends of a stream are accepted nothing is left to do
but copy, so the relay takes their transports over from uvicorn's protocol objects
(:mod:`hatchway.bytepath.splice`): what one read brings is unmasked and written as one frame on
the other side, in the callback that received it. Pings, pongs, a close, a protocol violation or
a lost connection go to uvicorn as they would have; the last three end the splice, and the
endpoint closes the other side with the usual codes and reasons.

Two pairs are spliced so: a client's stream with its agent's dial-back (:class:`FastSplice`),
and an agent's dial-back with the WebSocket a replica opened to hand it to the replica where
its client waits (:func:`splice_to_replica`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.asyncio.client import ClientConnection

from hatchway.bytepath.splice import Splice, WebSocketEnd, connection_idle, parser_idle


def protocol_of(ws: WebSocket) -> WebSocketsSansIOProtocol | None:
    """uvicorn's protocol object behind an accepted WebSocket with nothing half-read and nothing
    closing, else None (the caller copies through ASGI instead)."""
    proto = getattr(getattr(ws, "_receive", None), "__self__", None)
    if not isinstance(proto, WebSocketsSansIOProtocol):
        return None
    if not proto.handshake_complete or proto.close_sent or proto.disconnected or proto.frames:
        return None
    if proto.transport is None or proto.transport.is_closing() or not parser_idle(proto.conn):
        return None
    return proto


def drop_handshake(proto: WebSocketsSansIOProtocol) -> None:
    """uvicorn keeps the upgrade request and its 101 response (with their headers) for the life
    of every WebSocket, though it reads them only until the handshake is complete; for a
    relayed stream, idle for hours, that was a tenth of the server's memory per connection (two
    WebSockets each). What the app needs from the request is in its ASGI scope. Only for a
    completed handshake (what :func:`protocol_of` returns).

    websockets' handshake parser holds on to the request too (a local of the generator that
    goes on parsing frames), so its headers are emptied rather than only let go."""
    request = getattr(proto, "request", None)
    if request is not None:
        request.headers.clear()
    for name in ("request", "response"):
        if hasattr(proto, name):
            setattr(proto, name, None)


def _take_queued(splice: Splice, end: WebSocketEnd, proto: WebSocketsSansIOProtocol) -> None:
    """Messages uvicorn queued before the splice began (the client's SSH banner, sent before
    the agent dialled back) go first; a queued disconnect ends the splice. Reading that uvicorn
    paused until the app took its messages resumes."""
    queue = proto.queue
    while not queue.empty() and not splice.done.done():
        message: dict[str, Any] = queue.get_nowait()  # type: ignore[assignment]
        if message["type"] != "websocket.receive":
            queue.put_nowait(message)  # for the endpoint's own receive(), now first in line
            splice.stop()
            return
        data = message.get("bytes")
        if data:
            end.forward([data], len(data))
    if proto.read_paused and not splice.done.done():
        proto.read_paused = False
        end.transport.resume_reading()


class FastSplice:
    """Both sides of one relayed stream, copied in callbacks until one of them ends."""

    __slots__ = ("protos", "splice")

    protocol_of = staticmethod(protocol_of)

    def __init__(self, a: WebSocketsSansIOProtocol, b: WebSocketsSansIOProtocol, count_a: Callable[[int], None],
                 count_b: Callable[[int], None]) -> None:
        self.protos = (a, b)
        for proto in self.protos:
            drop_handshake(proto)
        self.splice = Splice(WebSocketEnd(a.transport, a.conn, count_a), WebSocketEnd(b.transport, b.conn, count_b))

    async def run(self) -> None:
        """Copy until either side ends or :meth:`stop` is called."""

        def start() -> None:
            for end, proto in zip(self.splice.ends, self.protos):
                _take_queued(self.splice, end, proto)  # type: ignore[arg-type]

        await self.splice.run(start)

    def stop(self) -> None:
        """Give both transports back to uvicorn (idempotent)."""
        self.splice.stop()


async def splice_to_replica(agent: WebSocket, peer: ClientConnection, header: str | bytes) -> bool:
    """Send the agent's stream ``header`` to the origin replica on ``peer``, then copy both ways
    in callbacks until either side ends; False (nothing sent) when either socket cannot be taken
    over. The origin replica sends nothing before it has the header, so ``peer`` is taken over
    first and nothing it sends can reach websockets' queue instead."""
    proto = protocol_of(agent)
    if proto is None or not connection_idle(peer):
        return False
    drop_handshake(proto)
    agent_end, peer_end = WebSocketEnd(proto.transport, proto.conn), WebSocketEnd(peer.transport, peer.protocol)
    splice = Splice(agent_end, peer_end)

    def start() -> None:
        sent = peer_end.write_text(header) if isinstance(header, str) else peer_end.write([header], len(header))
        if not sent:
            splice.stop()
            return
        _take_queued(splice, agent_end, proto)

    await splice.run(start)
    return True
