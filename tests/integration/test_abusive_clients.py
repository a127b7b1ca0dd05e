"""Slow, greedy and broken clients: each is bounded, and none of them disturbs other users.

One deployment (server limits turned down so the bounds are quick to reach) with bob and carol,
each with a workspace "dev" served by a real agent, plus bob's workspaces "stuck" (a fake agent
that never answers dials) and "junk" (a fake agent that answers with garbage). Carol's SSH
session is open through all of it and must keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from hatchway.server.api.agent import TOO_DEEP_GOODBYE
from hatchway.server.api.ssh import TOO_DEEP_HEADER
from hatchway.server.guards import HEAD_MAX, WAITING_PER_SLOT
from tests.helpers import rawws
from tests.helpers.fakeagent import agent_ws_url, next_dial, refusal
from tests.helpers.fakeagent import fake_agent as helper_agent
from tests.helpers.server import wait_for
from tests.helpers.sshclient import Refused, Tunnel, open_stream, ws_url
from tests.helpers.world import World, build_world, fd_count

HANDSHAKE_TIMEOUT = 2.0
MAX_HANDSHAKING = 16
MAX_PENDING = 4
MAX_QUEUED = 2
DIAL_TIMEOUT = 3.0
OVERSIZED = 4 * 1024 * 1024 + 1024  # over the server's 4 MiB frame limit


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    env = {
        "HATCHWAY_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
        "HATCHWAY_MAX_HANDSHAKING_PER_IP": str(MAX_HANDSHAKING),
        "HATCHWAY_MAX_PENDING_STREAMS": str(MAX_PENDING),
        "HATCHWAY_MAX_QUEUED_STREAMS": str(MAX_QUEUED),
        "HATCHWAY_DIAL_TIMEOUT": str(DIAL_TIMEOUT),
    }
    w = build_world(tmp_path_factory.mktemp("abuse"), server_env=env)
    with w.api("bob") as c:
        for name in ("stuck", "junk"):
            r = c.post("/workspaces", json={"name": name, "provider": "byo"})
            r.raise_for_status()
            w.agent_tokens[f"bob/{name}"] = r.json()["agent_token"]
    try:
        yield w
    finally:
        w.close()
        assert "Traceback" not in w.server.log(), w.server.log()[-5000:]


@contextlib.asynccontextmanager
async def fake_agent(world: World, workspace: str) -> AsyncIterator[ClientConnection]:
    async with helper_agent(world, world.agent_tokens[f"bob/{workspace}"], "bob", workspace) as ws:
        yield ws


@pytest.fixture
async def carol(world: World) -> AsyncIterator[Tunnel]:
    """Carol's live session, checked before and after each abuse."""
    t = await world.ssh("carol")
    await assert_works(t)
    yield t
    await assert_works(t)
    await t.close()


async def assert_works(t: Tunnel) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB both ways
    r = await t.run("cat", stdin=payload)
    assert r.exit_status == 0 and r.stdout == payload


async def assert_new_ssh_works(world: World, who: str = "carol") -> None:
    t = await world.ssh(who)
    try:
        r = await t.run("echo fresh")
        assert r.stdout == b"fresh\n"
    finally:
        await t.close()


def server_pid(world: World) -> int:
    assert world.server.proc is not None
    return world.server.proc.pid


# ---- pending streams -------------------------------------------------------------------------


