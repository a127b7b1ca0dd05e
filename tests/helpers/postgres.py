"""A throwaway PostgreSQL cluster for the test session (Debian's binaries, run as postgres)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.helpers.server import free_port


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


class TempPostgres:
    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: scripts/test installs Debian's postgresql")
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="hatchway-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        shutil.chown(self.dir, "postgres", "postgres")
        data = str(self.dir / "data")
        self._as_postgres(str(self.bindir / "initdb"), "-D", data, "-A", "trust", "-U", "postgres", "--no-sync")
        self.resume()

    def resume(self) -> None:
        """Start the (initialised) cluster; with :meth:`pause`, a database outage on demand."""
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300"
        data = str(self.dir / "data")
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", data, "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def pause(self) -> None:
        """Stop the server, keeping its data (every open connection is cut)."""
        self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        try:
            self._as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-qc", f"CREATE DATABASE {name}"],
            check=True, capture_output=True, timeout=60,
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


def can_run() -> str | None:
    """None when a throwaway cluster can run here, else why not."""
    if os.environ.get("HATCHWAY_TEST_PG_URL"):
        return None
    if os.geteuid() != 0:
        return "PostgreSQL tests need root to start a throwaway cluster (run scripts/test as root), skipped"
    return None
