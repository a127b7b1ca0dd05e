"""Reading a server's metrics listener (``hatchway server --metrics-listen``) as Prometheus does."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

#: A sample's name and its labels, sorted: how tests look samples up.
Key = tuple[str, tuple[tuple[str, str], ...]]


def scrape(port: int) -> dict[Key, float]:
    """Every sample the metrics listener on 127.0.0.1:``port`` serves, parsed by Prometheus'
    own parser from its plain-text format."""
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; version=0.0.4; charset=utf-8")
    return samples(r.text)


def samples(text: str) -> dict[Key, float]:
    """Every sample of an exposition in the plain-text format, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def connections(scraped: dict[Key, float]) -> dict[str, float]:
    """``hatchway_ssh_connections_total`` by result."""
    return {r: scraped[("hatchway_ssh_connections_total", (("result", r),))] for r in ("accepted", "refused", "failed")}


def refused(scraped: dict[Key, float]) -> dict[str, float]:
    """``hatchway_ssh_connections_refused_total`` by reason."""
    return {dict(labels)["reason"]: v for (name, labels), v in scraped.items() if name == "hatchway_ssh_connections_refused_total"}


def relayed_bytes(scraped: dict[Key, float]) -> tuple[float, float]:
    """``hatchway_ssh_relayed_bytes_total`` to the workspace and to the client."""
    name = "hatchway_ssh_relayed_bytes_total"
    return scraped[(name, (("direction", "to_workspace"),))], scraped[(name, (("direction", "to_client"),))]
