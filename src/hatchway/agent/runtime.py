"""The workspace agent: manifest, injection, control channel, dial-back streams.

Lifecycle (SPEC 3, DESIGN "The three processes"):

1. fetch the manifest over HTTP, retrying with backoff while the server is unreachable; an
   invalid token is fatal (:class:`FatalError`, exit status 2): a replaced token never starts
   working again, so retrying would only hide the problem;
2. inject ``~/.ssh/authorized_keys`` and ``~/.ssh/environment`` before any SSH is accepted;
3. keep one control WebSocket open forever, reconnecting with jittered backoff; answer each
   ``dial`` with a data WebSocket spliced to port 22 or to the built-in server; re-inject on
   every pushed manifest; report mode, host keys and diagnostics whenever they change.

Every task is owned: the control loop, the port-22 monitor, the manifest applier and each
stream live in this object and are cancelled and awaited by :meth:`Agent.run`'s cleanup. Live
streams do not depend on the control connection, so a control reconnect leaves them running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
)

from hatchway import __version__, peerjson
from hatchway.agent import diagnostics, protocol
from hatchway.agent.backoff import Backoff, backoff_delay
from hatchway.agent.inject import InjectionResult, inject
from hatchway.agent.port22 import (
    Port22Monitor,
    Port22Status,
    PortState,
    ProbeResult,
    probe,
)
from hatchway.agent.splice import close_ws, forward
from hatchway.agent.sshd_keys import installed_host_keys
from hatchway.fileutil import ensure_private_dir
from hatchway.names import stream_label
from hatchway.unreachable import why_unreachable

log = logging.getLogger("hatchway.agent")

#: SSH is encrypted: compressing it only burns CPU. Large frames keep Python's per-byte cost low.
#: A short close timeout: a peer that vanished must not delay the reconnect or hold a stream.
WS_OPTIONS: dict[str, Any] = {"compression": None, "max_size": 4 * 1024 * 1024, "open_timeout": 10, "close_timeout": 2}
HOST_KEY_FILE = "ssh_host_ed25519_key"
#: Close code the server uses for an invalid agent token.
CLOSE_UNAUTHORIZED = 4401
#: Another agent holding the same token took over: wait longer so two agents do not flap.
REPLACED_DELAY = 10.0
#: The goodbye code saying so (hatchway.server.hub.GOODBYE_REPLACED).
REPLACED_CODE = "replaced"
#: Repeat the "still cannot reach the server" warning at most this often.
WARN_EVERY = 30.0
#: A manifest whose files could not be written is tried again after this long, doubling up to
#: the cap (a disk that filled up is rarely freed within seconds; a minute is soon enough).
INJECT_RETRY_FIRST_S = 2.0
INJECT_RETRY_MAX_S = 60.0


class FatalError(Exception):
    """The agent cannot work and retrying will not help; the message is for the operator."""


@dataclass(frozen=True)
class AgentConfig:
    url: str  # normalised, see protocol.normalize_url
    token: str
    state_dir: Path
    ssh_port: int
    home: Path
    sshd_config: str = diagnostics.SSHD_CONFIG  # the port-22 sshd's config: diagnostics, host keys

    def __repr__(self) -> str:  # never let the token reach a log or traceback
        return f"AgentConfig(url={self.url!r}, state_dir={self.state_dir!r}, ssh_port={self.ssh_port})"


def os_user() -> str:
    """The running user's login name, as sshd would see it (not $USER, which anyone can set)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _make_ssl_context() -> ssl.SSLContext:
    """Built once (it reads the CA store from disk) and shared by every connection."""
    return ssl.create_default_context()


