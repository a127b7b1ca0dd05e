"""Bounds on slow and abusive clients, for every listener of the server.

uvicorn bounds the idle time *between* requests on a keep-alive connection (``timeout_keep_alive``)
and WebSocket liveness (pings), but nothing bounds how long a client may take to send a request's
headers: a "slowloris" client that opens connections and dribbles a byte now and then would hold
them forever. Two guards close that gap:

* :func:`guard_protocol` wraps uvicorn's HTTP protocol: every request's headers must be complete
  within ``handshake_timeout`` seconds of the connection opening (or of the request's first
  byte), else the connection is dropped; and one client address may have at most
  ``max_handshaking_per_ip`` connections being read before their headers are complete. Further
  connections from that address wait their turn unread (up to ``WAITING_PER_SLOT`` times that
  cap, all within the same deadline) and are dropped only beyond that. A legitimate client sends
  its headers in one packet, so it is counted for one read; a burst of them (many ``ssh`` started
  at once, agents reconnecting after a restart) is accepted in batches faster than their headers
  are read, and waits instead of being dropped. A slow client from one address cannot crowd out
  anyone else: its share is that cap, and the connections it queues behind it end at the deadline.
  The same protocol bounds the headers' *size*: a request line and headers over ``HEAD_MAX``
  bytes (or a chunked body's trailers over it) are refused before more is parsed. A waiting
  connection holds at most that much too: a head that does not end within it is answered the
  same 431 at once (it would be on its turn); one that does, followed by more than fits, is
  dropped (a body cannot be judged before its turn, nor held without bound).
* :class:`AcceptDeadline` bounds the WebSocket opening handshake on the application side: an
  endpoint must accept or refuse within ``timeout`` seconds (e.g. while the database is down),
  else the upgrade is refused with 1013 "try again later" instead of hanging.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("hatchway.server.guards")

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

#: Warn about dropped connections at most this often (a flood must not flood the log too).
WARN_EVERY = 30.0

#: Connections one address may have waiting for a turn to be read, per connection being read.
WAITING_PER_SLOT = 16

#: The most a request line and its headers together (or a chunked body's trailers) may take, in
#: bytes. h11 allows 16 KiB and nginx about 32 KiB; browsers send every cookie of the host name,
#: whatever else runs there, so this is generous. httptools appends each read to the header it
#: is parsing (a copy of all of it per read) and uvicorn keeps the result, so an unbounded header
#: costs the server quadratic CPU and all the memory a client cares to send. It is also the most
#: a connection waiting its turn may have sent (uvloop reads once before a pause takes effect):
#: a request is not refused for having waited, and a queue of waiting connections costs at most
#: this much memory each.
HEAD_MAX = 64 * 1024

#: After answering 431, what the client still sends is read and dropped for at most this long and
#: this much, so a client that is still sending reads the answer instead of a connection reset
#: (closing a socket with unread data makes the kernel reset it).
LINGER_S = 2.0
LINGER_MAX = 1024 * 1024


def _too_large_response(default_headers: list[tuple[bytes, bytes]]) -> bytes:
    body = json.dumps({
        "error": "request header fields too large",
        "detail": f"a request's line and headers may take at most {HEAD_MAX // 1024} KiB together; send fewer or "
                  "shorter headers (oversized cookies are the usual cause: clear this site's cookies)",
    }).encode()
    head = [b"HTTP/1.1 431 Request Header Fields Too Large"]
    head += [name + b": " + value for name, value in default_headers]
    head += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(), b"connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class Turn(enum.Enum):
    """What :meth:`ConnectionGuard.begin` decided for a new connection."""

    READ = "read"  # counted: read its headers now
    WAIT = "wait"  # its address is at the cap: hold it unread until its turn comes
    DROP = "drop"  # at the cap and its queue is full (or it may not wait)


class ConnectionGuard:
    """Shared state of one server: connections still sending headers, per client address, and
    the connections queued behind them."""

    def __init__(
        self, handshake_timeout: float, max_handshaking_per_ip: int, uncapped: frozenset[str] = frozenset()
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.max_per_ip = max_handshaking_per_ip
        self.max_waiting_per_ip = WAITING_PER_SLOT * max_handshaking_per_ip
        # Trusted proxies (a load balancer in front of replicas) carry every client's
        # connections from one address: the per-address cap would refuse a busy balancer.
        # The header deadline still applies to them.
        self.uncapped = uncapped
        self.handshaking: dict[str, int] = {}
        self.waiting: dict[str, collections.deque[Callable[[], None]]] = {}
        self.timed_out = 0
        self.refused = 0
        self.oversized = 0
        self._warned_at = 0.0

    def begin(self, ip: str, on_turn: Callable[[], None] | None = None) -> Turn:
        """Count a connection from ``ip`` that is about to send headers.

        At the cap, ``on_turn`` (if given) is queued and called, already counted, when a
        connection from that address is done with its headers."""
        n = self.handshaking.get(ip, 0)
        if n < self.max_per_ip or ip in self.uncapped:
            self.handshaking[ip] = n + 1
            return Turn.READ
        queue = self.waiting.get(ip)
        if on_turn is not None and (queue is None or len(queue) < self.max_waiting_per_ip):
            self.waiting.setdefault(ip, collections.deque()).append(on_turn)
            return Turn.WAIT
        self.refused += 1
        self._warn(
            "%s has %d connections still sending request headers and %d waiting; dropping more (%d so far)",
            ip, n, len(queue or ()), self.refused,
        )
        return Turn.DROP

    def end(self, ip: str) -> None:
        """A counted connection is done with its headers (or gone): the next in line gets its turn."""
        queue = self.waiting.get(ip)
        if queue:
            on_turn = queue.popleft()
            if not queue:
                del self.waiting[ip]
            on_turn()  # the count passes to it unchanged
            return
        n = self.handshaking.get(ip, 0) - 1
        if n > 0:
            self.handshaking[ip] = n
        else:
            self.handshaking.pop(ip, None)

    def leave(self, ip: str, on_turn: Callable[[], None]) -> None:
        """A waiting connection went away (or ran out of time) before its turn."""
        queue = self.waiting.get(ip)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(on_turn)
        if not queue:
            del self.waiting[ip]

    def dropped_waiting(self, ip: str) -> None:
        self.refused += 1
        self._warn("dropped a waiting connection from %s: it sent a request head and more, over %d bytes in all, "
                   "before its turn (%d so far)", ip, HEAD_MAX, self.refused)

    def too_large(self, ip: str, what: str) -> None:
        self.oversized += 1
        self._warn("refused a request from %s: its %s exceeded %d bytes (%d so far)", ip, what, HEAD_MAX, self.oversized)

    def bad_upgrade(self, ip: str, exc: Exception) -> None:
        self.refused += 1
        self._warn("refused a WebSocket upgrade from %s: %s: %s (%d so far)", ip, type(exc).__name__, exc, self.refused)

    def expired(self, ip: str) -> None:
        self.timed_out += 1
        self._warn(
            "dropped a connection from %s: request headers not complete within %.0f s (%d so far)",
            ip, self.handshake_timeout, self.timed_out,
        )

    def _warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning(message, *args)
        else:
            log.debug(message, *args)


def guard_protocol(base: type, guard: ConnectionGuard) -> type:
    """A subclass of uvicorn's httptools protocol enforcing ``guard``'s bounds.

    It hooks the parser callbacks (``on_message_begin``, ``on_headers_complete``); a protocol
    class without them (h11) is returned unchanged.

    Header sections (a request's line and headers; a chunked body's trailers) are counted as
    they arrive, one addition per read, and never handed to the parser beyond ``HEAD_MAX``
    bytes: a request whose head does not end within that is answered 431 and closed, without
    another look at what was read. A section is counted from the first read after it begins
    (where it begins inside a read is not known), so one that starts mid-read (a pipelined
    request, trailers) may take up to a read's worth more: still bounded.
    """
    if not (hasattr(base, "on_message_begin") and hasattr(base, "on_headers_complete")):
        return base

    class Guarded(base):  # type: ignore[misc, valid-type]
        _hw_ip: str | None = None  # set while counted as sending headers
        _hw_queued: str | None = None  # set while waiting for a turn
        _hw_held: list[bytes] | None = None  # what arrived while waiting
        _hw_timer: asyncio.TimerHandle | None = None
        # Bytes of the header section being parsed; None while a body is.
        _hw_head: int | None = 0
        _hw_trailers = False  # the section counted is a chunked body's trailers, not a head
        _hw_lingering: int | None = None  # bytes dropped since the answer 431

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            ip = self.client[0] if self.client else "unknown"
            turn = guard.begin(ip, self._hw_turn)
            if turn is Turn.DROP:
                transport.abort()
                return
            if turn is Turn.WAIT:
                self._hw_queued, self._hw_held = ip, []
                transport.pause_reading()  # uvloop reads once anyway: data_received holds that
            else:
                self._hw_ip = ip
            self._hw_timer = self.loop.call_later(guard.handshake_timeout, self._hw_expire)

        def _hw_turn(self) -> None:
            """Called by another connection's :meth:`ConnectionGuard.end`: carry on from the
            loop, not inside that connection's parser callback."""
            self._hw_ip, self._hw_queued = self._hw_queued, None
            self.loop.call_soon(self._hw_resume)

        def _hw_resume(self) -> None:
            held, self._hw_held = self._hw_held or [], None
            if self.transport.is_closing():
                return
            self.transport.resume_reading()
            for data in held:
                self.data_received(data)

        def data_received(self, data: bytes) -> None:
            if self._hw_held is not None:
                self._hw_hold(self._hw_held, data)
                return
            if self._hw_lingering is not None:
                self._hw_lingering += len(data)
                if self._hw_lingering > LINGER_MAX:
                    self.transport.abort()
                return
            self._hw_parse(data)

        def _hw_hold(self, held: list[bytes], data: bytes) -> None:
            """Keep what a waiting connection sent for its turn, up to ``HEAD_MAX`` bytes: a
            request head that large is served when read at once, so it is after waiting too."""
            held.append(data)
            self.transport.pause_reading()
            if sum(map(len, held)) <= HEAD_MAX:
                return
            self._hw_held = None
            if b"\r\n\r\n" not in b"".join(held)[:HEAD_MAX]:  # httptools takes no other end of a head
                # Its head is over the limit: the answer its turn would get, now.
                self.transport.resume_reading()  # what follows the answer is read and dropped
                self._hw_too_large()
                return
            # The head ended in time, and more came with it (a body, the next request): that may
            # be valid, but only its turn can tell, and holding all of it would have no bound.
            guard.dropped_waiting(self._hw_queued or "unknown")
            self._hw_end()
            self.transport.abort()

        def _hw_parse(self, data: bytes | memoryview) -> None:
            """Parse ``data``; what belongs to a header section only up to ``HEAD_MAX``."""
            while True:
                seen = self._hw_head
                if seen is None or seen + len(data) <= HEAD_MAX:
                    if seen is not None:
                        self._hw_head = seen + len(data)
                    super().data_received(data)
                    return
                # This read takes the section past the limit: parse up to the limit, and go on
                # only if the section ended there (a body or the next request follows).
                room = HEAD_MAX - seen
                view = memoryview(data)
                self._hw_head = HEAD_MAX  # the callbacks reset it when the section ends
                super().data_received(view[:room])
                if self.transport.is_closing():
                    return  # uvicorn refused it (invalid HTTP) and has said so
                if self._hw_head == HEAD_MAX:
                    self._hw_too_large()
                    return
                if self.transport.get_protocol() is not self:
                    return  # a WebSocket now: uvicorn drops what came with the upgrade too
                data = view[room:]

        def _hw_too_large(self) -> None:
            """Refuse a header section over the limit: 431 if that can still be the answer to
            this request, else just close."""
            ip = self.client[0] if self.client else "unknown"
            guard.too_large(ip, "trailers" if self._hw_trailers else "request line and headers")
            self._hw_end()
            answering = self.cycle is not None and not self.cycle.response_complete
            if self._hw_trailers or answering:  # the request is the app's now, or the one before it is
                self.transport.abort()
                return
            self.transport.write(_too_large_response(self.server_state.default_headers))
            if self.transport.can_write_eof():
                self.transport.write_eof()  # the client sees the end at once; reading goes on
            self._hw_lingering = 0
            self._hw_timer = self.loop.call_later(LINGER_S, self.transport.abort)

        def _hw_end(self) -> None:
            if self._hw_timer is not None:
                self._hw_timer.cancel()
                self._hw_timer = None
            if self._hw_queued is not None:
                guard.leave(self._hw_queued, self._hw_turn)
                self._hw_queued = None
            if self._hw_ip is not None:
                guard.end(self._hw_ip)
                self._hw_ip = None

        def _hw_expire(self) -> None:
            self._hw_timer = None
            ip = self._hw_ip or self._hw_queued
            if ip is not None:
                guard.expired(ip)
            self._hw_end()
            if not self.transport.is_closing():
                self.transport.abort()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._hw_ip is not None:
                return
            # A keep-alive connection starting its next request: it is being parsed already,
            # so it is counted or dropped, never held.
            ip = self.client[0] if self.client else "unknown"
            if guard.begin(ip) is Turn.DROP:
                self.transport.abort()
                return
            self._hw_ip = ip
            if self._hw_timer is None:
                self._hw_timer = self.loop.call_later(guard.handshake_timeout, self._hw_expire)

        def handle_websocket_upgrade(self) -> None:
            super().handle_websocket_upgrade()
            # websockets refuses a handshake it cannot parse (a header line over its 8 KiB, more
            # than 128 headers) by queueing an answer that uvicorn never sends: the connection
            # would stay open unanswered, past every deadline here. Send it, and close.
            ws = self.transport.get_protocol()
            conn = getattr(ws, "conn", None)
            if conn is None or conn.handshake_exc is None or getattr(ws, "handshake_initiated", True):
                return
            guard.bad_upgrade(self.client[0] if self.client else "unknown", conn.handshake_exc)
            self.transport.write(b"".join(conn.data_to_send()))
            self.transport.close()

        def on_headers_complete(self) -> None:
            self._hw_head = None
            self._hw_end()
            super().on_headers_complete()

        def on_chunk_header(self) -> None:
            # If this is the last chunk, trailers follow: counted until data shows it is not.
            self._hw_head, self._hw_trailers = 0, True

        def on_body(self, body: bytes) -> None:
            self._hw_head = None
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._hw_head, self._hw_trailers = 0, False  # the next request's head may follow
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._hw_end()
            super().connection_lost(exc)

    Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
    return Guarded


