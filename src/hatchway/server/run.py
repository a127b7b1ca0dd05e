"""Run the control plane under uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import Any

import uvicorn

from hatchway.eventloop import loop_factory
from hatchway.fdlimit import ensure_open_files
from hatchway.malloc import keep_large_buffers
from hatchway.server import datadir, listening, metrics_listener
from hatchway.server.app import create_app
from hatchway.server.guards import AcceptDeadline, ConnectionGuard, guard_protocol
from hatchway.server.relay import StreamMatch
from hatchway.server.settings import Settings
from hatchway.server.streams import StreamDispatch

log = logging.getLogger("hatchway.server")

#: What open SSH connections are told when the server stops (a restart, an upgrade).
SHUTTING_DOWN = "the Hatchway server is shutting down; connect again once it is back"
#: The same with replicas: the balancer sends a new connection to another one at once.
REPLICA_SHUTTING_DOWN = (
    "this Hatchway server is shutting down; connect again: another replica takes the connection "
    "(or this one once it is back)"
)
#: How long the relay's endpoints get to send that before uvicorn closes every connection.
SHUTDOWN_NOTICE_S = 2.0

# SSH traffic is encrypted, so compression only burns CPU; big frames keep Python's per-byte
# cost low on bulk transfers.
WS_MAX_FRAME = 4 * 1024 * 1024


class _ClientFaultFilter(logging.Filter):
    """uvicorn logs some client mistakes (a text frame that is not UTF-8) as errors with a
    traceback; any client could fill the log with those. One warning line each is enough."""

    _PREFIXES = ("Invalid UTF-8 sequence received from client",)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.getMessage().startswith(self._PREFIXES):
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class _StartupRefusedFilter(logging.Filter):
    """A start-up refused for a reason the server has already logged in one line (see
    ``hatchway.server.app.StartupRefused``) reaches uvicorn as a traceback; that is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "StartupRefused" not in record.getMessage()


class _Config(uvicorn.Config):
    """uvicorn's config whose HTTP protocol (on every listener) enforces the handshake guard."""

    def __init__(self, app: object, guard: ConnectionGuard, **kwargs: object) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self.guard = guard

    def load(self) -> None:
        super().load()
        self.http_protocol_class = guard_protocol(self.http_protocol_class, self.guard)


def uvicorn_config(app: object, settings: Settings) -> _Config:
    guard = ConnectionGuard(settings.handshake_timeout_s, settings.max_handshaking_per_ip, frozenset(settings.trusted_proxies))
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, and every local
    # workspace reaches the server from its own 127.0.0.1: only named proxies are believed.
    extra: dict[str, object] = (
        {"forwarded_allow_ips": list(settings.trusted_proxies)} if settings.trusted_proxies else {"proxy_headers": False}
    )
    return _Config(
        AcceptDeadline(StreamDispatch(app), settings.handshake_timeout_s),  # type: ignore[arg-type]
        guard,
        host=settings.listen_host,
        port=settings.listen_port,
        http="httptools",  # the guard hooks its parser callbacks
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=WS_MAX_FRAME,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_config=None,
        access_log=False,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=5,
        lifespan="on",
        **extra,
    )


def metrics_config(app: metrics_listener.MetricsApp, main: _Config) -> uvicorn.Config:
    """uvicorn's config for the metrics listener: plain HTTP (no WebSockets, no lifespan) under
    the API listener's guard on slow clients and its keep-alive timeout."""
    config = _Config(
        app, main.guard, http="httptools", ws="none", lifespan="off", log_config=None, access_log=False,
        proxy_headers=False, timeout_keep_alive=main.timeout_keep_alive,
    )
    config.load()
    return config


