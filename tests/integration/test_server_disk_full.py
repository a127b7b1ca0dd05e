"""The server's data dir (and its SQLite database) on a full disk.

Nothing that was stored is lost, reads keep working, every refused change says that the disk is
full rather than that the database is unreachable (waiting a few seconds fixes an outage, not
this), the server keeps running, and once space is freed everything works again without a
restart. A server started on a full disk says so in one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, wait_for
from tests.helpers.world import World, build_world

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a small tmpfs"),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)"),
]

FULL = {
    "error": "database out of disk space",
    "detail": "the server's database has no disk space left, so nothing was changed; try again once a site "
    "manager has freed space on the database's disk (the server's log names the error)",
}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def open_rows(world: World) -> list[dict]:
    with world.api("alice") as c:
        return list(c.get("/connections", params={"user": "bob"}).json())


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with small_disk(tmp_path / "data"):
        w = build_world(tmp_path, members=("bob",))
        try:
            yield w
        finally:
            w.close()


def test_a_full_data_disk_refuses_changes_clearly_keeps_serving_and_recovers(world: World) -> None:
    bob = Cli(world.tmp / "bob-cli")
    bob.login(world.url, "bob", world.people["bob"].password)
    ssh_config = world.tmp / "bob-ssh-config"
    bob.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
    ssh = ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev"]
    assert subprocess.run([*ssh, "echo", "before"], env=bob.env(), capture_output=True, timeout=30).stdout == b"before\n"

    live = subprocess.Popen([*ssh, "read line; echo got $line"], env=bob.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert live.stdout is not None
        wait_for(lambda: any(r["result"] == "open" and not r["ended_at"] for r in open_rows(world)), 20,
                 what="the live session to be relayed")
        filler = fill(world.tmp / "data")
        out, _ = live.communicate(b"during\n", timeout=30)  # a session already open goes on
        assert (live.returncode, out) == (0, b"got during\n")
    finally:
        if live.poll() is None:
            live.kill()
    with world.api("alice") as c:
        r = c.post("/users", json={"username": "dave", "email": "dave@example.com", "password": "dave-password-1"})
        assert (r.status_code, r.json()) == (503, FULL)
        assert [u["username"] for u in c.get("/users").json()] == ["alice", "bob"]  # reads still work
    made = bob.run("workspaces", "create", "second", "--provider", "byo")
    assert made.code != 0
    assert "database out of disk space" in made.err and "Traceback" not in made.err
    # An SSH connection that cannot be recorded is refused, with the reason.
    refused = subprocess.run([*ssh, "echo", "during"], env=bob.env(), capture_output=True, timeout=30)
    assert refused.returncode == 255 and refused.stdout == b""
    assert b"database out of disk space" in refused.stderr, refused.stderr
    log = world.server.log()
    assert "database out of disk space (OperationalError: database or disk is full)" in log
    # The session that ended during it could not complete its record: one line says so.
    assert "ERROR hatchway.server: completing the record of SSH to bob/dev by bob: database out of disk space" in log
    assert "Traceback" not in log

    filler.unlink()  # space again: no restart needed
    assert subprocess.run([*ssh, "echo", "after"], env=bob.env(), capture_output=True, timeout=30).stdout == b"after\n"
    with world.api("alice") as c:
        r = c.post("/users", json={"username": "dave", "email": "dave@example.com", "password": "dave-password-1"})
        assert r.status_code == 201, r.text


@pytest.mark.parametrize("ran_before", [True, False], ids=["existing-deployment", "new-data-dir"])
def test_a_server_started_on_a_full_disk_says_so_in_one_line(tmp_path: Path, ran_before: bool) -> None:
    with small_disk(tmp_path / "data", size="4m") as data:
        server = RunningServer(data)
        if ran_before:  # its database, write-ahead log and lock exist
            server.start()
            server.stop()
        fill(data)
        result = subprocess.run(server.argv(), capture_output=True, text=True, timeout=60)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    if ran_before:  # SQLite cannot grow its write-ahead log: it says "disk I/O error"
        assert (
            "ERROR hatchway.server: cannot start: the disk is full (disk I/O error); free space on the disk that "
            f"holds the data dir {data} (and the database, if it is elsewhere), then start the server again"
        ) in said
    else:
        assert (
            f"ERROR hatchway.server: cannot take the data dir {data} for this server: the disk is full (No space "
            "left on device); free space on it, then start the server again"
        ) in said
    assert "Traceback" not in said
