"""The workspace agent's built-in SSH server (used when nothing speaks SSH on port 22).

There is deliberately no listener: the agent receives each SSH connection as a byte stream
relayed from the control plane and hands us one connected socket per connection (one end of a
``socketpair()``, or a TCP socket in tests). A TCP port would be reachable by every other user
of the workspace's network namespace; a socket handed over in-process is not.

Per connection: asyncssh runs the protocol on the given socket (``asyncssh.run_server``),
``_ConnectionHandler`` authenticates (public key only, against authorized_keys re-read for
this connection, only the workspace user's name), and each session channel becomes a
``HatchwaySession`` running the user's shell. Forwarding, agent forwarding, X11 and SFTP are
refused cleanly in this first cut.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import asyncssh

from hatchway import __version__
from hatchway.sshd.authkeys import load_authorized_keys
from hatchway.sshd.env import SessionIdentity, build_session_env
from hatchway.sshd.hostkey import load_or_create_host_key
from hatchway.sshd.process import Child
from hatchway.sshd.session import HatchwaySession, SessionContext

__all__ = ["BuiltinSSHServer", "SessionIdentity", "build_session_env"]

log = logging.getLogger("hatchway.sshd")

SERVER_VERSION = f"Hatchway_{__version__}"
LOGIN_TIMEOUT = (
    60.0  # seconds to finish authenticating (OpenSSH's LoginGraceTime is 120)
)
CLOSE_GRACE = 2.0  # close(): how long live connections and hung-up children get


def _fmt_addr(addr: tuple[str, int] | None) -> str:
    if not addr:
        return "unknown"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Connection:
    """Bookkeeping for one served connection (for logs and for close())."""

    def __init__(
        self, client_addr: tuple[str, int] | None, server_addr: tuple[str, int] | None
    ):
        self.client_addr = client_addr
        self.server_addr = server_addr
        self.label = _fmt_addr(client_addr)
        self.conn: asyncssh.SSHServerConnection | None = None
        self.username: str | None = None
        self.authenticated = False
        self.refusal: str | None = None  # why auth failed, for the connection log line
        self.started = time.monotonic()
        self.done = asyncio.Event()


class _ConnectionHandler(asyncssh.SSHServer):
    """asyncssh's per-connection server object: authentication policy and channel routing."""

    def __init__(self, server: BuiltinSSHServer, state: _Connection) -> None:
        self._server = server
        self._state = state

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._state.conn = conn
        if self._server._closing:  # close() ran while this one was being set up
            asyncio.get_running_loop().call_soon(conn.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        log.debug("%s: transport closed (%s)", self._state.label, exc or "clean")

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
        keys = await asyncio.to_thread(
            load_authorized_keys, self._server.authorized_keys_path
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

    def session_requested(self) -> HatchwaySession | bool:
        state = self._state
        server = self._server
        if server._closing:
            return False
        conn = state.conn
        assert conn is not None

        def key_env() -> Mapping[str, str]:
            env = conn.get_key_option("environment", {}) or {}
            return {str(k): str(v) for k, v in dict(env).items()}  # type: ignore[call-overload]

        ctx = SessionContext(
            identity=server.identity,
            base_env=server.base_env,
            accepted_client_env=server.accepted_client_env,
            client_addr=state.client_addr,
            server_addr=state.server_addr,
            label=state.label,
            key_env=key_env,
            child_started=server._child_started,
            child_exited=server._child_exited,
            track_task=server._track_task,
        )
        return HatchwaySession(ctx)

    # ---- not in this cut: refuse without crashing ------------------------------------------

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        log.debug(
            "%s: direct-tcpip to %s:%s refused", self._state.label, dest_host, dest_port
        )
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "port forwarding is not available on this server",
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.debug(
            "%s: tcpip-forward on %s:%s refused",
            self._state.label,
            listen_host,
            listen_port,
        )
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        log.debug("%s: direct-streamlocal refused", self._state.label)
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
            "forwarding is not available on this server",
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        log.debug("%s: streamlocal-forward refused", self._state.label)
        return False


class BuiltinSSHServer:
    """Serves SSH connections handed over as connected sockets, for one workspace user."""

    def __init__(
        self,
        *,
        host_key_path: Path,
        authorized_keys_path: Path,
        base_env: Mapping[str, str],
        identity: SessionIdentity | None = None,
        accepted_client_env: Iterable[str] = (),
    ) -> None:
        self.host_key = load_or_create_host_key(Path(host_key_path))
        self.authorized_keys_path = Path(authorized_keys_path)
        self.base_env: dict[str, str] = dict(base_env)
        self.identity = identity or SessionIdentity.current()
        self.accepted_client_env = tuple(accepted_client_env)
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._children: set[Child] = set()
        self._closing = False
        _quiet_asyncssh_logging()

    def host_public_keys(self) -> list[str]:
        """The host key as OpenSSH public key lines (for known_hosts pinning / reporting)."""
        line = self.host_key.export_public_key("openssh").decode("ascii").strip()
        # Generated keys carry no comment; drop any an imported key may have (it is not identity).
        return [" ".join(line.split()[:2])]

    async def handle(
        self,
        sock: socket.socket,
        client_addr: tuple[str, int] | None,
        server_addr: tuple[str, int] | None = None,
    ) -> None:
        """Serve one SSH connection on ``sock`` until it ends; ``sock`` is closed on every path.

        ``client_addr``/``server_addr`` are the real endpoints as the relay knows them (the
        socket itself may be a socketpair); they feed logs and SSH_CONNECTION/SSH_CLIENT.
        """
        state = _Connection(client_addr, server_addr)
        if self._closing:
            sock.close()
            log.info("%s: refused: server is shutting down", state.label)
            return
        self._connections.add(state)
        outcome = "closed"
        try:
            sock.setblocking(False)
            conn = await asyncssh.run_server(
                sock,
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
                agent_forwarding=False,
                x11_forwarding=False,
                sftp_factory=None,
                allow_scp=False,
                rdns_lookup=False,
                login_timeout=LOGIN_TIMEOUT,
            )
            await conn.wait_closed()
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except (TimeoutError, asyncssh.Error, OSError) as exc:
            if state.authenticated:
                outcome = f"ended: {_describe(exc)}"
            else:
                outcome = f"refused: {state.refusal or _describe(exc)}"
        except Exception as exc:  # a bug must not take the agent down with it
            outcome = f"failed: {exc.__class__.__name__}"
            log.exception("%s: connection failed", state.label)
        finally:
            if state.conn is not None:
                state.conn.abort()  # no-op when already closed; frees channels on error paths
            sock.close()
            self._connections.discard(state)
            state.done.set()
            log.info(
                "%s: connection %s (user %s, %.1fs)",
                state.label,
                outcome,
                _printable(state.username or "-"),
                time.monotonic() - state.started,
            )

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

    def _track_task(self, task: asyncio.Task[None]) -> None:
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
