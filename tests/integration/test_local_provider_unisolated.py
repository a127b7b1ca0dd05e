"""A local workspace without isolation (what a server that is not root gets; forced here with
HATCHWAY_LOCAL_ISOLATION=off so it runs the same way as root): it still works, with the agent
as the server's own user in its own HOME, port-22 forwarding off, and says what it lacks."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, wait_for

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)")


def processes_with(assignment: str) -> list[int]:
    """Our processes whose environment holds ``assignment`` (NAME=value)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if assignment.encode() in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                out.append(int(entry))
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            pass
    return out


@dataclass
class Solo:
    server: RunningServer
    cli: Cli
    ssh_config: Path
    ws_id: str

    def ssh(self, command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "hatchway.solo", command],
            capture_output=True, text=True, timeout=30, env=self.cli.env(),
        )


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[Solo]:
    server = RunningServer(tmp_path / "data", extra_env={"HATCHWAY_LOCAL_ISOLATION": "off"})
    server.start()
    cli = Cli(tmp_path / "me")
    ws_id = ""
    try:
        cli.login(server.url, "solo", "solo-password", first=True)
        cli.ok("workspaces", "create", "solo", "--env", "FOO=unisolated")
        ws_id = cli.ok("workspaces", "show", "solo", "--json").json()["id"]
        cli.ok("config-ssh", "--ssh-config", str(tmp_path / "ssh_config"), "-y")
        yield Solo(server, cli, tmp_path / "ssh_config", ws_id)
    finally:
        if server.proc is not None:
            server.stop()
        for pid in processes_with(f"HATCHWAY_WORKSPACE_ID={ws_id}") if ws_id else []:
            os.kill(pid, 9)


def test_unisolated_workspace_works_and_says_what_it_lacks(solo: Solo) -> None:
    me = pwd.getpwuid(os.getuid()).pw_name
    w = solo.cli.ok("workspaces", "show", "solo", "--json").json()
    assert w["state"] == "running" and w["agent_connected"]
    assert w["os_user"] == me
    assert w["ssh_mode"] == "built-in"
    assert w["isolation"].startswith("not isolated: ")
    for lacking in ("own Unix user", "network namespace", "port-22 forwarding is off", "PID namespace"):
        assert lacking in w["isolation"]
    shown = solo.cli.ok("workspaces", "show", "solo").out
    assert "isolation: not isolated: " in shown

    home = solo.server.data_dir / "workspaces" / solo.ws_id / "home"
    r = solo.ssh('id -un; pwd; echo "$FOO"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [me, str(home), "unisolated"]

    cmdlines = []
    for pid in processes_with(f"HOME={home}"):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"agent" in argv:
            cmdlines.append(argv)
    assert cmdlines and all(b"--ssh-port" in a and a[a.index(b"--ssh-port") + 1] == b"0" for a in cmdlines)

    # config-ssh's closing line is a command that works as typed, -F included for a file of its own.
    out = solo.cli.ok("config-ssh", "--ssh-config", str(solo.ssh_config), "-y").out.splitlines()[-1]
    assert out == f"You can now run: ssh -F {solo.ssh_config} hatchway.solo   (configured: hatchway.solo)"
    typed = shlex.split(out.removeprefix("You can now run: ").split("   ")[0])
    r = subprocess.run([*typed, "-o", "BatchMode=yes", "echo typed"], capture_output=True, text=True, timeout=30,
                       env=solo.cli.env())
    assert r.stdout == "typed\n", r.stderr

    # Its agent runs under the server, which renews the token at every start: none to hand out.
    r = solo.cli.run("workspaces", "agent-token", "solo")
    assert (r.code, r.out, r.err.strip()) == (1, "", (
        'hatchway: workspace "solo" runs its agent under Hatchway, which gives it a new token at every start: '
        "to replace the token now, restart it: hatchway workspaces restart solo"))
    assert solo.cli.ok("workspaces", "show", "solo", "--json").json()["agent_connected"], "its agent untouched"

    # A process left behind by a session is still ended by stop: nothing of it keeps running.
    assert solo.ssh("setsid sleep 300 </dev/null >/dev/null 2>&1 &").returncode == 0
    marker = f"HATCHWAY_WORKSPACE_ID={solo.ws_id}"
    wait_for(lambda: processes_with(marker), 5, what="the session's background process")
    solo.cli.ok("workspaces", "stop", "solo")
    wait_for(lambda: not processes_with(marker) and not processes_with(f"HOME={home}"), 5,
             what="every process of the stopped workspace to end")
    solo.cli.ok("workspaces", "delete", "solo", "-y")
    assert not (solo.server.data_dir / "workspaces" / solo.ws_id).exists()


def _agent_pids(home: Path) -> list[int]:
    """The workspace's agent processes (their HOME is the workspace's home)."""
    return sorted(pid for pid in processes_with(f"HOME={home}")
                  if b"agent" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))


