"""The workspace agent's built-in SSH server (used when nothing speaks SSH on port 22).

There is deliberately no listener: the agent receives each SSH connection as a byte stream
relayed from the control plane and hands us each connection in-process: as an asyncssh
``tunnel`` carrying SSH straight over the data WebSocket (the agent's, see
``hatchway.agent.wstransport``), or as one connected socket (a TCP socket or a socketpair in
tests). A TCP port would be reachable by every other user of the workspace's network
namespace; a connection handed over in-process is not.

Per connection: asyncssh runs the protocol on the given socket (``asyncssh.run_server``),
``_ConnectionHandler`` authenticates (public key only, against authorized_keys re-read for
this connection, only the workspace user's name), and each session channel becomes a
``HatchwaySession`` running the user's shell or the sftp subsystem. ``_Connection`` owns what the
connection opened besides sessions (forwarded streams, ``-R`` listeners, their tasks), enforces
the per-connection limits, and closes all of it when the connection ends, whatever way it ends.

Forwarding follows OpenSSH's defaults: ``-L``/``-D`` connect from the workspace, ``-R`` listens
on loopback only (``GatewayPorts no``), Unix sockets both ways (``-R`` sockets are 0600 and are
removed again), agent and X11 forwarding per session. Settings: :mod:`hatchway.sshd.config`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.misc import map_handler_name

from hatchway import __version__
from hatchway.sshd.authkeys import load_authorized_keys
from hatchway.sshd.config import BuiltinSSHConfig
from hatchway.sshd.env import SessionIdentity, build_session_env
from hatchway.sshd.flow import OutputGate
from hatchway.sshd.forward import (
    Bridge,
    Listener,
    bind_addresses,
    connect_tcp,
    connect_unix,
    listen_tcp,
    listen_unix,
    open_back,
    peer_of,
)
from hatchway.sshd.hostkey import load_or_create_host_key
from hatchway.sshd.permits import PERMIT_LISTEN, PERMIT_OPEN, Permit, listen_permitted, open_permitted
from hatchway.sshd.process import Child
from hatchway.sshd.session import (
    ConnectionServices,
    HatchwaySession,
    SessionChannel,
    SessionContext,
)

__all__ = ["BuiltinSSHConfig", "BuiltinSSHServer", "SessionIdentity", "build_session_env"]

log = logging.getLogger("hatchway.sshd")

# OpenSSH's client sends some of its extensions only to servers whose version starts with
# "OpenSSH" (its SSH_NEW_OPENSSH compatibility flag): among them eow@openssh.com, without which
# `ssh host yes | head -1` would never end. "compatible" says this is not OpenSSH (and names no
# OpenSSH version for scanners to judge); the comment names what it is.
SERVER_VERSION = f"OpenSSH_compatible Hatchway_{__version__}"
NO_MORE_SESSIONS = "no-more-sessions@openssh.com"
LOGIN_TIMEOUT = BuiltinSSHConfig().login_grace  # kept for callers of the first cut
CLOSE_GRACE = 2.0  # close(): how long live connections and hung-up children get
TEARDOWN_GRACE = 5.0  # end of a connection: how long its own cleanup tasks get
SFTP_IO_THREADS = 4  # the bounded pool for SFTP file I/O, shared by all connections


def _fmt_addr(addr: tuple[str, int] | None) -> str:
    if not addr:
        return "unknown"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Connection(ConnectionServices):
    """One served connection: bookkeeping, limits and everything it owns besides sessions."""

    def __init__(
        self,
        server: BuiltinSSHServer,
        client_addr: tuple[str, int] | None,
        server_addr: tuple[str, int] | None,
    ):
        self.server = server
        self.client_addr = client_addr
        self.server_addr = server_addr
        self.label = _fmt_addr(client_addr)
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username: str | None = None
        self.authenticated = False
        self.refusal: str | None = None  # why auth failed, for the connection log line
        self.no_more_sessions = False  # the client said it opens no more (no-more-sessions@openssh.com)
        self.started = time.monotonic()
        self.done = asyncio.Event()
        self.closing = False
        # limits: open session channels, and open channels of every kind (sessions included)
        self.sessions = 0
        self.channels = 0
        self.bridges: set[Bridge] = set()
        self.listeners: set[Listener] = set()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.gate = OutputGate()  # whether the transport to the client is full

    # ---- limits ------------------------------------------------------------------------------

    def take_session(self) -> Callable[[], None]:
        """Account for a new session channel or raise the open failure; returns its release."""
        config = self.server.config
        if self.sessions >= config.max_sessions:
            log.info("%s: session refused: %d sessions open (the limit)", self.label, self.sessions)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, f"too many sessions (at most {config.max_sessions})"
            )
        self._take_channel("session")
        self.sessions += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.sessions -= 1
                self.channels -= 1

        return release

    def _take_channel(self, what: str) -> None:
        limit = self.server.config.max_channels
        if self.channels >= limit:
            log.info("%s: %s refused: %d channels open (the limit)", self.label, what, self.channels)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, f"too many channels (at most {limit})"
            )
        self.channels += 1

    def _bridge_closed(self, bridge: Bridge) -> None:
        if bridge in self.bridges:
            self.bridges.discard(bridge)
            self.channels -= 1

    def track(self, task: asyncio.Task[Any]) -> None:
        """Own ``task``: awaited (cancelled if slow) when the connection ends, and by close()."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        self.server._track_task(task)

    # ---- forwarded streams -------------------------------------------------------------------

    def outbound(self, what: str) -> Bridge:
        """A bridge for a channel the client opens (-L, -D); raises the open failure if full."""
        if self.closing:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "connection closing")
        self._take_channel(what)
        bridge = Bridge(f"{self.label} {what}", on_close=self._bridge_closed, gate=self.gate)
        self.bridges.add(bridge)
        return bridge

    def inbound(self, label: str, open_channel: Callable[[Bridge], Awaitable[object]]) -> Bridge | None:
        """A local program connected to one of our listeners: open a channel back for it."""
        if self.closing or self.conn is None:
            return None
        try:
            self._take_channel(label)
        except asyncssh.ChannelOpenError:
            return None
        bridge = Bridge(f"{self.label} {label}", on_close=self._bridge_closed, gate=self.gate)
        self.bridges.add(bridge)
        task = asyncio.get_running_loop().create_task(
            open_back(bridge, lambda: open_channel(bridge), bridge.label)
        )
        bridge.opener = task
        self.track(task)
        return bridge

    def open_agent_channel(self, bridge: Bridge) -> Awaitable[object]:
        assert self.conn is not None
        chan = self.conn.create_agent_channel()
        return chan.open(lambda: bridge.channel_end)

    def open_x11_channel(self, bridge: Bridge, orig_host: str, orig_port: int) -> Awaitable[object]:
        assert self.conn is not None
        return self.conn.create_x11_connection(lambda: bridge.channel_end, orig_host, orig_port)

    async def listen_tcp(self, host: str, port: int) -> Listener | bool:
        """tcpip-forward (-R): listen in the workspace, loopback only unless GatewayPorts."""
        conn = self.conn
        assert conn is not None
        bound = {"port": port}

        def accept(peer: object) -> Bridge | None:
            orig_host, orig_port = peer_of(peer)
            return self.inbound(
                f"forwarded-tcpip {host or '*'}:{bound['port']} from {orig_host}:{orig_port}",
                lambda b: conn.create_connection(lambda: b.channel_end, host, bound["port"], orig_host, orig_port),
            )

        try:
            listener = await listen_tcp(
                bind_addresses(host, self.server.config.gateway_ports), port, accept,
                on_closed=self.listeners.discard,
            )
        except OSError as exc:
            log.info("%s: remote forward %s:%d refused: %s", self.label, host, port, exc.strerror or exc)
            return False
        bound["port"] = listener.get_port()
        if self.closing:
            listener.close()
            return False
        self.listeners.add(listener)
        log.debug("%s: listening on %s:%d for the client", self.label, host or "*", bound["port"])
        return listener

    def local_path(self, path: str) -> str:
        """A socket path from the client: relative ones are relative to the home directory."""
        return path if os.path.isabs(path) else os.path.join(self.server.identity.home, path)

    async def listen_unix(self, path: str) -> Listener | bool:
        """streamlocal-forward@openssh.com (-R /path:...): a 0600 socket, removed at the end."""
        conn = self.conn
        assert conn is not None

        def accept(peer: object) -> Bridge | None:
            return self.inbound(
                f"forwarded-streamlocal {path}",
                # the path as the client asked for it: that is how it finds its forward
                lambda b: conn.create_unix_connection(lambda: b.channel_end, path),
            )

        try:
            listener = await listen_unix(self.local_path(path), accept, on_closed=self.listeners.discard,
                                         track_task=self.track)
        except OSError as exc:
            log.info("%s: remote forward of %s refused: %s", self.label, path, exc.strerror or exc)
            return False
        if self.closing:
            listener.close()
            return False
        self.listeners.add(listener)
        return listener

    # ---- the end -----------------------------------------------------------------------------

    async def teardown(self) -> None:
        """Close every listener and forwarded stream of this connection; await its tasks."""
        self.closing = True
        for listener in list(self.listeners):
            listener.close()
        for bridge in list(self.bridges):
            bridge.close()
        pending = [t for t in self.tasks if not t.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=TEARDOWN_GRACE)
            for task in late:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


