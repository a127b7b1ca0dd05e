"""Splice two accepted WebSockets in the event loop's callbacks instead of through ASGI.

Through ASGI every frame of a relayed stream costs a message dict on a queue, a task wake-up on
each side, and a pause and resume of the socket's reading (uvicorn stops reading after each
message until the app takes it). Once both ends of a stream are accepted nothing is left to do
but copy, so the relay takes their transports over: each side's frames are parsed by that
connection's own websockets protocol object (uvicorn's), and their payload is framed and written
on the other side in the callback that received it. Backpressure stays the transports' own: a
side whose write buffer is full pauses reading on the other.

Everything that is not stream data goes back to uvicorn as it would have gone: pongs to its
keepalive, a close frame, a protocol error or a lost connection end the splice, give both
transports back to uvicorn's protocol and let it handle the event, so the endpoint closes the
other side with the usual codes and reasons.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.frames import Frame, Opcode


class _Side(asyncio.Protocol):
    """One WebSocket of a spliced pair while the splice reads it."""

    __slots__ = ("splice", "proto", "transport", "conn", "count", "peer", "in_text", "reading_paused")

    def __init__(self, splice: FastSplice, proto: WebSocketsSansIOProtocol, count: Callable[[int], None]) -> None:
        self.splice = splice
        self.proto = proto
        self.transport = proto.transport
        self.conn = proto.conn
        self.count = count  # bytes of stream data read on this side
        self.peer: _Side = self
        self.in_text = False  # inside a fragmented text message (not stream data: dropped)
        self.reading_paused = False  # by the peer's full write buffer

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        if conn.parser_exc is not None:
            self.splice.finish(self, lambda proto: proto.handle_parser_exception())
            return
        for event in conn.events_received():
            if not self.on_frame(event):
                return
        self.flush()  # pongs the protocol object answered pings with
        self.peer.flush()

    def on_frame(self, frame: Frame) -> bool:
        """Forward or hand over one frame; False once the splice has ended."""
        op = frame.opcode
        if op is Opcode.BINARY or (op is Opcode.CONT and not self.in_text):
            return self.forward(frame.data, frame.fin, continuation=op is Opcode.CONT)
        elif op is Opcode.TEXT or op is Opcode.CONT:
            self.in_text = not frame.fin  # text carries no SSH bytes, as in the ASGI pumps
        elif op is Opcode.PONG:
            self.proto.handle_pong(frame)
        elif op is Opcode.CLOSE:
            self.peer.flush()
            self.splice.finish(self, lambda proto: proto.handle_close(frame))
            return False
        return True  # a PING was answered by the protocol object: flushed after the batch

    def forward(self, data: bytes, fin: bool = True, continuation: bool = False) -> bool:
        """Frame stream data on the other side (written at the next flush); False, ending the
        splice, when that side is closing (its keepalive failed, say)."""
        if data:
            self.count(len(data))
        peer = self.peer.conn
        try:
            if continuation:
                peer.send_continuation(data, fin=fin)
            else:
                peer.send_binary(data, fin=fin)
        except InvalidState:
            self.splice.stop()
            return False
        return True

    def flush(self) -> None:
        out = self.conn.data_to_send()
        if out:
            self.transport.write(b"".join(out))

    def pause_writing(self) -> None:
        self.proto.pause_writing()
        self.peer.reading_paused = True
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.proto.resume_writing()
        self.peer.reading_paused = False
        self.peer.transport.resume_reading()

    def eof_received(self) -> bool | None:
        return None  # close: connection_lost follows, as with uvicorn's protocol

    def connection_lost(self, exc: Exception | None) -> None:
        self.splice.finish(self, lambda proto: proto.connection_lost(exc))


class FastSplice:
    """Both sides of one relayed stream, read by :class:`_Side` until one of them ends."""

    __slots__ = ("sides", "done")

    def __init__(self, a: WebSocketsSansIOProtocol, b: WebSocketsSansIOProtocol, count_a: Callable[[int], None],
                 count_b: Callable[[int], None]) -> None:
        self.sides = (_Side(self, a, count_a), _Side(self, b, count_b))
        self.sides[0].peer, self.sides[1].peer = self.sides[1], self.sides[0]
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @staticmethod
    def protocol_of(ws: WebSocket) -> WebSocketsSansIOProtocol | None:
        """uvicorn's protocol object behind an accepted WebSocket that has nothing half-read and
        nothing closing, else None (the caller copies through ASGI instead)."""
        proto = getattr(getattr(ws, "_receive", None), "__self__", None)
        if not isinstance(proto, WebSocketsSansIOProtocol):
            return None
        if not proto.handshake_complete or proto.close_sent or proto.disconnected or proto.frames:
            return None
        if proto.transport is None or proto.transport.is_closing():
            return None
        return proto

    async def run(self) -> None:
        """Copy until either side ends or :meth:`stop` is called."""
        if self.done.done():  # stopped before it began
            return
        for side in self.sides:
            side.transport.set_protocol(side)
        try:
            for side in self.sides:
                self._take_queued(side)
            for side in self.sides:
                proto = side.proto
                if not proto.writable.is_set():  # its buffer was already full: hold the other side
                    side.pause_writing()
                if proto.read_paused and not self.done.done():
                    proto.read_paused = False
                    if not side.reading_paused:
                        side.transport.resume_reading()
            await asyncio.shield(self.done)
        finally:
            self.stop()

    def _take_queued(self, side: _Side) -> None:
        """Messages uvicorn queued before the splice began (the client's SSH banner, sent
        before the agent dialled back) go first; a queued disconnect ends the splice."""
        queue = side.proto.queue
        while not queue.empty() and not self.done.done():
            message: dict[str, Any] = queue.get_nowait()  # type: ignore[assignment]
            if message["type"] != "websocket.receive":
                queue.put_nowait(message)  # for the endpoint's own receive(), now first in line
                self.stop()
                return
            data = message.get("bytes")
            if data:
                if not side.forward(data):
                    return
                side.peer.flush()

    def stop(self) -> None:
        """Give both transports back to uvicorn (idempotent)."""
        self.finish(None, None)

    def finish(self, side: _Side | None, then: Callable[[WebSocketsSansIOProtocol], None] | None) -> None:
        if self.done.done():
            return
        self.done.set_result(None)
        for s in self.sides:
            if s.transport.get_protocol() is s:
                s.transport.set_protocol(s.proto)
            if s.reading_paused and not s.transport.is_closing():
                s.reading_paused = False
                s.transport.resume_reading()
        if side is not None and then is not None:
            then(side.proto)
