"""The README's first command, ``scripts/quickstart``, on this machine as root with a scratch
data dir, HOME and config: it must end with a running server, a site manager whose password is
shown once, a running workspace ``dev`` and the one ssh line that works; a second run must reuse
all of it."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netns import local_workspaces_reason, sweep_local_workspaces
from tests.helpers.server import HATCHWAY, free_port, wait_for

REPO = Path(__file__).resolve().parents[2]



_REASON = local_workspaces_reason("the quick start creates an isolated local workspace")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


class Scratch:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.data = tmp / "data"
        self.home.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("HATCHWAY_")}
        env.update(HOME=str(self.home), HATCHWAY_DATA_DIR=str(self.data), HATCHWAY_LISTEN=f"127.0.0.1:{self.port}")
        self.env = env

    def quickstart(self, **extra_env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(REPO / "scripts" / "quickstart")], capture_output=True, text=True, env={**self.env, **extra_env},
            timeout=600, stdin=subprocess.DEVNULL,
        )

    def hatchway(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([HATCHWAY, *args], capture_output=True, text=True, env=self.env, timeout=60)

    def server_pid(self) -> int | None:
        try:
            return int((self.data / "server.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not a running server.
    return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower() if Path(f"/proc/{pid}").exists() else False


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    s = Scratch(tmp_path)
    try:
        yield s
    finally:
        pid = s.server_pid()
        ids = []
        if _alive(pid):
            shown = s.hatchway("workspaces", "show", "dev", "--json")
            if shown.returncode == 0:
                import json

                ids.append(json.loads(shown.stdout)["id"])
                s.hatchway("workspaces", "delete", "dev", "-y")
            assert pid is not None
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 20
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        # Whatever is left of the workspace (a failed run): its user and namespace.
        sweep_local_workspaces(s.data, ids)


def test_quickstart_then_ssh_into_dev_and_run_again(scratch: Scratch) -> None:
    # Settings left in the shell (a PostgreSQL on a closed port, another deployment's address,
    # isolation turned off) must not turn the embedded defaults into something else; nor may the
    # database URL's password be shown.
    first = scratch.quickstart(HATCHWAY_DB="postgresql://hatchway:pw-not-shown@127.0.0.1:1/hatchway",
                               HATCHWAY_ACCESS_URL="http://127.0.0.1:1", HATCHWAY_LOCAL_ISOLATION="off")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "ignoring HATCHWAY_DATA_DIR" not in first.stderr and "ignoring HATCHWAY_LISTEN" not in first.stderr
    for var in ("HATCHWAY_DB", "HATCHWAY_ACCESS_URL", "HATCHWAY_LOCAL_ISOLATION"):
        assert (f"    ignoring {var} from this shell: the quick start runs the server with its defaults;\n"
                "      to use it, start hatchway server yourself (see the README, \"Using it\")\n") in first.stderr
    assert "pw-not-shown" not in first.stderr + first.stdout
    assert (scratch.data / "hatchway.db").is_file()
    config = scratch.home / ".config" / "hatchway" / "ssh_config"
    # $HOME is not root's home in the password database, so plain `ssh` would not read our
    # ~/.ssh/config: the script prints the exact -F form.
    line = first.stdout.strip().splitlines()[-1].strip()
    assert line == f"ssh -F {config} hatchway.dev"
    for progress in ("==> Installing Debian packages", "==> Starting the Hatchway server", "==> Creating the first site manager: admin",
                     "==> Creating workspace dev", "==> Downloading your SSH key", "==> Ready."):
        assert progress in first.stderr, first.stderr
    password = first.stderr.split("password for admin (shown only now, stored nowhere): ")[1].split()[0]
    assert len(password) >= 20
    # Stored nowhere in plaintext: not in the data dir, the config dir or the logs.
    for root in (scratch.data, scratch.home):
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 5_000_000:
                assert password.encode() not in path.read_bytes(), path
    session = scratch.home / ".config" / "hatchway" / "session.json"
    assert session.stat().st_mode & 0o777 == 0o600

    # The server keeps running after the script ended.
    pid = scratch.server_pid()
    assert _alive(pid)

    ssh = shlex.split(line)
    r = subprocess.run([*ssh, "-o", "BatchMode=yes", "id -un; pwd"], capture_output=True, text=True,
                       env=scratch.env, timeout=60)
    assert r.returncode == 0, f"ssh failed: {r.stderr}\n{_logs(scratch.data)}"
    user, home = r.stdout.splitlines()
    assert user == "hw-admin-dev"
    assert home.startswith(str(scratch.data / "workspaces")) and home.endswith("/home")

    second = scratch.quickstart()
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.strip().splitlines()[-1].strip() == line
    assert f"==> Reusing the Hatchway server already running at {scratch.url} (pid {pid})" in second.stderr
    assert "==> Reusing your session as admin" in second.stderr
    assert "==> Reusing workspace dev (running)" in second.stderr
    assert "password for" not in second.stderr
    assert scratch.server_pid() == pid
    listed = scratch.hatchway("workspaces", "list", "--json")
    assert [w["name"] for w in __import__("json").loads(listed.stdout)] == ["dev"]
    wait_for(lambda: subprocess.run([*ssh, "-o", "BatchMode=yes", "true"], env=scratch.env, timeout=60).returncode == 0,
             10, what="ssh after the second run")


def test_quickstart_on_another_address_of_a_running_data_dir_says_which_server_has_it(scratch: Scratch) -> None:
    """HATCHWAY_LISTEN changed while the server quickstart started still runs: the new server
    refuses the data dir, and the script says which server has it and what to do, leaving that
    server, its pid file and its workspace alone."""
    first = scratch.quickstart()
    assert first.returncode == 0, first.stdout + first.stderr
    pid = scratch.server_pid()
    assert _alive(pid)
    elsewhere = f"127.0.0.1:{free_port()}"
    moved = subprocess.run([str(REPO / "scripts" / "quickstart")], capture_output=True, text=True, timeout=600,
                           env={**scratch.env, "HATCHWAY_LISTEN": elsewhere}, stdin=subprocess.DEVNULL)
    assert moved.returncode == 1
    assert moved.stderr.splitlines()[-2:] == [
        f"quickstart: another Hatchway server (pid {pid}) runs on {scratch.data} but does not answer at http://{elsewhere};",
        f"    set HATCHWAY_LISTEN to the address it listens on, or stop it (kill {pid}), and run scripts/quickstart again",
    ]
    assert scratch.server_pid() == pid and _alive(pid)
    shown = scratch.hatchway("workspaces", "show", "dev", "--json")
    w = json.loads(shown.stdout)
    assert (w["state"], w["agent_connected"]) == ("running", True)


def _logs(data: Path) -> str:
    """The server's and agents' logs, for a failure message worth reading."""
    parts = []
    for log in [data / "server.log", *sorted(data.glob("workspaces/*/*.log"))]:
        try:
            parts.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-40:]))
        except OSError:
            pass
    return "\n".join(parts)
