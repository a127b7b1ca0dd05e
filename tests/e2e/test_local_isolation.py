"""Local workspaces as root: each its own Unix user, home, network namespace and PID namespace,
supervised by the server, reached with the real OpenSSH client through the relay.

Two workspaces run at once: ``a`` served by the agent's built-in SSH server, ``b`` started with
``--openssh`` (Debian's sshd on its own port 22, reached through the agent's forwarding).
Tests run in file order on one server; everything they create is removed at the end, also after
a failure (the fixture sweeps namespaces, users and processes by workspace id).
"""

from __future__ import annotations

import os
import pwd
import re
import resource
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hatchway
from hatchway import fdlimit

from tests.helpers.cli import Cli
from tests.helpers.netns import local_workspaces_reason, pids_of_uid, sweep_local_workspaces
from tests.helpers.server import RunningServer, free_port, wait_for



_REASON = local_workspaces_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


def sh(*args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=check)


def netns_list() -> set[str]:
    return {line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines() if line.strip()}


def links() -> set[str]:
    return {line.split(":")[1].strip().split("@")[0] for line in sh("ip", "-o", "link").stdout.splitlines()}


def uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def agent_pid(user: str) -> int | None:
    uid = uid_of(user)
    if uid is None:
        return None
    for pid in pids_of_uid(uid):
        argv = cmdline(pid)
        if "hatchway" in argv and "agent" in argv:
            return pid
    return None


PROBE = """\
import os
secret = {secret!r}
with open(os.path.join({seen!r}, f"{{os.getpid()}}"), "w") as f:
    f.write(f"{{os.geteuid()}} {{int(os.access(secret, os.R_OK))}}")
"""


def _probe(data_dir: Path) -> tuple[Path, Path]:
    """A directory for PYTHONPATH whose sitecustomize notes, in ``seen``, every Python that
    imports it: its euid, and whether it could read the deployment secret. Under /run: /tmp is
    each workspace's own."""
    probe = Path(tempfile.mkdtemp(prefix="hatchway-test-probe-", dir="/run"))
    seen = probe / "seen"
    seen.mkdir()
    probe.chmod(0o755)
    seen.chmod(0o1777)
    (probe / "sitecustomize.py").write_text(PROBE.format(secret=str(data_dir / "deployment.secret"), seen=str(seen)))
    return probe, seen


@dataclass
class World:
    server: RunningServer
    alice: Cli
    owner: str  # unique per run, so concurrent runs on one machine never share Unix user names
    ssh_config: Path
    ids: dict[str, str]
    links_before: set[str]
    seen: Path  # what the PYTHONPATH probe of b saw

    def ssh(self, alias: str, command: str, *opts: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *opts,
             f"hatchway.{alias}", command],
            capture_output=True, text=True, timeout=timeout, env=self.alice.env(),
        )

    def user(self, name: str) -> str:
        return f"hw-{self.owner}-{name}"

    def show(self, name: str) -> dict:
        return self.alice.ok("workspaces", "show", name, "--json").json()

    def ssh_works(self, alias: str) -> bool:
        r = self.ssh(alias, "echo alive", timeout=15)
        return r.returncode == 0 and r.stdout.strip() == "alive"

    def live_session(self, alias: str) -> subprocess.Popen[bytes]:
        """A session surely established when this returns."""
        live = subprocess.Popen(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", f"hatchway.{alias}", "echo started; exec cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.alice.env(),
        )
        assert live.stdout is not None and live.stdout.readline() == b"started\n"
        return live


def ended_saying(live: subprocess.Popen[bytes], reason: str) -> None:
    """The session ended, and ssh's user was told why (not a bare "Broken pipe")."""
    try:
        assert live.wait(timeout=10) == 255
        assert live.stderr is not None and f"hatchway: {reason}" in live.stderr.read().decode().splitlines()
    finally:
        live.kill()
        live.wait()