def test_starting_a_running_workspace_leaves_it_running(solo: Solo) -> None:
    """``start`` on a workspace that runs is a no-op that says so. It used to mark it "starting"
    for good: its agent connected, SSH refused, the CLI failing after 90 s."""
    home = solo.server.data_dir / "workspaces" / solo.ws_id / "home"
    agents = _agent_pids(home)
    assert agents
    r = solo.cli.run("workspaces", "start", "solo")
    assert (r.code, r.out, r.err) == (0, "Workspace solo is already running (agent connected)\n", "")
    r = solo.cli.run("workspaces", "start", "solo", "--no-wait")
    assert (r.code, r.out, r.err) == (0, "Workspace solo is already running (agent connected)\n", "")
    with api(solo.server.url) as c:
        token = c.post("/auth/login", json={"username": "solo", "password": "solo-password"}).json()["token"]
    with api(solo.server.url, token) as c:
        r = c.post("/workspaces/solo/start")
        assert r.status_code == 200
        assert (r.json()["state"], r.json()["state_reason"], r.json()["agent_connected"]) == ("running", None, True)
        # Nothing happened, so the audit log says nothing of these starts (its creation is there).
        actions = [e["action"] for e in c.get("/audit").json() if e["target"] == "solo/solo"]
        assert actions == ["workspace.create"]
    w = solo.cli.ok("workspaces", "show", "solo", "--json").json()
    assert (w["state"], w["state_reason"], w["agent_connected"]) == ("running", None, True)
    assert _agent_pids(home) == agents, "the same agent keeps running"
    r = solo.ssh("echo still here")
    assert (r.returncode, r.stdout) == (0, "still here\n"), r.stderr


def test_an_agent_that_keeps_dying_is_retried_then_failed_with_its_reason(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data", extra_env={"HATCHWAY_LOCAL_ISOLATION": "off"})
    server.start()
    cli = Cli(tmp_path / "me")
    try:
        cli.login(server.url, "solo", "solo-password", first=True)
        # An image environment that breaks every program (a C library that is not one): the
        # agent dies at every start. (PYTHONHOME and the like no longer reach it: python -I.)
        broken_lib = tmp_path / "lib"
        broken_lib.mkdir()
        (broken_lib / "libc.so.6").write_bytes(b"")
        r = cli.run("workspaces", "create", "broken", "--env", f"LD_LIBRARY_PATH={broken_lib}")
        assert r.code == 1
        assert 'hatchway: workspace "broken" is failed: the agent exited with status 127' in r.err
        w = cli.ok("workspaces", "show", "broken", "--json").json()
        assert w["state"] == "failed" and not w["agent_connected"]
        assert "restarting in" in w["state_reason"] and w["state_reason"].endswith("agent.log")
        assert "failed: the agent exited with status 127" in cli.ok("workspaces", "list").out
        cli.ok("workspaces", "delete", "broken", "-y")
        assert not list((server.data_dir / "workspaces").iterdir())
    finally:
        server.stop()


def test_only_a_site_manager_may_own_an_unisolated_workspace(solo: Solo, tmp_path: Path) -> None:
    """Unisolated, a workspace runs as the server's own user, who can read the deployment secret
    and the database: a member refused, a site manager who owns one kept from becoming a member."""
    solo.cli.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password\n")
    bob = Cli(tmp_path / "bob")
    bob.login(solo.server.url, "bob", "bob-password")
    refused = bob.run("workspaces", "create", "dev")
    assert refused.code == 1
    assert refused.err.strip() == (
        "hatchway: local workspaces on this server are only for site managers: local workspaces on this server are "
        "not isolated: isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off); one would run as the server's own "
        "user, with its access to the deployment's secrets and database, so only a site manager may own one. Ask a "
        "site manager to run the server as root for isolated workspaces, or to give you a workspace on another provider"
    )
    assert bob.ok("workspaces", "list", "--json").json() == []

    solo.cli.ok("users", "set-role", "bob", "site-manager")
    bob.ok("workspaces", "create", "dev")
    demoted = solo.cli.run("users", "set-role", "bob", "member")
    assert demoted.code == 1
    assert demoted.err.strip() == (
        "hatchway: \"bob\" owns local workspaces that run as the server's own user: this server cannot isolate them "
        "(isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off)) and a member may not own one: delete \"bob/dev\" "
        "first (hatchway workspaces delete OWNER/NAME), or run the server as root for isolated workspaces"
    )
    assert {u["username"]: u["role"] for u in solo.cli.ok("users", "list", "--json").json()}["bob"] == "site-manager"
    solo.cli.ok("workspaces", "delete", "bob/dev", "--yes")
    solo.cli.ok("users", "set-role", "bob", "member")


def test_a_site_manager_cannot_hand_a_member_an_unisolated_workspace(solo: Solo) -> None:
    """The owner's role decides, not the caller's: a workspace a site manager creates for a
    member would be the member's shell as the server's own user all the same."""
    solo.cli.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password\n")
    refused = solo.cli.run("workspaces", "create", "bob/dev")
    assert (refused.code, refused.out) == (1, "")
    assert refused.err.strip() == (
        'hatchway: local workspaces on this server are only for site managers, and "bob" is a member: local '
        "workspaces on this server are not isolated: isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off); one "
        "would run as the server's own user, with its access to the deployment's secrets and database, so only a "
        'site manager may own one. To give "bob" one, run the server as root for isolated workspaces, or create '
        "theirs on another provider"
    )
    assert [w["owner"] for w in solo.cli.ok("workspaces", "list", "--all", "--json").json()] == ["solo"]
    # A site manager may own one, whoever creates it.
    solo.cli.ok("users", "set-role", "bob", "site-manager")
    r = solo.cli.run("workspaces", "create", "bob/dev", "--no-wait")
    assert (r.code, r.out.splitlines()[0]) == (0, "Created workspace dev for bob on provider local (starting)"), r.err
    ws_id = solo.cli.ok("workspaces", "show", "bob/dev", "--json").json()["id"]
    try:
        wait_for(lambda: solo.cli.ok("workspaces", "show", "bob/dev", "--json").json()["agent_connected"], 30,
                 what="bob's workspace to run")
    finally:
        solo.cli.ok("workspaces", "delete", "bob/dev", "-y")
        for pid in processes_with(f"HATCHWAY_WORKSPACE_ID={ws_id}"):
            os.kill(pid, 9)
