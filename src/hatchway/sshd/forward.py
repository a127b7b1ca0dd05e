"""Forwarded streams of the built-in server: an SSH channel on one side, a local socket on the other.

One :class:`Bridge` carries one forwarded connection, whichever way it was opened:

* ``direct-tcpip`` / ``direct-streamlocal@openssh.com`` (``ssh -L``, ``ssh -D``): the client opens
  the channel, we connect to the target, then bridge;
* ``forwarded-tcpip`` / ``forwarded-streamlocal@openssh.com`` (``ssh -R``), ``x11`` and
  ``auth-agent@openssh.com``: a local program connects to one of our listeners, we open a channel
  back to the client, then bridge.

Both directions are flow-controlled without buffers of our own: when the socket's send buffer is
full we stop reading the channel (its window closes and the client stops sending), and when the
channel's send buffer or the connection's transport is full (:mod:`hatchway.sshd.flow`) we stop
reading the socket. EOF is passed on as a half-close in each direction; the bridge closes once
both directions ended or either side is gone.

Listeners bind off the event loop (Unix sockets touch the file system) and are owned by the
connection (``-R``) or the session (agent, X11) that asked for them; closing the owner closes them
and removes the socket files they created.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncssh

from hatchway.sshd.flow import WINDOW, Hold, OutputGate

log = logging.getLogger("hatchway.sshd")
T = TypeVar("T")

CONNECT_TIMEOUT = 20.0  # direct-tcpip: give up on a target that does not answer
LISTEN_BACKLOG = 128
SOCKET_MODE = 0o600  # OpenSSH's StreamLocalBindMask 0177


class Bridge:
    """One forwarded connection: pairs an SSH channel with a socket transport."""

    def __init__(
        self, label: str, on_close: Callable[[Bridge], None] | None = None, gate: OutputGate | None = None
    ) -> None:
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.chan: Any = None  # asyncssh SSHTCPChannel / SSHUNIXChannel / X11 / agent channel
        self.closed = False
        self.socket_end = _SocketEnd(self)
        self.channel_end = _ChannelEnd(self)
        self.opener: asyncio.Task[None] | None = None  # the task opening our channel, if any
        self._on_close = on_close
        self._socket_eof = False
        self._channel_eof = False
        # The socket is not read while the channel's send buffer or the connection's transport
        # is above its high-water mark.
        self._hold = Hold(self._stop_reading, self._start_reading)
        self._gate = gate
        if gate is not None:
            gate.join(self._hold)
        # Bytes read before the channel exists. pause_reading() in connection_made keeps them in
        # the kernel on asyncio's loop, but uvloop starts reading right after connection_made
        # whatever it was told, so at most one read can arrive early: kept here, not dropped.
        self._early: list[bytes] = []

    # ---- the socket side -----------------------------------------------------------------

    def _socket_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.closed:
            transport.close()
        elif self.chan is None:
            # Nothing to send the bytes to yet: let them wait in the kernel, not in memory.
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _from_socket(self, data: bytes) -> None:
        if self.closed:
            return
        if self.chan is None:
            self._early.append(data)
            self.transport.pause_reading()  # type: ignore[union-attr]
            return
        try:
            self.chan.write(data)
        except (OSError, asyncssh.Error):  # channel closing: the close will follow
            self.close()

    def _socket_eof_received(self) -> bool:
        self._socket_eof = True
        if self.chan is None and not self.closed:
            return True  # passed on when the channel exists (_channel_made)
        if self.chan is not None and not self.closed:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.write_eof()
        if self._channel_eof:
            self.close()
            return False
        return True  # keep our sending direction open until the channel ends too

    def _socket_full(self) -> None:
        if self.chan is not None and not self.closed:
            self.chan.pause_reading()

    def _socket_drained(self) -> None:
        if self.chan is not None and not self.closed:
            self.chan.resume_reading()

    # ---- the channel side ----------------------------------------------------------------

    def _channel_made(self, chan: Any) -> None:
        self.chan = chan
        if self.closed:
            chan.close()
            return
        early, self._early = self._early, []
        try:
            for data in early:
                chan.write(data)
            if self._socket_eof:
                chan.write_eof()
        except (OSError, asyncssh.Error):
            self.close()
            return
        if self.transport is not None and not self._hold.held and not self._socket_eof:
            self.transport.resume_reading()

    def _from_channel(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _channel_eof_received(self) -> bool:
        self._channel_eof = True
        transport = self.transport
        if transport is not None and not self.closed:
            if transport.can_write_eof():
                with contextlib.suppress(OSError):
                    transport.write_eof()
            else:
                self.close()
                return False
        if self._socket_eof:
            self.close()
            return False
        return True

    def _channel_paused(self) -> None:
        self._hold.set(WINDOW, True)

    def _channel_resumed(self) -> None:
        self._hold.set(WINDOW, False)

    def _stop_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def _start_reading(self) -> None:
        if self.transport is not None and self.chan is not None and not self.closed:
            self.transport.resume_reading()

    # ---- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Close both sides (pending output is still flushed by each); idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._gate is not None:
            self._gate.leave(self._hold)
        if self.transport is not None:
            self.transport.close()
        if self.chan is not None:
            with contextlib.suppress(Exception):
                self.chan.close()
        if self.opener is not None and not self.opener.done():
            self.opener.cancel()
        if self._on_close is not None:
            callback, self._on_close = self._on_close, None
            callback(self)


class _SocketEnd(asyncio.Protocol):
    def __init__(self, bridge: Bridge) -> None:
        self._b = bridge

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._b._socket_made(transport)

    def data_received(self, data: bytes) -> None:
        self._b._from_socket(data)

    def eof_received(self) -> bool:
        return self._b._socket_eof_received()

    def pause_writing(self) -> None:
        self._b._socket_full()

    def resume_writing(self) -> None:
        self._b._socket_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self._b.close()


class _ChannelEnd(asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """asyncssh's session callbacks for the channel (TCP, Unix, X11 and agent alike)."""

    def __init__(self, bridge: Bridge) -> None:
        self._b = bridge

    def connection_made(self, chan: Any) -> None:
        self._b._channel_made(chan)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self._b._from_channel(data)

    def eof_received(self) -> bool:
        return self._b._channel_eof_received()

    def pause_writing(self) -> None:
        self._b._channel_paused()

    def resume_writing(self) -> None:
        self._b._channel_resumed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._b.close()


