"""hatchway.agent.wstransport: the asyncio transport that carries the built-in server's SSH
straight over the data WebSocket (frames gathered per loop iteration, frames fed in order, one
connection_lost on every way out, the reading task owned and awaited, and a peer that stops
reading pausing the protocol)."""

from __future__ import annotations

import asyncio
import socket

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosedOK, InvalidState
from websockets.frames import Close

from hatchway.agent.wstransport import FRAME_MAX, HIGH_WATER, WebSocketTunnel


class FakeTCP:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def get_write_buffer_size(self) -> int:
        return 0


class FakeSansIO:
    """Stands in for websockets' ClientProtocol: a frame is its payload, tagged."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.open = True

    def send_binary(self, data: bytes) -> None:
        if not self.open:
            raise InvalidState("closed")
        self.out.append(b"F:" + data)

    def data_to_send(self) -> list[bytes]:
        out, self.out = self.out, []
        return out


class FakeWS:
    def __init__(self) -> None:
        self.protocol = FakeSansIO()
        self.transport = FakeTCP()
        self.incoming: asyncio.Queue[bytes | str | None] = asyncio.Queue()

    async def recv(self) -> bytes | str:
        item = await self.incoming.get()
        if item is None:
            raise ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
        return item


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Exception | None] = []
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def open_tunnel() -> tuple[FakeWS, WebSocketTunnel, Recorder]:
    ws = FakeWS()
    tunnel = WebSocketTunnel(ws)  # type: ignore[arg-type]
    _, proto = await tunnel.create_connection(Recorder, "", 0)
    return ws, tunnel, proto


async def test_writes_of_one_loop_iteration_leave_as_one_frame() -> None:
    ws, tunnel, proto = await open_tunnel()
    transport = proto.transport
    assert transport is not None
    for packet in (b"a" * 10, b"b" * 20, b"c" * 30):
        transport.write(packet)  # type: ignore[attr-defined]
    assert ws.transport.written == []  # gathered until the loop turns
    await asyncio.sleep(0)
    assert ws.transport.written == [b"F:" + b"a" * 10 + b"b" * 20 + b"c" * 30]
    big = b"x" * FRAME_MAX
    transport.write(big)  # type: ignore[attr-defined]
    assert ws.transport.written[-1] == b"F:" + big  # a full frame goes at once
    await tunnel.wait_closed()


async def test_frames_are_fed_in_order_and_the_end_of_the_stream_ends_the_connection() -> None:
    ws, tunnel, proto = await open_tunnel()
    for item in (b"one", "text frames carry no SSH bytes", b"two", None):
        ws.incoming.put_nowait(item)
    await asyncio.wait_for(tunnel.transport.reader, 5)  # type: ignore[union-attr, arg-type]
    assert proto.received == [b"one", b"two"]
    assert proto.lost == [None]
    assert tunnel.transport is not None and tunnel.transport.is_closing()
    await tunnel.wait_closed()
    assert proto.lost == [None]  # once


async def test_close_flushes_what_was_written_and_cancels_the_reader() -> None:
    ws, tunnel, proto = await open_tunnel()
    transport = tunnel.transport
    assert transport is not None and transport.reader is not None
    transport.write(b"disconnect message")
    transport.close()
    assert ws.transport.written == [b"F:disconnect message"]
    transport.write(b"after close")  # ignored, as asyncio's transports do
    await tunnel.wait_closed()
    assert transport.reader.done()
    assert proto.lost == [None]
    assert ws.transport.written == [b"F:disconnect message"]


async def test_a_closed_websocket_ends_the_connection() -> None:
    ws, tunnel, proto = await open_tunnel()
    ws.protocol.open = False
    proto.transport.write(b"late")  # type: ignore[union-attr]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert proto.lost == [None] and ws.transport.written == []
    await tunnel.wait_closed()


class FlowRecorder(Recorder):
    def __init__(self) -> None:
        super().__init__()
        self.flow: list[str] = []
        self.resumed = asyncio.Event()

    def pause_writing(self) -> None:
        self.flow.append("pause")

    def resume_writing(self) -> None:
        self.flow.append("resume")
        self.resumed.set()


def _small_buffers(option: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, option, 64 * 1024)
    return sock


async def test_a_server_that_stops_reading_pauses_the_protocol_until_it_has_drained() -> None:
    """Over real WebSockets on loopback: asyncssh ignores pause_writing, but the built-in
    server's producers follow it (hatchway.sshd.flow), so it must come, and come back."""
    release = asyncio.Event()
    everything = asyncio.Event()
    received = bytearray()
    expected: int | None = None

    async def handler(conn: ServerConnection) -> None:
        conn.transport.pause_reading()  # a relay that stopped reading this agent
        await release.wait()
        conn.transport.resume_reading()
        async for message in conn:
            received.extend(message)  # type: ignore[arg-type]
            if expected is not None and len(received) >= expected:
                everything.set()

    listener = _small_buffers(socket.SO_RCVBUF)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    async with serve(handler, sock=listener, compression=None, max_size=None):
        client = _small_buffers(socket.SO_SNDBUF)
        client.connect(listener.getsockname())
        ws = await connect("ws://agent.test/", sock=client, compression=None)
        tunnel = WebSocketTunnel(ws)
        _, proto = await tunnel.create_connection(FlowRecorder, "", 0)
        transport = tunnel.transport
        assert transport is not None
        try:
            sent = bytearray()
            while not proto.flow and len(sent) < 64 * HIGH_WATER:
                block = bytes([len(sent) // 65536 % 251]) * 65536
                transport.write(block)
                sent += block
                await asyncio.sleep(0)
            assert proto.flow == ["pause"]
            assert transport.get_write_buffer_size() > HIGH_WATER
            expected = len(sent)
            release.set()
            await asyncio.wait_for(proto.resumed.wait(), 10)
            await asyncio.wait_for(everything.wait(), 10)
            assert proto.flow == ["pause", "resume"]
            assert received == sent  # in order, nothing lost
        finally:
            release.set()  # the handler must end for serve() to exit, pass or fail
            await tunnel.wait_closed()
            await ws.close()
