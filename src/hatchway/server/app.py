"""The control plane's ASGI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from hatchway import __version__
from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import Provider, Workspace
from hatchway.fileutil import ensure_private_dir
from hatchway.providers.docker import DockerProvider
from hatchway.providers.local import LocalProvider, isolation_override
from hatchway.providers.supervisor import Supervisor
from hatchway.server import apidocs, presence
from hatchway.server.api import agent, audit, internal, keys, providers, sessions, ssh, users, workspaces
from hatchway.server.broadcast import Broadcast
from hatchway.server.bus import LocalBus, PostgresBus
from hatchway.server.cluster import Cluster, ClusterError, new_replica_id
from hatchway.server.completions import RecordCompletions
from hatchway.server.context import ServerContext
from hatchway.server.crypto import SecretBox, load_or_create_deployment_secret
from hatchway.server.errors import db_out_of_space, db_unavailable, install_error_handlers, sqlite_file
from hatchway.server.failed_signins import FailedSignIns, write_tallies_now as write_sign_in_tallies
from hatchway.server.hub import AgentHub
from hatchway.server.limits import BodyLimit
from hatchway.server.nosniff import NoSniff
from hatchway.server.metrics import ServerMetrics
from hatchway.server.pruning import LogPruner
from hatchway.server.relay import Relay
from hatchway.server.settings import Settings
from hatchway.server.supervision import SupervisionGate
from hatchway.server.throttle import LoginThrottle
from hatchway.server.web import routes as web

log = logging.getLogger("hatchway.server")


async def ensure_default_provider(ctx: ServerContext) -> None:
    """The embedded ``local`` provider exists from the first start, External Connect on."""
    async with ctx.sessions() as db:
        if (await db.execute(select(Provider).where(Provider.name == "local"))).scalar_one_or_none() is None:
            db.add(Provider(name="local", kind="local", external_connect=True, config={}))
            try:
                await db.commit()
            except IntegrityError:  # another replica starting at the same moment made it
                await db.rollback()


async def reclaim_agents(ctx: ServerContext) -> None:
    """Record the agents connected here as connected through this replica, where the database
    says otherwise (only those rows are written)."""
    ids = ctx.hub.connected_ids()
    if not ids:
        return
    mine = ctx.cluster.id
    async with ctx.sessions() as db:
        await db.execute(
            update(Workspace)
            .where(
                Workspace.id.in_(ids),
                or_(Workspace.agent_connected.is_(False), Workspace.agent_replica_id.is_(None), Workspace.agent_replica_id != mine),
            )
            .values(agent_connected=True, agent_replica_id=mine)
        )
        await db.commit()


async def build_context(settings: Settings) -> ServerContext:
    ensure_private_dir(settings.data_dir)
    secret = load_or_create_deployment_secret(settings.data_dir)
    replica_id = new_replica_id()
    engine = create_engine(settings.db_url, application_name=presence.application_name(replica_id))
    await migrate(engine)
    sessions = sessionmaker(engine)
    hub = AgentHub(sessions, settings.url)
    cluster = Cluster(sessions, secret, settings.relay_url, replica_id)
    bus = PostgresBus(cluster.id, engine) if engine.dialect.name == "postgresql" else LocalBus(cluster.id)
    relay = Relay(
        hub, cluster, settings.dial_timeout_s, settings.max_pending_streams_per_user, settings.max_pending_streams_per_workspace,
        settings.max_queued_streams,
    )
    throttle = LoginThrottle(settings.login_failures_allowed, settings.login_failure_window_s)
    ctx = ServerContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        box=SecretBox(secret),
        throttle=throttle,
        hub=hub,
        relay=relay,
        cluster=cluster,
        bus=bus,
        broadcast=Broadcast(bus, hub, relay, throttle),
        completions=RecordCompletions(sessions, sqlite_file(settings.db_url)),
        failed_sign_ins=FailedSignIns(),
        metrics=ServerMetrics(relay, hub, sessions),
    )
    await ensure_default_provider(ctx)
    return ctx


def build_supervisor(ctx: ServerContext, add_listener: Any) -> Supervisor:
    """The supervisor of server-managed workspaces (the embedded ``local`` provider)."""
    s = ctx.settings
    local = LocalProvider(s.data_dir, s.listen_port, s.agent_url, add_listener, isolate=isolation_override())
    docker = DockerProvider(s.data_dir, s.listen_port, add_listener)
    return Supervisor(ctx.sessions, ctx.hub, ctx.broadcast, {"local": local, "docker": docker})


class StartupRefused(Exception):
    """Start-up failed for a reason already logged in one line; uvicorn's traceback of it would
    only bury that line (see ``hatchway.server.run``)."""


def startup_problem(exc: BaseException, settings: Settings) -> str | None:
    """What to tell the operator when start-up failed with ``exc`` for a reason outside the
    code (a full disk, a database that is down, a clash with the other replicas), or None for a
    bug, whose traceback is wanted."""
    if isinstance(exc, ClusterError):
        return str(exc)  # it says what to fix
    driver = getattr(exc, "orig", None) or exc
    said = (driver.strerror if isinstance(driver, OSError) else None) or str(driver).partition("\n")[0]
    if db_out_of_space(exc, sqlite_file(settings.db_url)):
        return (
            f"the disk is full ({said}); free space on the disk that holds the data dir {settings.data_dir} "
            "(and the database, if it is elsewhere), then start the server again"
        )
    if db_unavailable(exc):
        return f"the database cannot be reached ({said}); check that it is running and that --db names it, then start the server again"
    return None


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            ctx = await build_context(settings)
            # SQLite is one process by construction: whatever an earlier run claimed is stale now.
            await ctx.cluster.join(alone=ctx.engine.dialect.name == "sqlite")
        except Exception as exc:
            problem = startup_problem(exc, settings)
            if problem is None:
                raise
            log.error("cannot start: %s", problem)
            raise StartupRefused(problem) from None
        await ctx.bus.start()
        app.state.ctx = ctx
        add_listener = getattr(app.state, "add_listener", None)
        app.state.supervisor = SupervisionGate(
            lambda: build_supervisor(ctx, add_listener), ctx.cluster, ctx.sessions, ctx.engine
        )
        await app.state.supervisor.startup()

        async def reclaim() -> None:  # see Cluster.on_reclaim
            await reclaim_agents(ctx)
            await app.state.supervisor.reassert()

        ctx.cluster.on_reclaim = reclaim
        ctx.cluster.on_displaced = app.state.stop_failing  # see hatchway.server.run
        ctx.completions.start()  # stopped by close() below
        pruner = LogPruner(ctx.sessions, settings.keep_connections_days, settings.keep_audit_days, sqlite_file(settings.db_url))
        pruner.start()
        try:
            yield
        finally:
            await pruner.close()
            await app.state.supervisor.shutdown()
            await ctx.hub.close_all("server shutting down")
            await ssh.write_tallies_now(ctx)
            await write_sign_in_tallies(ctx)
            await ctx.completions.close()  # before leaving: that marks this replica's open records failed
            await ctx.bus.close()
            await ctx.cluster.leave()
            await ctx.engine.dispose()

    app = FastAPI(
        title="Hatchway",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # FastAPI's page loads Swagger UI from a CDN: apidocs serves it from here
        redoc_url=None,
    )
    install_error_handlers(app)
    for module in (users, sessions, keys, providers, workspaces, audit, agent, ssh, internal):
        app.include_router(module.router)
    apidocs.install(app)  # the API's docs page at /api/v1/docs and Swagger UI's files
    web.install(app)  # the web UI at / and its static assets at /static
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(NoSniff)  # outermost: BodyLimit's refusals get it too
    return app
