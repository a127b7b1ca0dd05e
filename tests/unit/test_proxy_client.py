"""The minimal WebSocket client of ``hatchway proxy`` (hatchway.cli.proxy), against a server
played by the test over a socketpair or a loopback listener, checked with websockets' own
sans-I/O frame parser."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import socket
import struct
import termios
import threading
import time

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from hatchway.bytepath.frames import DATA, FrameReader
from hatchway.bytepath.frames import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from hatchway.cli import proxy


def server_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """An unmasked frame as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, n))
    elif n < 1 << 16:
        head = bytes((first, 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 127)) + n.to_bytes(8, "big")
    return head + payload


def client_frames(data: bytes) -> list[Frame]:
    """Parse what the client sent (every frame must be masked)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=True)
        try:
            next(parser)
        except StopIteration as stop:
            frames.append(stop.value)
        except EOFError:
            return frames


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["dev"], ("dev", None)),
        (["alice/dev"], ("alice/dev", None)),
        (["--config-dir", "/c", "dev"], ("dev", "/c")),
        (["dev", "--config-dir=/c"], ("dev", "/c")),
        (["--", "-odd"], ("-odd", None)),
        ([], None),
        (["--help"], None),
        (["-h"], None),
        (["dev", "extra"], None),
        (["--config-dir"], None),
        (["--config-dir="], None),
        (["--unknown", "dev"], None),
    ],
)
def test_argv_fast_path_and_fallback_to_click(argv: list[str], expected: tuple[str, str | None] | None) -> None:
    assert proxy.parse_argv(argv) == expected


def test_library_only_for_proxies() -> None:
    assert not proxy.uses_library("ws://127.0.0.1:7080/x", {})
    assert not proxy.uses_library("wss://h/x", {})  # hatchway.cli.proxy_tls
    assert proxy.uses_library("wss://h/x", {"https_proxy": "http://p:3128"})
    assert proxy.uses_library("ws://h/x", {"HTTPS_PROXY": "http://p:3128"})
    assert proxy.uses_library("ws://h/x", {"all_proxy": "socks5://p"})
    assert not proxy.uses_library("ws://h/x", {"https_proxy": ""})


@pytest.mark.parametrize("n", [0, 1, 125, 126, 65535, 65536, proxy.CHUNK])
def test_client_frames_are_masked_and_parse(n: int) -> None:
    a, b = socket.socketpair()
    with a, b:
        tx = proxy._Sender(a)
        payload = os.urandom(n)
        t = threading.Thread(target=lambda: (tx.send(OP_BINARY, payload), tx.close(), a.shutdown(socket.SHUT_WR)))
        t.start()
        data = recv_all(b)
        t.join()
    frames = client_frames(data)
    assert [(f.opcode, f.data, f.fin) for f in frames] == [
        (Opcode.BINARY, payload, True),
        (Opcode.CLOSE, (1000).to_bytes(2, "big"), True),
    ]


def run_down(server_bytes: bytes) -> tuple[bytes, list[Frame], BaseException | None]:
    """Feed ``server_bytes`` to relay_down; returns (stdout, frames the client sent, error)."""
    a, b = socket.socketpair()
    r, w = os.pipe()
    out: list[bytes] = []
    reader = threading.Thread(target=lambda: out.append(b"".join(iter(lambda: os.read(r, 65536), b""))))
    reader.start()
    error: BaseException | None = None
    with a, b:
        def feed() -> None:
            with contextlib.suppress(OSError):  # the client stops reading at an error
                b.sendall(server_bytes)
                b.shutdown(socket.SHUT_WR)

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            proxy.relay_down(a, b"", proxy._Sender(a), w)
        except (proxy.Refused, proxy.ProtocolError, EOFError) as exc:
            error = exc
        finally:
            os.close(w)
            a.shutdown(socket.SHUT_RDWR)  # the feeder may still be writing after an error
        sent = recv_all(b)
        feeder.join()
    reader.join()
    os.close(r)
    return out[0], client_frames(sent), error


def test_binary_frames_stream_to_stdout_ping_is_answered_close_is_echoed() -> None:
    big = os.urandom(3 * proxy.CHUNK + 17)
    stream = (
        server_frame(OP_BINARY, b"SSH-2.0-x\r\n")
        + server_frame(OP_PING, b"hi")
        + server_frame(OP_BINARY, big[:1000], fin=False)
        + server_frame(OP_CONT, big[1000:])
        + server_frame(OP_PONG, b"")
        + server_frame(OP_CLOSE, (1001).to_bytes(2, "big") + b"bye")
        + server_frame(OP_BINARY, b"after close: never written")
    )
    stdout, frames, error = run_down(stream)
    assert error is None
    assert stdout == b"SSH-2.0-x\r\n" + big
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.PONG, b"hi"), (Opcode.CLOSE, (1001).to_bytes(2, "big"))]


def test_text_frame_is_the_refusal_message() -> None:
    refusal = b'{"type": "error", "error": "SSH access is disabled"}'
    stdout, _, error = run_down(server_frame(OP_TEXT, refusal[:10], fin=False) + server_frame(OP_CONT, refusal[10:]))
    assert stdout == b""
    assert isinstance(error, proxy.Refused) and str(error) == "SSH access is disabled"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (bytes((0x82, 0x80 | 1)) + b"mask" + b"x", 1002),  # a masked server frame
        (bytes((0xC2, 1)) + b"x", 1002),  # RSV1 without an extension
        (bytes((0x83, 0)), 1002),  # reserved opcode
        (bytes((0x09, 0)), 1002),  # fragmented ping
        (server_frame(OP_CONT, b"x"), 1002),  # continuation of nothing
        (bytes((0x82, 127)) + (proxy.MAX_FRAME + 1).to_bytes(8, "big"), 1009),
        (server_frame(OP_TEXT, b"x" * 40_000, fin=False) + server_frame(OP_CONT, b"x" * 40_000), 1009),  # not a refusal
    ],
)
def test_protocol_errors(frame: bytes, code: int) -> None:
    stdout, _, error = run_down(frame)
    assert stdout == b""
    assert isinstance(error, proxy.ProtocolError) and error.code == code


def test_abrupt_end_is_eof() -> None:
    _, _, error = run_down(server_frame(OP_BINARY, b"abc")[:3])
    assert isinstance(error, EOFError)


def writes_of_relay_down(initial: bytes) -> list[bytes]:
    """Each write relay_down makes to stdout, as the messages of a SOCK_SEQPACKET pair (one
    message per writev); ``initial`` is what arrived with the handshake response, one chunk,
    followed by the server's close."""
    a, b = socket.socketpair()
    out_w, out_r = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b, out_w, out_r:
        out_w.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        b.sendall(server_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        writes: list[bytes] = []
        reader = threading.Thread(target=lambda: writes.extend(iter(lambda: out_r.recv(1 << 20), b"")))
        reader.start()
        proxy.relay_down(a, initial, proxy._Sender(a), out_w.fileno())
        out_w.shutdown(socket.SHUT_WR)
        reader.join(10)
    return writes


def test_one_write_per_receive_whatever_frames_it_holds() -> None:
    frames = [os.urandom(n) for n in (32 * 1024, 300, 32 * 1024, 7, 1000)]
    initial = (
        b"".join(server_frame(OP_BINARY, f) for f in frames[:3])
        + server_frame(OP_PING, b"p")  # what came before a control frame goes first
        + server_frame(OP_BINARY, frames[3], fin=False)
        + server_frame(OP_CONT, frames[4])
    )
    assert writes_of_relay_down(initial) == [b"".join(frames[:3]), b"".join(frames[3:])]


def test_a_receive_of_more_frames_than_one_writev_takes_is_written_whole() -> None:
    payloads = [os.urandom(1 + i % 5) for i in range(3 * proxy.IOV_MAX + 5)]  # a hostile server's tiny frames
    writes = writes_of_relay_down(b"".join(server_frame(OP_BINARY, p) for p in payloads))
    assert b"".join(writes) == b"".join(payloads)
    assert len(writes) == 4  # at most IOV_MAX buffers per call


class FakeServer:
    """One loopback connection answered with a canned handshake response."""

    def __init__(self, respond: callable) -> None:  # type: ignore[valid-type]
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.request = b""
        self.respond = respond
        self.thread = threading.Thread(target=self._serve)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            while b"\r\n\r\n" not in self.request:
                self.request += conn.recv(4096)
            self.respond(self, conn)

    def key(self) -> bytes:
        line = next(x for x in self.request.split(b"\r\n") if x.lower().startswith(b"sec-websocket-key:"))
        return line.split(b":", 1)[1].strip()

    def accept(self, conn: socket.socket, accept_key: bytes | None = None) -> None:
        key = accept_key or base64.b64encode(hashlib.sha1(self.key() + proxy.GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + key + b"\r\n\r\n")

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


def test_handshake_and_a_whole_relay_over_threads() -> None:
    def respond(srv: FakeServer, conn: socket.socket) -> None:
        srv.accept(conn)
        conn.sendall(server_frame(OP_BINARY, b"banner"))  # may arrive with the 101
        srv.received = recv_all(conn)  # type: ignore[attr-defined]

    srv = FakeServer(respond)
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.write(in_w, b"hello")
    os.close(in_w)
    try:
        proxy.run_threads(f"http://127.0.0.1:{srv.port}", "hwt_secret", "alice/dev", in_r, out_w)
    finally:
        srv.close()
        os.close(out_w)
        os.close(in_r)
    assert os.read(out_r, 100) == b"banner"
    os.close(out_r)
    head = srv.request.decode()
    assert head.startswith("GET /api/v1/workspaces/dev/ssh?owner=alice HTTP/1.1\r\n")
    assert "Authorization: Bearer hwt_secret\r\n" in head and "Upgrade: websocket\r\n" in head
    frames = client_frames(srv.received)  # type: ignore[attr-defined]
    assert [(f.opcode, f.data) for f in frames] == [(Opcode.BINARY, b"hello"), (Opcode.CLOSE, (1000).to_bytes(2, "big"))]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "refused the connection (HTTP 403)"),
        (None, "invalid WebSocket handshake"),
        (b"", "closed the connection during the WebSocket handshake"),
    ],
)
def test_handshake_refusals(response: bytes | None, message: str) -> None:
    def respond(srv: FakeServer, conn: socket.socket) -> None:
        if response is None:
            srv.accept(conn, accept_key=base64.b64encode(b"wrong" * 4))
        else:
            conn.sendall(response)

    srv = FakeServer(respond)
    try:
        with pytest.raises(proxy.Refused, match=re.escape(message)):
            proxy._open(f"ws://127.0.0.1:{srv.port}/x", "t", "http://server")
    finally:
        srv.close()


