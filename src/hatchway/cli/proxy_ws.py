"""``hatchway proxy`` over the websockets library (asyncio): through HTTP proxies.

:mod:`hatchway.cli.proxy` relays ``ws://`` and ``wss://`` connections itself with threads and
blocking sockets, which starts about twice as fast; proxy support (from the environment, as
websockets does it) comes from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
from typing import Any

from hatchway import __version__
from hatchway.cli.proxy import (
    CHUNK,
    EOF_GRACE_S,
    F_SETPIPE_SZ,
    MAX_FRAME,
    PIPE_SIZE,
    HandshakeRefused,
    Refused,
    message_text,
    stream_url,
)
from hatchway.malloc import keep_large_buffers
from hatchway.names import shown
from hatchway.unreachable import NOT_HATCHWAY_ADVICE, why_unreachable


def _pollable(fd: int) -> bool:
    """Pipes and sockets (what ssh gives a ProxyCommand) go through the event loop; files,
    terminals and /dev/null cannot be polled reliably, so those are served from a thread."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class _Fd:
    """Non-blocking reads and writes straight on a pipe or socket fd.

    asyncio's pipe transports copy and trim a buffer on every partial write; a bulk transfer
    through ssh's 64 KiB pipes is mostly that. Writing memoryview slices with os.write and
    waiting for readiness only when the kernel says so costs one syscall per chunk instead.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd, self.loop = fd, loop
        os.set_blocking(fd, False)
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            with contextlib.suppress(OSError):  # bigger pipes: fewer wake-ups (capped by the kernel)
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)

    async def _ready(self, add: Any, remove: Any) -> None:
        fut = self.loop.create_future()
        add(self.fd, lambda: fut.done() or fut.set_result(None))
        try:
            await fut
        finally:
            remove(self.fd)

    async def read(self) -> bytes:
        while True:
            try:
                return os.read(self.fd, CHUNK)
            except BlockingIOError:
                await self._ready(self.loop.add_reader, self.loop.remove_reader)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                await self._ready(self.loop.add_writer, self.loop.remove_writer)


async def _stdin_to_ws(ws: object, loop: asyncio.AbstractEventLoop) -> None:
    if _pollable(0):
        stdin = _Fd(0, loop)
        while data := await stdin.read():
            await ws.send(data)  # type: ignore[attr-defined]
        return
    while data := await loop.run_in_executor(None, os.read, 0, CHUNK):
        await ws.send(data)  # type: ignore[attr-defined]


async def _ws_to_stdout(ws: object, loop: asyncio.AbstractEventLoop) -> None:
    from websockets.exceptions import ConnectionClosedError

    stdout = _Fd(1, loop) if _pollable(1) else None
    try:
        async for message in ws:  # type: ignore[attr-defined]
            if isinstance(message, str):
                raise Refused(message_text(message))
            if stdout is not None:
                await stdout.write(message)
            else:
                await loop.run_in_executor(None, _write_all, 1, message)
    except ConnectionClosedError as exc:
        # websockets decodes text itself and closes on bytes that are not UTF-8, which ended
        # the proxy without a word: show them as the plain client does, with replacement
        # characters (the cause holds them; all of them, unless the message was fragmented).
        if isinstance(exc.__cause__, UnicodeDecodeError):
            raise Refused(message_text(exc.__cause__.object.decode(errors="replace"))) from None
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def run_proxy(url: str, token: str, workspace: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

    keep_large_buffers()  # see hatchway.malloc: relayed frames stay in the heap
    loop = asyncio.get_running_loop()
    try:
        ws = await connect(
            stream_url(url, workspace),
            additional_headers={"Authorization": f"Bearer {token}"},
            compression=None,
            max_size=MAX_FRAME,
            ping_interval=None,  # ssh's own keepalives cover liveness
            open_timeout=30,
            write_limit=CHUNK,
            user_agent_header=f"hatchway-proxy/{__version__}",  # as the plain ws:// client says
        )
    except InvalidStatus as exc:
        raise HandshakeRefused(url, exc.response.status_code) from None
    except InvalidHandshake as exc:  # not HTTP, or not a WebSocket handshake (or an HTTP proxy refusing)
        raise Refused(f"the server at {url} answered with an invalid WebSocket handshake ({shown(str(exc))}); "
                      f"{NOT_HATCHWAY_ADVICE}") from None
    except (TimeoutError, OSError) as exc:
        raise Refused(why_unreachable(url, exc)) from None
    async with ws:
        up = asyncio.create_task(_stdin_to_ws(ws, loop))
        down = asyncio.create_task(_ws_to_stdout(ws, loop))
        # Either side ending ends the connection: ssh closing our stdin means it is finished,
        # the server closing the stream means the workspace side is gone.
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        if up in done and not down.done():
            # Our input ended first: give the server a moment to finish what it is saying
            # (a refusal, the tail of the stream). ssh itself ends us with SIGHUP when it exits.
            await asyncio.wait({down}, timeout=EOF_GRACE_S)
        for t in (up, down):
            t.cancel()
        for result in await asyncio.gather(up, down, return_exceptions=True):
            if isinstance(result, Refused):
                raise result