#: The open-files limit the server starts with: systemd's default soft limit, under this
#: machine's hard limit (the server raises its soft limit toward it).
NOFILE = (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


class ServiceServer(RunningServer):
    """A server started with the open-files limit a service manager gives it."""

    def argv(self) -> list[str]:
        return ["prlimit", f"--nofile={NOFILE[0]}:{NOFILE[1]}", *super().argv()]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("local")
    links_before = links()
    server = ServiceServer(tmp / "data")
    probe, seen = _probe(server.data_dir)
    server.start()
    alice = Cli(tmp / "alice")
    owner = "alice" + secrets.token_hex(3)
    ids: dict[str, str] = {}
    try:
        alice.login(server.url, owner, "alice-password", first=True)
        out = alice.ok("workspaces", "create", "a", "--env", "FOO=bar baz").out
        assert "Workspace a is running (agent connected)" in out
        alice.ok("workspaces", "create", "b", "--openssh", "--env", "BAR=from-image", "--env", f"PYTHONPATH={probe}")
        for name in ("a", "b"):
            ids[name] = alice.ok("workspaces", "show", name, "--json").json()["id"]
        w = World(server, alice, owner, tmp / "ssh_config", ids, links_before, seen)
        wait_for(lambda: w.show("b")["ssh_mode"] == "openssh", 20, what="b's agent to report its sshd")
        alice.ok("config-ssh", "--ssh-config", str(w.ssh_config), "-y")
        yield w
    finally:
        try:
            if server.proc is not None and server.proc.poll() is None:
                for name in list(ids):
                    alice.run("workspaces", "delete", name, "-y")
        finally:
            if server.proc is not None:
                server.stop()
            sweep_local_workspaces(server.data_dir, ids.values())  # ids or not: a failed start too
            shutil.rmtree(probe)


def test_each_workspace_has_its_own_user_and_home(world: World) -> None:
    for name in ("a", "b"):
        r = world.ssh(name, "id -un; pwd; stat -c '%a %U' .")
        assert r.returncode == 0, r.stderr
        home = world.server.data_dir / "workspaces" / world.ids[name] / "home"
        assert r.stdout.splitlines() == [world.user(name), str(home), f"700 {world.user(name)}"]
        assert world.show(name)["os_user"] == world.user(name)
        st = home.stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o700, pwd.getpwnam(world.user(name)).pw_uid)


def test_sessions_create_files_with_a_logins_umask_not_the_servers(world: World) -> None:
    """The server keeps its data dir to itself with umask 077; its workspaces must not inherit
    it (scp -r would create 0700 directories and 0600 files), with either SSH server."""
    for name in ("a", "b"):
        r = world.ssh(name, "umask; rm -rf um && mkdir um && touch um/f && stat -c '%a' um um/f; rm -rf um")
        assert (r.returncode, r.stdout.splitlines()) == (0, ["0022", "755", "644"]), (name, r.stderr)


def open_files_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-files line")


def test_sessions_get_the_open_files_limit_a_login_gets_not_the_raised_one(world: World) -> None:
    """The server and the agents raise their soft limit for their sockets; sshd, the built-in
    server's sessions and what they run get the limit the server was started with, with or
    without a terminal, as a login on that machine would."""
    assert world.server.proc is not None
    raised = min(fdlimit.TARGET, NOFILE[1])
    if raised == NOFILE[0]:
        pytest.skip(f"the hard open-files limit here ({NOFILE[1]}) leaves nothing to raise")
    assert open_files_limit(world.server.proc.pid) == (raised, NOFILE[1])  # prlimit execs the server
    pid = agent_pid(world.user("a"))
    assert pid is not None and open_files_limit(pid) == (raised, NOFILE[1])
    for name in ("a", "b"):
        for tty in ((), ("-tt",)):
            r = world.ssh(name, "ulimit -Sn; ulimit -Hn", *tty)
            assert (r.returncode, r.stdout.split()) == (0, [str(NOFILE[0]), str(NOFILE[1])]), (name, tty, r.stderr)


def test_isolation_is_shown(world: World) -> None:
    out = world.alice.ok("workspaces", "show", "b").out
    assert f"isolation: isolated: Unix user {world.user('b')}, own network namespace hw-" in out
    assert "own PID namespace" in out
    assert "openssh:   yes" in out
    listing = world.alice.ok("workspaces", "list").out.splitlines()
    row_a = next(line for line in listing if line.startswith("a "))
    assert row_a.split()[3:5] == ["running", "connected"]


