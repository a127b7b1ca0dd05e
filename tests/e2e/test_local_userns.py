"""Local workspaces of a server that is NOT root: user-namespace isolation, for real.

The server runs as a throwaway unprivileged Unix user (tests/helpers/asuser.py); the test itself
is root only to create and remove that user. Two workspaces run at once; each gets its own
network, PID and mount namespaces inside a user namespace, runs as the server's user, and is
reached with the real OpenSSH client through the relay. A second server of the same kind, with
``HATCHWAY_LOCAL_ISOLATION=off``, shows the fallback. Everything created is removed at the end,
also after a failure: the user (with its home, which holds the data dir) and every process of it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatchway.providers import userns
from tests.helpers.asuser import UserServer
from tests.helpers.cli import Cli
from tests.helpers.netns import TempUser, pids_of_uid
from tests.helpers.server import HATCHWAY, wait_for


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create the unprivileged user the server runs as"
    for tool in ("useradd", "unshare", "tini", "ssh"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            return f"{tool} missing: scripts/setup installs it"
    switches = userns.kernel_switches()
    if not switches.ok:
        return f"user namespaces are not available here: {switches.reason}"
    return None


pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason() is not None, reason=str(_reason()))]


def environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return []


@dataclass
class World:
    user: TempUser
    server: UserServer
    cli: Cli
    ssh_config: Path
    ids: dict[str, str]

    def home(self, name: str) -> Path:
        return self.server.data_dir / "workspaces" / self.ids[name] / "home"

    def ssh(self, name: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"hatchway.{name}", command],
            capture_output=True, text=True, timeout=timeout, env=self.cli.env(), check=False,
        )

    def ssh_works(self, name: str) -> bool:
        r = self.ssh(name, "echo alive", timeout=15)
        return r.returncode == 0 and r.stdout.strip() == "alive"

    def show(self, name: str) -> dict:
        return self.cli.ok("workspaces", "show", name, "--json").json()

    def processes_of(self, name: str) -> list[int]:
        """Host pids of a workspace: the launcher, init, agent and sessions carry its HOME."""
        home = str(self.home(name))
        return [p for p in pids_of_uid(self.user.uid) if environ(p).get("HOME") == home]

    def agent_pid(self, name: str) -> int | None:
        for pid in self.processes_of(name):
            argv = cmdline(pid)
            if argv[:1] != ["/usr/bin/tini"] and "agent" in argv and "hatchway" in argv:
                return pid
        return None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("userns")
    user = TempUser()
    server = UserServer(user)
    cli = Cli(tmp / "me")
    ids: dict[str, str] = {}
    try:
        server.start()
        assert "local workspaces get their own user namespace and their own network, PID and mount" in server.log()
        cli.login(server.url, "alice", "alice-password", first=True)
        cli.ok("workspaces", "create", "a", "--env", "FOO=from a")
        cli.ok("workspaces", "create", "b", "--env", "FOO=from b")
        for name in ("a", "b"):
            ids[name] = cli.ok("workspaces", "show", name, "--json").json()["id"]
        cli.ok("config-ssh", "--ssh-config", str(tmp / "ssh_config"), "-y")
        yield World(user, server, cli, tmp / "ssh_config", ids)
    finally:
        try:
            if server.proc is not None:
                server.stop()
        finally:
            user.close()  # kills every process of the user, removes it and its home (the data dir)
    assert pids_of_uid(user.uid) == []


def test_show_states_the_isolation_in_place_and_what_is_missing(world: World) -> None:
    w = world.show("a")
    assert w["state"] == "running" and w["agent_connected"]
    assert w["os_user"] == world.user.name
    assert w["ssh_mode"] == "built-in"
    iso = w["isolation"]
    assert iso.startswith("isolated in a user namespace (the Hatchway server does not run as root): ")
    for present in ("own network namespace (own loopback and port 22)", "own PID namespace", "own mount namespace"):
        assert present in iso
    assert f"Not possible without root: a separate Unix user ({world.user.name}'s files" in iso
    assert "isolation: isolated in a user namespace" in world.cli.ok("workspaces", "show", "b").out


def test_ssh_lands_in_each_workspace_home_as_the_servers_user(world: World) -> None:
    for name in ("a", "b"):
        r = world.ssh(name, 'id -un; pwd; echo "$FOO"; echo "$HATCHWAY_WORKSPACE_NAME"')
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [world.user.name, str(world.home(name)), f"from {name}", name]


def test_port22_forwarding_is_on(world: World) -> None:
    pid = world.agent_pid("a")
    assert pid is not None
    argv = cmdline(pid)
    assert argv[argv.index("--ssh-port") + 1] == "22"
    assert argv[argv.index("--url") + 1] == f"http://127.0.0.1:{world.server.port}"


def test_each_sees_only_its_own_processes(world: World) -> None:
    # A process that b leaves running (detached from the session) is b's only.
    assert world.ssh("b", "setsid sleep 4242 </dev/null >/dev/null 2>&1 &").returncode == 0
    wait_for(lambda: "sleep 4242" in world.ssh("b", "ps -e -o args=").stdout, 10, interval=0.2, what="b's sleep")
    seen = {}
    for name in ("a", "b"):
        r = world.ssh(name, "ps -e -o pid=,user:32=,args=")
        assert r.returncode == 0, r.stderr
        seen[name] = [line.split(None, 2) for line in r.stdout.splitlines()]
        assert seen[name][0][0] == "1" and seen[name][0][2].startswith("/usr/bin/tini -g -- "), seen[name]
        assert {row[1] for row in seen[name]} == {world.user.name}
        assert not any(world.ids["b" if name == "a" else "a"] in row[2] for row in seen[name])
    assert any(row[2] == "sleep 4242" for row in seen["b"])
    assert not any("sleep 4242" in row[2] for row in seen["a"])
    assert len(seen["a"]) <= 6, seen["a"]
    # Nothing of the host either: the host pid of a's own agent is not in a's /proc.
    host_pid = world.agent_pid("a")
    assert host_pid is not None and host_pid > 10
    assert world.ssh("a", f"test -e /proc/{host_pid}/cmdline && echo visible || echo hidden").stdout.strip() == "hidden"
    assert world.ssh("b", "pkill -x sleep; true").returncode == 0


def test_a_listener_on_one_workspaces_port_22_is_invisible_from_the_other(world: World) -> None:
    r = world.ssh("a", "cat /proc/net/dev")
    assert [line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]] == ["lo"]
    listen = (
        "setsid python3 -c \"\n"
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 22)); s.listen()\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'not-ssh from a\\r\\n'); c.close()\n"
        "\" </dev/null >/dev/null 2>&1 &"
    )
    probe = (
        "python3 -c \"import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', 22), 3)\n"
        "    print(s.recv(64).decode().strip())\nexcept OSError as e:\n    print(type(e).__name__)\""
    )
    assert world.ssh("a", listen).returncode == 0
    wait_for(lambda: world.ssh("a", probe).stdout.strip() == "not-ssh from a", 10, interval=0.2, what="a's port 22")
    assert world.ssh("b", probe).stdout.strip() == "ConnectionRefusedError"
    # The server's own port is not reachable from inside either: only its listener for the agent.
    assert "ConnectionRefusedError" in world.ssh("a", probe.replace("22)", "1)")).stdout
    # a's port 22 now answers, but not with SSH: a's connections still get the built-in server.
    assert world.ssh_works("a")
    assert world.ssh("a", "pkill -f 'not-ss[h] from'; true").returncode == 0


def test_an_sshd_the_user_starts_on_port_22_is_forwarded_to(world: World) -> None:
    """Port-22 detection is on: an OpenSSH server the workspace's user runs on its own port 22
    (unprivileged, in the namespace) serves the next connections; b is not affected."""
    home = world.home("a")
    config = "\\n".join([
        "Port 22", "ListenAddress 127.0.0.1", f"HostKey {home}/hk", "PidFile none", "UsePAM no",
        "StrictModes no", f"AuthorizedKeysFile {home}/.ssh/authorized_keys", "PasswordAuthentication no",
        "PermitUserEnvironment yes",
    ])
    start = (
        f"ssh-keygen -q -t ed25519 -N '' -f ~/hk && printf '{config}\\n' > ~/sshd_config && "
        "(setsid /usr/sbin/sshd -D -e -f ~/sshd_config </dev/null >~/sshd.log 2>&1 &)"
    )
    r = world.ssh("a", start)
    assert r.returncode == 0, r.stderr
    # The agent notices at the next connection (which already goes to sshd, whose host key is not
    # pinned yet, so ssh refuses it) and reports it; config-ssh then pins the sshd's key.
    wait_for(lambda: world.ssh("a", "true") and world.show("a")["ssh_mode"] == "openssh", 20,
             interval=0.2, what="a's agent to report the sshd")
    assert world.show("b")["ssh_mode"] == "built-in"
    world.cli.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")  # pins the sshd's host key
    r = subprocess.run(
        ["ssh", "-v", "-F", str(world.ssh_config), "-o", "BatchMode=yes", "hatchway.a", "echo via $SSH_CONNECTION"],
        capture_output=True, text=True, timeout=30, env=world.cli.env(), check=False,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"remote software version OpenSSH_\d", r.stderr)
    assert r.stdout.startswith("via 127.0.0.1 ")
    assert world.ssh_works("b")
    assert world.ssh("a", "pkill -x sshd; true").returncode in (0, 255)  # (may end this very session)
    wait_for(lambda: world.ssh("a", "true") and world.show("a")["ssh_mode"] == "built-in", 20,
             interval=0.2, what="a back on the built-in server")
    world.cli.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")
    assert world.ssh_works("a")


def _code_entries_in(directory: str) -> list[str]:
    """Names directly under ``directory`` a workspace sees because the code runs from there:
    the way to the interpreter and to the package is passed through, nothing else."""
    import hatchway

    names = set()
    for path in (Path(sys.prefix).resolve(), Path(HATCHWAY).resolve().parent, Path(hatchway.__file__).resolve().parent):
        if path.is_relative_to(directory):
            names.add(path.relative_to(directory).parts[0])
    return sorted(names)


def test_the_data_dir_and_other_workspaces_are_hidden(world: World) -> None:
    data = world.server.data_dir
    r = world.ssh("a", f"ls -A {data}; ls -A {data}/workspaces; ls -A {world.user.home}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["workspaces", world.ids["a"], "data"]
    assert (data / "hatchway.db").exists() or list(data.glob("*.db"))  # there on the host...
    assert world.ssh("a", f"ls {data}/*.db 2>/dev/null | wc -l").stdout.strip() == "0"  # ...not inside
    # The covers cannot be taken off: not where the workspace runs (its user namespace does not
    # own that mount namespace), nor in a namespace of its own making (they are locked there).
    mounted = set(world.ssh("a", "cut -d' ' -f5 /proc/self/mountinfo").stdout.split())
    covers = [str(d) for d in (data, *data.parents) if str(d) in mounted and str(d) != "/"]
    assert covers, mounted
    unmount = "; ".join(f"umount -l {c} 2>&1" for c in covers)
    for shell in ("sh", "unshare -Urm sh"):
        tried = world.ssh("a", f"{shell} -c '{unmount}; ls {data}/*.db 2>/dev/null | wc -l'")
        assert tried.stdout.splitlines()[-1] == "0", tried
        assert len(tried.stdout.splitlines()) == len(covers) + 1, tried  # each umount refused, saying why
    code = _code_entries_in("/tmp")  # a checkout under /tmp (as CI may use) is passed through
    assert world.ssh("a", "echo secret > /tmp/from-a && ls /tmp").stdout.split() == sorted(["from-a", *code])
    assert world.ssh("b", "ls -A /tmp").stdout.split() == code
    assert not Path("/tmp/from-a").exists()


def test_openssh_is_refused_with_what_to_do(world: World) -> None:
    r = world.cli.run("workspaces", "create", "c", "--openssh")
    assert r.code == 1
    assert "--openssh needs a Hatchway server running as root" in r.err
    assert "create it again without --openssh" in r.err
    w = world.show("c")
    assert w["state"] == "failed"
    world.cli.ok("workspaces", "delete", "c", "-y")


def test_killed_agent_comes_back(world: World) -> None:
    pid = world.agent_pid("b")
    assert pid is not None
    os.kill(pid, 9)
    wait_for(lambda: world.agent_pid("b") not in (None, pid), 15, interval=0.1, what="a new agent for b")
    wait_for(lambda: world.ssh_works("b"), 20, interval=0.2, what="SSH to b after kill -9")


def test_server_restart_brings_workspaces_back_and_a_killed_servers_leftovers_are_ended(world: World) -> None:
    world.server.stop()
    for name in ("a", "b"):
        assert world.processes_of(name) == []
    world.server.start()
    for name in ("a", "b"):
        wait_for(lambda n=name: world.ssh_works(n), 30, interval=0.2, what=f"{name} back after a server restart")
    # A server killed outright cannot stop its agents: they stay, unable to reach anyone...
    orphan = world.agent_pid("a")
    world.server.stop(signal.SIGKILL)
    assert orphan is not None and world.agent_pid("a") == orphan
    # ...until the next server starts the workspace again and ends them first.
    world.server.start()
    wait_for(lambda: world.ssh_works("a"), 30, interval=0.2, what="a back after the server was killed")
    wait_for(lambda: world.ssh_works("b"), 30, interval=0.2, what="b back after the server was killed")
    agents = [p for p in world.processes_of("a") if "agent" in cmdline(p) and cmdline(p)[:1] != ["/usr/bin/tini"]]
    assert len(agents) == 1 and agents[0] != orphan


def test_stop_and_delete_leave_no_process_behind(world: World) -> None:
    assert world.ssh("a", "setsid sleep 4343 </dev/null >/dev/null 2>&1 &").returncode == 0
    assert world.processes_of("a")
    world.cli.ok("workspaces", "stop", "a")
    assert world.processes_of("a") == []
    assert world.show("a")["state"] == "stopped"
    assert world.ssh_works("b")  # the other one is untouched
    world.cli.ok("workspaces", "start", "a")
    assert world.ssh_works("a")  # same host key: the pinned entry still matches
    server_pid = world.server.proc.pid if world.server.proc else -1
    for name in ("a", "b"):
        world.cli.ok("workspaces", "delete", name, "-y")
        assert world.processes_of(name) == []
        assert not (world.server.data_dir / "workspaces" / world.ids[name]).exists()
    assert pids_of_uid(world.user.uid) == [server_pid]


def test_without_user_namespaces_the_fallback_says_why(tmp_path: Path) -> None:
    user = TempUser()
    server = UserServer(user, extra_env={"HATCHWAY_LOCAL_ISOLATION": "off"})
    cli = Cli(tmp_path / "me")
    try:
        server.start()
        cli.login(server.url, "solo", "solo-password", first=True)
        cli.ok("workspaces", "create", "solo")
        w = cli.ok("workspaces", "show", "solo", "--json").json()
        assert w["state"] == "running" and w["os_user"] == user.name
        assert w["isolation"].startswith("not isolated: isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off), ")
        assert "port-22 forwarding is off" in w["isolation"]
        cli.ok("config-ssh", "--ssh-config", str(tmp_path / "ssh_config"), "-y")
        r = subprocess.run(
            ["ssh", "-F", str(tmp_path / "ssh_config"), "-o", "BatchMode=yes", "hatchway.solo", "id -un; ls /proc | grep -c '^[0-9]'"],
            capture_output=True, text=True, timeout=30, env=cli.env(), check=False,
        )
        assert r.returncode == 0, r.stderr
        name, count = r.stdout.split()
        assert name == user.name and int(count) > 10  # the machine's processes: no PID namespace
        cli.ok("workspaces", "delete", "solo", "-y")
        assert pids_of_uid(user.uid) == [server.proc.pid if server.proc else -1]
    finally:
        try:
            if server.proc is not None:
                server.stop()
        finally:
            user.close()
    assert pids_of_uid(user.uid) == []
