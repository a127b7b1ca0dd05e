"""Copy SSH bytes between a data WebSocket and a stream socket, both ways, bounded.

The agent's last hop of the byte path (DESIGN "The byte path"). Each direction awaits its write
before reading more: ``writer.drain()`` waits while the socket's buffer is full, and the
WebSocket's ``send()`` waits while its transport buffer is above the write limit, so a slow
reader slows the writer through TCP and memory per stream stays bounded. Reads are large
(256 KiB) so a bulk transfer costs few Python iterations per megabyte.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

log = logging.getLogger("hatchway.agent.splice")

READ_CHUNK = 256 * 1024
#: How long closing may take before we stop waiting (a peer that stopped reading).
CLOSE_TIMEOUT = 5.0


async def _ws_to_stream(ws: ClientConnection, writer: asyncio.StreamWriter) -> None:
    while True:
        try:
            message = await ws.recv()
        except ConnectionClosed:
            return
        if isinstance(message, str):
            continue  # text frames carry no SSH bytes
        writer.write(message)
        await writer.drain()


async def _stream_to_ws(reader: asyncio.StreamReader, ws: ClientConnection) -> None:
    while True:
        data = await reader.read(READ_CHUNK)
        if not data:
            return
        await ws.send(data)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream, waiting (bounded) until its transport really let go of the socket."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


async def close_ws(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)


async def splice(ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until either side ends, then close both (on every path, cancellation included).

    SSH has no use for half-closed connections, so the end of one direction ends the other:
    this mirrors what a direct TCP connection between ssh and sshd would do on close.
    """
    up = asyncio.create_task(_ws_to_stream(ws, writer))
    down = asyncio.create_task(_stream_to_ws(reader, ws))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        up.cancel()
        down.cancel()
        try:
            results = await asyncio.gather(up, down, return_exceptions=True)
            for result, name in zip(results, ("to server", "from server")):
                if isinstance(result, Exception):
                    log.debug("copy %s ended: %r", name, result)
        finally:
            await close_writer(writer)
            await close_ws(ws)
