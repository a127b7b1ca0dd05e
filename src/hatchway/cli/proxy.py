"""``hatchway proxy WORKSPACE``: the ProxyCommand ssh runs for every connection.

It copies bytes between ssh (stdin/stdout) and one WebSocket to the server, and nothing else
may ever reach stdout. It imports only what it needs (no HTTP client, no Rich), because its
start-up time is part of every ``ssh`` a developer types.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import click

from hatchway.cli.session import NotLoggedIn, config_dir, load_session

CHUNK = 256 * 1024
MAX_FRAME = 4 * 1024 * 1024
EOF_GRACE_S = 5.0


class Refused(Exception):
    """The server refused or ended the stream; the message is for the user."""


def stream_url(base: str, workspace: str) -> str:
    """The WebSocket URL of ``workspace``'s SSH stream (``owner/name`` for another user's)."""
    owner = None
    if "/" in workspace:
        owner, name = workspace.split("/", 1)
    else:
        name = workspace
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + f"/api/v1/workspaces/{quote(name, safe='')}/ssh"
    query = f"owner={quote(owner, safe='')}" if owner else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def _message(text: str) -> str:
    try:
        data = json.loads(text)
        return str(data.get("error") or text)
    except (ValueError, AttributeError):
        return text


def _pollable(fd: int) -> bool:
    """Pipes and sockets (what ssh gives a ProxyCommand) go through the event loop; files,
    terminals and /dev/null cannot be polled reliably, so those are served from a thread."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _stdin_to_ws(ws: object, loop: asyncio.AbstractEventLoop) -> None:
    if not _pollable(0):
        while data := await loop.run_in_executor(None, os.read, 0, CHUNK):
            await ws.send(data)  # type: ignore[attr-defined]
        return
    reader = asyncio.StreamReader(limit=CHUNK * 2, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0, closefd=False)
    )
    try:
        while data := await reader.read(CHUNK):
            await ws.send(data)  # type: ignore[attr-defined]
    finally:
        transport.close()


async def _ws_to_stdout(ws: object, loop: asyncio.AbstractEventLoop) -> None:
    if not _pollable(1):
        async for message in ws:  # type: ignore[attr-defined]
            if isinstance(message, str):
                raise Refused(_message(message))
            await loop.run_in_executor(None, _write_all, 1, message)
        return
    pipe = os.fdopen(1, "wb", buffering=0, closefd=False)
    transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, pipe)
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    try:
        async for message in ws:  # type: ignore[attr-defined]
            if isinstance(message, str):
                raise Refused(_message(message))
            writer.write(message)
            await writer.drain()
    finally:
        transport.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def run_proxy(url: str, token: str, workspace: str) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

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
        )
    except InvalidStatus as exc:
        raise Refused(f"the server at {url} refused the connection (HTTP {exc.response.status_code})") from None
    except (OSError, asyncio.TimeoutError) as exc:
        raise Refused(f"cannot reach the Hatchway server at {url}: {exc}") from None
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


@click.command()
@click.argument("workspace")
@click.option("--config-dir", "config_path", type=click.Path(path_type=Path), help="Where the login is stored [env HATCHWAY_CONFIG_DIR].")
def proxy(workspace: str, config_path: Path | None) -> None:
    """Relay one SSH connection to WORKSPACE (used as ssh's ProxyCommand)."""
    try:
        session = load_session(config_dir(config_path))
    except NotLoggedIn as exc:
        click.echo(f"hatchway: {exc}", err=True)
        sys.exit(1)
    try:
        asyncio.run(run_proxy(session.url, session.token, workspace))
    except Refused as exc:
        click.echo(f"hatchway: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
