"""``X-Content-Type-Options: nosniff`` on every HTTP response, the API's JSON and every error
included, not only the web UI's pages and files.

Without it a browser may guess a response's type from its bytes: a JSON error that echoes what a
request sent (a workspace or user name) could then be read as HTML or script by a page that
points at it. The API's clients (the CLI, scripts) ignore the header, so it costs nothing there.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from hatchway.server.limits import Message, Receive, Scope, Send

NAME, VALUE = "X-Content-Type-Options", "nosniff"
HEADER = (NAME.lower().encode(), VALUE.encode())


def with_nosniff(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` (an ASGI response start's) with nosniff, unless they already say it."""
    if any(name.lower() == HEADER[0] for name, _ in headers):
        return headers
    return [*headers, HEADER]


class NoSniff:
    """ASGI middleware adding :data:`HEADER` to every HTTP response that lacks it. Starlette
    answers an unhandled exception outside every middleware added to the app, so that answer
    (hatchway.server.errors) carries the header itself."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": with_nosniff(list(message.get("headers", [])))}
            await send(message)

        await self.app(scope, receive, send_nosniff)
