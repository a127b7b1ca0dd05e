"""SSH attempts by nobody in particular (no token, a made-up one) cannot grow the connection log
without bound: one address gets a few rows of its own per minute and the rest are counted in
one row, while each client is still told exactly what it was told before. Identified users'
attempts are all recorded. Over a real server and its SSH stream endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path

from websockets.asyncio.client import connect

from hatchway.server.unidentified import PER_KEY, WINDOW_S
from tests.helpers.metrics import connections, refused, scrape
from tests.helpers.server import RunningServer, api, first_user, free_port, wait_for

NO_TOKEN = "not authenticated: log in first: hatchway login URL --username NAME"
MADE_UP = "session expired or revoked: log in again: hatchway login URL --username NAME"


async def _attempts(srv: RunningServer, token: str | None, names: list[str]) -> list[str]:
    """Open one SSH stream per name, 25 at a time; the refusal each was sent."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    base = srv.url.replace("http://", "ws://") + "/api/v1/workspaces/"

    async def one(name: str) -> str:
        async with connect(base + name + "/ssh?owner=nobody", additional_headers=headers, open_timeout=10) as ws:
            return str(json.loads(await asyncio.wait_for(ws.recv(), 10))["error"])

    said: list[str] = []
    for i in range(0, len(names), 25):
        said += await asyncio.gather(*(one(n) for n in names[i:i + 25]))
    return said


def _unidentified_rows(srv: RunningServer, token: str) -> list[dict]:
    with api(srv.url, token) as c:
        return [r for r in c.get("/connections", params={"limit": 5000}).json() if r["username"] is None]


def test_a_flood_of_unidentified_attempts_adds_a_bounded_number_of_rows(tmp_path: Path) -> None:
    metrics_port = free_port()
    srv = RunningServer(tmp_path / "data", extra_env={"HATCHWAY_METRICS_LISTEN": f"127.0.0.1:{metrics_port}"})
    srv.start()
    try:
        alice = first_user(srv.url, "alice", "alice-password")
        said = asyncio.run(_attempts(srv, None, [f"w{i}" for i in range(150)]))
        said += asyncio.run(_attempts(srv, "hws_made-up", [f"w{i}" for i in range(150, 200)]))
        assert said == [NO_TOKEN] * 150 + [MADE_UP] * 50  # as before: nothing tells a counted one apart

        counted = 200 - PER_KEY

        def settled() -> list[dict] | None:
            rows = _unidentified_rows(srv, alice)
            tallies = [r for r in rows if r["reason"].startswith(f"{counted} more")]
            return rows if tallies else None

        rows = wait_for(settled, 20, what="the tally's row with every attempt counted")
        assert len(rows) == PER_KEY + 1, [r["reason"] for r in rows]
        own = sorted(rows, key=lambda r: r["started_at"])[:PER_KEY]
        assert all(r["reason"] == NO_TOKEN and r["source"].startswith("127.0.0.1 ") for r in own)
        tally = next(r for r in rows if r not in own)
        assert re.fullmatch(
            f'{counted} more unauthenticated attempts from this address to "nobody/w[0-9]+" and other workspaces, '
            f"from this row's start to its end, all refused; counted in this one row: one address gets at most "
            f"{PER_KEY} rows of their own per {WINDOW_S:.0f} s", tally["reason"]
        ), tally["reason"]
        assert (tally["source"], tally["result"], tally["owner"]) == ("127.0.0.1", "refused", "nobody")
        assert tally["started_at"] <= tally["ended_at"]
        assert srv.log().count("unauthenticated SSH attempts from 127.0.0.1: more than") == 1
        # Every attempt is counted in the metrics, those past the log's limits told apart.
        samples = scrape(metrics_port)
        assert connections(samples) == {"accepted": 0, "refused": 200, "failed": 0}
        assert {k: v for k, v in refused(samples).items() if v} == {"unauthenticated": 200}
        assert samples[("hatchway_ssh_unidentified_attempts_tallied_total", ())] == counted

        # A signed-in user's attempts are theirs to answer for: every one is recorded.
        assert asyncio.run(_attempts(srv, alice, [f"a{i}" for i in range(20)])) == [
            f'no workspace named "nobody/a{i}" is yours; see "hatchway workspaces list"' for i in range(20)
        ]
        with api(srv.url, alice) as c:
            assert len(c.get("/connections", params={"user": "alice", "limit": 5000}).json()) == 20
        samples = scrape(metrics_port)
        assert {k: v for k, v in refused(samples).items() if v} == {"unauthenticated": 200, "no_access": 20}
        assert samples[("hatchway_ssh_unidentified_attempts_tallied_total", ())] == counted

        # Counted just before the server stops: written as it stops, not lost.
        asyncio.run(_attempts(srv, None, [f"late{i}" for i in range(10)]))
    finally:
        srv.stop()
    with sqlite3.connect(srv.data_dir / "hatchway.db") as db:
        reasons = [r for (r,) in db.execute("SELECT reason FROM ssh_connections WHERE user_id IS NULL")]
    assert len(reasons) == PER_KEY + 1 and any(r.startswith(f"{counted + 10} more") for r in reasons), reasons