def test_unreachable_server() -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    with pytest.raises(proxy.Refused, match=re.escape(f"cannot reach the Hatchway server at http://127.0.0.1:{port}")):
        proxy._open(f"ws://127.0.0.1:{port}/x", "t", f"http://127.0.0.1:{port}")


def test_a_frame_larger_than_the_socket_buffer_goes_out_whole_and_in_order() -> None:
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    a.settimeout(10)  # sendmsg then sends what fits and returns: partial sends are the normal case
    payloads = [os.urandom(3_000_000), b"", os.urandom(70_000)]
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(recv_all(b)))
    reader.start()
    with a, b:
        tx = proxy._Sender(a)
        for payload in payloads:
            tx.send(OP_BINARY, payload)
        a.shutdown(socket.SHUT_WR)
        reader.join()
    assert [(f.opcode, f.data) for f in client_frames(received[0])] == [(Opcode.BINARY, p) for p in payloads]


class UpRelay:
    """relay_up in a thread, reading a real pipe and sending to a socketpair, with the frames it
    sent parsed one by one as they arrive."""

    def __init__(self, hold: float, prefill: bytes = b"") -> None:
        self.r, self.w = os.pipe()
        fcntl.fcntl(self.w, proxy.F_SETPIPE_SZ, proxy.PIPE_SIZE)  # as ssh's pipe is made bigger
        os.write(self.w, prefill)
        self.a, self.b = socket.socketpair()
        self.b.settimeout(10)
        self.reader = FrameReader(masked=True)
        self.frames: list[bytes] = []
        self.thread = threading.Thread(target=lambda: (proxy.relay_up(self.r, proxy._Sender(self.a), hold),
                                                       self.a.shutdown(socket.SHUT_WR)))
        self.thread.start()

    def unread(self) -> int:
        """Bytes written to the pipe that relay_up has not read yet."""
        return struct.unpack("i", fcntl.ioctl(self.r, termios.FIONREAD, b"\0\0\0\0"))[0]

    def drained(self) -> None:
        deadline = time.monotonic() + 10
        while self.unread():
            assert time.monotonic() < deadline, "relay_up did not read the pipe"
            time.sleep(0.001)

    def next_frame(self) -> bytes:
        """The next frame's payload; a socket timeout (10 s) if none comes."""
        payload = bytearray()
        while True:
            if self.frames:
                return self.frames.pop(0)
            data = self.b.recv(1 << 20)
            assert data, "the relay ended"
            for event in self.reader.feed(data):
                assert event[0] == DATA
                payload += event[1]
                # Frames are read whole here: a frame ends where the reader stands at a boundary.
                if self.reader.at_boundary():
                    self.frames.append(bytes(payload))
                    payload.clear()

    def close(self) -> list[bytes]:
        """End of stdin: the frames still to come."""
        os.close(self.w)
        rest = b""
        while data := self.b.recv(1 << 20):
            rest += data
        self.thread.join()
        frames, payload = self.frames, bytearray()
        for event in self.reader.feed(rest):
            payload += event[1]
            if self.reader.at_boundary():
                frames.append(bytes(payload))
                payload.clear()
        os.close(self.r)
        self.a.close()
        self.b.close()
        return frames


