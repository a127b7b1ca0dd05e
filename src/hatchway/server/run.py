"""Run the control plane under uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import uvicorn

from hatchway.server.app import create_app
from hatchway.server.settings import Settings

log = logging.getLogger("hatchway.server")

# SSH traffic is encrypted, so compression only burns CPU; big frames keep Python's per-byte
# cost low on bulk transfers.
WS_MAX_FRAME = 4 * 1024 * 1024


def uvicorn_config(app: object, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.listen_host,
        port=settings.listen_port,
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_max_size=WS_MAX_FRAME,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )


class _Server(uvicorn.Server):
    """Announce readiness only once the socket is bound, so scripts can wait for the line."""

    def __init__(self, config: uvicorn.Config, settings: Settings) -> None:
        super().__init__(config)
        self._settings = settings
        self._extra: set[asyncio.base_events.Server] = set()

    async def add_listener(self, sock: socket.socket) -> "_ExtraListener":
        """Serve the app on one more bound, listening socket, until the returned handle is closed.

        The local provider opens such a socket inside each isolated workspace's network
        namespace (its agent's only way out). Connections accepted here are ordinary uvicorn
        connections: they take part in graceful shutdown like the main listener's.
        """
        config = self.config

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
        for server in list(self._extra):
            server.close()  # stop accepting; their connections are closed with everyone's
        await super().shutdown(sockets)

    async def startup(self, sockets: list | None = None) -> None:  # type: ignore[override]
        await super().startup(sockets)
        if self.started:
            from hatchway import __version__

            log.info("Hatchway %s ready at %s", __version__, self._settings.url)


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


def serve(settings: Settings) -> int:
    os.umask(0o077)  # the database and everything else in the data dir is the server's alone
    app = create_app(settings)
    server = _Server(uvicorn_config(app, settings), settings)
    app.state.add_listener = server.add_listener  # see hatchway.providers.local
    asyncio.run(server.serve())
    return 0 if server.started else 1