class _ConnectionHandler(asyncssh.SSHServer):
    """asyncssh's per-connection server object: authentication policy and channel routing."""

    def __init__(self, server: BuiltinSSHServer, state: _Connection) -> None:
        self._server = server
        self._state = state

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._state.conn = conn
        self._state.gate.attach(conn)
        # asyncssh looks a global request's handler up by name on the connection, and has
        # none for this OpenSSH extension.
        setattr(conn, "_process_" + map_handler_name(NO_MORE_SESSIONS) + "_global_request", self._no_more_sessions)
        if self._server._closing:  # close() ran while this one was being set up
            asyncio.get_running_loop().call_soon(conn.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%s: transport closed (%s)", self._state.label, exc or "clean")

    def _no_more_sessions(self, packet: Any) -> None:
        """The client opens no more sessions on this connection (OpenSSH sends this when it is
        not a connection-sharing master): one opened anyway did not come from that client,
        so, as sshd does, the connection is dropped then. A global request handler answers
        through asyncssh's response queue, which keeps replies in request order."""
        packet.check_end()
        self._state.no_more_sessions = True
        conn = self._state.conn
        assert conn is not None
        conn._report_global_response(True)

    async def begin_auth(self, username: str) -> bool:
        """Load the keys for this attempt; a wrong user name gets no keys at all.

        authorized_keys is read now, for this connection, so a key the agent removed a moment
        ago is already refused.
        """
        self._state.username = username
        conn = self._state.conn
        assert conn is not None
        if username != self._server.identity.user:
            log.debug(
                "%s: user %r is not %r; refusing",
                self._state.label,
                username,
                self._server.identity.user,
            )
            self._state.refusal = f"user {username!r} not accepted"
            conn.set_authorized_keys(None)
            return True
        client = self._state.client_addr
        keys = await asyncio.to_thread(
            load_authorized_keys, self._server.authorized_keys_path, client[0] if client else None
        )
        if keys is None:
            self._state.refusal = "no usable authorized_keys"
        conn.set_authorized_keys(keys)
        return True

    # Only public keys, and only those in authorized_keys (checked by asyncssh against the keys
    # set in begin_auth; this fallback is what answers for everything else).
    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        log.debug(
            "%s: public key %s not authorized for %r",
            self._state.label,
            key.get_fingerprint(),
            username,
        )
        if self._state.refusal is None:
            self._state.refusal = "key not in authorized_keys"
        return False

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def auth_completed(self) -> None:
        self._state.authenticated = True
        log.info(
            "%s: user %s authenticated",
            self._state.label,
            _printable(self._state.username or ""),
        )

    def session_requested(self) -> tuple[SessionChannel, HatchwaySession] | bool:
        state = self._state
        server = self._server
        if server._closing or state.closing:
            return False
        conn = state.conn
        assert conn is not None
        if state.no_more_sessions:
            log.warning("%s: a session was opened after the client asked for no more; disconnecting", state.label)
            conn.disconnect(asyncssh.DISC_BY_APPLICATION, "session opened after no-more-sessions@openssh.com")
            return False
        release = state.take_session()  # raises the open failure when over the limit

        def key_env() -> Mapping[str, str]:
            env = conn.get_key_option("environment", {}) or {}
            return {str(k): str(v) for k, v in dict(env).items()}  # type: ignore[call-overload]

        ctx = SessionContext(
            identity=server.identity,
            base_env=server.base_env,
            accepted_client_env=server.config.accept_env,
            client_addr=state.client_addr,
            server_addr=state.server_addr,
            label=state.label,
            key_env=key_env,
            key_permits=lambda permission: (
                conn.check_key_permission(permission) and conn.check_certificate_permission(permission)
            ),
            child_started=server._child_started,
            child_exited=server._child_exited,
            track_task=state.track,
            config=server.config,
            services=state,
            io_executor=server._io_executor,
            on_closed=release,
            output_gate=state.gate,
        )
        try:
            chan = conn.create_server_channel()
            # Same object, with our handlers for the per-session agent and X11 requests (the
            # subclass adds methods only, no state, so switching the class is safe).
            chan.__class__ = SessionChannel
            return chan, HatchwaySession(ctx)  # type: ignore[return-value]
        except BaseException:
            release()
            raise

    # ---- forwarding --------------------------------------------------------------------------

    def _forwarding_allowed(self, what: str) -> bool:
        if not self._server.config.allow_forwarding:
            log.info("%s: %s refused: forwarding is disabled", self._state.label, what)
            return False
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
        """direct-tcpip (ssh -L, ssh -D, VS Code): connect from the workspace, then bridge."""
        if not self._forwarding_allowed("direct-tcpip"):
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "port forwarding is disabled on this server"
            )
        if not open_permitted(self._key_permits(PERMIT_OPEN), dest_host, dest_port):
            log.info("%s: direct-tcpip to %s:%d refused: not in the key's permitopen", self._state.label,
                     _printable(dest_host), dest_port)
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, f"Port forwarding not permitted to {dest_host} port {dest_port}"
            )
        bridge = self._state.outbound(f"direct-tcpip to {dest_host}:{dest_port}")

        async def connect() -> asyncssh.SSHTCPSession[bytes]:
            await connect_tcp(bridge, dest_host, dest_port)
            log.debug("%s: direct-tcpip to %s:%d", self._state.label, dest_host, dest_port)
            return bridge.channel_end

        return connect()

    def unix_connection_requested(self, dest_path: str) -> Awaitable[asyncssh.SSHUNIXSession[bytes]]:
        """direct-streamlocal@openssh.com (ssh -L port:/path): connect to a Unix socket."""
        if not self._forwarding_allowed("direct-streamlocal"):
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "forwarding is disabled on this server"
            )
        bridge = self._state.outbound(f"direct-streamlocal to {dest_path}")

        async def connect() -> asyncssh.SSHUNIXSession[bytes]:
            await connect_unix(bridge, self._state.local_path(dest_path))
            return bridge.channel_end  # type: ignore[return-value]

        return connect()

    def server_requested(self, listen_host: str, listen_port: int) -> Awaitable[Listener | bool] | bool:
        if not self._forwarding_allowed("tcpip-forward"):
            return False
        if not listen_permitted(self._key_permits(PERMIT_LISTEN), listen_host, listen_port):
            log.info("%s: remote forward %s:%d refused: not in the key's permitlisten", self._state.label,
                     _printable(listen_host), listen_port)
            return False
        return self._state.listen_tcp(listen_host, listen_port)

    def _key_permits(self, name: str) -> tuple[Permit, ...] | None:
        """The authenticated key's permitopen/permitlisten (None: that kind is not limited)."""
        conn = self._state.conn
        assert conn is not None
        return conn.get_key_option(name)  # type: ignore[no-any-return]

    def unix_server_requested(self, listen_path: str) -> Awaitable[Listener | bool] | bool:
        if not self._forwarding_allowed("streamlocal-forward"):
            return False
        return self._state.listen_unix(listen_path)