def test_a_bulk_read_waits_for_the_next_packets_and_sends_them_in_one_frame() -> None:
    relay = UpRelay(hold=0.5)
    first, second = os.urandom(32 * 1024), os.urandom(32 * 1024)
    os.write(relay.w, first)
    relay.drained()  # read, and waiting: what comes now joins the same frame
    os.write(relay.w, second)
    assert relay.next_frame() == first + second
    assert relay.close() == []


def test_small_reads_and_full_reads_are_not_held() -> None:
    waiting = os.urandom(proxy.CHUNK + 1000)  # in the pipe before relay_up reads: a full read, then the rest
    relay = UpRelay(hold=60.0, prefill=waiting)  # any wait at all would outlast the socket's 10 s timeout
    assert relay.next_frame() == waiting[: proxy.CHUNK]
    assert relay.next_frame() == waiting[proxy.CHUNK :]
    for size in (1, 100, proxy.BULK - 1):
        data = os.urandom(size)
        os.write(relay.w, data)
        assert relay.next_frame() == data
    assert relay.close() == []


def test_end_of_stdin_during_the_wait_sends_what_was_read() -> None:
    relay = UpRelay(hold=0.5)
    data = os.urandom(proxy.BULK)
    os.write(relay.w, data)
    relay.drained()
    assert relay.close() == [data]
