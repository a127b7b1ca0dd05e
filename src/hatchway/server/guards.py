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

#: What a waiting connection may have sent before it is held (uvloop reads once before a pause
#: takes effect). A request's headers fit easily; more is dropped rather than buffered, so a
#: queue of waiting connections costs at most this much memory each.
HELD_MAX = 16 * 1024


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

    def dropped_waiting(self, ip: str, held_max: int) -> None:
        self.refused += 1
        self._warn("dropped a waiting connection from %s: it sent over %d bytes before its turn (%d so far)",
                   ip, held_max, self.refused)

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
    """
    if not (hasattr(base, "on_message_begin") and hasattr(base, "on_headers_complete")):
        return base

    class Guarded(base):  # type: ignore[misc, valid-type]
        _hw_ip: str | None = None  # set while counted as sending headers
        _hw_queued: str | None = None  # set while waiting for a turn
        _hw_held: list[bytes] | None = None  # what arrived while waiting
        _hw_timer: asyncio.TimerHandle | None = None

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
                super().data_received(data)

        def data_received(self, data: bytes) -> None:
            if self._hw_held is not None:
                self._hw_held.append(data)
                self.transport.pause_reading()
                if sum(map(len, self._hw_held)) > HELD_MAX:
                    guard.dropped_waiting(self._hw_queued or "unknown", HELD_MAX)
                    self._hw_end()
                    self.transport.abort()
                return
            super().data_received(data)

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

        def on_headers_complete(self) -> None:
            self._hw_end()
            super().on_headers_complete()

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
        from hatchway.server.errors import DB_UNAVAILABLE_DETAIL, db_unavailable

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
            if not db_unavailable(exc) or closed:
                raise
            log.warning("WebSocket %s: database unavailable (%s)", scope.get("path", "?"), type(exc).__name__)
            with contextlib.suppress(Exception):  # the peer may be gone already
                if decided:  # accepted: say why in the stream's own error format, then close
                    text = json.dumps({"type": "error", "error": f"database unavailable: {DB_UNAVAILABLE_DETAIL}"})
                    await send({"type": "websocket.send", "text": text})
                await send({"type": "websocket.close", "code": 1013, "reason": "database unavailable"})
