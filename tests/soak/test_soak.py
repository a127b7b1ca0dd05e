"""Soak: many SSH connections through the relay, with random sizes and clients that vanish
mid-transfer; afterwards the server's and the agent's fds, threads and RSS are back at their
baseline and the connection log accounts for every connection.

Excluded from the default run (marker ``soak``). Run it with::

    .venv/bin/python -m pytest -m soak tests/soak -s            # 10,000 connections
    HATCHWAY_SOAK_CONNECTIONS=1000 .venv/bin/python -m pytest -m soak tests/soak -s

The clients are asyncssh connections over the client WebSocket inside the test process (what
``hatchway proxy`` does, without a process per connection), against a real server and agent.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers.server import wait_for
from tests.helpers.world import World, build_world, children, process_fds, rss_kib, threads

pytestmark = pytest.mark.soak

CONNECTIONS = int(os.environ.get("HATCHWAY_SOAK_CONNECTIONS", "10000"))
CONCURRENCY = int(os.environ.get("HATCHWAY_SOAK_CONCURRENCY", "8"))
MAX_SIZE = 512 * 1024
#: RSS may settle a little above where it started (allocator arenas, caches filled once);
#: a leak of even a few KiB per connection would show far above this over thousands.
RSS_SLACK_KIB = 40 * 1024
DB_FD_SLACK = 30
THREAD_SLACK = 6


def _snapshot(pid: int) -> dict[str, int]:
    fds = process_fds(pid)
    db = sum(1 for t in _fd_targets(pid) if t.startswith("hatchway.db"))
    return {"fds": fds - db, "db_fds": db, "threads": threads(pid), "rss_kib": rss_kib(pid), "children": len(children(pid))}


def _connection_rows(world: World) -> list[dict]:
    rows: list[dict] = []
    with world.api("alice") as c:
        while True:
            page = c.get("/connections", params={"user": "bob", "limit": 5000, "offset": len(rows)}).json()
            rows += page
            if len(page) < 5000:
                return rows


def _fd_targets(pid: int) -> list[str]:
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{pid}/fd/{fd}").split("/")[-1][:40])
        except OSError:
            pass
    return out


async def _one(world: World, rng: random.Random, outcome: Counter[str]) -> None:
    t = await world.ssh("bob", timeout=60)
    outcome["opened"] += 1
    kind = rng.choices(("download", "upload", "killed"), weights=(5, 3, 2))[0]
    size = rng.randrange(0, MAX_SIZE)
    try:
        if kind == "download":
            r = await t.run(f"head -c {size} /dev/zero", timeout=60)
            assert r.exit_status == 0 and len(r.stdout) == size
        elif kind == "upload":
            r = await t.run("wc -c", stdin=os.urandom(size), timeout=60)
            assert r.exit_status == 0 and int(r.stdout) == size
        else:
            proc = await t.ssh.create_process("cat /dev/zero", encoding=None)
            await asyncio.wait_for(proc.stdout.read(rng.randrange(1, 256 * 1024)), 30)
            await t.abort()  # gone mid-transfer, without a goodbye
            outcome[kind] += 1
            return
        outcome[kind] += 1
    finally:
        if kind != "killed":
            await t.close()


async def test_soak_connections_leave_nothing_behind(tmp_path: Path) -> None:
    world = build_world(tmp_path, members=("bob",))
    try:
        spid = world.server.proc.pid  # type: ignore[union-attr]
        apid = world.agents["bob"].proc.pid  # type: ignore[union-attr]
        rng = random.Random(20261127)
        warm: Counter[str] = Counter()
        # Warm up at full concurrency: every module loaded, the database pool and the thread
        # pools at the size this load needs (bounded, not leaks), then take the baseline.
        for _ in range(3):
            await asyncio.gather(*(_one(world, rng, warm) for _ in range(CONCURRENCY)))
        await asyncio.sleep(2)
        base_server, base_agent = _snapshot(spid), _snapshot(apid)

        outcome: Counter[str] = Counter()
        errors: list[str] = []
        queue = iter(range(CONNECTIONS))
        t0 = time.monotonic()
        peak = {"server": dict(base_server), "agent": dict(base_agent)}

        async def worker() -> None:
            for _ in queue:
                try:
                    await _one(world, rng, outcome)
                except Exception as exc:  # noqa: BLE001 - counted and reported below
                    errors.append(repr(exc)[:200])

        async def sampler() -> None:
            while True:
                await asyncio.sleep(1)
                for name, pid in (("server", spid), ("agent", apid)):
                    snap = _snapshot(pid)
                    peak[name] = {k: max(v, snap[k]) for k, v in peak[name].items()}

        watch = asyncio.create_task(sampler())
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        watch.cancel()
        elapsed = time.monotonic() - t0

        def settled() -> bool:
            # Sockets, pipes and children: exactly back. Database files: SQLite keeps a closed
            # connection's descriptor until no other connection holds a lock on the file (and
            # reuses it), and the pool holds at most 15 connections: bounded, so a margin.
            # Threads: the default executor's and the pool's, bounded by their maximum sizes.
            s, a = _snapshot(spid), _snapshot(apid)
            return (s["fds"] <= base_server["fds"] and a["fds"] <= base_agent["fds"] and a["children"] == 0
                    and s["db_fds"] <= base_server["db_fds"] + DB_FD_SLACK
                    and s["threads"] <= base_server["threads"] + THREAD_SLACK
                    and a["threads"] <= base_agent["threads"] + THREAD_SLACK)

        try:
            wait_for(settled, 30, interval=0.5, what="fds, threads and children back to the baseline")
        finally:
            after_server, after_agent = _snapshot(spid), _snapshot(apid)
            rows = _connection_rows(world)
            results = Counter(r["result"] for r in rows)
            report = (
                f"\nsoak: {CONNECTIONS} connections ({dict(outcome)}), concurrency {CONCURRENCY}, "
                f"{elapsed:.0f} s ({CONNECTIONS / elapsed:.0f}/s), {len(errors)} errors\n"
                f"  server: baseline {base_server}, peak {peak['server']}, after {after_server}\n"
                f"  agent:  baseline {base_agent}, peak {peak['agent']}, after {after_agent}\n"
                f"  connection log: {dict(results)} over {len(rows)} rows"
            )
            report += "\n  server fds now: " + ", ".join(sorted(_fd_targets(spid)))
            print(report)
            (tmp_path.parent / "soak-report.txt").write_text(report)
        assert not errors, errors[:10]
        total = CONNECTIONS + warm["opened"]
        assert outcome["opened"] == CONNECTIONS
        assert len(rows) == total and results["closed"] == total, results
        assert all(r["ended_at"] for r in rows), "every connection is recorded as ended"
        assert after_server["rss_kib"] <= base_server["rss_kib"] + RSS_SLACK_KIB
        assert after_agent["rss_kib"] <= base_agent["rss_kib"] + RSS_SLACK_KIB
        assert "Traceback" not in world.server.log()
        assert "Traceback" not in world.agents["bob"].log()
    finally:
        world.close()