async def test_pending_streams_are_capped_per_user_and_other_users_are_unaffected(world: World, carol: Tunnel) -> None:
    bob = world.people["bob"]
    async with fake_agent(world, "stuck") as agent:
        parked = []
        for _ in range(MAX_PENDING):
            parked.append(await open_stream(world.url, bob.token, "stuck"))
            await next_dial(agent)  # the server is now holding that stream for the agent
        parked_at = time.monotonic()
        await asyncio.sleep(1.0)  # so the parked streams' dial timeout comes well before the waiters'
        # Over the cap, connections wait their turn (the agent is not asked yet)...
        waiting = [await open_stream(world.url, bob.token, "stuck") for _ in range(MAX_QUEUED)]
        with pytest.raises(TimeoutError):
            await next_dial(agent, timeout=0.5)
        # ...and once the line is full too, the next one is refused at once, saying why.
        t0 = time.monotonic()
        extra = await open_stream(world.url, bob.token, "stuck")
        message = await refusal(extra)
        assert time.monotonic() - t0 < 2, "the refusal is immediate, not after the dial timeout"
        assert message == (
            f"too many SSH connections of yours are being set up at once (at most {MAX_PENDING}, and {MAX_QUEUED} "
            "more waiting); wait for them to finish and try again"
        )
        # The cap is the user's: his other workspace is refused too, carol is not affected.
        with pytest.raises(Refused, match="too many SSH connections of yours"):
            await world.ssh("bob", "dev")
        await assert_works(carol)
        await assert_new_ssh_works(world, "carol")
        # The parked streams end at the dial timeout, saying why, and hand their slots to the
        # waiting ones, in order: the agent is asked for them now.
        for ws in parked:
            assert "did not answer within 3 s" in await refusal(ws, DIAL_TIMEOUT + 5)
            await ws.close()
        for _ in waiting:
            await next_dial(agent)
        assert time.monotonic() - parked_at < DIAL_TIMEOUT + 1, "the waiting streams got their turn at once"
        for ws in waiting:
            assert "did not answer within 3 s" in await refusal(ws, DIAL_TIMEOUT + 5)
            await ws.close()
        await extra.close()
    await assert_new_ssh_works(world, "bob")
    with world.api("alice") as c:
        rows = c.get("/connections", params={"user": "bob", "workspace": "stuck"}).json()
    assert sum("too many SSH connections of yours" in (r["reason"] or "") for r in rows) >= 1
    assert all(r["result"] == "refused" for r in rows)


# ---- slowloris -------------------------------------------------------------------------------


def _slow_socket(world: World, address: str = "127.0.0.2") -> socket.socket:
    s = socket.socket()
    s.bind((address, 0))  # the attacker has an address of its own; everyone else is on .1
    s.settimeout(5)
    s.connect((world.server.host, world.server.port))
    s.sendall(b"GET /api/v1/deployment HTTP/1.1\r\nHost: x\r\n")
    return s


def _open(s: socket.socket) -> bool:
    """Still open from the server's side (whatever it had sent is read and dropped)."""
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


async def test_slowloris_holds_at_most_its_share_and_only_for_the_handshake_timeout(world: World, carol: Tunnel) -> None:
    pid = server_pid(world)
    before = fd_count(pid)
    # An idle keep-alive connection is closed by uvicorn's keep-alive timeout (5 s) meanwhile.
    idle = socket.create_connection((world.server.host, world.server.port))
    idle.sendall(b"GET /api/v1/deployment HTTP/1.1\r\nHost: x\r\n\r\n")
    assert b"200 OK" in idle.recv(4096)
    idle_since = time.monotonic()

    # MAX_HANDSHAKING are read; WAITING_PER_SLOT times as many wait behind them, unread; the
    # rest are dropped at once.
    held = MAX_HANDSHAKING * (1 + WAITING_PER_SLOT)
    attackers = [_slow_socket(world) for _ in range(held + 30)]
    await asyncio.sleep(0.5)
    alive = [s for s in attackers if _open(s)]
    assert len(alive) == held, f"{len(alive)} half-open connections kept from one address, not {held}"
    # Everyone else is served normally while the attack goes on.
    t0 = time.monotonic()
    with world.api("bob") as c:
        assert c.get("/users/me").status_code == 200
    assert time.monotonic() - t0 < 1
    await assert_works(carol)
    await assert_new_ssh_works(world, "carol")
    # Dribbling a header line now and then does not extend the deadline.
    for _ in range(int(HANDSHAKE_TIMEOUT / 0.5) + 2):
        for s in alive:
            with contextlib.suppress(OSError):
                s.setblocking(True)
                s.sendall(b"X-Slow: 1\r\n")
        await asyncio.sleep(0.5)
    assert not any(_open(s) for s in attackers), "a slow client outlived the handshake timeout"
    for s in attackers:
        s.close()
    # A fresh attacker gets its share again: the counts were given back.
    again = [_slow_socket(world) for _ in range(MAX_HANDSHAKING)]
    await asyncio.sleep(0.3)
    assert all(_open(s) for s in again)
    for s in again:
        s.close()
    await asyncio.sleep(max(0.0, 5.5 - (time.monotonic() - idle_since)))
    assert not _open(idle), "an idle keep-alive connection outlived the keep-alive timeout"
    idle.close()
    wait_for(lambda: fd_count(pid) <= before + 2, 10, what=f"server fds back to {before} (now {fd_count(pid)})")
    assert "request headers not complete within 2 s" in world.server.log()


