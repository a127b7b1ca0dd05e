"""``hatchway proxy WORKSPACE``: the ProxyCommand ssh runs for every connection.

It copies bytes between ssh (stdin/stdout) and one WebSocket to the server, and nothing else
may ever reach stdout. Its start-up time is part of every ``ssh`` a developer types, so it is
dispatched by :func:`fast_main` before click is imported (``hatchway.cli.main``; the click
command for ``--help`` lives in ``hatchway.cli.proxy_cmd``), and a plain ``ws://`` server is
reached without asyncio or the websockets package (together about 60 % of the start-up): a
minimal RFC 6455 client on a blocking socket, one thread per direction; ``wss://`` the same way,
with TLS in memory (``hatchway.cli.proxy_tls``). HTTP proxies from the environment go through the
websockets library (``hatchway.cli.proxy_ws``).

The client side of RFC 6455 needed here is small: the upgrade request and the check of
``Sec-WebSocket-Accept``; masked binary frames up (one per read of stdin, at most
:data:`CHUNK`; :func:`relay_up` says how a bulk transfer's reads are gathered); binary frames
down, streamed to stdout as they arrive, without being assembled
(:class:`hatchway.bytepath.frames.FrameReader`); text frames (the server's refusals, assembled);
ping answered with pong; close answered and ending the relay. No extension is offered, so none
may be used.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import fcntl
import functools
import hashlib
import itertools
import os
import re
import select
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hatchway import __version__
from hatchway.bytepath.frames import (
    DATA,
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    TEXT,
    VIOLATION,
    FrameReader,
    apply_mask,
    frame_header,
)
from hatchway.cli.session import NotLoggedIn, config_dir, load_session
from hatchway.cli.urlpath import segment

CHUNK = 256 * 1024
#: A read of stdin this big means a bulk transfer: in one, ssh writes an SSH packet of up to
#: 32 KiB at a time; keystrokes, commands and their acknowledgements are far smaller.
BULK = 16 * 1024
#: How long a bulk read that emptied the pipe waits for ssh's next packets (see relay_up).
HOLD_S = 0.0002
MAX_FRAME = 4 * 1024 * 1024
MAX_TEXT = 64 * 1024  # a refusal is a sentence or two
EOF_GRACE_S = 5.0
OPEN_TIMEOUT_S = 30.0
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1024 * 1024
#: Buffers per sendmsg()/writev() call (the system's IOV_MAX on Linux).
IOV_MAX = 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 64 * 1024
#: The start of an HTTP/1.x status line, up to its three-digit code: ASCII digits only, since
#: str.isdigit() also passes "²" and numbers of any length, on which int() raises.
STATUS_LINE = re.compile(r"HTTP/1\.[01] ([0-9]{3})(?: |$)")
PROXY_ENV = ("ws_proxy", "wss_proxy", "http_proxy", "https_proxy", "all_proxy", "socks_proxy")


class Refused(Exception):
    """The server refused or ended the stream; the message is for the user."""


class HandshakeRefused(Refused):
    """The server answered the WebSocket upgrade with an HTTP status other than 101."""

    def __init__(self, shown: str, status: int) -> None:
        if 400 <= status < 500:  # Hatchway, or its router, refusing this request
            message = f"the server at {shown} refused the connection (HTTP {status})"
        else:  # a proxy's 502 or 504, or another program than Hatchway answering
            from hatchway.unreachable import NOT_HATCHWAY_ADVICE

            message = f"the server at {shown} answered HTTP {status}, not Hatchway's SSH stream; {NOT_HATCHWAY_ADVICE}"
        super().__init__(message)
        self.status = status


def invalid_target(workspace: str) -> str | None:
    """Why ``workspace`` (``NAME`` or ``OWNER/NAME``) cannot name a workspace, or None. Only
    asked once the server has refused: a name it cannot route is refused before any Hatchway
    code runs, with nothing but an HTTP status to show for it."""
    from hatchway.names import check_username, check_workspace_name

    owner, _, name = workspace.partition("/") if "/" in workspace else ("", "", workspace)  # as stream_url
    try:
        check_workspace_name(name)
        if "/" in workspace:
            check_username(owner)
    except ValueError as exc:
        return f"{exc}; name a workspace as NAME or OWNER/NAME (see: hatchway workspaces list)"
    return None


class ProtocolError(Exception):
    """The server broke RFC 6455; the relay ends (close code in ``code``)."""

    def __init__(self, message: str, code: int = 1002) -> None:
        super().__init__(message)
        self.code = code


def stream_url(base: str, workspace: str) -> str:
    """The WebSocket URL of ``workspace``'s SSH stream (``owner/name`` for another user's)."""
    owner = None
    if "/" in workspace:
        owner, name = workspace.split("/", 1)
    else:
        name = workspace
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + f"/api/v1/workspaces/{segment(name)}/ssh"
    query = f"owner={segment(owner)}" if owner else ""
    return urlunsplit((scheme, parts.netloc, path, query, ""))


def message_text(text: str) -> str:
    """The user-facing part of a refusal the server sent as a text frame (``{"error": ...}``),
    else the whole text; escaped onto one line either way, since it is printed as the one line
    that says why ssh's connection ended, and whatever answered may have sent anything."""
    from hatchway import peerjson
    from hatchway.names import shown

    try:
        data = peerjson.loads(text)
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    return shown(error if isinstance(error, str) and error else text)


