"""The control plane's Prometheus metrics: one registry per server process.

Platform teams watch an SSH access layer the way they watch the rest of their fleet, so the
server counts what they ask about: SSH connections by how their setup ended, how long setup
took, what is relayed now and how many bytes, agents connected and workspaces by state. They are
served on a listener of their own (hatchway.server.metrics_listener), never on the API's.

Nothing here adds work on the byte path: the relay already counts each stream's bytes for the
connection log, and :class:`RelayCollector` sums those counters when a scrape asks. Labels take
only small sets fixed in advance (result, reason, direction, state), never a user's or a
workspace's name, so the number of series stays bounded however many people connect.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from hatchway.db.models import Workspace
from hatchway.server.errors import db_unavailable
from hatchway.server.policy import REFUSAL_REASONS

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    from hatchway.server.hub import AgentHub
    from hatchway.server.relay import Relay

log = logging.getLogger("hatchway.server.metrics")

#: How long a scrape waits for the database's count of workspaces before leaving it out.
WORKSPACES_QUERY_TIMEOUT_S = 2.0

ACCEPTED, REFUSED, FAILED = "accepted", "refused", "failed"


class RelayCollector(Collector):
    """What the relay and the hub hold right now, read at scrape time."""

    def __init__(self, relay: Relay, hub: AgentHub) -> None:
        self._relay, self._hub = relay, hub

    def collect(self) -> Iterator[Metric]:
        relayed = GaugeMetricFamily(
            "hatchway_ssh_connections_relayed", "SSH connections this server is relaying now (setup done, splice running).",
            value=self._relay.relaying_count(),
        )
        to_workspace, to_client = self._relay.bytes_relayed()
        relayed_bytes = CounterMetricFamily(
            "hatchway_ssh_relayed_bytes", "Bytes of SSH connections this server has relayed, by direction.",
            labels=["direction"],
        )
        relayed_bytes.add_metric(["to_workspace"], to_workspace)
        relayed_bytes.add_metric(["to_client"], to_client)
        agents = GaugeMetricFamily(
            "hatchway_agents_connected", "Workspace agents whose control channel is connected to this server.",
            value=len(self._hub.connected_ids()),
        )
        return iter((relayed, relayed_bytes, agents))

    def describe(self) -> Iterable[Metric]:
        return ()  # registered without a scrape: the relay may not be serving yet


def workspaces_family(counts: dict[str, int] | None) -> list[Metric]:
    """``hatchway_workspaces`` from the database's count by state; no family at all when the
    database could not say (a gap in the graph, not a false zero)."""
    if counts is None:
        return []
    family = GaugeMetricFamily("hatchway_workspaces", "Workspaces of the deployment by state (from the database).", labels=["state"])
    for state, n in sorted(counts.items()):
        family.add_metric([state], n)
    return [family]


class _Scrape(Collector):
    """The registry's metrics and the ones read for this scrape only, as one collector."""

    def __init__(self, registry: CollectorRegistry, extra: list[Metric]) -> None:
        self._registry, self._extra = registry, extra

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()
        yield from self._extra


class ConnectionSetup:
    """One SSH connection from its client's WebSocket accept to its splice: counted once, by
    how its setup ended. Whatever ends it without :meth:`accepted` or :meth:`refused` (a
    database outage, an agent that hung up before its header, a bug) counts as failed."""

    __slots__ = ("_metrics", "_started", "_counted")

    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics
        self._started = time.monotonic()
        self._counted = False

    def accepted(self) -> None:
        """The splice starts now."""
        if self._count(ACCEPTED):
            self._metrics.setup_seconds.observe(time.monotonic() - self._started)

    def refused(self, reason: str) -> None:
        """Refused for ``reason``, one of hatchway.server.policy.REFUSAL_REASONS."""
        if self._count(REFUSED):
            self._metrics.refused.labels(reason=reason).inc()

    def close(self) -> None:
        """The connection's handler is done: a setup neither accepted nor refused failed."""
        self._count(FAILED)

    def _count(self, result: str) -> bool:
        if self._counted:
            return False
        self._counted = True
        self._metrics.connections.labels(result=result).inc()
        return True


class ServerMetrics:
    """This process's registry and the counters the SSH endpoint feeds."""

    def __init__(self, relay: Relay, hub: AgentHub, sessions: async_sessionmaker[Any]) -> None:
        self._sessions = sessions
        # A ``_created`` timestamp per counter and histogram series doubles what every replica
        # stores for nothing a rate() needs (a restart shows as the process_start_time_seconds
        # jump). Process-wide in prometheus_client; this process has no other registry.
        disable_created_metrics()
        self.registry = registry = CollectorRegistry()
        self.connections = Counter(
            "hatchway_ssh_connections", "SSH connections this server received, by how their setup ended "
            "(accepted: spliced to the workspace; refused: see hatchway_ssh_connections_refused_total; failed: an error).",
            ["result"], registry=registry,
        )
        self.refused = Counter(
            "hatchway_ssh_connections_refused", "SSH connections refused, by reason.", ["reason"], registry=registry,
        )
        self.setup_seconds = Histogram(
            "hatchway_ssh_connection_setup_seconds",
            "Seconds from accepting a client's SSH stream to relaying it (checks, agent dial-back, header).",
            registry=registry,
        )
        self.unidentified_tallied = Counter(
            "hatchway_ssh_unidentified_attempts_tallied",
            "Unauthenticated SSH attempts past the connection log's per-address or overall limit: refused, "
            "and counted in a shared row instead of one of their own.",
            registry=registry,
        )
        for result in (ACCEPTED, REFUSED, FAILED):  # every series from the start: rates need a first zero
            self.connections.labels(result=result)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason=reason)
        registry.register(RelayCollector(relay, hub))
        ProcessCollector(registry=registry)  # process_* (CPU, memory, open fds): per replica

    def setup(self) -> ConnectionSetup:
        """Start counting one SSH connection, just accepted."""
        return ConnectionSetup(self)

    async def exposition(self, accept: str) -> tuple[bytes, str]:
        """Every metric, workspaces counted in the database now, in the format the scraper's
        ``Accept`` header asks for (Prometheus' text format, or OpenMetrics); and its content type."""
        counts = await self._workspace_counts()
        encode, content_type = choose_encoder(accept)
        return encode(_Scrape(self.registry, workspaces_family(counts))), content_type

    async def _workspace_counts(self) -> dict[str, int] | None:
        try:
            async with asyncio.timeout(WORKSPACES_QUERY_TIMEOUT_S), self._sessions() as db:
                rows = await db.execute(select(Workspace.state, func.count()).group_by(Workspace.state))
                return {state: n for state, n in rows}
        except TimeoutError:
            log.debug("metrics: the database did not count workspaces within %.0f s; left out", WORKSPACES_QUERY_TIMEOUT_S)
        except Exception as exc:
            if not db_unavailable(exc):
                raise
            log.debug("metrics: the database cannot be reached (%s); workspaces left out", exc)
        return None
