"""Changes that must take effect on every replica, whichever one a site manager talked to.

Each method applies the change on this replica at once and tells the others over the bus; the
handlers here apply the others' changes. Callers never touch the relay or the hub directly for
these, so a single-process deployment and a fleet of replicas run the same code.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from hatchway.server.bus import LocalBus
from hatchway.server.hub import GOODBYE_REPLACED, AgentHub
from hatchway.server.relay import Relay, StreamMatch
from hatchway.server.throttle import LoginThrottle


class Broadcast:
    def __init__(self, bus: LocalBus, hub: AgentHub, relay: Relay, throttle: LoginThrottle) -> None:
        self._bus, self._hub, self._relay, self._throttle = bus, hub, relay, throttle
        bus.subscribe("end_sessions", self._on_end_sessions)
        bus.subscribe("push_manifests", self._on_push_manifests)
        bus.subscribe("disconnect_agent", self._on_disconnect_agent)
        bus.subscribe("agent_attached", self._on_agent_attached)
        bus.subscribe("login_failed", self._on_login)
        bus.subscribe("login_succeeded", self._on_login)

    async def end_sessions(self, match: StreamMatch, reason: str) -> None:
        """End every live SSH stream ``match`` selects, on every replica."""
        await self._bus.publish("end_sessions", reason=reason, **asdict(match))

    async def push_manifests(
        self, *, owner_id: str | None = None, provider_id: str | None = None, workspace_id: str | None = None
    ) -> None:
        """Send fresh manifests to the agents concerned, wherever they are connected."""
        await self._bus.publish("push_manifests", owner_id=owner_id, provider_id=provider_id, workspace_id=workspace_id)

    async def disconnect_agent(self, workspace_id: str, reason: str) -> None:
        await self._bus.publish("disconnect_agent", workspace_id=workspace_id, reason=reason)

    async def agent_attached(self, workspace_id: str) -> None:
        """An agent connected here: any other replica still holding an older control channel
        of the same workspace (a peer that has not noticed it died) lets it go."""
        await self._bus.publish("agent_attached", workspace_id=workspace_id)

    async def login_failed(self, username: str, source: str) -> None:
        """Count a failed password login on every replica: a guesser spreading attempts over
        the replicas behind a balancer is throttled as if there were one."""
        await self._bus.publish("login_failed", username=username[:64], source=source[:100])

    async def login_succeeded(self, username: str, source: str) -> None:
        await self._bus.publish("login_succeeded", username=username[:64], source=source[:100])

    # ---- applying them ----------------------------------------------------------------------

    async def _on_end_sessions(self, e: dict[str, Any]) -> None:
        criteria = {f.name: e[f.name] for f in fields(StreamMatch) if isinstance(e.get(f.name), str)}
        await self._relay.end_sessions(StreamMatch(**criteria), str(e.get("reason") or "ended by a site manager"))

    async def _on_push_manifests(self, e: dict[str, Any]) -> None:
        await self._hub.push_manifests(
            owner_id=e.get("owner_id"), provider_id=e.get("provider_id"), workspace_id=e.get("workspace_id")
        )

    async def _on_disconnect_agent(self, e: dict[str, Any]) -> None:
        if isinstance(e.get("workspace_id"), str):
            await self._hub.disconnect(e["workspace_id"], str(e.get("reason") or "disconnected"))

    async def _on_agent_attached(self, e: dict[str, Any]) -> None:
        if e["origin"] != self._bus.origin and isinstance(e.get("workspace_id"), str):
            await self._hub.disconnect(
                e["workspace_id"], "replaced by a newer connection of the same agent", code=GOODBYE_REPLACED
            )

    async def _on_login(self, e: dict[str, Any]) -> None:
        username, source = e.get("username"), e.get("source")
        if not isinstance(username, str) or not isinstance(source, str):
            return
        if e["kind"] == "login_failed":
            self._throttle.failed(username, source)
        else:
            self._throttle.succeeded(username, source)
