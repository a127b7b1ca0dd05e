"""The built-in SSH server's connection, straight over the data WebSocket.

asyncssh runs a connection on any asyncio transport: given a ``tunnel`` (an object whose
``create_connection(protocol_factory, host, port)`` returns a transport and protocol) it uses
that instead of a socket. :class:`WebSocketTransport` is that transport: every write of the SSH
connection becomes one binary frame on the data WebSocket, and every binary frame received is
handed to the connection. Before this, the agent copied between the WebSocket and a socketpair
whose other end asyncssh served: two more kernel copies and a Python copy loop per byte.

Frames. asyncssh writes every SSH packet separately; the writes of one event-loop iteration are
sent as one frame (up to 256 KiB), as the socketpair used to gather them.

Bounds. Above :data:`HIGH_WATER` bytes waiting to go out, the transport tells its protocol to
pause writing, and to resume once websockets' own buffer has drained. asyncssh itself ignores
that; the built-in server's producers follow it (:mod:`hatchway.sshd.flow`), so a client that
grants huge SSH windows and stops reading stops the command's output, not the agent's memory.
Reads go frame by frame; the client cannot send more than the windows it was granted.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidState

log = logging.getLogger("hatchway.agent.wstransport")

#: Writes are gathered into frames of up to this size (the relay's read size elsewhere).
FRAME_MAX = 256 * 1024
#: Bytes waiting to be sent above which the SSH connection's producers are paused: well above
#: what a relay that keeps up holds (a few frames), so a bulk transfer is not slowed by it.
HIGH_WATER = 1024 * 1024


class WebSocketTransport(asyncio.Transport):
    def __init__(self, ws: ClientConnection, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._ws = ws
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._lost = False
        self._reading = asyncio.Event()
        self._reading.set()
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_scheduled = False
        self._write_paused = False
        self.reader: asyncio.Task[None] | None = None
        self.drainer: asyncio.Task[None] | None = None  # waits for the buffer to drain while paused

    def start(self) -> None:
        """Start handing received frames to the protocol (after its connection_made)."""
        if not self._closing:
            self.reader = self._loop.create_task(self._read(), name="ws-to-ssh")

    async def _read(self) -> None:
        exc: Exception | None = None
        try:
            while not self._closing:
                if not self._reading.is_set():
                    await self._reading.wait()
                    continue
                try:
                    message = await self._ws.recv()
                except ConnectionClosed:
                    break
                if isinstance(message, str) or self._closing:
                    continue  # text frames carry no SSH bytes
                self._protocol.data_received(message)
        except Exception as e:  # noqa: BLE001  # a bug in a protocol callback ends this connection, not the agent
            log.debug("reading the data connection failed: %r", e)
            exc = e
        # The stream ended (or failed): the SSH connection ends with it.
        self._closing = True
        self._connection_lost(exc)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc)
        finally:
            for task in (self.reader, self.drainer):
                if task is not None and task is not asyncio.current_task() and not task.done():
                    task.cancel()

    # ---- asyncio.Transport ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; what one event-loop iteration writes leaves as one frame (asyncssh
        writes each SSH packet on its own: a frame each would multiply the per-frame work of
        every hop), and at most :data:`FRAME_MAX` waits."""
        if self._closing or not data:
            return
        self._pending.append(bytes(data))
        self._pending_size += len(data)
        if self._pending_size >= FRAME_MAX:
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        data = b"".join(self._pending) if len(self._pending) > 1 else self._pending[0]
        self._pending.clear()
        self._pending_size = 0
        ws = self._ws
        try:
            ws.protocol.send_binary(data)
        except InvalidState:  # the WebSocket is closing: so is this connection
            self.abort()
            return
        # Written now, in order with anything websockets itself queued (pongs, its close frame).
        transport = ws.transport
        for chunk in ws.protocol.data_to_send():
            if chunk and not transport.is_closing():
                transport.write(chunk)
        if not self._write_paused and not self._closing and self.get_write_buffer_size() > HIGH_WATER:
            self._write_paused = True
            self._protocol.pause_writing()
            self.drainer = self._loop.create_task(self._resume_when_drained(), name="ws-drain")

    async def _resume_when_drained(self) -> None:
        """Tell the protocol to resume once websockets' transport is below its low-water mark."""
        try:
            await self._ws.drain()
        except Exception:  # noqa: BLE001  # the connection is gone: connection_lost follows
            return
        self._write_paused = False
        if not self._closing:
            self._protocol.resume_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("an SSH stream has no half-close")

    def get_write_buffer_size(self) -> int:
        return self._pending_size + self._ws.transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._ws.transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the SSH windows bound what is written (see the module docstring)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set() and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop: the protocol's connection_lost follows soon. The WebSocket itself belongs to the
        agent's stream task, which closes it after what was written so far."""
        if self._closing:
            return
        self._flush()  # what the connection wrote before closing (its disconnect message) goes out
        self._closing = True
        self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the client's address reaches the server separately


class WebSocketTunnel:
    """What ``asyncssh.run_server(None, tunnel=...)`` connects through; owns its transport."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.transport: WebSocketTransport | None = None

    async def create_connection(self, protocol_factory: Any, host: str = "", port: int = 0) -> tuple[WebSocketTransport, Any]:
        protocol = protocol_factory()
        transport = WebSocketTransport(self._ws, protocol)
        self.transport = transport
        protocol.connection_made(transport)
        transport.start()
        return transport, protocol

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Close and wait until the transport's tasks have ended (they are owned here)."""
        self.close()
        transport = self.transport
        if transport is not None:
            tasks = [t for t in (transport.reader, transport.drainer) if t is not None]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