class BuiltinSSHServer:
    """Serves SSH connections handed over as connected sockets, for one workspace user.

    ``config`` defaults to :meth:`BuiltinSSHConfig.from_environ` on the agent's environment;
    ``accepted_client_env`` adds to its accepted client variables (``AcceptEnv``).
    """

    def __init__(
        self,
        *,
        host_key_path: Path,
        authorized_keys_path: Path,
        base_env: Mapping[str, str],
        identity: SessionIdentity | None = None,
        accepted_client_env: Iterable[str] = (),
        config: BuiltinSSHConfig | None = None,
    ) -> None:
        if config is None:
            config = BuiltinSSHConfig.from_environ(os.environ)
        for problem in config.problems:
            log.warning("built-in SSH server: %s", problem)
        self.config = config.with_accept_env(accepted_client_env)
        self.host_key = load_or_create_host_key(Path(host_key_path))
        self.authorized_keys_path = Path(authorized_keys_path)
        self.base_env: dict[str, str] = dict(base_env)
        self.identity = identity or SessionIdentity.current()
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._children: set[Child] = set()
        self._closing = False
        self._io_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=SFTP_IO_THREADS, thread_name_prefix="hatchway-sftp"
        )
        _quiet_asyncssh_logging()

    @property
    def accepted_client_env(self) -> tuple[str, ...]:
        return self.config.accept_env

    def host_public_keys(self) -> list[str]:
        """The host key as OpenSSH public key lines (for known_hosts pinning / reporting)."""
        line = self.host_key.export_public_key("openssh").decode("ascii").strip()
        # Generated keys carry no comment; drop any an imported key may have (it is not identity).
        return [" ".join(line.split()[:2])]

    async def handle(
        self,
        sock: socket.socket | None,
        client_addr: tuple[str, int] | None,
        server_addr: tuple[str, int] | None = None,
        *,
        tunnel: Any = None,
    ) -> None:
        """Serve one SSH connection on ``sock`` (or over ``tunnel``: an object with asyncssh's
        ``create_connection(factory, host, port)`` and a ``close()``) until it ends; ``sock`` or
        ``tunnel`` is closed on every path, and so is everything the connection opened
        (forwarded streams, listeners, sessions).

        ``client_addr``/``server_addr`` are the real endpoints as the relay knows them (the
        socket itself may be a socketpair); they feed logs and SSH_CONNECTION/SSH_CLIENT.
        """
        state = _Connection(self, client_addr, server_addr)
        if self._closing:
            _close_stream(sock, tunnel)
            log.info("%s: refused: server is shutting down", state.label)
            return
        self._connections.add(state)
        outcome = "closed"
        config = self.config
        try:
            if sock is not None:
                sock.setblocking(False)
            conn = await asyncssh.run_server(
                sock,  # type: ignore[arg-type]  # None with a tunnel: asyncssh then connects through it
                tunnel=tunnel if sock is None else (),
                config=None,
                server_factory=lambda: _ConnectionHandler(self, state),
                server_host_keys=[self.host_key],
                server_version=SERVER_VERSION,
                authorized_client_keys=None,
                public_key_auth=True,
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                gss_host=None,  # the default resolves our FQDN: slow, and GSS is not offered
                gss_kex=False,
                gss_auth=False,
                allow_pty=True,
                line_editor=False,  # we run a real PTY; asyncssh's editor would eat keystrokes
                encoding=None,
                # Agent and X11 forwarding are ours, per session (see SessionChannel).
                agent_forwarding=False,
                x11_forwarding=False,
                sftp_factory=None,  # a factory here would turn every session into asyncssh's
                allow_scp=False,  # scp -O runs the real scp through the shell, like OpenSSH
                rdns_lookup=False,
                login_timeout=config.login_grace,
                keepalive_interval=config.keepalive_interval,
                keepalive_count_max=config.keepalive_count_max,
            )
            await conn.wait_closed()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            if state.authenticated:
                outcome = f"ended: {_describe(exc)}"
            elif state.refusal is not None:
                outcome = f"refused: {state.refusal}"
            else:  # gone before any key was refused: the client left, or the relay ended the stream
                outcome = f"ended before authentication: {_describe(exc)}"
        except Exception as exc:  # a bug must not take the agent down with it
            outcome = f"failed: {exc.__class__.__name__}"
            log.exception("%s: connection failed", state.label)
        finally:
            if state.conn is not None:
                state.conn.abort()  # no-op when already closed; frees channels on error paths
            _close_stream(sock, tunnel)
            # Owned by the server, so close() waits for it even if this handler is cancelled.
            teardown = asyncio.get_running_loop().create_task(state.teardown())
            self._track_task(teardown)
            interrupted = False
            try:
                await asyncio.shield(teardown)
            except asyncio.CancelledError:
                interrupted = True  # the teardown still finishes (bounded by TEARDOWN_GRACE)
            self._connections.discard(state)
            state.done.set()
            log.info(
                "%s: connection %s (user %s, %.1fs)",
                state.label,
                outcome,
                _printable(state.username or "-"),
                time.monotonic() - state.started,
            )
            if interrupted:
                raise asyncio.CancelledError

    async def close(self) -> None:
        """End every live connection and session (agent shutdown); idempotent.

        Connections get a clean SSH disconnect; their sessions hang up their children (SIGHUP).
        Children still alive after a grace period are killed, and every owned task is awaited.
        """
        self._closing = True
        for state in list(self._connections):
            if state.conn is not None:
                state.conn.disconnect(
                    asyncssh.DISC_BY_APPLICATION, "server shutting down"
                )
        waits = [
            asyncio.create_task(state.done.wait()) for state in list(self._connections)
        ]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=CLOSE_GRACE)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._reap_children()
        self._io_executor.shutdown(wait=False, cancel_futures=True)

    async def _reap_children(self) -> None:
        """Kill what a hangup did not end, and wait (bounded) until it is reaped."""
        if not self._children:
            return
        waits = [asyncio.create_task(child.wait()) for child in list(self._children)]
        _, pending = await asyncio.wait(waits, timeout=CLOSE_GRACE)
        if pending:
            for child in list(self._children):
                child.signal_group(signal.SIGKILL)
            _, pending = await asyncio.wait(pending, timeout=CLOSE_GRACE)
        for task in pending:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)

    # ---- callbacks from sessions -----------------------------------------------------------

    def _track_task(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _child_started(self, child: Child) -> None:
        if child.running:
            self._children.add(child)

    def _child_exited(self, child: Child) -> None:
        self._children.discard(child)


def _printable(text: str) -> str:
    """Client-chosen strings (user names) go into log lines; never let them forge new lines."""
    return text if text.isprintable() else repr(text)


def _describe(exc: BaseException) -> str:
    """A short reason for the connection log line."""
    if isinstance(exc, asyncssh.Error):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return str(exc) or exc.__class__.__name__


def _quiet_asyncssh_logging() -> None:
    """Keep asyncssh's per-connection INFO chatter out of an agent log that runs at INFO.

    asyncssh logs every connection and channel at INFO on its own "asyncssh" logger; our own
    logger already writes one line per connection start and end. Only touched when nobody
    configured that logger explicitly.
    """
    logger = logging.getLogger("asyncssh")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def _close_stream(sock: socket.socket | None, tunnel: Any) -> None:
    if sock is not None:
        sock.close()
    if tunnel is not None:
        tunnel.close()