def test_each_sees_only_its_own_processes(world: World) -> None:
    seen = {}
    for name in ("a", "b"):
        r = world.ssh(name, "ps -e -o pid=,user:32=,comm=")
        assert r.returncode == 0, r.stderr
        rows = [line.split() for line in r.stdout.splitlines()]
        seen[name] = rows
        assert rows[0][0] == "1" and rows[0][2] == "tini", rows
        users = {row[1] for row in rows}
        assert users <= {"root", world.user(name)}, rows
    # a runs no sshd and sees none of b's; b's own sshd is visible to b only.
    assert not any(row[2] == "sshd" for row in seen["a"])
    assert any(row[2] == "sshd" for row in seen["b"])
    assert len(seen["a"]) <= 6, seen["a"]
    # /proc inside is the namespace's own: the host's PID of a's agent does not exist there.
    host_pid = agent_pid(world.user("a"))
    assert host_pid is not None and host_pid > 10
    r = world.ssh("a", f"test -e /proc/{host_pid}/cmdline && echo visible || echo hidden")
    assert r.stdout.strip() == "hidden"


def test_network_is_the_workspaces_own(world: World) -> None:
    r = world.ssh("a", "cat /proc/net/dev")
    interfaces = [line.split(":")[0].strip() for line in r.stdout.splitlines()[2:]]
    assert interfaces == ["lo"]
    listener = subprocess.Popen(
        ["ip", "netns", "exec", f"hw-{world.ids['a']}", "python3", "-c",
         "import socket\n"
         "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind(('127.0.0.1', 22)); s.listen(); print('listening', flush=True)\n"
         "while True:\n"
         "    c, _ = s.accept(); c.sendall(b'not-ssh from a\\r\\n'); c.close()\n"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        probe = (
            "python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', 22), 3); "
            "print(s.recv(64).decode().strip())\""
        )
        from_a = world.ssh("a", probe)
        from_b = world.ssh("b", probe)
        assert from_a.stdout.strip() == "not-ssh from a", from_a.stderr
        assert from_b.stdout.strip().startswith("SSH-2.0-OpenSSH"), from_b.stderr
        # a's port 22 now answers, but not with SSH: a's connections still get the built-in server.
        assert world.ssh_works("a")
    finally:
        listener.kill()
        listener.wait()


def test_image_env_reaches_the_agent_but_the_token_stays_out_of_argv_and_logs(world: World) -> None:
    pid = agent_pid(world.user("a"))
    assert pid is not None
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item
    )
    assert environ["FOO"] == "bar baz"
    assert environ["HOME"].endswith(f"/workspaces/{world.ids['a']}/home")
    token = environ["HATCHWAY_AGENT_TOKEN"]
    assert token.startswith("hwa_")
    assert not any(token in arg for arg in cmdline(pid))
    assert "hwa_" not in " ".join(cmdline(pid))
    assert token not in world.server.log()
    agent_log = world.server.data_dir / "workspaces" / world.ids["a"] / "agent.log"
    assert token not in agent_log.read_text()
    r = world.ssh("a", 'echo "$FOO"')
    assert r.stdout == "bar baz\n"


def test_openssh_workspace_is_served_by_real_sshd_with_the_environment(world: World) -> None:
    r = world.ssh("b", 'echo "BAR=$BAR HW=$HATCHWAY_WORKSPACE_NAME"', "-v")
    assert r.returncode == 0, r.stderr
    assert re.search(r"remote software version OpenSSH_\d", r.stderr)
    assert r.stdout.strip() == "BAR=from-image HW=b"
    # A value the user adds below the managed section is applied by sshd (PermitUserEnvironment).
    assert world.ssh("b", "echo MY_OWN=set-by-me >> ~/.ssh/environment").returncode == 0
    r = world.ssh("b", 'echo "$MY_OWN"')
    assert r.stdout.strip() == "set-by-me"
    shown = world.show("b")
    assert shown["openssh"] is True and shown["ssh_mode"] == "openssh"
    assert shown["ssh_server_version"].startswith("SSH-2.0-OpenSSH") or "OpenSSH" in shown["ssh_server_version"]
    key = world.server.data_dir / "workspaces" / world.ids["b"] / "sshd" / "ssh_host_ed25519_key"
    assert key.stat().st_mode & 0o777 == 0o600


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):  # gone, or the sandbox's own
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _uid(pid: int) -> int | None:
    try:
        return Path(f"/proc/{pid}").stat().st_uid
    except FileNotFoundError:
        return None


