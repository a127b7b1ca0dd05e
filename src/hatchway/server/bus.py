"""The message bus between server replicas: PostgreSQL LISTEN/NOTIFY, or nothing at all.

Some changes must take effect on every replica at once (a provider's External Connect turned
off ends sessions wherever they are relayed; a regenerated key reaches the agent wherever it is
connected). A change is applied on the replica that made it straight away and then published;
every other replica applies it when the notification arrives (milliseconds later). With SQLite
there is only one process, so :class:`LocalBus` just applies it.

Events are small JSON objects ``{"kind": ..., "origin": replica id, ...fields}``; handlers are
registered per kind. A lost notification (the listening connection dropped) cannot be replayed
by PostgreSQL, so the listener logs the gap loudly; every policy is also checked again when a
stream opens, which is what keeps a missed event from letting anyone in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchway import peerjson
from hatchway.server import presence
from hatchway.server.errors import db_error_text

log = logging.getLogger("hatchway.server.bus")

CHANNEL = "hatchway_events"
#: PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; ours are far smaller, but a
#: reason string is cut rather than letting one long message fail the publish.
MAX_FIELD = 1000
#: How often the listener proves its connection is alive (a silent TCP drop shows here).
KEEPALIVE_S = 5.0

Handler = Callable[[dict[str, Any]], Awaitable[None]]


def encode_event(kind: str, origin: str, fields: dict[str, Any]) -> str:
    clean = {k: (v[:MAX_FIELD] if isinstance(v, str) else v) for k, v in fields.items() if v is not None}
    return json.dumps({**clean, "kind": kind, "origin": origin}, separators=(",", ":"))


def decode_event(payload: str) -> dict[str, Any] | None:
    """The event in a notification, or None when it is not one of ours."""
    try:
        event = peerjson.loads(payload)  # anyone who can connect to the database can NOTIFY
    except ValueError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("kind"), str) or not isinstance(event.get("origin"), str):
        return None
    return event


class LocalBus:
    """One process: publishing applies the event here and nowhere else."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self._handlers: dict[str, Handler] = {}

    def subscribe(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    async def publish(self, kind: str, **fields: Any) -> None:
        await self._dispatch({**fields, "kind": kind, "origin": self.origin})

    async def _dispatch(self, event: dict[str, Any]) -> None:
        handler = self._handlers.get(event["kind"])
        if handler is None:
            log.debug("no handler for event %r", event["kind"])
            return
        try:
            await handler(event)
        except Exception:
            log.exception("applying event %r failed", event["kind"])

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PostgresBus(LocalBus):
    """LISTEN on one dedicated connection; NOTIFY through the engine's pool."""

    def __init__(self, origin: str, engine: AsyncEngine) -> None:
        super().__init__(origin)
        self._engine = engine
        self._task: asyncio.Task[None] | None = None
        self._applying: set[asyncio.Task[None]] = set()
        self.listening = asyncio.Event()

    async def publish(self, kind: str, **fields: Any) -> None:
        await super().publish(kind, **fields)
        payload = encode_event(kind, self.origin, fields)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})
        except Exception as exc:
            log.error("could not tell the other replicas about %s (%s); they apply it only when "
                      "they next check the database", kind, db_error_text(exc))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen_forever(), name="bus-listener")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.listening.wait(), 10)  # start serving even if slow

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._applying) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        event = decode_event(payload)
        if event is None or event["origin"] == self.origin:
            return  # ours was applied when it was published
        task = asyncio.create_task(self._dispatch(event))
        self._applying.add(task)
        task.add_done_callback(self._applying.discard)

    async def _listen_forever(self) -> None:
        delay, lost = 0.2, False
        while True:
            conn = None
            try:
                conn = await presence.connect(self._engine, self.origin)
                await conn.add_listener(CHANNEL, self._on_notify)
                self.listening.set()
                if lost:
                    log.warning("listening for other replicas' events again; changes made meanwhile "
                                "reach this replica's open sessions only through new checks")
                delay = 0.2
                while True:
                    await asyncio.sleep(KEEPALIVE_S)
                    await conn.fetchval("SELECT 1", timeout=KEEPALIVE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening.clear()
                lost = True
                log.error("lost the event connection to PostgreSQL (%s); retrying in %.1f s", db_error_text(exc), delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