async def test_a_connection_over_its_addresss_cap_waits_its_turn_and_is_served(world: World) -> None:
    """A burst from one address (many ssh at once, a NAT, agents reconnecting) is not dropped:
    a connection over the cap is read when one ahead of it is done. Here the ones ahead are
    slow clients, so its turn comes at their deadline."""
    slow = [_slow_socket(world, "127.0.0.3") for _ in range(MAX_HANDSHAKING)]
    await asyncio.sleep(0.8)  # their deadline comes well before the waiting request's
    assert all(_open(s) for s in slow)
    t0 = time.monotonic()
    request = socket.socket()
    request.bind(("127.0.0.3", 0))
    request.settimeout(HANDSHAKE_TIMEOUT + 5)
    request.connect((world.server.host, world.server.port))
    request.sendall(b"GET /api/v1/deployment HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    response = b""
    while chunk := request.recv(65536):
        response += chunk
    waited = time.monotonic() - t0
    request.close()
    assert response.startswith(b"HTTP/1.1 200 OK"), response[:200]
    assert HANDSHAKE_TIMEOUT - 1.5 < waited < HANDSHAKE_TIMEOUT, f"served after {waited:.2f} s"
    assert not any(_open(s) for s in slow)
    for s in slow:
        s.close()


# ---- oversized request heads ----------------------------------------------------------------

TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n"


def _flood(world: World, start: bytes, limit: int = 64 * 1024 * 1024) -> tuple[int, bytes]:
    """Send ``start`` and then 1 MiB chunks until the server answers or stops reading; then
    read to the end. (bytes sent, what came back)."""
    s = socket.create_connection((world.server.host, world.server.port), timeout=10)
    s.sendall(start)
    sent = len(start)
    chunk = b"a" * (1 << 20)
    with contextlib.suppress(OSError):  # the server may close (or reset) while this sends
        while sent < limit and not select.select([s], [], [], 0)[0]:
            s.sendall(chunk)
            sent += len(chunk)
    got = b""
    with contextlib.suppress(ConnectionResetError):
        while data := s.recv(65536):
            got += data
    s.close()
    return sent, got


def _request(world: World, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the server answers before it closes."""
    with socket.create_connection((world.server.host, world.server.port), timeout=10) as s:
        s.sendall(data)
        return _read_to_end(s)


def _read_to_end(s: socket.socket) -> bytes:
    """Everything the server sends before it closes."""
    got = b""
    while chunk := s.recv(65536):
        got += chunk
    return got


def _head_of(size: int, path: str = "/api/v1/deployment") -> bytes:
    """A request head (line, headers, blank line) of exactly ``size`` bytes."""
    start = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ".encode()
    return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"


async def test_an_endless_request_header_is_refused_with_431_early_and_costs_nothing_lasting(world: World, carol: Tunnel) -> None:
    pid = server_pid(world)
    before = fd_count(pid)
    sent, got = _flood(world, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    assert got.startswith(TOO_LARGE), got[:200]
    head, _, body = got.partition(b"\r\n\r\n")
    fields = head.split(b"\r\n")[1:]
    assert b"connection: close" in fields and b"content-type: application/json" in fields
    assert json.loads(body) == {
        "error": "request header fields too large",
        "detail": "a request's line and headers may take at most 64 KiB together; send fewer or shorter headers "
                  "(oversized cookies are the usual cause: clear this site's cookies)",
    }
    # Refused after what the socket buffers hold and the little read and dropped after the
    # answer, not after the 40 MB the header once grew to.
    assert sent <= 16 * 1024 * 1024, f"the server read {sent} bytes of one header"
    # A chunked body's trailers are header fields too: bounded the same way (the request is the
    # application's by then, so the connection just ends).
    sent, got = _flood(world, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                              b"Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ")
    assert sent <= 16 * 1024 * 1024 and got == b"", (sent, got[:200])
    # Everyone else is served at once, and the server holds nothing of either.
    t0 = time.monotonic()
    with world.api(None) as c:
        assert c.get("/deployment").status_code == 200
    assert time.monotonic() - t0 < 1
    await assert_works(carol)
    wait_for(lambda: fd_count(pid) <= before + 2, 10, what=f"server fds back to {before} (now {fd_count(pid)})")
    log = world.server.log()
    assert "its request line and headers exceeded 65536 bytes" in log and "its trailers exceeded 65536 bytes" in log


async def test_a_head_of_up_to_64_kib_is_served_and_one_byte_more_is_refused(world: World) -> None:
    assert HEAD_MAX == 64 * 1024
    assert _request(world, _head_of(HEAD_MAX)).startswith(b"HTTP/1.1 200 OK\r\n")
    refused = _request(world, _head_of(HEAD_MAX + 1))  # read to the end: the server closed it
    assert refused.startswith(TOO_LARGE) and b'"request header fields too large"' in refused
    # A body is not part of the head: one much larger than the limit, arriving with a small
    # head in the same read, is the application's to judge (here: not valid JSON).
    body = b"x" * (HEAD_MAX * 4)
    answer = _request(world, b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                             b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert answer.startswith(b"HTTP/1.1 422 "), answer[:200]
    # A WebSocket upgrade with a head near the limit (a long token, many cookies) still reaches
    # its endpoint: here an SSH stream through the relay. (websockets takes header lines of up
    # to 8 KiB, so the padding is spread over several.)
    bob = world.people["bob"]
    headers = {"Authorization": f"Bearer {bob.token}"} | {f"X-Pad-{i}": "p" * 7000 for i in range(8)}
    async with connect(ws_url(world.url, "dev"), additional_headers=headers, compression=None) as ws:
        greeting = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(greeting, bytes) and greeting.startswith(b"SSH-2.0-")


async def test_a_connection_waiting_its_turn_may_send_a_head_as_large_as_any_other(world: World) -> None:
    """A waiting connection once held at most 16 KiB and was dropped beyond: a request with a
    large head (many cookies) failed only when its address was busy. It holds up to HEAD_MAX,
    and a head over that gets the 431 it would get without waiting."""
    slow = [_slow_socket(world, "127.0.0.4") for _ in range(MAX_HANDSHAKING)]
    await asyncio.sleep(0.3)
    assert all(_open(s) for s in slow)
    t0 = time.monotonic()
    waiting = []
    for head in (_head_of(HEAD_MAX + 4096), _head_of(HEAD_MAX)):
        s = socket.create_connection((world.server.host, world.server.port), HANDSHAKE_TIMEOUT + 5, ("127.0.0.4", 0))
        s.sendall(head)
        waiting.append(s)
    refused, served = (_read_to_end(s) for s in waiting)
    assert refused.startswith(TOO_LARGE) and b'"request header fields too large"' in refused, refused[:200]
    assert served.startswith(b"HTTP/1.1 200 OK\r\n"), served[:200]
    assert time.monotonic() - t0 > 1, "it waited for a slow client's deadline"
    for s in waiting + slow:
        s.close()


def test_a_websocket_upgrade_websockets_cannot_parse_is_answered_and_closed(world: World) -> None:
    """A header line over the 8 KiB websockets reads (still under HEAD_MAX) was never answered:
    the connection stayed open, past the handshake timeout, for as long as the client liked."""
    start = b"GET /api/v1/agent/control HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    with socket.create_connection((world.server.host, world.server.port), timeout=HANDSHAKE_TIMEOUT + 5) as s:
        s.sendall(start + b"Cookie: c=" + b"k" * 9000 + b"\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):  # to the end: the server closes
            got += chunk
    assert got.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), got[:200]
    assert got.endswith(b"\r\n\r\nFailed to open a WebSocket connection: read 9012 bytes, expected no more than 8192 bytes.\n")
    assert "refused a WebSocket upgrade from 127.0.0.1: HeaderLineTooLong: read 9012 bytes" in world.server.log()


# ---- garbage on the WebSockets ---------------------------------------------------------------


async def test_garbage_on_the_agent_control_channel_closes_only_that_channel(world: World, carol: Tunnel) -> None:
    token = world.agent_tokens["bob/junk"]
    url = agent_ws_url(world, "/api/v1/agent/control")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(url, additional_headers=headers, compression=None, max_size=None) as ws:
        for junk in (b"\x00\xff" * 1000, "not json", "[1, 2, 3]", '{"type": 7}', '{"type": "report", "host_keys": "x"}',
                     json.dumps({"type": "report", "os_user": "a\nb", "diagnostics": ["x" * 100000] * 30}),
                     json.dumps({"type": "hello", "host_keys": ["ssh-ed25519 " + "A" * 5000] * 50})):
            await ws.send(junk)
        await ws.send(json.dumps({"type": "ping"}))
        while json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] != "pong":
            pass  # malformed messages were ignored, the channel still answers
        ws_row = world.workspace("bob", "junk")
        assert ws_row["os_user"] is None and ws_row["host_keys"] == []
        with pytest.raises(ConnectionClosed) as closed:
            await ws.send(b"x" * OVERSIZED)
            while True:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    host, port = world.server.host, world.server.port
    path = "/api/v1/agent/control"
    for garbage, truncated in (
        (rawws.frame(0x1, b'{"type": "ping"}', mask=False), False),  # clients must mask
        (rawws.frame(0x3, b"reserved opcode"), False),
        (rawws.frame(0x1, b"\xff\xfe not utf-8"), False),
        (rawws.frame(0x2, b"", length=2**62), False),  # a length no server should try to buffer
        (rawws.frame(0x2, b"short", length=1000), True),  # says 1000, sends 5, then goes away
    ):
        s = rawws.handshake(host, port, path, token)
        s.sendall(garbage)
        if truncated:
            s.close()
            continue
        assert rawws.closed_by_peer(s, 10), f"the server kept a connection after {garbage[:12]!r}"
        s.close()
    await assert_works(carol)
    # The real agents never noticed, and a well-behaved agent can attach again.
    assert world.workspace("bob")["agent_connected"] and world.workspace("carol")["agent_connected"]
    async with fake_agent(world, "junk"):
        pass


async def test_garbage_on_an_agent_data_stream_ends_only_that_ssh_connection(world: World, carol: Tunnel) -> None:
    bob = world.people["bob"]
    token = world.agent_tokens["bob/junk"]
    headers = {"Authorization": f"Bearer {token}"}
    # A stream id nobody asked for: refused.
    async with connect(agent_ws_url(world, "/api/v1/agent/streams/" + "0" * 32), additional_headers=headers) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4404
    async with fake_agent(world, "junk") as agent:
        for garbage in ("text", "oversized", "truncated"):
            client = await open_stream(world.url, bob.token, "junk")
            stream_id = await next_dial(agent)
            url = agent_ws_url(world, f"/api/v1/agent/streams/{stream_id}")
            if garbage == "truncated":
                host, port = world.server.host, world.server.port
                s = rawws.handshake(host, port, f"/api/v1/agent/streams/{stream_id}", token)
                s.sendall(rawws.frame(0x2, b"SSH-2.0-x\r\n"))
                s.sendall(rawws.frame(0x2, b"cut", length=50000))
                s.close()
            else:
                data = await connect(url, additional_headers=headers, compression=None, max_size=None)
                await data.send(json.dumps({"mode": "x" * 10000}))  # the header: overlong mode is cut
                await data.send("more text frames carry no bytes")
                await data.send(b"SSH-2.0-junk\r\n")
                with contextlib.suppress(ConnectionClosed):  # the server may close it mid-send
                    if garbage == "oversized":
                        await data.send(b"\x00" * OVERSIZED)
                    else:
                        await data.send(b"\xff" * 1000)
                        await data.close()
            # The client sees its stream end; nothing else does.
            got = b""
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                while True:
                    message = await asyncio.wait_for(client.recv(), 10)
                    assert not isinstance(message, str) or garbage != "text", message
                    if isinstance(message, bytes):
                        got += message
            assert client.close_code is not None, f"{garbage}: the client's stream was not ended"
            assert got.startswith(b"SSH-2.0-junk") or garbage == "truncated" or got == b""
            if garbage != "truncated":
                await data.close()
    await assert_works(carol)
    with world.api("bob") as c:
        rows = c.get("/connections", params={"workspace": "junk"}).json()
    assert rows and all(r["ended_at"] is not None for r in rows if r["result"] != "refused")
    assert all(len(r["mode"] or "") <= 40 for r in rows)


DEEP = "[" * 200000 + "]" * 200000  # valid JSON, nested far deeper than json.loads follows


async def test_json_nested_too_deeply_on_the_control_channel_ends_it_with_one_log_line(world: World, carol: Tunnel) -> None:
    token = world.agent_tokens["bob/junk"]
    url = agent_ws_url(world, "/api/v1/agent/control")
    received = []
    async with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, compression=None, max_size=None) as ws:
        await ws.send(DEEP)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                received.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
    assert [m["type"] for m in received] == ["manifest", "goodbye"]
    assert received[-1] == {"type": "goodbye", "code": "closed", "reason": TOO_DEEP_GOODBYE}
    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, TOO_DEEP_GOODBYE)
    log = world.server.log()
    assert "Traceback" not in log and "RecursionError" not in log
    assert log.count("agent of workspace junk sent a control message nested too deeply to parse; closed its connection") == 1
    wait_for(lambda: not world.workspace("bob", "junk")["agent_connected"], 10, what="the agent recorded as gone")
    async with fake_agent(world, "junk"):  # it may attach again; nobody else noticed
        pass
    await assert_works(carol)


async def test_a_stream_header_nested_too_deeply_ends_that_ssh_connection_saying_why(world: World, carol: Tunnel) -> None:
    bob = world.people["bob"]
    headers = {"Authorization": f"Bearer {world.agent_tokens['bob/junk']}"}
    async with fake_agent(world, "junk") as agent:
        client = await open_stream(world.url, bob.token, "junk")
        stream_id = await next_dial(agent)
        url = agent_ws_url(world, f"/api/v1/agent/streams/{stream_id}")
        async with connect(url, additional_headers=headers, compression=None, max_size=None) as data:
            await data.send(DEEP)
            assert await refusal(client) == TOO_DEEP_HEADER
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(client.recv(), 10)
            assert client.close_code == 4410
            with pytest.raises(ConnectionClosed):  # the agent's side is closed too
                await asyncio.wait_for(data.recv(), 10)
    log = world.server.log()
    assert "Traceback" not in log and "RecursionError" not in log
    assert log.count("the agent's stream header is JSON nested too deeply to parse; ending the connection") == 1
    with world.api("bob") as c:
        rows = c.get("/connections", params={"workspace": "junk"}).json()
    row = next(r for r in rows if r["reason"] == TOO_DEEP_HEADER)
    assert row["result"] == "ended" and row["ended_at"] is not None and row["mode"] is None
    await assert_works(carol)


async def test_garbage_on_the_client_stream_ends_only_that_stream_and_frees_everything(world: World, carol: Tunnel) -> None:
    bob = world.people["bob"]
    spid, apid = server_pid(world), world.agents["bob"].proc.pid  # type: ignore[union-attr]
    before = fd_count(spid), fd_count(apid)
    host, port = world.server.host, world.server.port
    for garbage in ("not ssh", "oversized", "truncated", "unmasked", "text"):
        if garbage in ("truncated", "unmasked"):
            s = rawws.handshake(host, port, "/api/v1/workspaces/dev/ssh", bob.token)
            if garbage == "truncated":
                s.sendall(rawws.frame(0x2, b"SSH-2.0-", length=70000))
                s.close()
            else:
                s.sendall(rawws.frame(0x2, b"SSH-2.0-x\r\n", mask=False))
                assert rawws.closed_by_peer(s, 10)
                s.close()
            continue
        ws = await open_stream(world.url, bob.token, "dev")
        greeting = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(greeting, bytes) and greeting.startswith(b"SSH-2.0-")
        with contextlib.suppress(ConnectionClosed):  # the server may close it mid-send
            if garbage == "not ssh":
                await ws.send(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)) * 100)
            elif garbage == "text":
                await ws.send("a text frame: ignored, carries no SSH bytes")
                await ws.send(b"\x00" * 100000)  # then garbage where the SSH version line belongs
            else:
                await ws.send(b"SSH-2.0-x\r\n")
                await ws.send(b"\x00" * OVERSIZED)
        with contextlib.suppress(ConnectionClosed, TimeoutError):
            while True:
                await asyncio.wait_for(ws.recv(), 15)
        assert ws.close_code is not None, f"{garbage}: the stream was not ended"
    await assert_works(carol)
    await assert_new_ssh_works(world, "bob")
    with world.api("bob") as c:
        wait_for(lambda: all(r["ended_at"] for r in c.get("/connections", params={"workspace": "dev"}).json()
                             if r["result"] != "refused"), 15, what="every connection row ended")
    wait_for(lambda: fd_count(spid) <= before[0] + 2 and fd_count(apid) <= before[1] + 2, 15,
             what=f"fds back to {before} (now {fd_count(spid)}, {fd_count(apid)})")
