"""RFC 6455 frames of a relayed byte stream, read incrementally and written whole.

A relayed SSH stream is a byte stream: where a WebSocket frame begins or ends means nothing to
it. So :class:`FrameReader` does not assemble frames or messages. It hands out each payload
piece as soon as it arrives (a view of the received chunk when the peer does not mask, one
unmasking copy when it does), and only the few bytes of a header split between two reads wait
for the next one. Splices re-frame what one read gave them as one frame on the other side.

What a stream does not carry is reported, never acted on: control frames come whole with their
raw bytes (so the connection's owner, uvicorn or websockets, can handle them exactly as it
would have), and a violation of the protocol stops the reader with the bytes from the
offending frame on (so the owner's own parser reports it with its usual close code).

No extension is ever negotiated on these connections, so a reserved bit set is a violation.
This module is imported by ``hatchway proxy`` on its start-up path: standard library only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
#: Event kinds :meth:`FrameReader.feed` returns, as the first item of each event tuple.
DATA, TEXT, CONTROL, VIOLATION = range(4)

#: A control frame's payload is at most 125 bytes; with the longest header, 139 on the wire.
MAX_CONTROL_PAYLOAD = 125
MAX_HEADER = 14

Piece = bytes | memoryview
Event = tuple  # (kind, ...), as FrameReader.feed describes; no typing import on the proxy's start-up path

_apply_mask: Callable[[Piece, bytes], bytes] | None = None


def _load_apply_mask() -> Callable[[Piece, bytes], bytes]:
    """websockets' C ``apply_mask`` (about 35 times faster than any pure-Python XOR), loaded by
    itself: importing it the usual way runs the websockets package's ``__init__`` and its
    ``importlib.metadata``, which costs more than the whole rest of the proxy's start."""
    with contextlib.suppress(Exception):
        from importlib.machinery import PathFinder
        from importlib.util import module_from_spec

        package = PathFinder.find_spec("websockets")
        if package is not None and package.submodule_search_locations:
            spec = PathFinder.find_spec("websockets.speedups", list(package.submodule_search_locations))
            if spec is not None and spec.loader is not None:
                module = module_from_spec(spec)
                spec.loader.exec_module(module)
                return module.apply_mask  # type: ignore[no-any-return]
    try:
        from websockets.speedups import apply_mask
    except ImportError:  # no C speedups in this build: websockets' pure-Python version
        from websockets.utils import apply_mask
    return apply_mask  # type: ignore[return-value]


