"""What every request handler needs, built once at startup and hung on ``app.state.ctx``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import Request, WebSocket
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchway.server.crypto import SecretBox
from hatchway.server.settings import Settings
from hatchway.server.throttle import LoginThrottle
from hatchway.server.unidentified import UnidentifiedAttempts

if TYPE_CHECKING:
    from hatchway.server.broadcast import Broadcast
    from hatchway.server.bus import LocalBus
    from hatchway.server.cluster import Cluster
    from hatchway.server.completions import RecordCompletions
    from hatchway.server.failed_signins import FailedSignIns
    from hatchway.server.hub import AgentHub
    from hatchway.server.metrics import ServerMetrics
    from hatchway.server.relay import Relay


@dataclass
class ServerContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[Any]
    box: SecretBox
    throttle: LoginThrottle
    hub: "AgentHub"
    relay: "Relay"
    cluster: "Cluster"
    bus: "LocalBus"
    broadcast: "Broadcast"
    completions: "RecordCompletions"
    failed_sign_ins: "FailedSignIns"
    metrics: "ServerMetrics"
    unidentified: UnidentifiedAttempts = field(default_factory=UnidentifiedAttempts)


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx


def get_ws_ctx(websocket: WebSocket) -> ServerContext:
    return websocket.app.state.ctx


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.ctx.sessions() as session:
        yield session


def client_source(request: Request | WebSocket) -> str:
    client = request.client
    return f"{client.host} {client.port}" if client else "unknown"