def uses_library(url: str, environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """True when the websockets library must carry the stream: a proxy configured in the
    environment (websockets honours those; the minimal client does not), or a scheme other than
    ``ws://`` and ``wss://``."""
    if not url.startswith(("ws://", "wss://")):
        return True
    return any(environ.get(name) or environ.get(name.upper()) for name in PROXY_ENV)


# ---- frames ------------------------------------------------------------------------------------


class _Sender:
    """Frames sent to the server; a lock keeps the pong and close of the reading side from
    interleaving with a data frame being written."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False  # a close frame went out: nothing may follow it

    def send(self, opcode: int, payload: bytes | memoryview) -> None:
        """One frame; ``payload`` may be reused once this returns (it is masked into a copy)."""
        mask = os.urandom(4)
        parts = [frame_header(opcode, len(payload), mask), apply_mask(payload, mask)]
        with self.lock:
            if self.closed:
                return
            if opcode == OP_CLOSE:
                self.closed = True
            _send_all(self.sock, parts)

    def close(self, code: int = 1000) -> None:
        with contextlib.suppress(OSError):
            self.send(OP_CLOSE, code.to_bytes(2, "big"))


def _send_all(sock: socket.socket, parts: list[bytes]) -> None:
    """Header and payload in one system call, without joining them into a third copy."""
    _gathered(sock.sendmsg, parts)


def _gathered(write: Callable[[list[memoryview]], int], parts: list[Any]) -> None:
    """All of ``parts`` through ``write`` (``sendmsg`` or ``writev``: as many buffers per call
    as the system takes, partial writes resumed), without joining them into one copy."""
    views = collections.deque(memoryview(p) for p in parts)
    while views:
        sent = write(list(itertools.islice(views, IOV_MAX)))
        while views and sent >= len(views[0]):
            sent -= len(views.popleft())
        if views and sent:
            views[0] = views[0][sent:]


def relay_down(sock: socket.socket, initial: bytes, tx: _Sender, out_fd: int) -> None:
    """Server → stdout until the server closes the stream; :class:`Refused` for a text
    message (what the server says when it refuses or ends a connection). Binary payload goes to
    stdout as it arrives, straight from the one receive buffer, in one write per receive
    whatever frames it came in: the agent frames each read of the SSH server's output (about
    32 KiB in a bulk transfer), and a write per frame woke ssh several times per receive."""
    reader = FrameReader(masked=False, max_size=MAX_FRAME)
    buf = memoryview(bytearray(CHUNK))
    write = functools.partial(os.writev, out_fd)
    text: bytearray | None = None  # a text message being assembled
    chunk: memoryview | bytes = initial
    while True:
        pieces: list[Any] = []  # what one receive holds of the stream: one write for all of it
        for event in reader.feed(chunk):
            kind = event[0]
            if kind == DATA:
                pieces.append(event[1])
                continue
            if pieces:  # what came before a control frame or a refusal goes first
                _gathered(write, pieces)
                pieces = []
            if kind == TEXT:  # text frames carry no SSH bytes: only refusals
                text = (text or bytearray()) + event[1]
                if len(text) > MAX_TEXT:
                    raise ProtocolError("text message too long", 1009)
                if event[2]:
                    raise Refused(message_text(text.decode(errors="replace")))
            elif kind == VIOLATION:
                raise ProtocolError(event[1], event[3])
            elif event[1] == OP_PING:
                tx.send(OP_PONG, event[2])
            elif event[1] == OP_CLOSE:
                payload = event[2]
                tx.close(int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000)
                if text is not None:
                    raise Refused(message_text(text.decode(errors="replace")))
                return
        if pieces:
            _gathered(write, pieces)
        n = sock.recv_into(buf)
        if not n:
            raise EOFError
        chunk = buf[:n]


def relay_up(in_fd: int, tx: _Sender, hold: float = HOLD_S) -> None:
    """stdin → server, one masked binary frame per read, until EOF.

    Every frame costs each hop of the path (this proxy, the server, the agent) a wake-up, its
    system calls and its TCP segments, whatever its size. In a bulk transfer ssh writes one SSH
    packet (up to 32 KiB) at a time, so a proxy that keeps up sent 32 KiB frames and every hop
    woke for each. Now a read of at least :data:`BULK` that emptied the pipe waits ``hold``
    seconds for what ssh writes next and sends it in the same frame: frames of about 230 KiB,
    a quarter of the wake-ups, and less CPU per GiB on every hop. When ssh is ahead (more is
    waiting in the pipe) there is nothing to wait for, and smaller reads (an interactive
    session) go at once; a bulk transfer's last packet is late by ``hold`` at most.
    """
    buf = memoryview(bytearray(CHUNK))
    waiting = select.poll()
    waiting.register(in_fd, select.POLLIN)
    while n := os.readv(in_fd, [buf]):
        if hold and BULK <= n < CHUNK:
            if not waiting.poll(0):
                time.sleep(hold)
            if waiting.poll(0):  # this thread is the pipe's only reader: the read cannot block
                n += os.readv(in_fd, [buf[n:]])
        tx.send(OP_BINARY, buf[:n])


# ---- the connection ----------------------------------------------------------------------------


def _unreachable(shown: str, exc: OSError, tls: bool) -> str:
    """What failed reaching the server; an untrusted certificate says how to trust it."""
    if tls:
        from hatchway.unreachable import untrusted_certificate, why_unreachable

        if untrusted_certificate(exc) is not None:
            return why_unreachable(shown, exc)
    return f"cannot reach the Hatchway server at {shown}: {exc}"


def _open(url: str, token: str, shown: str, timeout: float = OPEN_TIMEOUT_S) -> tuple[Any, bytes]:
    """Connect to the ``ws://`` or ``wss://`` URL and upgrade; returns the socket (blocking, no
    timeout; a :class:`hatchway.cli.proxy_tls.TlsSocket` for ``wss://``) and any frame bytes that
    arrived with the response. ``shown`` is the server's URL in messages."""
    parts = urlsplit(url)
    tls = parts.scheme == "wss"
    host, port = parts.hostname or "", parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise Refused(f"cannot reach the Hatchway server at {shown}: {exc}") from None
    sock: Any = raw
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:
            from hatchway.cli.proxy_tls import TlsSocket  # ssl: only for wss://

            sock = TlsSocket(raw, host)
        key = base64.b64encode(os.urandom(16))
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\nUser-Agent: hatchway-proxy/{__version__}\r\n\r\n"
        )
        sock.sendall(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            if len(head) > MAX_RESPONSE_HEAD:
                raise Refused(f"the server at {shown} sent an oversized response")
            data = sock.recv(65536)
            if not data:
                raise Refused(f"the server at {shown} closed the connection during the WebSocket handshake")
            head += data
        head, _, rest = head.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        matched = STATUS_LINE.match(status_line)
        if matched is None:
            from hatchway.unreachable import NOT_HATCHWAY_ADVICE

            raise Refused(f"the server at {shown} did not answer the WebSocket upgrade in HTTP; {NOT_HATCHWAY_ADVICE}")
        status = int(matched[1])
        if status != 101:
            raise HandshakeRefused(shown, status)
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if (
            headers.get("upgrade", "").lower() != "websocket"
            or "upgrade" not in headers.get("connection", "").lower()
            or headers.get("sec-websocket-accept") != expected
            or headers.get("sec-websocket-extensions")
        ):
            from hatchway.unreachable import NOT_HATCHWAY_ADVICE

            raise Refused(f"the server at {shown} answered with an invalid WebSocket handshake; {NOT_HATCHWAY_ADVICE}")
        sock.settimeout(None)
        return sock, rest
    except TimeoutError:
        raw.close()
        from hatchway.unreachable import no_answer

        raise Refused(no_answer(shown, timeout, "answer to the WebSocket upgrade")) from None
    except OSError as exc:
        raw.close()
        raise Refused(_unreachable(shown, exc, tls)) from None
    except BaseException:
        raw.close()
        raise


def _bigger_pipe(fd: int) -> None:
    """Bigger pipes: fewer wake-ups per MiB (capped by the kernel's pipe-max-size)."""
    with contextlib.suppress(OSError):
        os.set_blocking(fd, True)  # each direction has a thread of its own that may block
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)


