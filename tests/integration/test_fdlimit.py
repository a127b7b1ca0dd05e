"""The server and the agent raise their open-files limit, and say when what they got caps
concurrent connections."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.server import RunningServer, wait_for

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")

LIMITS = pytest.mark.parametrize(("nofile", "expected", "warned"), [
    ("1024:8192", (8192, 8192), False),  # systemd's soft default: raised as far as the hard limit allows
    ("512:2048", (2048, 2048), True),  # still low: the log says what it means and what to do
])
WARNING = ("the open-files limit is 2048 (hard limit included): at most about 974 SSH connections can be relayed at "
           "once; raise it (LimitNOFILE= in a systemd unit, --ulimit nofile= for a container, or ulimit -n)")


class LimitedServer(RunningServer):
    """A server started with the open-files limit a service manager would give it."""

    def __init__(self, data_dir: Path, nofile: str) -> None:
        super().__init__(data_dir)
        self.nofile = nofile

    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}", *super().argv()]


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


@LIMITS
def test_the_server_raises_its_open_files_limit(tmp_path: Path, nofile: str, expected: tuple[int, int], warned: bool) -> None:
    server = LimitedServer(tmp_path / "data", nofile)
    server.start()
    try:
        assert server.proc is not None
        # prlimit execs the server: same pid
        assert open_files_limit(server.proc.pid) == expected
        assert (WARNING in server.log()) is warned
    finally:
        server.stop()


@LIMITS
def test_the_agent_raises_its_open_files_limit(tmp_path: Path, nofile: str, expected: tuple[int, int], warned: bool) -> None:
    """Each SSH connection it relays costs the agent two descriptors or more: it kept the
    1,024 it was started with (about 500 connections into one workspace)."""
    with socket.socket() as unreachable:  # bound, never listening: connections to it are refused
        unreachable.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unreachable.getsockname()[1]}"
        agent = AgentProcess(url, "token", tmp_path / "home", argv_prefix=["prlimit", f"--nofile={nofile}"])
        agent.start()
        try:
            assert agent.proc is not None
            # Past its start: it keeps trying to reach the server.
            wait_for(lambda: "cannot reach the Hatchway server" in agent.log(), 15, what="the agent to start")
            assert open_files_limit(agent.proc.pid) == expected
            log = agent.log()
            assert (WARNING in log) is warned
            if not warned:  # quiet: one line for --verbose only
                assert f"DEBUG hatchway.agent: open files: soft limit raised from 1024 to {expected[0]}" in log
        finally:
            agent.stop()


@pytest.mark.parametrize(("start", "target", "expected"), [
    # up to the target when the hard limit allows more; what it started with is kept for children
    ((256, 8192), 3000, "(256, 3000) (3000, 8192) (256, 8192)"),
    ((256, 2048), 3000, "(256, 2048) (2048, 2048) (256, 2048)"),  # else up to the hard limit
    ((4000, 8192), 3000, "(4000, 4000) (4000, 8192) None"),  # never lowered: nothing to give back
])
def test_raise_open_files_limit(start: tuple[int, int], target: int, expected: str) -> None:
    """In a child process: the limit is the process's own."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {start})\n"
        "from hatchway.fdlimit import raise_open_files_limit, started_with\n"
        f"print(raise_open_files_limit({target}), resource.getrlimit(resource.RLIMIT_NOFILE), started_with())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
