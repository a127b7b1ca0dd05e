"""The long-lived WebSocket endpoints, dispatched in front of FastAPI's stack.

An idle relayed SSH connection lives for hours, and every frame of every middleware and router
its request passed through lives as long (about 29 KiB per connection, measured with
``python -m bench.memory``). These endpoints use none of it: no body, no dependencies, their own
authentication. So their paths go straight to their handlers; everything else, their errors
included (hatchway.server.guards.AcceptDeadline sits outside), is as before.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, WebSocket

from hatchway.server.api import agent, internal, ssh

Handler = Callable[..., Awaitable[None]]

#: Path patterns as FastAPI would match them (a parameter never spans a "/").
ROUTES: tuple[tuple[re.Pattern[str], Handler], ...] = (
    (re.compile(r"/api/v1/workspaces/(?P<name>[^/]+)/ssh"), ssh.ssh_stream),
    (re.compile(r"/api/v1/agent/streams/(?P<stream_id>[^/]+)"), agent.data_stream),
    (re.compile(r"/internal/v1/streams/(?P<stream_id>[^/]+)"), internal.handed_over_stream),
)


def route(path: str) -> tuple[Handler, dict[str, str]] | None:
    """The stream handler for ``path`` and its parameters, or None for everything else."""
    for pattern, handler in ROUTES:
        m = pattern.fullmatch(path)
        if m:
            return handler, m.groupdict()
    return None


class StreamDispatch:
    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        found = route(scope["path"]) if scope["type"] == "websocket" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        handler, params = found
        scope["app"] = self.app  # what websocket.app (and so the handlers' context) reads
        await handler(WebSocket(scope, receive, send), **params)
