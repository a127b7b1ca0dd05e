"""Copy a stream between two ends in the event loop's callbacks.

A task per direction costs, for every read, a wake-up and a buffer on each side; a relayed SSH
stream needs neither. While a :class:`Splice` runs, each end's transport calls the end itself:
what one read returns is written to the other end in the same callback, as one frame on a
WebSocket (whatever frames it arrived in) or as it is on a socket. Backpressure stays the
transports' own: an end whose write buffer is full pauses reading on the other.

A WebSocket end is taken over from its owner, the protocol object that did the handshake
(uvicorn's on the server, websockets' in the agent), and given back when the splice ends. What
is not stream data goes to the owner exactly as it would have: control frames are handed to
its ``data_received`` as the bytes that arrived, so it answers pings and keeps its own
keepalive; a close frame, a protocol violation, end of file or a lost connection end the
splice, give the transports back, and are then handed over, so the owner closes with its usual
codes and the code around the splice sees what it always saw.

Taking a WebSocket over is only correct where its owner's parser holds no partial frame:
:func:`parser_idle` says so, and callers fall back to their copy loops otherwise.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from functools import partial
from typing import Any

from websockets.protocol import CLIENT, OPEN, SERVER
from websockets.protocol import Protocol as SansIOProtocol

from hatchway.bytepath.frames import (
    CONTROL,
    DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_TEXT,
    VIOLATION,
    FrameReader,
    apply_mask,
    frame_header,
)

Count = Callable[[int], None]


def parser_idle(conn: SansIOProtocol) -> bool:
    """Whether websockets' parser has consumed every byte fed to it and waits for the first
    byte of a frame, so that the bytes that follow can be parsed elsewhere.

    websockets exposes no such state: its parser is a generator that, between frames, waits in
    ``StreamReader.at_eof`` with an empty buffer, at the end of its chain of ``yield from`` (and
    inside ``Frame.parse`` anywhere else). Anything unexpected answers False, which only costs
    the fast path; tests/unit/test_bytepath_frames.py pins this to the installed websockets."""
    if conn.state is not OPEN or conn.reader.buffer:
        return False
    if getattr(conn, "current_size", 0) is not None or getattr(conn, "expect_continuation_frame", True):
        return False  # a fragmented message in progress, received or sent
    innermost = conn.parser  # the handshake's parser delegates to the frames' parser
    while (inner := getattr(innermost, "gi_yieldfrom", None)) is not None:
        innermost = inner
    code = getattr(innermost, "gi_code", None)
    return code is not None and code.co_name == "at_eof"


def connection_idle(ws: Any) -> bool:
    """Whether a websockets asyncio connection holds nothing the peer sent: no partial frame in
    its parser and no message waiting for ``recv()`` (its transport can then be taken over)."""
    queued = getattr(getattr(ws, "recv_messages", None), "frames", None)
    transport = ws.transport
    return queued is not None and not len(queued) and parser_idle(ws.protocol) and not transport.is_closing()


class _End(asyncio.Protocol):
    """One end of a splice: the protocol of its transport while the splice runs."""

    def __init__(self, transport: Any, count: Count | None = None) -> None:
        self.transport = transport
        self.owner: asyncio.BaseProtocol = transport.get_protocol()
        self.count = count  # bytes of stream data read on this end
        self.splice: Splice | None = None
        self.peer: _End = self
        self.reading_paused = False  # by the peer's full write buffer

    def write(self, pieces: list[Any], size: int) -> bool:
        """Write stream bytes to this end; False when it cannot take them any more."""
        raise NotImplementedError

    def forward(self, pieces: list[Any], size: int) -> None:
        if self.splice is None or self.splice.done.done():
            return  # over (a write that failed earlier in the same read)
        if self.count is not None:
            self.count(size)
        if not self.peer.write(pieces, size):
            self.end(None)

    def end(self, then: Callable[[], Any] | None) -> None:
        """End the splice, then hand the event to the owner (at once if the splice is already
        over and this end only finishes a frame before giving its transport back)."""
        if self.splice is not None and not self.splice.done.done():
            self.splice.finish(then)
        elif self.transport.get_protocol() is self:
            self.return_transport()
            if then is not None:
                then()

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.reading_paused = False
        self.transport.resume_reading()

    def return_transport(self) -> None:
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.owner)

    def give_back(self) -> None:
        self.return_transport()
        if self.reading_paused and not self.transport.is_closing():
            self.resume_reading()

    def writing_paused(self) -> bool:
        high = self.transport.get_write_buffer_limits()[1]
        return bool(self.transport.get_write_buffer_size() > high)

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def pause_writing(self) -> None:
        self.owner.pause_writing()
        if self.splice is not None and not self.splice.done.done():
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        self.owner.resume_writing()
        if self.splice is not None and not self.splice.done.done():
            self.peer.resume_reading()

    def eof_received(self) -> bool | None:
        self.end(getattr(self.owner, "eof_received", None))
        return None  # close: connection_lost follows, handed to the owner

    def connection_lost(self, exc: Exception | None) -> None:
        owner = self.owner
        self.end(lambda: owner.connection_lost(exc))


class SocketEnd(_End):
    """A plain stream socket (the agent's connection to port 22). Its owner, an asyncio stream,
    had read all it will before the splice began: it gets the socket back without reading,
    just to be told when the socket is closed."""

    def give_back(self) -> None:
        self.return_transport()
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if data:
            self.forward([data], len(data))

    def write(self, pieces: list[Any], size: int) -> bool:
        if self.transport.is_closing():
            return False
        self.transport.writelines(pieces)
        return True


class WebSocketEnd(_End):
    """A WebSocket whose handshake its owner did; ``conn`` is the owner's websockets protocol
    (sans-I/O) object, which says whether this end is the client (masks what it sends) and
    whether the connection is still open for data."""

    def __init__(self, transport: Any, conn: SansIOProtocol, count: Count | None = None) -> None:
        super().__init__(transport, count)
        self.conn = conn
        self.client = conn.side is CLIENT
        self.reader = FrameReader(masked=conn.side is SERVER, max_size=conn.max_message_size)
        self.draining = False  # the splice is over; the rest of a frame is read and dropped

    def give_back(self) -> None:
        """The owner's parser must start at a frame: a splice that ends in the middle of one
        (a policy end during a transfer, the other side closing) keeps reading this end until
        the frame is over, then gives the transport back with what follows."""
        rest = self.reader.skip_frame()
        if rest is None:
            self.draining = True
            if self.reading_paused and not self.transport.is_closing():
                self.resume_reading()
            return
        super().give_back()
        if rest:
            self.owner.data_received(rest)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.draining:
            rest = self.reader.skip_frame(data)
            if rest is not None:
                self.draining = False
                super().give_back()
                if rest:
                    self.owner.data_received(rest)  # type: ignore[attr-defined]
            return
        pieces: list[Any] = []
        size = 0
        for event in self.reader.feed(data):
            kind = event[0]
            if kind == DATA:
                pieces.append(event[1])
                size += len(event[1])
                continue
            if kind != CONTROL and kind != VIOLATION:
                continue  # text carries no SSH bytes
            if pieces:  # what came before goes first
                self.forward(pieces, size)
                pieces, size = [], 0
            raw = event[3] if kind == CONTROL else event[2]
            owner = self.owner
            if kind == CONTROL and event[1] != OP_CLOSE:
                owner.data_received(raw)  # type: ignore[attr-defined]  # pings answered, pongs seen
            else:
                self.end(partial(owner.data_received, raw))  # type: ignore[attr-defined]
            if self.splice is None or self.splice.done.done():
                return
        if pieces:
            self.forward(pieces, size)

    def write(self, pieces: list[Any], size: int, opcode: int = OP_BINARY) -> bool:
        """One frame with ``pieces`` (``size`` bytes in all) as its payload."""
        if self.conn.state is not OPEN or self.transport.is_closing():
            return False  # a close frame went out (a failed keepalive, say): no data may follow
        if self.client:
            mask = os.urandom(4)
            payload = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self.transport.writelines((frame_header(opcode, size, mask), apply_mask(payload, mask)))
        else:
            self.transport.writelines([frame_header(opcode, size), *pieces])
        return True

    def write_text(self, text: str) -> bool:
        data = text.encode()
        return self.write([data], len(data), OP_TEXT)


class Splice:
    """Two ends copied into each other until either ends or :meth:`stop` is called."""

    def __init__(self, a: _End, b: _End) -> None:
        self.ends = (a, b)
        a.peer, b.peer = b, a
        a.splice = b.splice = self
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self, start: Callable[[], None] | None = None) -> None:
        """Take both transports, call ``start`` (for what arrived before: see the callers), and
        copy until the splice ends; the transports are given back on every path."""
        if self.done.done():  # stopped before it began
            return
        for end in self.ends:
            end.transport.set_protocol(end)
        try:
            if start is not None:
                start()
            for end in self.ends:
                if end.writing_paused() and not self.done.done():
                    end.peer.pause_reading()
            await asyncio.shield(self.done)
        finally:
            self.stop()

    def stop(self) -> None:
        """Give both transports back to their owners (idempotent)."""
        self.finish(None)

    def finish(self, then: Callable[[], Any] | None) -> None:
        """End the splice, give the transports back, then hand the event that ended it
        (``then``) to its owner."""
        if self.done.done():
            return
        self.done.set_result(None)
        for end in self.ends:
            end.give_back()
        if then is not None:
            then()