def test_nothing_the_user_chooses_runs_with_privileges(world: World) -> None:
    """The launch chain (sh, ip, unshare, tini, nslaunch, sshd) runs as root in the user's home.
    The workspace's variables (PYTHONPATH here; LD_PRELOAD alike) reach the user's sessions and
    no process of that chain; a package the user plants in their home is not imported either."""
    uid = uid_of(world.user("b"))
    assert uid is not None
    planted = 'import os\nopen(os.path.join(%r, "home-" + str(os.getpid())), "w").write(str(os.geteuid()))\n' % str(world.seen)
    r = world.ssh("b", f"mkdir -p ~/hatchway && printf %s {shlex.quote(planted)} > ~/hatchway/__init__.py")
    assert r.returncode == 0, r.stderr
    world.alice.ok("workspaces", "restart", "b")
    wait_for(lambda: world.ssh_works("b"), 30, interval=0.2, what="b back after the restart")
    # Every process of the machine that holds the variable is the workspace user's.
    probe = str(world.seen.parent)
    holders = {pid: _uid(pid) for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
               if _environ(pid).get("PYTHONPATH") == probe}
    assert holders and set(holders.values()) == {uid}, holders
    # ... and it still does what the image meant for the user's own Python.
    r = world.ssh("b", 'echo "$PYTHONPATH"; python3 -c pass')
    assert r.returncode == 0 and r.stdout == f"{probe}\n", r.stderr
    seen = {f.name: f.read_text() for f in world.seen.iterdir()}
    assert seen and all(v == f"{uid} 0" for k, v in seen.items() if not k.startswith("home-")), seen
    assert not any(k.startswith("home-") for k in seen), "the launcher imported a package from the user's home"
    assert world.show("b")["ssh_mode"] == "openssh"


def test_tmp_is_each_workspaces_own(world: World) -> None:
    """Only the way to what the workspace runs from (the code, its directory under a data dir
    that a test put in /tmp) is left of the machine's."""
    name = f"hatchway-test-{secrets.token_hex(4)}"
    ours = [world.server.data_dir.resolve(), Path(sys.prefix).resolve(), Path(hatchway.__file__).resolve()]
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        r = world.ssh("a", f"echo from-a > {d}/{name} && stat -c %a {d}")
        assert r.returncode == 0 and r.stdout == "1777\n", r.stderr
        r = world.ssh("b", f"ls -A {d}; test -e {d}/{name}")
        way = {p.relative_to(d).parts[0] for p in ours if Path(d) in p.parents}
        assert r.returncode == 1 and set(r.stdout.split()) == way, "b sees nothing of a's, nor of the machine's"
        assert not Path(d, name).exists()
    assert world.ssh("a", f"cat /tmp/{name}").stdout == "from-a\n"


def test_each_workspace_reports_only_its_own_servers_host_keys(world: World) -> None:
    """a has only the built-in server; b also its own sshd. Neither reports the machine's
    /etc/ssh host keys, which no server of theirs presents."""
    def pub(path: Path) -> str:
        return " ".join(path.read_text().split()[:2])

    machine = {pub(p) for p in Path("/etc/ssh").glob("ssh_host_*_key.pub")}
    a, b = world.show("a"), world.show("b")
    b_sshd = pub(world.server.data_dir / "workspaces" / world.ids["b"] / "sshd" / "ssh_host_ed25519_key.pub")
    assert len(a["host_keys"]) == 1 and not machine & set(a["host_keys"])
    assert b_sshd in b["host_keys"] and len(b["host_keys"]) == 2 and not machine & set(b["host_keys"])


