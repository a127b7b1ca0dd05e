"""The listener ``hatchway server --metrics-listen`` serves ``GET /metrics`` on, and nothing else.

Metrics are read by a Prometheus server with no Hatchway account, so they are served without
credentials, on an address of their own that the operator keeps private (as Coder's
``--prometheus-address``): the API's listener never serves them, and this one serves nothing of
the API. Its connections are uvicorn's, on the server's event loop, behind the same guard on
slow clients as the API's, and they end with the server.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Any

#: What any other request is told.
NOT_FOUND = b"not found: this listener serves only GET /metrics\n"


#: ``scrape(accept)``: the metrics in the format an ``Accept`` header asks for, and its content type.
Scrape = Callable[[str], Awaitable[tuple[bytes, str]]]


class MetricsApp:
    """An ASGI app answering ``GET /metrics`` with what ``scrape`` returns, and 404 otherwise."""

    def __init__(self, scrape: Scrape) -> None:
        self._scrape = scrape

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off and WebSockets are not served here
            return
        if scope["method"] == "GET" and scope["path"] == "/metrics":
            accept = b",".join(v for k, v in scope["headers"] if k == b"accept").decode("latin-1")
            status, (body, content_type) = 200, await self._scrape(accept)
        else:
            status, content_type, body = 404, "text/plain; charset=utf-8", NOT_FOUND
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def url(sock: socket.socket) -> str:
    """Where a bound metrics socket serves, for the log (port 0 resolved)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
