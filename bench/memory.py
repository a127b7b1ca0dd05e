"""``python -m bench.memory [N]``: what the server's Python heap holds per idle relayed connection.

Starts the benchmark's world (bench/world.py) with the server under ``tracemalloc`` (a
``sitecustomize`` in a temporary directory, put on the server's PYTHONPATH, starts it and dumps a
snapshot on SIGUSR2; the server's code is not touched), opens N connections to the built-in
workspace as ``bench/run``'s ramped load does (default 300, all held open), and compares a
snapshot taken with all of them open against one taken before. Prints the growth per connection
by category and the biggest allocation sites. Figures are of the Python heap as tracemalloc
sees it: RSS adds the allocator's overhead and fragmentation on top (and tracemalloc's own
bookkeeping, which is why RSS is not reported here).
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from bench import loadgen
from bench.world import World

SITECUSTOMIZE = '''
import os, sys
if os.environ.get("HW_TRACEMALLOC_DIR") and sys.argv[1:2] == ["server"]:
    import signal, tracemalloc
    tracemalloc.start(12)
    _n = [0]
    def _dump(signum, frame):
        _n[0] += 1
        path = os.path.join(os.environ["HW_TRACEMALLOC_DIR"], f"snap{_n[0]}.pickle")
        tracemalloc.take_snapshot().dump(path + ".tmp")
        os.rename(path + ".tmp", path)
    signal.signal(signal.SIGUSR2, _dump)
'''

CATEGORIES = [
    (("fastapi", "starlette", "contextlib", "hatchway/server/guards", "hatchway/server/limits", "uvicorn/middleware"),
     "ASGI middleware and routing frames (FastAPI, Starlette, contextlib, guards, limits)"),
    (("uvicorn/protocols/websockets",), "uvicorn WebSocket protocol objects"),
    (("websockets/",), "websockets sans-I/O objects (upgrade request, headers, parser)"),
    (("sqlalchemy", "aiosqlite", "asyncpg", "threading"), "database objects (SQLAlchemy, drivers)"),
    (("asyncio/queues", "asyncio/locks"), "asyncio queues and events"),
    (("asyncio/base_events", "asyncio/tasks", "asyncio/events"), "asyncio tasks and handles"),
    (("asyncio/selector_events",), "asyncio transports"),
    (("hatchway/server/",), "hatchway relay and endpoints"),
]


def category(filename: str) -> str:
    for needles, name in CATEGORIES:
        if any(n in filename for n in needles):
            return name
    return "other"


def snapshot(pid: int, directory: Path, i: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR2)
    path = directory / f"snap{i}.pickle"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the server wrote no tracemalloc snapshot (is the sitecustomize hook on its path?)")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(path))


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else 300
    limit = loadgen.raise_fd_limit(max(4096, 8 * n + 512))
    with tempfile.TemporaryDirectory(prefix="hatchway-memory-") as tmp:
        site, snaps = Path(tmp) / "site", Path(tmp) / "snaps"
        site.mkdir()
        snaps.mkdir()
        (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
        os.environ["HW_TRACEMALLOC_DIR"] = str(snaps)
        shots: list[tracemalloc.Snapshot] = []
        with World() as w:
            pid = w.pids()["server"]
            ws = w.workspaces["builtin"]
            kw = {"base_url": w.server.url, "token": w.token, "workspace": "builtin", "user": ws.get("os_user") or "root",
                  "key_path": str(w.key_path), "host_key": ws["host_keys"][0], "timeout": 60 + n, "in_flight": 10}
            loadgen.run_load_sync(n=5, **kw)  # warm-up: lazy imports and first-use caches
            time.sleep(2)
            shots.append(snapshot(pid, snaps, 1))

            async def while_open(res: loadgen.LoadResult) -> None:
                shots.append(snapshot(pid, snaps, 2))
                print(f"{res.succeeded} of {n} connections open (fd limit {limit})")

            res = loadgen.run_load_sync(n=n, while_open=while_open, **kw)
        if len(shots) < 2 or not res.succeeded:
            print("no connection was open to measure", file=sys.stderr)
            return 1
        opened = res.succeeded
        diff = shots[1].compare_to(shots[0], "filename")
        by_cat: collections.Counter[str] = collections.Counter()
        for st in diff:
            by_cat[category(st.traceback[0].filename)] += st.size_diff
        print(f"Python heap growth per idle relayed connection: {sum(by_cat.values()) / 1024 / opened:.1f} KiB")
        for name, size in by_cat.most_common():
            print(f"  {size / 1024 / opened:6.1f} KiB  {name}")
        print("Biggest allocation sites (per connection):")
        for st in shots[1].compare_to(shots[0], "lineno")[:15]:
            frame = st.traceback[0]
            where = frame.filename.split("site-packages/")[-1].split("/src/")[-1]
            print(f"  {st.size_diff / 1024 / opened:6.2f} KiB  {st.count_diff / opened:5.1f} blocks  {where}:{frame.lineno}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
