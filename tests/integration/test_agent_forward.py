"""The agent's forwarding hop (hatchway.agent.splice.forward) between a real WebSocket server
standing in for Hatchway's and a real TCP server standing in for port 22: the stream header and
the bytes port 22 sent first come first, data crosses both ways in order in the transports'
callbacks, pings and pongs still reach their owners, a stalled reader holds the writer back,
either side's end closes the other, a protocol violation is judged by websockets as without the
splice, and a connection holding a partial frame is copied by tasks instead."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

import pytest
import uvloop
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from hatchway.agent.splice import forward
from hatchway.bytepath.splice import WebSocketEnd
from tests.helpers.flood import flood_until_stalled

Runner = Callable[[Awaitable[None]], None]
RUNNERS = {"uvloop": uvloop.run, "asyncio": asyncio.run}
HEADER = '{"mode": "openssh", "version": "SSH-2.0-test"}'


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    return RUNNERS[request.param]


class World:
    """A WebSocket server (the Hatchway side) and a TCP server (port 22), one connection each."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.server_ws: asyncio.Future[ServerConnection] = loop.create_future()
        self.port22: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = loop.create_future()
        self.server_done = asyncio.Event()
        self.early: bytes | None = None  # what the WebSocket server sends before anything arrives

    async def handler(self, ws: ServerConnection) -> None:
        if self.early is not None:
            await ws.send(self.early)
        self.server_ws.set_result(ws)
        await self.server_done.wait()

    async def on_port22(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.port22.set_result((reader, writer))


async def _world(
    body: Callable[[World, ClientConnection, asyncio.Task[None], ServerConnection, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    greeting: bytes = b"SSH-2.0-test\r\n",
    early: bytes | None = None,
) -> None:
    world = World()
    world.early = early
    tcp = await asyncio.start_server(world.on_port22, "127.0.0.1", 0)
    port22 = tcp.sockets[0].getsockname()[1]
    async with serve(world.handler, "127.0.0.1", 0, compression=None, max_size=None) as wss:
        port = wss.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}/", compression=None, max_size=4 * 1024 * 1024)
        reader, writer = await asyncio.open_connection("127.0.0.1", port22)
        sshd_reader, sshd_writer = await world.port22
        sshd_writer.write(greeting)
        await sshd_writer.drain()
        initial = await reader.readexactly(4)  # what the probe read: the rest stays in the reader
        await asyncio.sleep(0.05)  # ... and the rest of the greeting reaches the reader's buffer
        if early is not None:
            await asyncio.sleep(0.05)  # the early frame sits in websockets' queue
        task = asyncio.create_task(forward(ws, reader, writer, HEADER, initial))
        server_ws = await world.server_ws
        try:
            await body(world, ws, task, server_ws, sshd_reader, sshd_writer)
        finally:
            world.server_done.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            sshd_writer.close()
            tcp.close()
            await tcp.wait_closed()


async def _read_ws(ws: ServerConnection, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        message = await ws.recv()
        assert isinstance(message, bytes), message
        got += message
    return bytes(got)


def test_header_and_greeting_first_then_both_ways_in_order_in_callbacks(run: Runner) -> None:
    up, down = os.urandom(4_000_000), os.urandom(6_000_000)
    greeting = b"SSH-2.0-test\r\n" + b"K" * 5000  # a server that sends its KEXINIT at once

    async def body(world, ws, task, server_ws, sshd_reader, sshd_writer) -> None:  # type: ignore[no-untyped-def]
        assert await asyncio.wait_for(server_ws.recv(), 5) == HEADER
        assert await asyncio.wait_for(_read_ws(server_ws, len(greeting)), 5) == greeting
        assert isinstance(ws.transport.get_protocol(), WebSocketEnd)  # spliced in callbacks

        async def send_up() -> None:
            for i in range(0, len(up), 40_000):
                await server_ws.send(up[i:i + 40_000])

        async def send_down() -> None:
            for i in range(0, len(down), 100_000):
                sshd_writer.write(down[i:i + 100_000])
                await sshd_writer.drain()

        got = await asyncio.wait_for(
            asyncio.gather(send_up(), send_down(), sshd_reader.readexactly(len(up)), _read_ws(server_ws, len(down))), 60
        )
        assert (got[2], got[3]) == (up, down)
        # The agent's own keepalive and the server's pings still work while spliced.
        await asyncio.wait_for(await ws.ping(), 5)
        await asyncio.wait_for(await server_ws.ping(), 5)
        await server_ws.close()
        await asyncio.wait_for(task, 5)  # the server's close ends the hop ...
        assert await asyncio.wait_for(sshd_reader.read(), 5) == b""  # ... and port 22's connection
        assert ws.close_code == 1000

    run(_world(body, greeting=greeting))


def test_port_22_closing_closes_the_data_connection(run: Runner) -> None:
    async def body(world, ws, task, server_ws, sshd_reader, sshd_writer) -> None:  # type: ignore[no-untyped-def]
        assert await server_ws.recv() == HEADER
        assert await _read_ws(server_ws, 14) == b"SSH-2.0-test\r\n"
        sshd_writer.write(b"last words")
        sshd_writer.close()
        assert await _read_ws(server_ws, 10) == b"last words"
        await asyncio.wait_for(task, 5)
        await asyncio.wait_for(server_ws.wait_closed(), 5)
        assert server_ws.close_code == 1000

    run(_world(body))


def test_a_stalled_port_22_holds_the_server_back(run: Runner) -> None:
    async def body(world, ws, task, server_ws, sshd_reader, sshd_writer) -> None:  # type: ignore[no-untyped-def]
        assert await server_ws.recv() == HEADER
        await _read_ws(server_ws, 14)
        chunk, sent = await flood_until_stalled(server_ws.send)  # port 22 reads nothing
        got = await asyncio.wait_for(sshd_reader.readexactly(sent), 10)
        assert got == chunk * (sent // len(chunk))

    run(_world(body))


def test_a_frame_already_received_falls_back_to_copying_with_tasks(run: Runner) -> None:
    async def body(world, ws, task, server_ws, sshd_reader, sshd_writer) -> None:  # type: ignore[no-untyped-def]
        assert await server_ws.recv() == HEADER
        assert await _read_ws(server_ws, 14) == b"SSH-2.0-test\r\n"
        assert not isinstance(ws.transport.get_protocol(), WebSocketEnd)
        assert await sshd_reader.readexactly(5) == b"early"  # nothing lost, nothing reordered
        await server_ws.send(b"later")
        assert await sshd_reader.readexactly(5) == b"later"
        sshd_writer.write(b"down")
        assert await _read_ws(server_ws, 4) == b"down"
        await server_ws.close()
        await asyncio.wait_for(task, 5)

    run(_world(body, early=b"early"))


def test_a_protocol_violation_from_the_server_closes_both_with_1002(run: Runner) -> None:
    async def body(world, ws, task, server_ws, sshd_reader, sshd_writer) -> None:  # type: ignore[no-untyped-def]
        assert await server_ws.recv() == HEADER
        await _read_ws(server_ws, 14)
        await server_ws.send(b"fine")
        assert await sshd_reader.readexactly(4) == b"fine"
        server_ws.transport.write(bytes((0xC2, 1)) + b"x")  # RSV1 set: no extension was negotiated
        await asyncio.wait_for(task, 5)
        assert await asyncio.wait_for(sshd_reader.read(), 5) == b""  # port 22's connection closed
        # websockets itself judged the frame, as without the splice, and told the server why.
        await asyncio.wait_for(server_ws.wait_closed(), 5)
        assert ws.protocol.close_sent is not None and ws.protocol.close_sent.code == 1002
        assert server_ws.close_code == 1002

    run(_world(body))
