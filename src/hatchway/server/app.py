"""The control plane's ASGI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from sqlalchemy import select, update

from hatchway import __version__
from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import Provider, Workspace
from hatchway.fileutil import ensure_private_dir
from hatchway.providers.docker import DockerProvider
from hatchway.providers.local import LocalProvider, isolation_override
from hatchway.providers.supervisor import Supervisor
from hatchway.server.api import agent, audit, keys, providers, ssh, users, workspaces
from hatchway.server.context import ServerContext
from hatchway.server.crypto import SecretBox, load_or_create_deployment_secret
from hatchway.server.errors import install_error_handlers
from hatchway.server.hub import AgentHub
from hatchway.server.limits import BodyLimit
from hatchway.server.relay import Relay
from hatchway.server.settings import Settings
from hatchway.server.throttle import LoginThrottle
from hatchway.server.web import routes as web

log = logging.getLogger("hatchway.server")


async def ensure_default_provider(ctx: ServerContext) -> None:
    """The embedded ``local`` provider exists from the first start, External Connect on."""
    async with ctx.sessions() as db:
        if (await db.execute(select(Provider).where(Provider.name == "local"))).scalar_one_or_none() is None:
            db.add(Provider(name="local", kind="local", external_connect=True, config={}))
            await db.commit()


async def build_context(settings: Settings) -> ServerContext:
    ensure_private_dir(settings.data_dir)
    secret = load_or_create_deployment_secret(settings.data_dir)
    engine = create_engine(settings.db_url)
    await migrate(engine)
    sessions = sessionmaker(engine)
    hub = AgentHub(sessions, settings.url)
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        box=SecretBox(secret),
        throttle=LoginThrottle(settings.login_failures_allowed, settings.login_failure_window_s),
        hub=hub,
        relay=Relay(
            hub, settings.dial_timeout_s, settings.max_pending_streams_per_user, settings.max_pending_streams_per_workspace
        ),
    )
    await ensure_default_provider(ctx)
    return ctx


async def reset_agent_flags(ctx: ServerContext) -> None:
    """After a restart no agent is connected to this process yet, whatever the rows say."""
    async with ctx.sessions() as db:
        await db.execute(update(Workspace).values(agent_connected=False))
        await db.commit()


def build_supervisor(ctx: ServerContext, add_listener: Any) -> Supervisor:
    """The supervisor of server-managed workspaces (the embedded ``local`` provider)."""
    s = ctx.settings
    local = LocalProvider(s.data_dir, s.listen_port, s.agent_url, add_listener, isolate=isolation_override())
    docker = DockerProvider(s.data_dir, s.listen_port, add_listener)
    return Supervisor(ctx.sessions, ctx.hub, ctx.relay, {"local": local, "docker": docker})


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ctx = await build_context(settings)
        await reset_agent_flags(ctx)
        app.state.ctx = ctx
        app.state.supervisor = build_supervisor(ctx, getattr(app.state, "add_listener", None))
        await app.state.supervisor.startup()
        try:
            yield
        finally:
            await app.state.supervisor.shutdown()
            await ctx.hub.close_all("server shutting down")
            await ctx.engine.dispose()

    app = FastAPI(
        title="Hatchway",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (users, keys, providers, workspaces, audit, agent, ssh):
        app.include_router(module.router)
    web.install(app)  # the web UI at / and its static assets at /static
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    return app
