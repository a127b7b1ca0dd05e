"""One server per data dir (hatchway.server.datadir): a live holder refuses the next, naming
itself; nothing but a live holder does (a stale file, a killed server, what it started)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hatchway.server.datadir import LOCK_FILE, DataDirInUse, take

#: Takes the data dir, starts a child that could outlive it (close_fds=False, as careless code
#: would), says both pids, then waits to be killed.
HOLDER = """
import subprocess, sys, time
from pathlib import Path
from hatchway.server.datadir import take
take(Path(sys.argv[1]))
child = subprocess.Popen(["sleep", "60"], close_fds=False)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_a_held_data_dir_refuses_another_taker_naming_the_holder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fd = take(data)
    try:
        assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        assert (data / LOCK_FILE).stat().st_mode & 0o777 == 0o600
        with pytest.raises(DataDirInUse) as exc:
            take(data)
        assert str(exc.value) == (
            f"another Hatchway server (pid {os.getpid()}) is using the data dir {data}; "
            "stop it first, or give this server a data dir of its own with --data-dir"
        )
    finally:
        os.close(fd)
    os.close(take(data))  # released: free again


def test_a_holder_that_has_not_written_its_pid_yet_is_refused_without_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(DataDirInUse) as exc:
            take(data)
        assert exc.value.pid is None
        assert str(exc.value).startswith(f"another Hatchway server is using the data dir {data}; ")
    finally:
        os.close(fd)


def test_a_lock_file_left_by_a_dead_server_does_not_block(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / LOCK_FILE).write_text("4242424\n")
    os.close(take(data))
    assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_killed_server_frees_it_even_while_what_it_started_runs_on(tmp_path: Path) -> None:
    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(DataDirInUse) as exc:
            take(data)
        assert exc.value.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(child, 0)  # still running
        os.close(take(data))
    finally:
        holder.kill()
        holder.wait()
        os.kill(child, signal.SIGKILL)  # the holder's orphan: init reaps it


def test_a_symlink_in_place_of_the_lock_file_is_not_followed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    (data / LOCK_FILE).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        take(data)
    assert not (tmp_path / "elsewhere").exists()