# ---- outgoing: ssh -L / -D ---------------------------------------------------------------------


def open_failure(exc: BaseException) -> asyncssh.ChannelOpenError:
    """The channel-open failure the client prints ("open failed: connect failed: ...")."""
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        reason = "Connection timed out"
    elif isinstance(exc, socket.gaierror):
        reason = f"name or service not known ({exc.strerror or exc})"
    elif isinstance(exc, OSError):
        # asyncio words it "Connect call failed ('host', port)"; OpenSSH says "Connection refused"
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
    else:
        reason = str(exc) or exc.__class__.__name__
    return asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, reason)


async def connect_tcp(bridge: Bridge, host: str, port: int, timeout: float = CONNECT_TIMEOUT) -> None:
    """Connect the bridge's socket side to host:port, or raise the ChannelOpenError to send."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.create_connection(lambda: bridge.socket_end, host, port), timeout)
    except (TimeoutError, OSError) as exc:
        bridge.close()
        raise open_failure(exc) from None


async def connect_unix(bridge: Bridge, path: str, timeout: float = CONNECT_TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.create_unix_connection(lambda: bridge.socket_end, path), timeout)
    except (TimeoutError, OSError) as exc:
        bridge.close()
        raise open_failure(exc) from None


# ---- incoming: listeners -----------------------------------------------------------------------

#: Called for each accepted local connection: returns the Bridge whose socket_end serves it, or
#: None to refuse it (the socket is then closed at once).
AcceptHandler = Callable[[tuple[Any, ...] | str | None], "Bridge | None"]


class Acceptor(asyncio.Protocol):
    """What a listener's accepted connection talks to: the bridge chosen for it, or nothing."""

    def __init__(self, on_accept: AcceptHandler) -> None:
        self._on_accept = on_accept
        self._end: _SocketEnd | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        bridge = self._on_accept(peer)
        if bridge is None:
            transport.abort()
            return
        self._end = bridge.socket_end
        self._end.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._end is not None:
            self._end.data_received(data)

    def eof_received(self) -> bool:
        return self._end.eof_received() if self._end is not None else False

    def pause_writing(self) -> None:
        if self._end is not None:
            self._end.pause_writing()

    def resume_writing(self) -> None:
        if self._end is not None:
            self._end.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._end is not None:
            self._end.connection_lost(exc)


