"""The server raises its open-files limit, and says when what it got caps concurrent connections."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.server import RunningServer

pytestmark = pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is not installed")


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


@pytest.mark.parametrize(("nofile", "expected", "warned"), [
    ("1024:8192", (8192, 8192), False),  # systemd's soft default: raised as far as the hard limit allows
    ("512:2048", (2048, 2048), True),  # still low: the log says what it means and what to do
])
def test_the_server_raises_its_open_files_limit(tmp_path: Path, nofile: str, expected: tuple[int, int], warned: bool) -> None:
    server = LimitedServer(tmp_path / "data", nofile)
    server.start()
    try:
        assert server.proc is not None
        # prlimit execs the server: same pid
        assert open_files_limit(server.proc.pid) == expected
        warning = ("the open-files limit is 2048 (hard limit included): at most about 974 SSH connections can be "
                   "relayed at once; raise it (LimitNOFILE= in the systemd unit, or ulimit -n)")
        assert (warning in server.log()) is warned
    finally:
        server.stop()


@pytest.mark.parametrize(("start", "target", "expected"), [
    ((256, 8192), 3000, "(256, 3000) (3000, 8192)"),  # up to the target when the hard limit allows more
    ((256, 2048), 3000, "(256, 2048) (2048, 2048)"),  # else up to the hard limit
    ((4000, 8192), 3000, "(4000, 4000) (4000, 8192)"),  # never lowered
])
def test_raise_open_files_limit(start: tuple[int, int], target: int, expected: str) -> None:
    """In a child process: the limit is the process's own."""
    code = (
        "import resource\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {start})\n"
        "from hatchway.fdlimit import raise_open_files_limit\n"
        f"print(raise_open_files_limit({target}), resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == expected
