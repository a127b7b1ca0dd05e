"""The control plane's metrics as a scrape reads them (hatchway.server.metrics): bytes summed from
ended and live streams' own counters, what is relayed now, each connection counted once by how
its setup ended, and the workspaces' count left out, not failed, when the database is down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from hatchway.db.engine import create_engine, migrate, sessionmaker, sqlite_url_for
from hatchway.server.hub import AgentConnection, AgentHub
from hatchway.server.metrics import ServerMetrics, workspaces_family
from hatchway.server.policy import NOT_RUNNING, REFUSAL_REASONS, TOO_MANY
from hatchway.server.relay import LiveStream, Relay
from tests.helpers.metrics import Key, connections, refused, relayed_bytes, samples
from tests.helpers.server import free_port


class _NoPeers:
    id = "0123456789abcdef"

    async def agent_replica(self, _workspace_id: str) -> str | None:
        return None

    async def request_dial(self, relay_url: str, workspace_id: str, stream_id: str, client: str) -> bool:
        return False


def _families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.fixture
async def engines() -> AsyncIterator[list[AsyncEngine]]:
    """The engines a test made, disposed of before its event loop closes."""
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        await engine.dispose()


def _parts(engines: list[AsyncEngine], tmp_path: Path, db_url: str | None = None) -> tuple[Relay, AgentHub, ServerMetrics]:
    engine = create_engine(db_url or sqlite_url_for(tmp_path))
    engines.append(engine)
    sessions = sessionmaker(engine)
    hub = AgentHub(sessions, "http://127.0.0.1:1")
    relay = Relay(hub, _NoPeers(), dial_timeout_s=10)  # type: ignore[arg-type]
    return relay, hub, ServerMetrics(relay, hub, sessions)


def _stream(stream_id: str, up: int, down: int, relaying: bool) -> LiveStream:
    s = LiveStream(stream_id, "u", "w", "p", to_workspace=up, from_workspace=down)
    s.relaying = relaying
    return s


async def _scrape(metrics: ServerMetrics) -> dict[Key, float]:
    body, content_type = await metrics.exposition("")
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    return samples(body.decode())


async def test_bytes_are_ended_streams_totals_plus_live_counters_and_relayed_counts_spliced_ones(
    tmp_path: Path, engines: list[AsyncEngine],
) -> None:
    relay, hub, metrics = _parts(engines, tmp_path)
    first, second, dialling = _stream("a", 100, 1_000, True), _stream("b", 7, 70, True), _stream("c", 0, 0, False)
    for s in (first, second, dialling):
        relay.register(s)
    await hub.attach(AgentConnection("w1", None))  # type: ignore[arg-type]
    await hub.attach(AgentConnection("w2", None))  # type: ignore[arg-type]
    scraped = await _scrape(metrics)
    assert relayed_bytes(scraped) == (107, 1_070)
    assert scraped[("hatchway_ssh_connections_relayed", ())] == 2  # the one still dialling is not relayed
    assert scraped[("hatchway_agents_connected", ())] == 2

    first.to_workspace += 5  # what the byte path counts as it copies shows at the next scrape
    relay.unregister(first)
    relay.unregister(first)  # a second unregister adds nothing twice
    hub.detach(hub.get("w1"))  # type: ignore[arg-type]
    scraped = await _scrape(metrics)
    assert relayed_bytes(scraped) == (112, 1_070)  # the ended stream's bytes stay counted
    assert scraped[("hatchway_ssh_connections_relayed", ())] == 1
    assert scraped[("hatchway_agents_connected", ())] == 1

    for s in (second, dialling):
        relay.unregister(s)
    scraped = await _scrape(metrics)
    assert relayed_bytes(scraped) == (112, 1_070)
    assert scraped[("hatchway_ssh_connections_relayed", ())] == 0


async def test_each_connection_is_counted_once_by_how_its_setup_ended(tmp_path: Path, engines: list[AsyncEngine]) -> None:
    _, _, metrics = _parts(engines, tmp_path)
    scraped = await _scrape(metrics)  # every series there from the start, at zero
    assert connections(scraped) == {"accepted": 0, "refused": 0, "failed": 0}
    assert refused(scraped) == dict.fromkeys(REFUSAL_REASONS, 0)

    accepted_one = metrics.setup()
    accepted_one.accepted()
    accepted_one.close()  # its handler ends hours later: no second count
    refused_one = metrics.setup()
    refused_one.refused(TOO_MANY)
    refused_one.refused(NOT_RUNNING)  # only the first word counts
    refused_one.close()
    failed_one = metrics.setup()
    failed_one.close()  # neither accepted nor refused: an error ended it
    scraped = await _scrape(metrics)
    assert connections(scraped) == {"accepted": 1, "refused": 1, "failed": 1}
    assert refused(scraped) == {r: 1 if r == TOO_MANY else 0 for r in REFUSAL_REASONS}
    assert scraped[("hatchway_ssh_connection_setup_seconds_count", ())] == 1  # accepted ones only
    assert 0 < scraped[("hatchway_ssh_connection_setup_seconds_sum", ())] < 1
    # No _created series beside each counter and histogram: no rate() needs them.
    assert [name for name, _ in scraped if name.endswith("_created")] == []


def test_workspaces_by_state_and_none_when_the_database_could_not_say() -> None:
    assert workspaces_family(None) == []
    (family,) = workspaces_family({"stopped": 2, "running": 3})
    assert [(s.name, s.labels, s.value) for s in family.samples] == [
        ("hatchway_workspaces", {"state": "running"}, 3), ("hatchway_workspaces", {"state": "stopped"}, 2),
    ]


async def test_a_scrape_counts_workspaces_in_the_database(tmp_path: Path, engines: list[AsyncEngine]) -> None:
    engine = create_engine(sqlite_url_for(tmp_path))
    await migrate(engine)
    await engine.dispose()
    _, _, metrics = _parts(engines, tmp_path)
    body, _ = await metrics.exposition("")
    assert "hatchway_workspaces" in _families(body.decode())  # reachable: the family, no workspace yet


async def test_a_database_that_cannot_be_reached_leaves_workspaces_out_not_the_scrape(
    tmp_path: Path, engines: list[AsyncEngine],
) -> None:
    _, _, metrics = _parts(engines, tmp_path, f"postgresql://hatchway@127.0.0.1:{free_port()}/hatchway")  # nothing listens
    body, _ = await metrics.exposition("")
    names = _families(body.decode())
    assert "hatchway_workspaces" not in names
    assert {"hatchway_ssh_connections", "hatchway_ssh_relayed_bytes", "hatchway_agents_connected"} <= names


async def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path, engines: list[AsyncEngine]) -> None:
    _, _, metrics = _parts(engines, tmp_path)
    body, content_type = await metrics.exposition("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