def apply_mask(data: Piece, mask: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``mask`` (masking and unmasking are the same)."""
    global _apply_mask
    if _apply_mask is None:
        _apply_mask = _load_apply_mask()
    return _apply_mask(data, mask)


def close_reason(text: str) -> str:
    """``text`` as the reason of a close frame: the code takes 2 of its 125 bytes, so a longer
    one is cut at a character boundary and ends in "…" (a reason too long for the frame makes
    the WebSocket library refuse to send the close at all, and the peer sees none)."""
    limit = MAX_CONTROL_PAYLOAD - 2
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    return encoded[: limit - len("…".encode())].decode(errors="ignore") + "…"


def frame_header(opcode: int, length: int, mask: bytes = b"") -> bytes:
    """The header of one final frame with a payload of ``length`` bytes, masked with ``mask``
    (4 bytes, a client's frames) or not (empty, a server's)."""
    first = 0x80 | opcode
    bit = 0x80 if mask else 0
    if length < 126:
        head = bytes((first, bit | length))
    elif length < 1 << 16:
        head = bytes((first, bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + length.to_bytes(8, "big")
    return head + mask


class FrameReader:
    """Incremental reader of the frames one side of a stream sends.

    ``masked`` says whether that side is a client (whose frames must be masked) or a server
    (whose frames must not be). :meth:`feed` returns events, in order:

    * ``(DATA, piece)`` - stream bytes from a binary message;
    * ``(TEXT, piece, last)`` - bytes of a text message (``last`` when the message ends there);
    * ``(CONTROL, opcode, payload, raw)`` - a whole close, ping or pong frame, ``raw`` being its
      bytes as received;
    * ``(VIOLATION, reason, rest, code)`` - the peer broke RFC 6455, or sent a data frame
      longer than ``max_size``; ``rest`` holds the bytes from the offending frame on, ``code`` is
      the close code that says so (1002 or 1009). Nothing may be fed after it.

    ``max_size`` keeps the limit the connection's owner sets on messages (per frame here: a
    stream is never assembled, so it bounds nothing in memory, but a peer breaking it is
    treated the same on every path).

    Pieces may be views of the fed chunk: valid as long as the chunk is not modified.
    """

    __slots__ = ("_fin", "_head", "_kind", "_left", "_mask", "_message", "_pos", "masked", "max_size", "stopped")

    def __init__(self, masked: bool, max_size: int | None = None) -> None:
        self.masked = masked
        self.max_size = max_size
        self._head = b""  # a header (or a whole control frame) split between two chunks
        self._left = 0  # payload bytes still to come in the current data frame
        self._kind = DATA  # of the current data frame
        self._mask = b""
        self._pos = 0  # offset in the current frame's payload (where the mask stands)
        self._message = 0  # opcode of the fragmented message in progress, 0 for none
        self._fin = True  # whether the current data frame ends its message
        self.stopped = False

    def at_boundary(self) -> bool:
        """Whether everything fed so far was whole frames: nothing held, nothing owed."""
        return not self._left and not self._head and not self._message

    def skip_frame(self, data: bytes | bytearray | memoryview = b"") -> bytes | None:
        """Stop reading at the next frame boundary: drop what ``data`` holds of the current
        frame's payload and return the bytes from the next frame on (with a header held from
        earlier reads in front), or None while the frame goes on. This is how a connection goes
        back to a parser that must start at a frame (a fragmented message in progress cannot be
        handed back: the relay's peers never fragment)."""
        if self.stopped:
            return b""
        left, n = self._left, len(data)
        if n < left:
            self._left = left - n
            return None
        rest = self._head + bytes(memoryview(data)[left:])
        self._left, self._head, self.stopped = 0, b"", True
        return rest

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        if self.stopped:
            raise RuntimeError("the reader stopped at a protocol violation")
        if self._head:  # rare: a header split between reads
            data = self._head + bytes(data)
            self._head = b""
        view = memoryview(data)
        n = len(view)
        i = 0
        events: list[Event] = []
        while i < n:
            left = self._left
            if left:
                k = min(left, n - i)
                piece: Piece = view[i : i + k]
                if self._mask:
                    pos = self._pos & 3
                    mask = self._mask[pos:] + self._mask[:pos] if pos else self._mask
                    piece = apply_mask(piece, mask)
                    self._pos += k
                i += k
                self._left = left - k
                if self._kind == DATA:
                    events.append((DATA, piece))
                else:
                    events.append((TEXT, piece, self._fin and not self._left))
                continue
            if n - i < 2:
                self._head = bytes(view[i:])
                break
            b0, b1 = view[i], view[i + 1]
            l7 = b1 & 0x7F
            masked = bool(b1 & 0x80)
            size = 2 + (2 if l7 == 126 else 8 if l7 == 127 else 0) + (4 if masked else 0)
            if n - i < size:
                self._head = bytes(view[i:])
                break
            if l7 == 126:
                length = int.from_bytes(view[i + 2 : i + 4], "big")
            elif l7 == 127:
                length = int.from_bytes(view[i + 2 : i + 10], "big")
            else:
                length = l7
            opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
            reason = self._check(b0, masked, opcode, fin, length)
            code = 1002
            if not reason and opcode < OP_CLOSE and self.max_size is not None and length > self.max_size:
                reason, code = f"a frame of {length} bytes (at most {self.max_size})", 1009
            if reason:
                events.append((VIOLATION, reason, bytes(view[i:]), code))
                self.stopped = True
                break
            mask = bytes(view[i + size - 4 : i + size]) if masked else b""
            if opcode >= OP_CLOSE:
                if n - i < size + length:
                    self._head = bytes(view[i:])
                    break
                payload = bytes(view[i + size : i + size + length])
                if mask:
                    payload = apply_mask(payload, mask)
                events.append((CONTROL, opcode, payload, bytes(view[i : i + size + length])))
                i += size + length
                continue
            kind = self._message if opcode == OP_CONT else opcode
            self._message = 0 if fin else kind
            self._kind = DATA if kind == OP_BINARY else TEXT
            self._fin = fin
            self._mask, self._pos, self._left = mask, 0, length
            i += size
            if not length and self._kind == TEXT and fin:
                events.append((TEXT, b"", True))
        return events

    def _check(self, b0: int, masked: bool, opcode: int, fin: bool, length: int) -> str:
        """Why a frame with this header breaks the protocol here, or ``""``."""
        if b0 & 0x70:
            return "reserved bits set (no extension was negotiated)"
        if masked != self.masked:
            return "a client frame without a mask" if self.masked else "a masked frame from the server"
        if length >> 63:
            return "a frame length with its most significant bit set"
        if opcode >= OP_CLOSE:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                return f"unknown opcode {opcode}"
            if not fin or length > MAX_CONTROL_PAYLOAD:
                return "a fragmented or oversized control frame"
            return ""
        if opcode == OP_CONT:
            return "" if self._message else "a continuation frame without a message"
        if opcode not in (OP_TEXT, OP_BINARY):
            return f"unknown opcode {opcode}"
        return "a new message inside a fragmented one" if self._message else ""