class Listener(asyncssh.SSHListener):
    """Our listening sockets for one forward; asyncssh keeps it for cancel-*-forward too."""

    def __init__(self, servers: list[asyncio.Server], port: int = 0, path: str | None = None,
                 cleanup: Callable[[], None] | None = None,
                 on_closed: Callable[[Listener], None] | None = None,
                 track_task: Callable[[asyncio.Task[None]], None] | None = None) -> None:
        super().__init__()
        self._servers = servers
        self._port = port
        self.path = path
        self._cleanup = cleanup  # blocking (file system): runs in a thread
        self._on_closed = on_closed
        self._track_task = track_task
        self._closed = False
        self._done: asyncio.Task[None] | None = None

    def get_port(self) -> int:
        return self._port

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for server in self._servers:
            server.close()
        if self._cleanup is not None:
            self._done = asyncio.get_running_loop().create_task(asyncio.to_thread(self._cleanup))
            if self._track_task is not None:
                self._track_task(self._done)
        if self._on_closed is not None:
            callback, self._on_closed = self._on_closed, None
            callback(self)

    async def wait_closed(self) -> None:
        self.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._done is not None:
            with contextlib.suppress(Exception):
                await self._done

    @property
    def closed(self) -> bool:
        return self._closed


def bind_addresses(host: str, gateway_ports: bool) -> list[tuple[int, str]]:
    """The (family, address) pairs a -R listener binds, like OpenSSH's channel_fwd_bind_addr.

    Without GatewayPorts everything is loopback whatever the client asked ("" and "*" included,
    and a non-loopback address too). With it, "" / "*" / "0.0.0.0" / "::" mean every address.
    """
    if not gateway_ports:
        if host in ("127.0.0.1",) or host.startswith("127."):
            return [(socket.AF_INET, host)]
        if host in ("::1", "[::1]"):
            return [(socket.AF_INET6, "::1")]
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    if host in ("", "*", "0.0.0.0", "::", "[::]"):
        return [(socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")]
    if host == "localhost":
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
    return [(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, str(ip))]


def _tcp_socket(family: int, address: str, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_tcp(addresses: list[tuple[int, str]], port: int, *, strict: bool = False
             ) -> tuple[list[socket.socket], int]:
    """Bind every address on one port (allocated on the first when ``port`` is 0).

    IPv4 is required; an IPv6 address that cannot be bound (no IPv6 in this namespace, or the
    allocated port taken there) is skipped, as OpenSSH does for a partly bindable "localhost".
    With ``strict`` a port taken on IPv6 fails the whole bind (X11: someone else's display must
    not answer on ::1 while ours answers on 127.0.0.1).
    """
    socks: list[socket.socket] = []
    try:
        for family, address in addresses:
            try:
                sock = _tcp_socket(family, address, port)
            except OSError as exc:
                skippable = (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) + (() if strict else (errno.EADDRINUSE,))
                if family == socket.AF_INET6 and socks and exc.errno in skippable:
                    continue
                raise
            socks.append(sock)
            if port == 0:
                port = sock.getsockname()[1]
        if not socks:
            raise OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, port


async def listen_tcp(addresses: list[tuple[int, str]], port: int, on_accept: AcceptHandler,
                     on_closed: Callable[[Listener], None] | None = None) -> Listener:
    """A TCP listener on ``addresses``; sockets are bound directly (no file system involved)."""
    socks, port = bind_tcp(addresses, port)
    return await serve_bound(socks, port, on_accept, on_closed)


async def serve_bound(socks: list[socket.socket], port: int, on_accept: AcceptHandler,
                      on_closed: Callable[[Listener], None] | None = None) -> Listener:
    """Serve already-bound sockets as one Listener; on failure nothing stays open."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.Server] = []
    try:
        for sock in socks:
            servers.append(await loop.create_server(lambda: Acceptor(on_accept), sock=sock))
    except BaseException:
        for server in servers:
            server.close()
        for sock in socks[len(servers):]:
            sock.close()
        raise
    return Listener(servers, port=port, on_closed=on_closed)


def _stale(path: str) -> bool:
    """A socket file nobody listens on any more (left by a crashed program)."""
    try:
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            return False
    except OSError:
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1)
        probe.connect(path)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def bind_unix(path: str, mode: int = SOCKET_MODE) -> tuple[socket.socket, tuple[int, int]]:
    """Create a listening Unix socket at ``path`` with ``mode``, never replacing a live one.

    Blocking (file system): run it in a thread. The socket is bound in a private temporary
    directory next to ``path``, chmod-ed, then hard-linked into place: nobody can connect before
    the mode is right, and an existing file is never clobbered (a stale socket, one nobody
    listens on, is removed first, which is what GPG-agent forwarding needs after a crash).
    Returns the socket and the (st_dev, st_ino) of the file, so cleanup removes only our own.
    """
    parent = os.path.dirname(path) or "."
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        tmpdir = tempfile.mkdtemp(prefix=".hatchway-", dir=parent)
        tmp = os.path.join(tmpdir, "s")
        try:
            if len(os.fsencode(tmp)) < _SUN_PATH_MAX:
                sock.bind(tmp)
                os.chmod(tmp, mode)
                _link_into_place(tmp, path)
            else:  # the temporary name would be too long for a socket address; the target is not
                _bind_in_place(sock, path)
                os.chmod(path, mode)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            with contextlib.suppress(OSError):
                os.rmdir(tmpdir)
        st = os.stat(path)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, (st.st_dev, st.st_ino)


_SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included


def _link_into_place(tmp: str, path: str) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        if not _stale(path):
            raise OSError(errno.EADDRINUSE, f"{path}: address already in use") from None
        os.unlink(path)
        os.link(tmp, path)


def _bind_in_place(sock: socket.socket, path: str) -> None:
    try:
        sock.bind(path)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or not _stale(path):
            raise
        os.unlink(path)
        sock.bind(path)


def remove_socket_file(path: str, ident: tuple[int, int]) -> None:
    """Remove ``path`` if it is still the socket we created (blocking: call from a thread)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if (st.st_dev, st.st_ino) == ident and stat.S_ISSOCK(st.st_mode):
        with contextlib.suppress(OSError):
            os.unlink(path)


async def listen_unix(path: str, on_accept: AcceptHandler, *, mode: int = SOCKET_MODE,
                      extra_cleanup: Callable[[], None] | None = None,
                      on_closed: Callable[[Listener], None] | None = None,
                      track_task: Callable[[asyncio.Task[None]], None] | None = None) -> Listener:
    """A Unix-socket listener at ``path``; closing it removes the socket file (and runs
    ``extra_cleanup``, e.g. removing the private directory it lives in)."""
    loop = asyncio.get_running_loop()

    def abandon(result: tuple[socket.socket, tuple[int, int]]) -> None:
        result[0].close()
        remove_socket_file(path, result[1])

    sock, ident = await in_thread_owned(abandon, bind_unix, path, mode)

    def cleanup() -> None:
        remove_socket_file(path, ident)
        if extra_cleanup is not None:
            extra_cleanup()

    try:
        server = await loop.create_unix_server(lambda: Acceptor(on_accept), sock=sock)
    except BaseException:
        sock.close()
        await asyncio.to_thread(cleanup)
        raise
    return Listener([server], path=path, cleanup=cleanup, on_closed=on_closed, track_task=track_task)


async def in_thread_owned(release: Callable[[T], None], fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn`` on the default pool; if we are cancelled meanwhile, whatever it
    creates is handed to ``release`` (on the pool too) instead of leaking."""
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        def done(f: asyncio.Future[T]) -> None:
            if not f.cancelled() and f.exception() is None:
                loop.run_in_executor(None, release, f.result())
        future.add_done_callback(done)
        raise


def make_private_dir(prefix: str) -> str:
    """A fresh 0700 directory under the temp dir (blocking: call from a thread)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o700)
    return path


def remove_private_dir(path: str) -> None:
    """Remove a directory made by make_private_dir and what we left in it (blocking)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(path):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(path, entry))
        os.rmdir(path)


async def open_back(bridge: Bridge, opener: Callable[[], Awaitable[object]], label: str) -> None:
    """Open the channel back to the client for an accepted local connection (in a task)."""
    try:
        await opener()
    except asyncio.CancelledError:
        bridge.close()
        raise
    except (asyncssh.ChannelOpenError, asyncssh.Error, OSError) as exc:
        log.debug("%s: client refused the forwarded connection: %s", label,
                  getattr(exc, "reason", None) or exc)
        bridge.close()
    except Exception:
        log.exception("%s: opening a forwarded channel failed", label)
        bridge.close()


def peer_of(peer: object) -> tuple[str, int]:
    """(host, port) for an accepted socket's peer (Unix sockets have none)."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return str(peer[0]), int(peer[1])
    return "127.0.0.1", 0

