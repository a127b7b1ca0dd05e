"""``hatchway proxy`` over ``wss://`` with its own minimal client (hatchway.cli.proxy_tls), against a
TLS server played by the test: certificates checked against the CA in ``SSL_CERT_FILE``, bulk
data both ways at once, and neither asyncio nor the websockets package loaded."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.frames import Frame
from websockets.streams import StreamReader

from hatchway.bytepath.frames import OP_BINARY, OP_CLOSE
from hatchway.cli import proxy
from tests.helpers.tlscerts import write_ca_and_certificate

SIZE = 16 * 1024 * 1024  # each way: far more than the socket buffers, so sending blocks


@dataclass
class TlsServer:
    port: int
    ca: Path
    thread: threading.Thread
    errors: list[BaseException]


def server_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x80 | opcode, n)) if n < 126 else bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
    return head + payload


def _handshake(conn: ssl.SSLSocket) -> bytes:
    """Read the upgrade request and accept it; returns what followed the request."""
    request = b""
    while b"\r\n\r\n" not in request:
        request += conn.recv(4096)
    head, _, rest = request.partition(b"\r\n\r\n")
    key = next(x for x in head.split(b"\r\n") if x.lower().startswith(b"sec-websocket-key:")).split(b":", 1)[1].strip()
    accept = base64.b64encode(hashlib.sha1(key + proxy.GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return rest


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[[Callable[[ssl.SSLSocket], None]], TlsServer]]:
    """A one-connection TLS listener on 127.0.0.1 whose certificate a private CA signed."""
    ca, cert, key = write_ca_and_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's sending blocks soon
    started: list[TlsServer] = []

    def start(serve: Callable[[ssl.SSLSocket], None]) -> TlsServer:
        errors: list[BaseException] = []

        def run() -> None:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True) as tls:
                    serve(tls)
            except (OSError, ssl.SSLError) as exc:
                errors.append(exc)
            finally:
                conn.close()

        server = TlsServer(listener.getsockname()[1], ca, threading.Thread(target=run), errors)
        server.thread.start()
        started.append(server)
        return server

    yield start
    listener.close()
    for server in started:
        server.thread.join(30)
        assert not server.thread.is_alive()


def test_bulk_data_both_ways_at_once_over_wss_without_asyncio(tls_server: Callable[..., TlsServer]) -> None:
    down = os.urandom(SIZE)
    up = os.urandom(SIZE)
    received = bytearray()

    def serve(conn: ssl.SSLSocket) -> None:
        rest = _handshake(conn)
        # All of the download first, reading nothing: the client's sending thread blocks on a
        # full socket meanwhile, and its reading thread must still get every byte.
        for i in range(0, SIZE, 65536):
            conn.sendall(server_frame(OP_BINARY, down[i : i + 65536]))
        frames = client_frames(conn, rest)
        while len(received) < SIZE:
            frame = next(frames)
            assert frame.opcode.value == OP_BINARY
            received.extend(frame.data)
        conn.sendall(server_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
        frame = next(frames)  # the client's close answers ours
        assert frame.opcode.value == OP_CLOSE

    server = tls_server(serve)
    code = ("import sys; from hatchway.cli import proxy; proxy.run_threads(sys.argv[1], 'hwt_x', 'dev'); "
            "sys.stderr.write(' '.join(m for m in ('asyncio', 'websockets') if m in sys.modules))")
    env = {**os.environ, "SSL_CERT_FILE": str(server.ca)}
    env.pop("SSL_CERT_DIR", None)
    done = subprocess.run([sys.executable, "-c", code, f"https://127.0.0.1:{server.port}"], input=up,
                          capture_output=True, env=env, timeout=120, check=False)
    server.thread.join(30)
    assert server.errors == []
    assert done.returncode == 0 and done.stderr == b"", done.stderr  # nor asyncio, nor websockets
    assert len(done.stdout) == SIZE and done.stdout == down
    assert len(received) == SIZE and bytes(received) == up


def client_frames(conn: ssl.SSLSocket, rest: bytes) -> Iterator[Frame]:
    """The client's frames as they arrive (websockets' parser: each must be masked)."""
    reader = StreamReader()
    reader.feed_data(rest)
    while True:
        parser = Frame.parse(reader.read_exact, mask=True)
        while True:
            try:
                next(parser)  # it wants more bytes
            except StopIteration as stop:
                yield stop.value
                break
            data = conn.recv(262144)
            if not data:
                return
            reader.feed_data(data)


def test_a_certificate_from_an_unknown_ca_is_refused_and_says_how_to_trust_it(
    tls_server: Callable[..., TlsServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = tls_server(_handshake)
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("SSL_CERT_FILE", str(write_ca_and_certificate(other)[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    shown = f"https://127.0.0.1:{server.port}"
    with pytest.raises(proxy.Refused) as refused:
        proxy._open(f"wss://127.0.0.1:{server.port}/api/v1/workspaces/dev/ssh", "hwt_x", shown)
    assert str(refused.value) == (
        f"the TLS certificate of the Hatchway server at {shown} is not trusted here (unable to get local issuer "
        "certificate); install the CA that signed it in this machine's trust store, or point SSL_CERT_FILE at a "
        "PEM file holding it"
    )
    server.thread.join(30)
    assert len(server.errors) == 1 and isinstance(server.errors[0], ssl.SSLError)  # the client hung up