class _Server(uvicorn.Server):
    """Announce readiness only once the socket is bound, so scripts can wait for the line."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: Any = None,
                 metrics: tuple[socket.socket, uvicorn.Config] | None = None) -> None:
        super().__init__(config)
        self._settings = settings
        self._app = app
        self._metrics = metrics  # the bound socket of --metrics-listen and its config
        self._extra: set[asyncio.base_events.Server] = set()
        self.failed = False  # stopped by stop_failing(): the process exits non-zero

    async def add_listener(self, sock: socket.socket) -> _ExtraListener:
        """Serve the app on one more bound, listening socket, until the returned handle is closed.

        The local provider opens such a socket inside each isolated workspace's network
        namespace (its agent's only way out). Connections accepted here are ordinary uvicorn
        connections: they take part in graceful shutdown like the main listener's.
        """
        return await self._serve_on(sock, self.config)

    async def _serve_on(self, sock: socket.socket, config: uvicorn.Config) -> _ExtraListener:
        """Serve ``config``'s app on ``sock`` as one of this server's listeners (see add_listener)."""

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        server = await asyncio.get_running_loop().create_server(
            create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog
        )
        self._extra.add(server)
        return _ExtraListener(server, self._extra)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        log.info("shutting down: live SSH connections end, then local workspaces stop")
        for server in list(self._extra):
            server.close()  # stop accepting; their connections are closed with everyone's
        ctx = getattr(getattr(self._app, "state", None), "ctx", None)
        said = SHUTTING_DOWN if ctx is None or ctx.engine.dialect.name == "sqlite" else REPLICA_SHUTTING_DOWN
        if ctx is not None and await ctx.relay.end_sessions(StreamMatch(), said):
            # Told why before their sockets are closed under them; a peer too slow to take the
            # close gets the usual one below.
            await ctx.relay.drained(SHUTDOWN_NOTICE_S)
        await super().shutdown(sockets)

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)
        if self.started:
            from hatchway import __version__

            if self._metrics is not None:  # served once the app is ready, with the API
                sock, config = self._metrics
                await self._serve_on(sock, config)
                log.info("serving metrics at %s (no credentials asked: keep this address private)", metrics_listener.url(sock))

            log.info("Hatchway %s ready at %s", __version__, self._settings.url)

    def stop_failing(self) -> None:
        """Stop as on SIGTERM (the same shutdown: no more accepting, SSH connections told and
        ended, agents closed, workspaces stopped, the replica's claims cleared), then exit with a
        failure status, so a service manager shows that this server could not go on."""
        self.failed = True
        self.should_exit = True

    def handle_exit(self, sig: int, frame: object) -> None:  # type: ignore[override]
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        # uvicorn re-raises the signal after shutting down; a clean shutdown should exit 0.
        self._captured_signals.clear()


class _ExtraListener:
    def __init__(self, server: asyncio.base_events.Server, registry: set[asyncio.base_events.Server]) -> None:
        self._server, self._registry = server, registry

    def close(self) -> None:
        self._registry.discard(self._server)
        self._server.close()


def _build_server(settings: Settings, metrics_sock: socket.socket | None) -> _Server:
    """The uvicorn server of the app, with the metrics listener on ``metrics_sock`` if given."""
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    metrics = None
    if metrics_sock is not None:

        async def scrape(accept: str) -> tuple[bytes, str]:
            return await app.state.ctx.metrics.exposition(accept)

        metrics = (metrics_sock, metrics_config(metrics_listener.MetricsApp(scrape), config))
    server = _Server(config, settings, app, metrics)
    app.state.add_listener = server.add_listener  # see hatchway.providers.local
    app.state.stop_failing = server.stop_failing  # see Cluster.on_displaced
    return server


def serve(settings: Settings) -> int:
    logging.getLogger("uvicorn.error").addFilter(_ClientFaultFilter())
    logging.getLogger("uvicorn.error").addFilter(_StartupRefusedFilter())
    os.umask(0o077)  # the database and everything else in the data dir is the server's alone
    # Before anything else (database, workspaces, the port); held until the process ends.
    try:
        datadir.take(settings.data_dir)
    except datadir.DataDirInUse as exc:
        log.error("%s", exc)
        return 1
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            log.error("cannot take the data dir %s for this server: the disk is full (%s); free space on it, "
                      "then start the server again", settings.data_dir, exc.strerror)
        else:
            log.error("cannot take the data dir %s for this server: %s", settings.data_dir, exc)
        return 1
    unfinished = datadir.unfinished_restore(settings.data_dir)
    if unfinished is not None:
        log.error("%s", unfinished)
        return 1
    ensure_open_files(log)
    metrics_sock = None
    try:
        listening.check_free(settings.listen_host, settings.listen_port, "--listen")
        if settings.metrics_listen is not None:
            metrics_sock = listening.bind(*settings.metrics_listen, "--metrics-listen", "serve metrics on")
    except listening.AddressError as exc:
        log.error("%s", exc)
        return 1
    try:
        server = _build_server(settings, metrics_sock)
        keep_large_buffers()  # see hatchway.malloc: relayed frames stay in the heap
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(server.serve())
    finally:
        if metrics_sock is not None:
            metrics_sock.close()  # never served (a failed start), or already closed with the server
    if server.started:
        log.info("stopped")
    return 0 if server.started and not server.failed else 1