class _Throttled:
    """Log the first failure of an outage as a warning, then at most every WARN_EVERY seconds."""

    def __init__(self) -> None:
        self._last: float | None = None
        self.failing = False

    def failure(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if self._last is None or now - self._last >= WARN_EVERY:
            log.warning(message, *args)
            self._last = now
        else:
            log.debug(message, *args)
        self.failing = True

    def success(self) -> bool:
        """Reset; True when this ended an outage."""
        was, self.failing, self._last = self.failing, False, None
        return was


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self._headers = {"Authorization": f"Bearer {config.token}", "User-Agent": f"hatchway-agent/{__version__}"}
        self._ssl: ssl.SSLContext | None = None
        self._builtin: Any = None  # hatchway.sshd.server.BuiltinSSHServer, imported lazily
        self._monitor: Port22Monitor | None = None
        self._injection = InjectionResult()
        self._os_user = ""  # filled in by run(): a passwd lookup may hit the network (NSS/LDAP)
        self._status_changed = asyncio.Event()
        self._pending_manifest: dict[str, Any] | None = None
        self._manifest_ready = asyncio.Event()
        self._streams: set[asyncio.Task[None]] = set()
        self._external_connect: bool | None = None

    def _headers_for(self, kind: str) -> dict[str, str]:
        """Headers of one WebSocket; the User-Agent names the channel (control or stream) so a
        load balancer's access log, or its routing rules, can tell them apart."""
        return {**self._headers, "User-Agent": f"hatchway-agent/{__version__} ({kind})"}

    # ---- status -----------------------------------------------------------------------------

    def status(self) -> protocol.Status:
        p22 = self._monitor.status if self._monitor is not None else Port22Status()
        keys: list[str] = list(self._builtin.host_public_keys()) if self._builtin is not None else []
        keys += [k for k in p22.host_keys if k not in keys]  # sshd's, also before it answers
        return protocol.Status(
            version=__version__,
            os_user=self._os_user,
            ssh_mode="openssh" if p22.is_ssh else "built-in",
            ssh_server_version=p22.banner.version if p22.is_ssh and p22.banner else None,
            host_keys=tuple(keys),
            diagnostics=protocol.trim_diagnostics([*p22.diagnostics, *self._injection.diagnostics]),
        )

    def _changed(self) -> None:
        self._status_changed.set()

    # ---- startup ----------------------------------------------------------------------------

    async def fetch_manifest(self) -> dict[str, Any]:
        """GET the manifest, retrying while the server is unreachable or failing."""
        url = protocol.http_url(self.config.url, protocol.MANIFEST_PATH)
        backoff, warn = Backoff(), _Throttled()
        client = await asyncio.to_thread(
            httpx.AsyncClient, headers=self._headers, timeout=10.0, verify=self._ssl or True
        )
        async with client:
            while True:
                try:
                    response = await client.get(url)
                except httpx.HTTPError as exc:
                    warn.failure("%s; retrying", why_unreachable(self.config.url, exc))
                else:
                    if response.status_code in (401, 403):
                        raise FatalError(_error_text(response))
                    if response.status_code == 200:
                        try:
                            data = peerjson.loads(response.content)
                        except ValueError:
                            data = None
                        if isinstance(data, dict):
                            if warn.success():
                                log.info("reached the Hatchway server at %s", self.config.url)
                            return data
                        warn.failure("the server at %s sent a manifest that is not JSON; retrying", self.config.url)
                    else:
                        warn.failure(
                            "the server at %s answered %d to the manifest request; retrying",
                            self.config.url,
                            response.status_code,
                        )
                await asyncio.sleep(backoff.next_delay())

    async def apply_manifest(self, manifest: dict[str, Any]) -> None:
        """Inject the manifest (off the event loop) and make the built-in server use it."""
        result = await asyncio.to_thread(inject, manifest, self.config.home)
        old = self._injection
        self._injection = result
        if self._builtin is not None:
            self._builtin.base_env = dict(result.variables)
        provider = manifest.get("provider") if isinstance(manifest.get("provider"), dict) else {}
        ec = provider.get("external_connect")
        if isinstance(ec, bool) and ec != self._external_connect:
            if not ec:
                log.info(
                    'a site manager disabled SSH (External Connect) for provider "%s": the server refuses '
                    "new connections until it is turned back on",
                    provider.get("name", "?"),
                )
            elif self._external_connect is False:
                log.info('SSH (External Connect) is enabled again for provider "%s"', provider.get("name", "?"))
            self._external_connect = ec
        if result.diagnostics != old.diagnostics:
            self._changed()

    async def _manifest_applier(self, current: dict[str, Any] | None = None) -> None:
        """Apply pushed manifests one at a time, always the newest (older ones are superseded).
        One whose files could not be written (``current``: the one applied at start; a full
        disk, say) is applied again, less and less often, until it is written or superseded:
        a user who frees space gets the new key without anyone regenerating it again."""
        failures = 0 if current is not None and self._injection.io_failed else None
        while True:
            if failures is None:
                await self._manifest_ready.wait()
            else:
                delay = backoff_delay(failures, base=INJECT_RETRY_FIRST_S, cap=INJECT_RETRY_MAX_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._manifest_ready.wait(), delay)
            if self._manifest_ready.is_set():
                self._manifest_ready.clear()
                manifest, self._pending_manifest = self._pending_manifest, None
                if manifest is not None:
                    current, failures = manifest, None
            if current is None:
                continue
            try:
                await self.apply_manifest(current)
            except Exception:
                log.exception("applying a manifest from the server failed")
            if self._injection.io_failed:
                failures = 0 if failures is None else failures + 1
                log.info("writing ~/.ssh failed; trying again in about %.0f s",
                         backoff_delay(failures, base=INJECT_RETRY_FIRST_S, cap=INJECT_RETRY_MAX_S, jitter=0))
            else:
                failures = None

    def _submit_manifest(self, manifest: dict[str, Any]) -> None:
        self._pending_manifest = manifest
        self._manifest_ready.set()

    async def _start_builtin(self) -> None:
        from hatchway.sshd.env import SessionIdentity
        from hatchway.sshd.hostkey import HostKeyError
        from hatchway.sshd.server import BuiltinSSHServer

        pw = await asyncio.to_thread(pwd.getpwuid, os.getuid())
        # HOME, not the password database: the files we inject live under $HOME, and sessions must
        # read the very same ~/.ssh (they differ only when someone points HOME elsewhere).
        identity = SessionIdentity(user=pw.pw_name, home=self.config.home, shell=pw.pw_shell or "/bin/sh")
        try:
            await asyncio.to_thread(ensure_private_dir, self.config.state_dir)
            # The constructor loads or creates the host key: blocking file I/O, so off the loop.
            self._builtin = await asyncio.to_thread(
                BuiltinSSHServer,
                host_key_path=self.config.state_dir / HOST_KEY_FILE,
                authorized_keys_path=self.config.home / ".ssh" / "authorized_keys",
                base_env=dict(self._injection.variables),
                identity=identity,
            )
        except OSError as exc:
            # Without its host key the built-in server cannot run, and a new key on every start
            # is exactly what must not happen (pinned clients would refuse it): stop, loudly.
            raise FatalError(f"cannot use the state directory {self.config.state_dir}: {exc.strerror or exc}") from None
        except HostKeyError as exc:
            raise FatalError(str(exc)) from None

    # ---- main loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled (clean shutdown) or a :class:`FatalError`."""
        tasks: list[asyncio.Task[None]] = []
        try:
            self._os_user = await asyncio.to_thread(os_user)
            if self.config.url.startswith("https://"):
                self._ssl = await asyncio.to_thread(_make_ssl_context)
            manifest = await self.fetch_manifest()
            await self.apply_manifest(manifest)
            await self._start_builtin()
            if self.config.ssh_port > 0:
                self._monitor = Port22Monitor(
                    self.config.ssh_port,
                    on_change=self._changed,
                    collect_diagnostics=self._sshd_reader(diagnostics.collect),
                    installed_keys=self._sshd_reader(installed_host_keys),
                )
                await self._monitor.refresh()  # so the first hello is accurate
                tasks.append(asyncio.create_task(self._monitor.run(), name="port22-monitor"))
            else:
                log.info("forwarding to port 22 is disabled (--ssh-port 0): the built-in server answers every connection")
            tasks.append(asyncio.create_task(self._manifest_applier(manifest), name="manifest-applier"))
            first = self.status()
            if first.ssh_mode == "openssh":
                log.info("ready: SSH connections go to port %d (%s)", self.config.ssh_port, first.ssh_server_version)
            else:
                log.info("ready: SSH connections are served by the built-in server")
            await self._control_loop()
        finally:
            await self._shutdown(tasks)

    def _sshd_reader(self, read: Callable[[str], list[str]]) -> Callable[[], Awaitable[list[str]]] | None:
        """``read`` of the port-22 sshd's config, off the event loop; None when there is no
        config to read (``--sshd-config ''``: no sshd will ever serve this workspace)."""
        path = self.config.sshd_config
        return (lambda: asyncio.to_thread(read, path)) if path else None

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Cancel and await everything this agent owns; safe to call on any path."""
        everything = [*tasks, *self._streams]
        for task in everything:
            task.cancel()
        if everything:
            await asyncio.gather(*everything, return_exceptions=True)
        if self._builtin is not None:
            with contextlib.suppress(Exception):
                await self._builtin.close()

    async def _control_loop(self) -> None:
        url = protocol.ws_url(self.config.url, protocol.CONTROL_PATH)
        backoff, warn = Backoff(), _Throttled()
        while True:
            delay: float | None = None
            try:
                async with connect(
                    url, additional_headers=self._headers_for("control"), ssl=self._ssl, **WS_OPTIONS
                ) as ws:
                    if warn.success():
                        log.info("connected to the Hatchway server at %s again", self.config.url)
                    else:
                        log.info("connected to the Hatchway server at %s", self.config.url)
                    delay = await self._control_session(ws, backoff)
            except FatalError:
                raise
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    raise FatalError(f"the server refused the agent token (HTTP 401): {exc}") from None
                warn.failure("control channel to %s refused: %s; reconnecting", self.config.url, exc)
            except InvalidURI as exc:
                raise FatalError(f"invalid server URL: {exc}") from None
            except ConnectionClosed as exc:
                if exc.rcvd is not None and exc.rcvd.code == CLOSE_UNAUTHORIZED:
                    raise FatalError("the server refused the agent token (the token was replaced or the workspace deleted)") from None
                warn.failure("lost the control connection to %s (%s); reconnecting", self.config.url, exc)
            except (TimeoutError, OSError, InvalidHandshake) as exc:
                warn.failure("%s; reconnecting", why_unreachable(self.config.url, exc))
            await asyncio.sleep(delay if delay is not None else backoff.next_delay())

    async def _control_session(self, ws: ClientConnection, backoff: Backoff) -> float | None:
        """Serve one control connection until it closes; returns a special delay or None."""
        error: dict[str, Any] | None = None
        goodbye: str | None = None
        replaced = False
        sent = self.status()
        with contextlib.suppress(ConnectionClosed):
            # When refused, the server closes at once; the loop below still drains its error.
            await ws.send(protocol.hello(sent))
        reporter = asyncio.create_task(self._reporter(ws, sent), name="reporter")
        try:
            while True:
                try:
                    raw = await ws.recv()
                except ConnectionClosed:
                    break  # the close code, checked below, says whether this was a refusal
                message = protocol.parse_message(raw)
                if message is None:
                    log.debug("ignored a malformed control message")
                    continue
                kind = message["type"]
                if kind == "manifest" and isinstance(message.get("manifest"), dict):
                    backoff.reset()  # a healthy connection: the next outage starts with short waits
                    self._submit_manifest(message["manifest"])
                elif kind == "dial":
                    self._dial(message)
                elif kind == "goodbye":
                    goodbye = str(message.get("reason", ""))
                    replaced = message.get("code") == REPLACED_CODE
                    log.info("the server closed the control channel: %s", goodbye or "no reason given")
                elif kind == "error":
                    error = message
                elif kind != "pong":
                    log.debug("ignored control message of type %r", kind)
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)
        if ws.close_code == CLOSE_UNAUTHORIZED or error is not None:
            text = _error_message(error) if error else "the agent token is not valid"
            if ws.close_code == CLOSE_UNAUTHORIZED:
                raise FatalError(text)
            log.warning("the server reported an error on the control channel: %s", text)
        if replaced:
            log.warning(
                "another agent connected with this workspace's token and replaced this one; if two agents "
                "run for the same workspace, stop one. Reconnecting in %.0f s",
                REPLACED_DELAY,
            )
            return REPLACED_DELAY
        if not goodbye:
            log.warning("lost the control connection to %s (code %s); reconnecting", self.config.url, ws.close_code)
        return None

    async def _reporter(self, ws: ClientConnection, sent: protocol.Status) -> None:
        """Send a ``report`` whenever the status differs from what the server last got."""
        while True:
            await self._status_changed.wait()
            self._status_changed.clear()
            current = self.status()
            if current != sent:
                await ws.send(protocol.report(current))
                sent = current
                log.debug("reported mode %s, %d host key(s), %d diagnostic(s)", current.ssh_mode, len(current.host_keys), len(current.diagnostics))

    # ---- streams ----------------------------------------------------------------------------

    def _dial(self, message: dict[str, Any]) -> None:
        stream_id = message.get("stream")
        if not protocol.valid_stream_id(stream_id):
            log.warning("ignored a dial request with an invalid stream id")
            return
        client = protocol.parse_client(message.get("client"))
        task = asyncio.create_task(self._serve_stream(stream_id, client), name=f"stream-{stream_label(stream_id)}")
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def _serve_stream(self, stream_id: str, client: tuple[str, int] | None) -> None:
        """Answer one dial: open the data WebSocket and splice it to the chosen SSH server."""
        label = f"{client[0]} port {client[1]}" if client else "unknown client"
        log.debug("stream %s: dial for %s", stream_label(stream_id), label)
        # Probe port 22 while the data WebSocket is being opened: connection setup time is what
        # users notice most, and the two do not depend on each other.
        probe_task = asyncio.create_task(probe(self.config.ssh_port, keep=True))
        ws: ClientConnection | None = None
        result: ProbeResult | None = None
        try:
            try:
                ws = await connect(
                    protocol.stream_url(self.config.url, stream_id),
                    additional_headers=self._headers_for("stream"),
                    ssl=self._ssl,
                    **WS_OPTIONS,
                )
            except (TimeoutError, OSError, InvalidHandshake, InvalidURI) as exc:
                log.warning("stream %s: could not open the data connection: %s", stream_label(stream_id), exc)
                return
            result = await probe_task
            if self._monitor is not None:
                self._monitor.observe(result)
            if result.state is PortState.SSH and result.banner is not None:
                log.info("SSH connection from %s: forwarding to port %d (%s)", label, self.config.ssh_port, result.banner.version)
                await self._forward(ws, result)
            else:
                log.info("SSH connection from %s: built-in server", label)
                await self._serve_builtin(ws, client)
        except ConnectionClosed:
            log.debug("stream %s: data connection closed early", stream_label(stream_id))
        finally:
            if not probe_task.done():
                probe_task.cancel()
            with contextlib.suppress(BaseException):
                result = result or await probe_task
            if result is not None:
                await result.close()
            if ws is not None:
                await close_ws(ws)
            _log_end(stream_id, ws)

    async def _forward(self, ws: ClientConnection, result: ProbeResult) -> None:
        """Hand the connection to port 22, replaying the bytes the probe already read."""
        assert result.reader is not None and result.writer is not None and result.banner is not None
        reader, writer = result.reader, result.writer
        result.reader = result.writer = None  # forward() owns (and closes) them now
        await forward(ws, reader, writer, protocol.stream_header("openssh", result.banner.line), result.initial)

    async def _serve_builtin(self, ws: ClientConnection, client: tuple[str, int] | None) -> None:
        """Serve the connection with the built-in server, its SSH straight over the data
        WebSocket (no TCP listener, no socket in between: see hatchway.agent.wstransport)."""
        from hatchway.agent.wstransport import WebSocketTunnel

        await ws.send(protocol.stream_header("built-in"))
        tunnel = WebSocketTunnel(ws)
        # It stands in for the SSH server on the workspace's port: SSH_CONNECTION says so, as
        # it would under sshd, instead of port 0.
        here = ("127.0.0.1", self.config.ssh_port or 22)
        try:
            await self._builtin.handle(None, client, here, tunnel=tunnel)
        finally:
            await tunnel.wait_closed()


def _log_end(stream_id: str, ws: ClientConnection | None) -> None:
    """How a stream ended: one line when the server ended it saying why (its access withdrawn,
    a shutdown), which is no fault here and so no warning; a normal end only when verbose."""
    rcvd = ws.protocol.close_rcvd if ws is not None and ws.protocol.close_rcvd_then_sent else None
    if rcvd is not None and rcvd.code != 1000:
        log.info("stream %s: the server ended the connection (%d): %s", stream_label(stream_id), rcvd.code,
                 rcvd.reason or "no reason given")
    else:
        log.debug("stream %s: ended", stream_label(stream_id))


def _error_message(payload: dict[str, Any] | None) -> str:
    if not payload:
        return "unknown error"
    error, detail = str(payload.get("error", "")), str(payload.get("detail", ""))
    return f"{error}: {detail}" if error and detail else error or detail or "unknown error"


def _error_text(response: httpx.Response) -> str:
    try:
        payload = peerjson.loads(response.content)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return f"the server refused the agent token (HTTP {response.status_code}): {_error_message(payload)}"
    return f"the server refused the agent token (HTTP {response.status_code})"


async def run_until_signal(config: AgentConfig) -> None:
    """Run the agent until SIGTERM/SIGINT (then close everything and return normally).

    Raises :class:`FatalError` when the agent cannot work (the CLI exits with status 2).
    """
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    main = asyncio.create_task(agent.run(), name="agent")
    stopper = asyncio.create_task(stop.wait(), name="signal")
    try:
        await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        stopper.cancel()
        if not main.done():
            log.info("stopping: closing every connection")
            main.cancel()
        await asyncio.gather(stopper, return_exceptions=True)
        results = await asyncio.gather(main, return_exceptions=True)
    if isinstance(results[0], BaseException) and not isinstance(results[0], asyncio.CancelledError):
        raise results[0]
