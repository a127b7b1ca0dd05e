"""A second ``hatchway server`` on a data dir another one runs on refuses to start before it
touches anything: it used to restart every workspace of the first (killing, as root, every
process in their namespaces) before failing on the port, and on another port the two fought
forever. A server that died, however, never keeps the next one from starting.

The workspace runs without isolation (HATCHWAY_LOCAL_ISOLATION=off) so this runs as any user;
tests/e2e/test_local_isolation.py checks the same with isolated workspaces as root."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import HATCHWAY, RunningServer, free_port

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)")

UNISOLATED = {"HATCHWAY_LOCAL_ISOLATION": "off"}


def processes_with(assignment: str) -> list[int]:
    """Our processes whose environment holds ``assignment`` (NAME=value)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if assignment.encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                    out.append(int(entry))
            except (FileNotFoundError, PermissionError, ProcessLookupError):
                pass
    return sorted(out)


def agent_pids(home: Path) -> list[int]:
    """The workspace's agent processes (their HOME is the workspace's home)."""
    return [pid for pid in processes_with(f"HOME={home}")
            if b"agent" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]


def log_lines(server: RunningServer) -> list[str]:
    """Its log without the timestamps."""
    return [line.split(" ", 2)[2] for line in server.log().splitlines()]


@dataclass
class Running:
    server: RunningServer
    cli: Cli
    ssh_config: Path
    home: Path  # the workspace's

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "hatchway.dev", command],
            capture_output=True, text=True, timeout=30, env=self.cli.env(),
        )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    server = RunningServer(tmp_path / "data", extra_env=UNISOLATED)
    server.start()
    cli = Cli(tmp_path / "me")
    home = None
    try:
        cli.login(server.url, "solo", "solo-password", first=True)
        cli.ok("workspaces", "create", "dev")
        ws_id = cli.ok("workspaces", "show", "dev", "--json").json()["id"]
        home = server.data_dir / "workspaces" / ws_id / "home"
        cli.ok("config-ssh", "--ssh-config", str(tmp_path / "ssh_config"), "-y")
        yield Running(server, cli, tmp_path / "ssh_config", home)
    finally:
        if server.proc is not None:
            server.stop()
        for pid in processes_with(f"HOME={home}") if home else []:  # a failed run's leftovers
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("same_port", [True, False], ids=["same-listen", "other-listen"])
def test_a_second_server_on_the_same_data_dir_refuses_and_touches_nothing(
    running: Running, tmp_path: Path, same_port: bool
) -> None:
    first = running.server
    assert first.proc is not None
    agents = agent_pids(running.home)
    assert agents
    second = RunningServer(first.data_dir, port=first.port if same_port else free_port(), extra_env=UNISOLATED)
    second.log_path = tmp_path / "second-server.log"
    try:
        with pytest.raises(RuntimeError):
            second.start()
        assert second.proc is not None and second.proc.returncode == 1
        assert log_lines(second) == [
            f"ERROR hatchway.server: another Hatchway server (pid {first.proc.pid}) is using the data dir "
            f"{first.data_dir}; stop it first, or give this server a data dir of its own with --data-dir"
        ]
    finally:
        if second.proc is not None:
            second.stop()
    # The first server's workspace was not touched: same agent, still running, SSH works.
    assert agent_pids(running.home) == agents
    w = running.cli.ok("workspaces", "show", "dev", "--json").json()
    assert (w["state"], w["state_reason"], w["agent_connected"]) == ("running", None, True)
    r = running.ssh("echo untouched")
    assert (r.returncode, r.stdout) == (0, "untouched\n"), r.stderr
    assert first.proc.poll() is None


def test_a_server_on_a_port_in_use_refuses_at_once_in_one_line(running: Running, tmp_path: Path) -> None:
    """Before, it set up a database and started its workspaces, then failed in uvicorn's words."""
    first = running.server
    data = tmp_path / "other-data"
    r = subprocess.run([HATCHWAY, "server", "--listen", f"127.0.0.1:{first.port}", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, [line.split(" ", 2)[2] for line in r.stderr.splitlines()]) == (1, [
        f"ERROR hatchway.server: cannot listen on 127.0.0.1:{first.port} (--listen): Address already in use; "
        "stop what uses that address or choose another one with --listen"
    ])
    assert not (data / "hatchway.db").exists()
    # An address of no interface here (binding sends nothing anywhere).
    r = subprocess.run([HATCHWAY, "server", "--listen", "192.0.2.1:7080", "--data-dir", str(data)],
                       capture_output=True, text=True, timeout=30)
    assert (r.returncode, [line.split(" ", 2)[2] for line in r.stderr.splitlines()]) == (1, [
        "ERROR hatchway.server: cannot listen on 192.0.2.1:7080 (--listen): Cannot assign requested address; "
        "no network interface here has that address; choose one that does (e.g. 127.0.0.1) with --listen"
    ])
    assert first.proc is not None and first.proc.poll() is None


def test_a_killed_server_does_not_keep_the_next_one_from_starting(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data")
    server.start()
    try:
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        server.start()  # ready: the lock went with the killed process
        assert (server.data_dir / "server.lock").read_text() == f"{server.proc.pid}\n"  # type: ignore[union-attr]
    finally:
        server.stop()


@pytest.mark.parametrize("shared", ["sticky", "others"])
def test_a_data_dir_shared_with_others_is_refused_untouched(tmp_path: Path, shared: str) -> None:
    """`--data-dir /tmp` (or `/home`) made that directory 0700 for everyone."""
    if shared == "others" and os.geteuid() != 0:
        pytest.skip("needs root to own a file as another user")
    data = tmp_path / "shared"
    data.mkdir()
    if shared == "sticky":
        data.chmod(0o1777)
        why = f"{data} is a shared directory (mode 1777)"
    else:
        data.chmod(0o755)
        (data / "bob").mkdir()
        os.chown(data / "bob", 12345, 12345)
        why = f"{data} holds files of other users ('bob' among them)"
    before = sorted(p.name for p in data.iterdir()), data.stat().st_mode
    server = RunningServer(data)
    with pytest.raises(RuntimeError):
        server.start()
    assert server.proc is not None and server.proc.returncode == 1
    assert log_lines(server) == [
        f"ERROR hatchway.server: cannot take the data dir {data} for this server: {why}; "
        "give Hatchway a directory of its own"
    ]
    assert (sorted(p.name for p in data.iterdir()), data.stat().st_mode) == before