def test_a_second_server_on_the_data_dir_refuses_and_leaves_every_workspace_running(world: World, tmp_path: Path) -> None:
    """Another ``hatchway server`` on this data dir, on the same port or another, stops at once.
    It used to restart every workspace, killing what ran in their namespaces, and then fail on
    the port; on another port the two killed each other's agents in a loop."""
    assert world.server.proc is not None
    holder = world.server.proc.pid
    agents = {name: agent_pid(world.user(name)) for name in ("a", "b")}
    assert None not in agents.values()
    for port in (world.server.port, free_port()):
        second = RunningServer(world.server.data_dir, port=port)
        second.log_path = tmp_path / f"second-{port}.log"
        try:
            with pytest.raises(RuntimeError, match=f"another Hatchway server \\(pid {holder}\\) is using "):
                second.start()
        finally:
            if second.proc is not None:
                second.stop()
        assert "starting workspace" not in second.log() and "leftover" not in second.log()
    assert {name: agent_pid(world.user(name)) for name in ("a", "b")} == agents
    for name in ("a", "b"):
        w = world.show(name)
        assert (w["state"], w["state_reason"], w["agent_connected"]) == ("running", None, True)
        assert world.ssh_works(name)


def test_killed_agent_is_back_within_10_seconds(world: World) -> None:
    pid = agent_pid(world.user("a"))
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    wait_for(lambda: agent_pid(world.user("a")) not in (None, pid), 10, what="a new agent process")
    wait_for(lambda: world.ssh_works("a"), 10 - (time.monotonic() - start), interval=0.2, what="SSH to a after kill -9")
    assert time.monotonic() - start < 10
    assert world.show("a")["state"] == "running"
    assert "killed by signal 9" in world.server.log()


def test_stop_leaves_nothing_running_and_start_brings_it_back(world: World) -> None:
    live = world.live_session("a")
    out = world.alice.ok("workspaces", "stop", "a").out
    assert out.strip() == "Stopped workspace a"
    ended_saying(live, "the workspace was stopped")
    uid = uid_of(world.user("a"))
    assert uid is not None
    assert pids_of_uid(uid) == []
    assert f"hw-{world.ids['a']}" not in netns_list()
    assert world.show("a")["state"] == "stopped"
    r = world.ssh("a", "true")
    assert r.returncode == 255
    assert 'workspace "a" is stopped' in r.stderr
    assert world.ssh_works("b")  # the other one is untouched
    world.alice.ok("workspaces", "start", "a")
    assert world.show("a")["state"] == "running"
    # Same host key as before the stop: the pinned known_hosts entry still matches.
    assert world.ssh_works("a")
    world.alice.ok("workspaces", "restart", "b")
    assert world.ssh_works("b")


def test_server_restart_brings_running_workspaces_back(world: World) -> None:
    world.alice.ok("workspaces", "stop", "a")
    world.server.stop()
    # Down: nothing of any workspace is left running, no namespace is left behind.
    for name in ("a", "b"):
        uid = uid_of(world.user(name))
        assert uid is not None and pids_of_uid(uid) == []
        assert f"hw-{world.ids[name]}" not in netns_list()
    world.server.start()
    wait_for(lambda: world.ssh_works("b"), 30, interval=0.2, what="b back after the server restart")
    assert world.show("b")["state"] == "running"
    # a was stopped before the restart and stays stopped.
    assert world.show("a")["state"] == "stopped"
    assert agent_pid(world.user("a")) is None
    world.alice.ok("workspaces", "start", "a")
    assert world.ssh_works("a")


def test_delete_removes_user_namespace_home_and_processes(world: World) -> None:
    for name in ("a", "b"):
        user = world.user(name)
        uid = uid_of(user)
        assert uid is not None
        live = world.live_session(name)
        world.alice.ok("workspaces", "delete", name, "-y")
        ended_saying(live, f'workspace "{world.owner}/{name}" was deleted')
        assert sh("getent", "passwd", user).returncode == 2
        assert pids_of_uid(uid) == []
        assert f"hw-{world.ids[name]}" not in netns_list()
        assert not (world.server.data_dir / "workspaces" / world.ids[name]).exists()
        del world.ids[name]
    assert links() == world.links_before
    ps = sh("ps", "-eo", "user:32=,args=").stdout
    assert f"hw-{world.owner}-" not in ps