def run_threads(url: str, token: str, workspace: str, in_fd: int = 0, out_fd: int = 1) -> None:
    """Relay ssh's stdin/stdout over the plain ``ws://`` stream of ``workspace``.

    The calling thread copies server → stdout; a daemon thread copies stdin → server. Either
    side ending ends the relay: ssh closing our stdin means it is finished (the server gets
    :data:`EOF_GRACE_S` to finish what it is saying: a refusal, the tail of the stream; ssh
    itself ends us with SIGHUP when it exits), and
    the server closing the stream means the workspace side is gone. The socket is closed on
    every path; the daemon thread, if still blocked reading stdin, ends with the process.
    """
    for fd in (in_fd, out_fd):
        _bigger_pipe(fd)
    sock, initial = _open(stream_url(url, workspace), token, url)
    tx = _Sender(sock)
    up_done = threading.Event()
    down_done = threading.Event()

    def up() -> None:
        try:
            # In this thread, while the other waits for the server's banner: off the start-up path.
            from hatchway.malloc import keep_large_buffers

            keep_large_buffers()
            relay_up(in_fd, tx)
        except OSError:
            pass  # the server side is gone, or stdin broke: the reading side ends too
        finally:
            up_done.set()
        # Not closing at once: a server still deciding (a refusal on its way) would drop it.
        if not down_done.wait(EOF_GRACE_S):
            tx.close()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reading side

    sender = threading.Thread(target=up, name="stdin-to-server", daemon=True)
    sender.start()
    try:
        relay_down(sock, initial, tx, out_fd)
    except ProtocolError as exc:
        tx.close(exc.code)
        raise Refused(f"the server broke the WebSocket protocol: {exc}") from None
    except (EOFError, OSError):
        pass  # the stream ended without a close frame, or stdout is gone: ssh sees the end
    finally:
        down_done.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        if up_done.is_set():
            sender.join()
        sock.close()


