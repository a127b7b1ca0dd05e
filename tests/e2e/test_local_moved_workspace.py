"""A local workspace whose files came from another machine (a move with ``tar --numeric-owner`` or
``rsync -aHAX``, a restore by numeric owner, a recreated Unix user): its home and agent state
belong to a uid no account has here. At its first start the server gives them to the
workspace's user, and only them, and the agent serves the host key users pinned before.

As root, with a real server, the local provider and the real OpenSSH client through the
``config-ssh`` configuration; the workspace is deleted at the end, also after a failure."""

from __future__ import annotations

import os
import re
import secrets
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.netns import local_workspaces_reason, sweep_local_workspaces, unused_id
from tests.helpers.server import RunningServer



_REASON = local_workspaces_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]

HOST_KEY_LINE = re.compile(r"^debug1: Server host key: (\S+ SHA256:\S+)$", re.M)


@dataclass
class Moved:
    server: RunningServer
    alice: Cli
    owner: str
    ws_dir: Path
    ssh_config: Path
    tmp: Path

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        """``ssh -v`` through the pinned configuration: its debug output names the host key served."""
        return subprocess.run(
            ["ssh", "-v", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "hatchway.dev", command],
            capture_output=True, text=True, timeout=30, env=self.alice.env(),
        )


@pytest.fixture()
def moved(tmp_path: Path) -> Iterator[Moved]:
    server = RunningServer(tmp_path / "data")
    server.start()
    alice = Cli(tmp_path / "alice")
    owner = "alice" + secrets.token_hex(3)  # unique: concurrent runs never share Unix user names
    ws_id = ""
    try:
        alice.login(server.url, owner, "alice-password", first=True)
        alice.ok("workspaces", "create", "dev")
        ws_id = alice.ok("workspaces", "show", "dev", "--json").json()["id"]
        config = tmp_path / "ssh_config"
        alice.ok("config-ssh", "--ssh-config", str(config), "-y")
        yield Moved(server, alice, owner, server.data_dir / "workspaces" / ws_id, config, tmp_path)
    finally:
        try:
            if server.proc is not None and server.proc.poll() is None and ws_id:
                alice.run("workspaces", "delete", "dev", "-y")
        finally:
            if server.proc is not None:
                server.stop()
            sweep_local_workspaces(server.data_dir, [ws_id] if ws_id else [])


def tree(root: Path) -> list[Path]:
    """``root`` and everything in it, symlinks not followed."""
    out = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        out += [Path(dirpath) / name for name in dirnames + filenames]
    return out


def test_a_moved_workspace_is_its_users_again_with_the_pinned_host_key(moved: Moved) -> None:
    before = moved.ssh("echo written-before-the-move > ~/notes.txt && id -u && id -g")
    assert before.returncode == 0, before.stderr
    uid, gid = map(int, before.stdout.split())
    served = HOST_KEY_LINE.findall(before.stderr)
    assert len(served) == 1, before.stderr
    assert moved.alice.ok("workspaces", "stop", "dev").out.strip() == "Stopped workspace dev"

    # The move: every entry of the home and the agent state now has another machine's numeric
    # owner; besides, what a home may hold: a symlink (the old user's) to a root-owned file
    # outside, and a file root put there.
    old = unused_id()
    home, state = moved.ws_dir / "home", moved.ws_dir / "agent"
    outside = moved.tmp / "outside-root-file"
    outside.write_text("root's\n")
    os.symlink(outside, home / "escape")
    for path in tree(home) + tree(state):
        os.lchown(path, old, old)
    (home / "root-file").write_text("root's, inside\n")
    entries = len(tree(home)) + len(tree(state)) - 1  # all but root-file

    assert moved.alice.ok("workspaces", "start", "dev").out.strip().splitlines()[-1] == "Workspace dev is running (agent connected)"
    after = moved.ssh("cat ~/notes.txt && stat -c '%u %g' ~/notes.txt && id -u")
    assert after.returncode == 0, after.stderr
    assert after.stdout.splitlines() == ["written-before-the-move", f"{uid} {gid}", str(uid)]
    assert HOST_KEY_LINE.findall(after.stderr) == served  # and the pinned entry accepted it
    key = state / "ssh_host_ed25519_key"
    st = key.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (uid, gid, 0o600)
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in tree(home) + tree(state) if p.name != "root-file"} == {(uid, gid)}
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)
    assert ((home / "root-file").stat().st_uid, (home / "root-file").stat().st_gid) == (0, 0)

    # Once: the next start finds the files the user's and has nothing to do.
    moved.alice.ok("workspaces", "restart", "dev")
    assert moved.ssh("true").returncode == 0
    said = [line.split(": ", 1)[-1] for line in moved.server.log().splitlines() if "re-owned" in line]
    assert said == [
        f"workspace {moved.owner}/dev: re-owned {entries} entries of {state} and {home} from uid {old} gid {old} "
        f"to its Unix user hw-{moved.owner}-dev (uid {uid} gid {gid}): they belonged to another uid, as after a "
        "move from another machine, a restore by numeric owner or a recreated Unix user"
    ]
    assert " INFO  hatchway.providers.local: workspace" in next(
        line for line in moved.server.log().splitlines() if "re-owned" in line
    )
