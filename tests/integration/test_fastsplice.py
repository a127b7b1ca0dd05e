"""The relay's splice of two WebSockets on a real uvicorn server, on uvloop (as `hatchway server`
runs) and on asyncio's own loop: data both ways in order, what was queued before the splice,
text dropped, pings answered, backpressure from a reader that stops, a policy end handing both
sockets back to the endpoint, a close from either side, and a dial-back handed over to another
replica."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
import uvloop
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hatchway.bytepath.frames import OP_BINARY, apply_mask, frame_header
from hatchway.bytepath.splice import WebSocketEnd
from hatchway.server.fastsplice import FastSplice
from hatchway.server.handover import hand_over
from hatchway.server.relay import LiveStream, splice
from tests.helpers.flood import flood_until_stalled

Runner = Callable[[Awaitable[None]], None]
RUNNERS = {"uvloop": uvloop.run, "asyncio": asyncio.run}


class Pair:
    """An ASGI app that splices the WebSocket at /a with the one at /b once both are accepted."""

    def __init__(self) -> None:
        self.a: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
        self.stream = LiveStream("s", "u", "w", "p")
        self.result: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.after: Callable[[WebSocket, WebSocket], Awaitable[None]] | None = None
        self.go = asyncio.Event()  # /b waits for it before splicing (to queue frames first)
        self.go.set()
        self.spliced: tuple[WebSocket, WebSocket] | None = None

    def in_callbacks(self) -> bool:
        """Whether the splice reads both sockets itself (not through ASGI)."""
        assert self.spliced is not None
        protos = [FastSplice.protocol_of(ws) for ws in self.spliced]
        return all(p is not None and p.transport.get_protocol() is not p for p in protos)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        if scope["path"] == "/a":
            self.a.set_result(ws)
            with contextlib.suppress(Exception):
                await self.result  # held open until the splice is over
            return
        a = await self.a
        await self.go.wait()
        self.spliced = (a, ws)
        reason = await splice(a, ws, self.stream)
        if self.after is not None:
            await self.after(a, ws)
        self.result.set_result(reason)


async def _serve(app: Pair) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws="websockets-sansio", lifespan="off",
                            log_level="warning", ws_per_message_deflate=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, task, port


async def _world(body: Callable[[Pair, ClientConnection, ClientConnection], Awaitable[None]],
                 before: Callable[[Pair], None] | None = None) -> None:
    app = Pair()
    if before is not None:
        before(app)
    server, task, port = await _serve(app)
    try:
        async with connect(f"ws://127.0.0.1:{port}/a", max_size=None, compression=None) as a:
            await app.a
            async with connect(f"ws://127.0.0.1:{port}/b", max_size=None, compression=None) as b:
                await body(app, a, b)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def _read(ws: ClientConnection, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        got += await ws.recv()
    return bytes(got)


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest) -> Runner:
    return RUNNERS[request.param]


def test_bytes_cross_both_ways_in_order_and_are_counted(run: Runner) -> None:
    up, down = os.urandom(3_000_000), os.urandom(5_000_000)

    async def body(app: Pair, a: ClientConnection, b: ClientConnection) -> None:
        async def send(ws: ClientConnection, data: bytes, size: int) -> None:
            for i in range(0, len(data), size):
                await ws.send(data[i:i + size])

        got = await asyncio.gather(send(a, up, 40_000), send(b, down, 256 * 1024), _read(b, len(up)), _read(a, len(down)))
        assert (got[2], got[3]) == (up, down)
        assert app.in_callbacks()
        assert (app.stream.to_workspace, app.stream.from_workspace) == (len(up), len(down))
        # uvicorn's copy of each upgrade request and 101 response (headers and all) is let go:
        # nothing reads them once the handshake is over, and a relayed stream may idle for hours.
        assert app.spliced is not None
        for ws in app.spliced:
            proto = FastSplice.protocol_of(ws)
            assert proto is not None and (proto.request, proto.response) == (None, None)
            # websockets' handshake parser, which goes on to parse frames, keeps the request:
            # its headers are emptied.
            assert not proto.conn.parser.gi_frame.f_locals["request"].headers
        await a.close()
        assert await asyncio.wait_for(app.result, 5) is None  # a client's close ends the splice

    run(_world(body))


def test_frames_queued_before_the_splice_go_first_and_text_is_dropped(run: Runner) -> None:
    def hold(app: Pair) -> None:
        app.go.clear()

    async def body(app: Pair, a: ClientConnection, b: ClientConnection) -> None:
        await a.send(b"SSH-2.0-early\r\n")  # queued by uvicorn: nobody reads yet
        await a.send("a text frame carries no SSH bytes")
        await asyncio.sleep(0.2)
        app.go.set()
        await a.send(b"after")
        assert await _read(b, 20) == b"SSH-2.0-early\r\nafter"
        await b.send("dropped too")
        await b.send(b"back")
        assert await a.recv() == b"back"
        pong = await a.ping()
        await asyncio.wait_for(pong, 5)  # answered while spliced
        await b.close()
        assert await asyncio.wait_for(app.result, 5) is None

    run(_world(body, hold))


def test_a_reader_that_stops_holds_the_writer_back(run: Runner) -> None:
    async def body(app: Pair, a: ClientConnection, b: ClientConnection) -> None:
        chunk, sent = await flood_until_stalled(a.send)  # b reads nothing
        got = await _read(b, sent)  # frames are not kept: the last one read may run past `sent`
        whole, part = divmod(len(got), len(chunk))
        assert got == chunk * whole + chunk[:part]

    run(_world(body))


def _after_policy_end(gate: asyncio.Event | None = None) -> Callable[[Pair], None]:
    """Set up the endpoint to do what hatchway.server.api.ssh does after a policy end (say why,
    then close), once ``gate`` is set."""

    async def close_both(a: WebSocket, b: WebSocket) -> None:
        if gate is not None:
            await gate.wait()
        for ws in (a, b):
            await ws.send_text("ended: external connect off")
            await ws.close(4003, "ended by policy")

    def before(app: Pair) -> None:
        app.after = close_both

    return before


async def _told_why(ws: ClientConnection) -> None:
    """The policy's message reaches ``ws`` (after any stream bytes still on their way), then
    the close with its code and reason."""
    while (message := await asyncio.wait_for(ws.recv(), 5)) != "ended: external connect off":
        assert isinstance(message, bytes)
    with pytest.raises(ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4003 and ws.close_reason == "ended by policy"


def test_a_policy_end_gives_both_sockets_back_to_the_endpoint(run: Runner) -> None:
    async def body(app: Pair, a: ClientConnection, b: ClientConnection) -> None:
        await a.send(b"x" * 1000)
        assert await b.recv() == b"x" * 1000
        assert app.in_callbacks()
        app.stream.end("external connect off")
        assert await asyncio.wait_for(app.result, 5) == "external connect off"
        assert not app.in_callbacks()
        for ws in (a, b):
            await _told_why(ws)

    run(_world(body, _after_policy_end()))


class Replicas:
    """An ASGI app playing two replicas: /agent takes an agent's dial-back and hands it over
    (hatchway.server.handover) to /origin, which reads the header and echoes the stream."""

    def __init__(self) -> None:
        self.port = 0
        self.header: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.agent_ws: WebSocket | None = None
        self.handed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        if scope["path"] == "/origin":
            first = await ws.receive()
            self.header.set_result(first.get("text"))
            while True:
                message = await ws.receive()
                if message["type"] != "websocket.receive":
                    return
                await ws.send_bytes(message["bytes"])
        self.agent_ws = ws
        self.handed.set_result(await hand_over(ws, f"ws://127.0.0.1:{self.port}/origin", {}))


def test_a_dial_back_handed_to_another_replica_is_spliced_in_callbacks(run: Runner) -> None:
    data = os.urandom(3_000_000)

    async def main() -> None:
        app = Replicas()
        server, task, app.port = await _serve(app)  # type: ignore[arg-type]
        try:
            async with connect(f"ws://127.0.0.1:{app.port}/agent", max_size=None, compression=None) as agent:
                await agent.send('{"mode": "openssh"}')
                await agent.send(b"SSH-2.0-sshd\r\n")  # right behind the header, as the agent sends it
                assert await asyncio.wait_for(app.header, 5) == '{"mode": "openssh"}'
                assert await _read(agent, 14) == b"SSH-2.0-sshd\r\n"
                assert app.agent_ws is not None
                proto = FastSplice.protocol_of(app.agent_ws)
                assert proto is not None and isinstance(proto.transport.get_protocol(), WebSocketEnd)

                async def send() -> None:
                    for i in range(0, len(data), 50_000):
                        await agent.send(data[i:i + 50_000])

                got = await asyncio.gather(send(), _read(agent, len(data)))
                assert got[1] == data
            assert await asyncio.wait_for(app.handed, 5) is True  # the agent's close ended it
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    run(main())


def test_a_policy_end_in_the_middle_of_a_frame_still_tells_the_client_why(run: Runner) -> None:
    """Ended while a frame is half-read: the rest of it is dropped, not parsed by uvicorn as a
    new frame (which would close with a protocol error instead of the policy's message)."""
    released = asyncio.Event()

    async def body(app: Pair, a: ClientConnection, b: ClientConnection) -> None:
        payload, mask = os.urandom(200_000), os.urandom(4)
        frame = frame_header(OP_BINARY, len(payload), mask) + apply_mask(payload, mask)
        a.transport.write(frame[:100_000])  # half a frame, straight onto a's socket
        got = await _read(b, 1000)  # the splice forwards what it has of the frame
        assert payload.startswith(got)
        app.stream.end("external connect off")  # the endpoint now waits for `released`
        a.transport.write(frame[100_000:])  # the rest arrives after the end ...
        await asyncio.wait_for(await a.ping(), 5)  # ... and the next frame is read whole by uvicorn
        released.set()
        assert await asyncio.wait_for(app.result, 5) == "external connect off"
        for ws in (a, b):
            await _told_why(ws)

    run(_world(body, _after_policy_end(released)))
