"""The server's data dir (and its SQLite database) on a full disk.

Nothing that was stored is lost, reads keep working, every refused change says that the disk is
full rather than that the database is unreachable (waiting a few seconds fixes an outage, not
this), the server keeps running, and once space is freed everything works again without a
restart. A server started on a full disk says so in one line instead of a traceback.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
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


def record(world: World, row_id: str) -> dict:
    return next(r for r in open_rows(world) if r["id"] == row_id)


def bobs_ssh(world: World) -> tuple[Cli, list[str]]:
    """Bob's CLI, signed in with its ssh config written, and the ssh command line to dev."""
    bob = Cli(world.tmp / "bob-cli")
    bob.login(world.url, "bob", world.people["bob"].password)
    ssh_config = world.tmp / "bob-ssh-config"
    bob.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
    return bob, ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev"]


def end_a_session_on_a_full_disk(world: World, bob: Cli, ssh: list[str]) -> tuple[Path, str]:
    """Fill the disk while a session is relayed, then end the session (which goes on till then):
    the disk's filler and the id of the session's record."""
    live = subprocess.Popen([*ssh, "read line; echo got $line"], env=bob.env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert live.stdout is not None
        row = wait_for(lambda: next((r for r in open_rows(world) if r["result"] == "open" and not r["ended_at"]), None),
                       20, what="the live session to be relayed")
        filler = fill(world.tmp / "data")
        out, _ = live.communicate(b"during\n", timeout=30)  # a session already open goes on
        assert (live.returncode, out) == (0, b"got during\n")
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    return filler, row["id"]


def relayed_bytes(log: str, connection: str) -> tuple[int, int]:
    """Bytes in and out the server counted for the one session of ``connection`` that ended while
    its record could not be completed (its log line follows the one saying so)."""
    failed = log.index(f"completing the record of {connection}: database out of disk space")
    m = re.compile(rf"{re.escape(connection)} ended: (\d+) bytes in, (\d+) bytes out\n").search(log, failed)
    assert m is not None, log
    return int(m[1]), int(m[2])


def utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).astimezone(timezone.utc)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with small_disk(tmp_path / "data"):
        w = build_world(tmp_path, members=("bob",))
        try:
            yield w
        finally:
            w.close()


def test_a_full_data_disk_refuses_changes_clearly_keeps_serving_and_recovers(world: World) -> None:
    bob, ssh = bobs_ssh(world)
    assert subprocess.run([*ssh, "echo", "before"], env=bob.env(), capture_output=True, timeout=30).stdout == b"before\n"
    filler, row_id = end_a_session_on_a_full_disk(world, bob, ssh)
    with world.api("alice") as c:
        r = c.post("/users", json={"username": "dave", "email": "dave@example.com", "password": "dave-password-1"})
        assert (r.status_code, r.json()) == (503, FULL)
        assert [u["username"] for u in c.get("/users").json()] == ["alice", "bob"]  # reads still work
    # A failed sign-in is refused as ever, though its audit row cannot be written.
    with httpx.Client(base_url=f"{world.url}/api/v1", timeout=30) as anyone:
        r = anyone.post("/auth/login", json={"username": "bob", "password": "not bob's password"})
    assert (r.status_code, r.json()) == (401, {"error": "wrong username or password", "detail": "check both and try again"})
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
    assert (
        "ERROR hatchway.server: completing the record of SSH to bob/dev by bob: database out of disk space "
        "(OperationalError: database or disk is full); free space on the disk that holds the database; it is kept "
        "and written once the database takes it (1 waiting)\n"
    ) in log
    assert (
        "ERROR hatchway.server: auditing a failed sign-in as bob from 127.0.0.1: database out of disk space "
        "(OperationalError: database or disk is full); free space on the disk that holds the database; the attempt "
        "is not in the audit record\n"
    ) in log
    assert "Traceback" not in log
    bytes_in, bytes_out = relayed_bytes(log, "SSH to bob/dev by bob")

    filler.unlink()  # space again: no restart needed
    freed_at = datetime.now(timezone.utc)
    # The record gets the session's real end, bytes and outcome, without a restart.
    row = wait_for(lambda: (r := record(world, row_id))["ended_at"] and r, 45, interval=0.5,
                   what="the record of the session that ended on the full disk to be completed")
    assert (row["result"], row["reason"], row["bytes_to_workspace"], row["bytes_from_workspace"]) == (
        "closed", None, bytes_in, bytes_out)
    assert bytes_in > 0 and bytes_out > 0
    assert utc(row["started_at"]) < utc(row["ended_at"]) < freed_at  # when it ended, not when it was written
    completed = (
        f"INFO  hatchway.server.completions: completed the record of SSH to bob/dev by bob now that the database "
        f"takes it: ended {utc(row['ended_at']):%Y-%m-%d %H:%M:%S} UTC, {bytes_in} bytes in, {bytes_out} bytes out, "
        "closed\n"
    )
    wait_for(lambda: completed in world.server.log(), 5, what=f"the log line {completed!r}")
    assert world.server.log().count("completed the record of") == 1
    assert subprocess.run([*ssh, "echo", "after"], env=bob.env(), capture_output=True, timeout=30).stdout == b"after\n"
    with world.api("alice") as c:
        r = c.post("/users", json={"username": "dave", "email": "dave@example.com", "password": "dave-password-1"})
        assert r.status_code == 201, r.text


def test_a_record_still_not_written_when_the_server_stops_is_named_in_one_line(world: World) -> None:
    bob, ssh = bobs_ssh(world)
    filler, row_id = end_a_session_on_a_full_disk(world, bob, ssh)
    wait_for(lambda: "it is kept and written once the database takes it (1 waiting)" in world.server.log(), 10,
             what="the completion to be kept")
    bytes_in, bytes_out = relayed_bytes(world.server.log(), "SSH to bob/dev by bob")
    assert world.server.stop() == 0  # the disk is still full: the last try fails too
    log = world.server.log()
    line = (
        re.escape("ERROR hatchway.server.completions: could not complete the record of SSH to bob/dev by bob before "
                  "stopping (database out of disk space): it ended ")
        + r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
        + re.escape(f" UTC, {bytes_in} bytes in, {bytes_out} bytes out, closed; the record shows it open until a "
                    "server sweeps it and marks it failed\n")
    )
    assert len(re.findall(line, log)) == log.count("could not complete the record of") == 1, log
    assert "Traceback" not in log
    # With space again, the next start's sweep closes it as a record whose server stopped.
    filler.unlink()
    world.server.start()
    row = record(world, row_id)
    assert (row["result"], row["reason"]) == ("failed", "the Hatchway server process relaying it stopped")


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