def relay(workspace: str, config_path: str | os.PathLike[str] | None) -> int:
    """Run the proxy for WORKSPACE; returns the exit status (messages go to stderr)."""
    try:
        session = load_session(config_dir(config_path))
    except NotLoggedIn as exc:
        print(f"hatchway: {exc}", file=sys.stderr)
        return 1
    try:
        if uses_library(stream_url(session.url, workspace)):
            import asyncio

            from hatchway.cli.proxy_ws import run_proxy

            asyncio.run(run_proxy(session.url, session.token, workspace))
        else:
            run_threads(session.url, session.token, workspace)
    except Refused as exc:
        why = invalid_target(workspace) if isinstance(exc, HandshakeRefused) and exc.status in (403, 404) else None
        print(f"hatchway: {why or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def parse_argv(argv: list[str]) -> tuple[str, str | None] | None:
    """(workspace, config dir) from the arguments after ``proxy``, for the forms ssh config
    uses: ``WORKSPACE``, ``--config-dir DIR``/``--config-dir=DIR`` before or after it, and
    ``--`` before the workspace. Anything else (``--help``, typos, missing or extra arguments)
    is None: click parses it then, with its usual messages."""
    workspace: str | None = None
    config_path: str | None = None
    args = iter(argv)
    options = True
    for arg in args:
        if options and arg == "--":
            options = False
        elif options and arg == "--config-dir" and config_path is None:
            config_path = next(args, None)
            if not config_path:
                return None
        elif options and arg.startswith("--config-dir=") and config_path is None:
            config_path = arg.split("=", 1)[1]
            if not config_path:
                return None
        elif options and arg.startswith("-") and arg != "-":
            return None
        elif workspace is None:
            workspace = arg
        else:
            return None
    return (workspace, config_path) if workspace is not None else None


def fast_main(argv: list[str]) -> int | None:
    """``hatchway proxy ARGS`` without click; None when click must parse ARGS instead."""
    parsed = parse_argv(argv)
    if parsed is None:
        return None
    return relay(*parsed)
