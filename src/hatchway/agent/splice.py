"""Copy SSH bytes between a data WebSocket and the connection to port 22, both ways, bounded.

The agent's last hop of the byte path (DESIGN "The byte path"). Normally both transports are
read in the event loop's callbacks (:mod:`hatchway.bytepath.splice`): what one read brings is
written to the other side in the same callback, and a full write buffer on one side pauses
reading on the other. That takes the WebSocket over from websockets' connection object, which
is only correct while it holds nothing half-read; it always does right after the handshake
(the server sends nothing before our stream header), but if not, two tasks copy instead. Each
of them awaits its write before reading more, so memory stays bounded there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from hatchway.bytepath.splice import SocketEnd, Splice, WebSocketEnd, connection_idle

log = logging.getLogger("hatchway.agent.splice")

READ_CHUNK = 256 * 1024
#: How long closing may take before we stop waiting (a peer that stopped reading).
CLOSE_TIMEOUT = 5.0


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream, waiting (bounded) until its transport really let go of the socket."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), CLOSE_TIMEOUT)


async def close_ws(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), CLOSE_TIMEOUT)


async def forward(
    ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: str, initial: bytes
) -> None:
    """Send the stream ``header`` and the bytes port 22 already sent (``initial``), then copy
    until either side ends, and close both (on every path, cancellation included).

    SSH has no use for half-closed connections, so the end of one direction ends the other:
    this mirrors what a direct TCP connection between ssh and sshd would do on close.
    """
    try:
        if connection_idle(ws) and not writer.transport.is_closing():
            await _splice_in_callbacks(ws, reader, writer, header, initial)
        else:
            log.debug("the data connection holds a partial frame: copying with tasks")
            await ws.send(header)
            if initial:
                await ws.send(initial)
            await _copy_with_tasks(ws, reader, writer)
    finally:
        await close_writer(writer)
        await close_ws(ws)


async def _splice_in_callbacks(
    ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: str, initial: bytes
) -> None:
    # What the stream reader holds beyond the probe's reads comes right after them: stop its
    # socket's reading and collect it before the splice takes the socket over.
    socket_end, ws_end = SocketEnd(writer.transport), WebSocketEnd(ws.transport, ws.protocol)
    socket_end.pause_reading()
    reader.feed_eof()
    initial += await reader.read()
    splice = Splice(ws_end, socket_end)

    def start() -> None:
        if not ws_end.write_text(header):
            splice.stop()
            return
        if initial:
            socket_end.forward([initial], len(initial))
        if not splice.done.done():
            socket_end.resume_reading()

    await splice.run(start)


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


async def _copy_with_tasks(ws: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    up = asyncio.create_task(_ws_to_stream(ws, writer))
    down = asyncio.create_task(_stream_to_ws(reader, ws))
    try:
        await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        up.cancel()
        down.cancel()
        results = await asyncio.gather(up, down, return_exceptions=True)
        for result, name in zip(results, ("to server", "from server")):
            if isinstance(result, Exception):
                log.debug("copy %s ended: %r", name, result)