class AcceptDeadline:
    """ASGI middleware for WebSockets: an endpoint must accept or refuse within ``timeout``
    seconds, and a database outage ends the socket with a message instead of a traceback.

    After the decision nothing is bounded here (SSH sessions may rightly idle for hours; dead
    peers are found by WebSocket pings), and the per-message cost is one flag test.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        from hatchway.server.errors import app_sqlite_file, db_failure, log_db_failure

        decided = False
        closed = False
        deadline = asyncio.timeout(self.timeout)

        async def tracking_send(message: Message) -> None:
            nonlocal decided, closed
            if not decided and message["type"] in ("websocket.accept", "websocket.close", "websocket.http.response.start"):
                decided = True
                deadline.reschedule(None)
            if message["type"] == "websocket.close":
                closed = True
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            if decided or not deadline.expired():
                raise
            log.warning("a WebSocket to %s was not accepted within %.0f s; refused", scope.get("path", "?"), self.timeout)
            await send({"type": "websocket.close", "code": 1013, "reason": "try again later"})
        except Exception as exc:
            sqlite_path = app_sqlite_file(scope["app"]) if "app" in scope else None
            failure = db_failure(exc, sqlite_path)
            if failure is None or closed:
                raise
            log_db_failure(f"WebSocket {scope.get('path', '?')}", exc, sqlite_path)
            error, detail = failure
            with contextlib.suppress(Exception):  # the peer may be gone already
                if decided:  # accepted: say why in the stream's own error format, then close
                    text = json.dumps({"type": "error", "error": f"{error}: {detail}"})
                    await send({"type": "websocket.send", "text": text})
                await send({"type": "websocket.close", "code": 1013, "reason": error})
