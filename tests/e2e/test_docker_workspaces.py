"""Docker workspaces end to end: a real dockerd, images built here from Debian's archive (no
registry), the real ``hatchway server`` supervising agents exec'd into containers, and the real
OpenSSH client through the relay.

* ``slim`` — a Debian image without sshd and without Python: served by the agent's built-in
  server, running on the bundled interpreter;
* ``cvm`` — the documented image (docs/images/openssh/Dockerfile) plus one ENV line, started
  with ``--cvm``: systemd is PID 1, OpenSSH on the container's port 22 serves the sessions;
* ``broken`` — the same image breaking the documented settings (no xauth, /etc/environment,
  PermitUserEnvironment no): the agent's diagnostics say so, and ``ssh -X`` fails as they say.

Tests run in file order on one server. Everything they create (containers, volumes, images
except the cached debootstrapped base, the dockerd they started) is removed at the end, also
after a failure.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hatchway.providers.docker_incontainer import MOVED_WHY
from tests.helpers import docker as dk
from tests.helpers.cli import Cli
from tests.helpers.netns import unused_id
from tests.helpers.server import RunningServer, wait_for

pytestmark = [pytest.mark.root, pytest.mark.skipif(dk.unavailable_reason() is not None, reason=str(dk.unavailable_reason()))]

IMAGE_VAR = "HATCHWAY_TEST_FROM_IMAGE"


@dataclass
class World:
    server: RunningServer
    engine: dk.Engine
    alice: Cli
    owner: str
    ssh_config: Path
    tmp: Path
    images: dict[str, str]
    ids: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def ssh(self, alias: str, command: str, *opts: str, timeout: float = 30, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *opts,
             f"hatchway.{alias}", command],
            capture_output=True, text=True, timeout=timeout, env=env or self.alice.env(),
        )

    def show(self, name: str) -> dict:
        return self.alice.ok("workspaces", "show", name, "--json").json()

    def create(self, name: str, image: str, *args: str) -> None:
        started = time.monotonic()
        out = self.alice.ok("workspaces", "create", name, "--provider", "dock", "--image", image, *args).out
        self.timings[f"create {name}"] = time.monotonic() - started
        assert f"Workspace {name} is running (agent connected)" in out
        self.ids[name] = self.show(name)["id"]

    def container(self, name: str) -> dict:
        found = self.engine.ids("container", f"hatchway.workspace.id={self.ids[name]}")
        assert len(found) == 1, found
        info = self.engine.inspect("container", found[0])
        assert info is not None
        return info

    def ssh_works(self, alias: str) -> bool:
        r = self.ssh(alias, "echo alive", timeout=20)
        return r.returncode == 0 and r.stdout.strip() == "alive"


def sweep(engine: dk.Engine, ids: list[str]) -> None:
    for ws_id in ids:
        for cid in engine.ids("container", f"hatchway.workspace.id={ws_id}"):
            engine.docker("rm", "-f", cid, check=False)
        for vol in engine.ids("volume", f"hatchway.workspace.id={ws_id}"):
            engine.docker("volume", "rm", "-f", vol, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("docker")
    try:
        engine = dk.start_engine()
    except RuntimeError as exc:
        pytest.skip(f"dockerd cannot run on this machine: {exc}")
    run = secrets.token_hex(3)
    server: RunningServer | None = None
    ids: dict[str, str] = {}
    try:
        built = dk.build_openssh_image(engine, f"hatchway-test/openssh:{run}")
        images = {"openssh": built.openssh, "base": built.base}
        images["slim"] = f"hatchway-test/slim:{run}"
        engine.build(images["slim"], f"FROM {built.base}\nRUN dpkg --purge openssh-server openssh-sftp-server\n"
                     f"ENV {IMAGE_VAR}=slim-image\n")
        images["cvm"] = f"hatchway-test/cvm:{run}"
        engine.build(images["cvm"], f'FROM {built.openssh}\nENV {IMAGE_VAR}="from the image"\n')
        images["broken"] = f"hatchway-test/broken:{run}"
        engine.build(images["broken"], (
            f"FROM {built.openssh}\n"
            "RUN dpkg --purge xauth && echo EDITOR=ed > /etc/environment"
            " && sed -i 's/^PermitUserEnvironment yes/PermitUserEnvironment no/' /etc/ssh/sshd_config.d/hatchway.conf\n"
        ))
        images["noinit"] = f"hatchway-test/noinit:{run}"
        engine.build(images["noinit"], f"FROM {images['slim']}\nRUN rm -f /sbin/init /lib/systemd/systemd /usr/lib/systemd/systemd\n")
        images["noshell"] = f"hatchway-test/noshell:{run}"
        engine.build(images["noshell"], f"FROM {images['slim']}\n" + 'RUN ["/bin/rm", "-f", "/bin/sh", "/bin/bash", '
                     '"/bin/dash", "/usr/bin/sh", "/usr/bin/bash", "/usr/bin/dash"]\n')
        server = RunningServer(tmp / "data")
        server.start()
        alice = Cli(tmp / "alice")
        owner = "alice" + run
        alice.login(server.url, owner, "alice-password", first=True)
        out = alice.ok("providers", "create", "dock", "--kind", "docker", "--docker-host", engine.host).out
        assert "Created provider dock (docker" in out
        w = World(server, engine, alice, owner, tmp / "ssh_config", tmp, images, ids)
        w.timings["image build (base cached)" if built.build_seconds < 40 else "image build (first, debootstrap)"] = built.build_seconds
        yield w
        print("\ndocker e2e timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in w.timings.items()))
    finally:
        try:
            if server is not None and server.proc is not None and server.proc.poll() is None:
                for name in list(ids):
                    Cli(tmp / "alice").run("workspaces", "delete", name, "-y")
        finally:
            if server is not None and server.proc is not None:
                server.stop()
            sweep(engine, list(ids.values()))
            engine.remove_images()
            engine.stop()


def test_provider_is_listed_with_its_engine(world: World) -> None:
    rows = world.alice.ok("providers", "list", "--json").json()
    dock = next(p for p in rows if p["name"] == "dock")
    assert dock["kind"] == "docker" and dock["docker_host"] == world.engine.host


def test_slim_image_without_sshd_or_python_is_served_by_the_builtin_server(world: World) -> None:
    world.create("slim", world.images["slim"], "--env", "FOO=bar baz")
    world.alice.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")
    r = world.ssh("slim", f'id -un; echo "$HOME|$FOO|${IMAGE_VAR}|$HATCHWAY_WORKSPACE_NAME"; '
                  "command -v python3 || echo no-python; cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '", "-v")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == world.owner
    assert lines[1] == f"/home/{world.owner}|bar baz|slim-image|slim"
    assert lines[2] == "no-python"
    assert lines[3:] == ["lo"]  # the container's own network namespace, with only its loopback
    assert "remote software version OpenSSH_compatible Hatchway_" in r.stderr
    shown = world.show("slim")
    assert shown["ssh_mode"] == "built-in"
    assert shown["image"] == world.images["slim"] and shown["cvm"] is False
    assert shown["env"][IMAGE_VAR] == "slim-image" and shown["env"]["FOO"] == "bar baz"
    assert shown["os_user"] == world.owner
    assert "own network namespace" in shown["isolation"]
    # PID 1 is Hatchway's init; the agent runs on the bundled interpreter, not the image's.
    r = world.ssh("slim", "tr '\\0' ' ' < /proc/1/cmdline")
    assert "docker_incontainer init" in r.stdout


def test_token_is_in_no_container_config_or_argv(world: World) -> None:
    info = world.container("slim")
    assert not any("HATCHWAY_AGENT_TOKEN" in e for e in info["Config"]["Env"])
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert info["Config"]["Labels"]["hatchway.workspace.owner"] == world.owner
    r = world.ssh("slim", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done")
    assert "hatchway agent --url http://127.0.0.1:" in r.stdout
    assert "hwa_" not in r.stdout
    assert "hwa_" not in world.server.log()


def test_cvm_workspace_is_served_by_openssh_under_systemd(world: World) -> None:
    world.create("cvm", world.images["cvm"], "--cvm", "--env", "FROM_CLI=yes")
    wait_for(lambda: world.show("cvm")["ssh_mode"] == "openssh", 20, what="the agent to report OpenSSH on port 22")
    world.alice.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")
    r = world.ssh("cvm", f'cat /proc/1/comm; echo "${IMAGE_VAR}|$FROM_CLI|$HATCHWAY_WORKSPACE_NAME|$HATCHWAY_USER_NAME"; id -un',
                  "-v")
    assert r.returncode == 0, r.stderr
    assert re.search(r"remote software version OpenSSH_\d", r.stderr)
    assert r.stdout.splitlines() == ["systemd", f"from the image|yes|cvm|{world.owner}", world.owner]
    # A value the user adds below the managed section is applied by sshd (PermitUserEnvironment yes).
    assert world.ssh("cvm", "echo MY_OWN=set-by-me >> ~/.ssh/environment").returncode == 0
    assert world.ssh("cvm", 'echo "$MY_OWN"').stdout.strip() == "set-by-me"
    # systemd got writable cgroups of its own (the server remounted them from the host), and no
    # process of the container holds CAP_SYS_ADMIN, not even in its bounding set: not systemd and
    # what it starts, not the agent and the rest of what `docker exec` starts (which get the
    # container's capabilities whatever PID 1 dropped, and where `sudo` would give them back).
    r = world.ssh("cvm", "grep -h CapBnd /proc/1/status /proc/self/status; "
                         "awk '$(NF-2) ~ /^cgroup/ && $5 ~ /^.sys.fs.cgroup/ {print $6}' /proc/self/mountinfo")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [int(line.split()[1], 16) >> 21 & 1 for line in lines[:2]] == [0, 0], r.stdout
    assert lines[2:] and all(options.split(",")[0] == "rw" for options in lines[2:]), r.stdout
    listing = world.engine.docker("exec", world.container("cvm")["Id"], "sh", "-c",
                                  "for s in /proc/[0-9]*/status; do grep -H -e ^Name -e ^CapBnd $s; done").stdout
    bounding = re.findall(r"CapBnd:\s*([0-9a-f]+)", listing)
    assert len(bounding) >= 5 and "Name:\tld.so" in listing, listing  # systemd's, sshd, the agent, this shell
    assert [b for b in bounding if int(b, 16) >> 21 & 1] == [], listing
    info = world.container("cvm")["HostConfig"]
    assert info["CgroupnsMode"] == "private" and not info.get("CapAdd") and not info.get("Privileged")
    shown = world.show("cvm")
    assert "OpenSSH" in shown["ssh_server_version"]
    assert shown["diagnostics"] == []
    out = world.alice.ok("workspaces", "show", "cvm").out
    assert "image:" in out and "(CVM: systemd as PID 1)" in out
    assert "openssh (" in out and "OpenSSH" in out, out


def _x_client_env(world: World) -> Iterator[dict[str, str]]:
    if not (shutil.which("Xvfb") and shutil.which("xauth")):
        pytest.skip("needs Xvfb and xauth on the client (scripts/setup installs xvfb, xauth)")
    cookie = os.urandom(16).hex()
    server_auth, client_auth = world.tmp / "xvfb.auth", world.tmp / "laptop.Xauthority"
    subprocess.run(["xauth", "-f", str(server_auth), "add", ":0", ".", cookie], check=True, capture_output=True)
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-auth", str(server_auth)],
                            pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().strip().decode()
        assert number.isdigit(), "Xvfb did not start"
        subprocess.run(["xauth", "-f", str(client_auth), "add", f":{number}", ".", cookie], check=True, capture_output=True)
        yield {**world.alice.env(), "DISPLAY": f":{number}", "XAUTHORITY": str(client_auth)}
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.fixture()
def x_client(world: World) -> Iterator[dict[str, str]]:
    yield from _x_client_env(world)


def test_ssh_x_sets_display_when_xauth_is_installed(world: World, x_client: dict[str, str]) -> None:
    r = world.ssh("cvm", 'echo "DISPLAY=$DISPLAY"; xauth list "$DISPLAY" | wc -l', "-X", env=x_client)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("DISPLAY=") and lines[0].endswith(":10.0"), r.stdout
    assert int(lines[1]) == 1, r.stderr  # sshd ran xauth to store the session's cookie
    assert "X11 forwarding request failed" not in r.stderr


def test_image_breaking_the_documented_settings_gets_diagnostics(world: World, x_client: dict[str, str]) -> None:
    world.create("broken", world.images["broken"], "--cvm")
    wait_for(lambda: len(world.show("broken")["diagnostics"]) >= 3, 30, what="the agent's diagnostics")
    diagnostics = world.show("broken")["diagnostics"]
    assert any("PermitUserEnvironment no" in d for d in diagnostics), diagnostics
    assert any(d.startswith("/etc/environment exists") for d in diagnostics), diagnostics
    assert any("X11Forwarding yes but xauth is not installed" in d for d in diagnostics), diagnostics
    out = world.alice.ok("workspaces", "show", "broken").out
    assert "warning:" in out and "install xauth" in out
    world.alice.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")
    r = world.ssh("broken", 'echo "DISPLAY=[$DISPLAY] WS=[$HATCHWAY_WORKSPACE_NAME]"', "-X", env=x_client)
    assert r.returncode == 0, r.stderr
    assert "X11 forwarding request failed on channel 0" in r.stderr
    # As the diagnostics say: no DISPLAY, and ~/.ssh/environment is not applied.
    assert r.stdout.strip() == "DISPLAY=[] WS=[]"


def _agent_host_pid(world: World, name: str) -> int | None:
    cid = world.container(name)["Id"]
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cgroup = Path(f"/proc/{entry}/cgroup").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cid in cgroup and b"hatchway" in argv and b"agent" in argv and b"hatchway.providers.docker_incontainer" not in argv:
            return int(entry)
    return None


def test_killed_agent_is_restarted(world: World) -> None:
    pid = _agent_host_pid(world, "slim")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: _agent_host_pid(world, "slim") not in (None, pid), 15, what="a new agent in the container")
    wait_for(lambda: world.ssh_works("slim"), 15, interval=0.2, what="SSH to slim after kill -9")
    world.timings["agent back after kill -9"] = time.monotonic() - started
    assert world.show("slim")["state"] == "running"


def test_home_volume_survives_stop_and_start(world: World) -> None:
    assert world.ssh("cvm", "echo kept > ~/survivor && sudo true 2>/dev/null; true").returncode == 0
    out = world.alice.ok("workspaces", "stop", "cvm").out
    assert out.strip() == "Stopped workspace cvm"
    assert world.container("cvm")["State"]["Running"] is False
    assert world.show("cvm")["state"] == "stopped"
    r = world.ssh("cvm", "true")
    assert r.returncode == 255 and 'workspace "cvm" is stopped' in r.stderr
    started = time.monotonic()
    world.alice.ok("workspaces", "start", "cvm")
    world.timings["start cvm (systemd boot)"] = time.monotonic() - started
    assert world.container("cvm")["State"]["Running"] is True
    # Same home, same host key (the pinned known_hosts entry still matches), OpenSSH again.
    wait_for(lambda: world.show("cvm")["ssh_mode"] == "openssh", 20, what="OpenSSH after the start")
    r = world.ssh("cvm", "cat ~/survivor; cat /proc/1/comm")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["kept", "systemd"]


def test_a_home_volume_of_another_uid_is_reowned_by_the_local_providers_rules(world: World) -> None:
    """The re-own walk (reown.py: ctypes' fchownat, /proc/self/fdinfo) runs inside the container on
    the bundled interpreter: a home whose files another uid owns (as after a restore by numeric
    owner) is the user's again at the next start, but for root's file and the device node."""
    old = unused_id(54321)
    home = f"/home/{world.owner}"
    cid = world.container("slim")["Id"]
    world.engine.docker("exec", cid, "sh", "-ec", (
        f"cd {home} && mkdir -p moved/sub && echo x > moved/sub/f && echo root > root-file && mknod disk b 7 0 && "
        f"find . -xdev ! -name root-file -exec chown -h {old}:{old} {{}} +"
    ))
    world.alice.ok("workspaces", "stop", "slim")
    world.alice.ok("workspaces", "start", "slim")
    r = world.ssh("slim", f"cd {home} && stat -c '%n %u:%g' . moved moved/sub/f .ssh/authorized_keys root-file disk && id -u && id -g")
    assert r.returncode == 0, r.stderr
    *entries, uid, gid = r.stdout.splitlines()
    assert entries == [
        f". {uid}:{gid}", f"moved {uid}:{gid}", f"moved/sub/f {uid}:{gid}", f".ssh/authorized_keys {uid}:{gid}",
        "root-file 0:0", f"disk {old}:{old}",
    ]
    log = world.server.log()
    assert re.search(
        rf"workspace {world.owner}/slim: re-owned \d+ entries of {home} from uid {old} gid {old} to its Unix user "
        rf"{world.owner} \(uid {uid} gid {gid}\): they belonged to another uid, as {re.escape(MOVED_WHY)}\n", log
    ), log[-3000:]
    assert (
        f"workspace {world.owner}/slim: left 1 device nodes of another uid as they were, not given to its Unix user "
        f"{world.owner}: the owner of a device node can read and write the device (a disk, a terminal); remove them, "
        f"or chown one by hand if the user is to have it: {home}/disk\n"
    ) in log
    world.engine.docker("exec", world.container("slim")["Id"], "rm", "-rf", f"{home}/moved", f"{home}/root-file", f"{home}/disk")


def test_killed_server_takes_its_agents_along_and_its_containers_back(world: World) -> None:
    assert _agent_host_pid(world, "slim") is not None
    world.server.stop(signal.SIGKILL)
    # The agent's stdin was the server's connection to the engine: it ends with the server.
    wait_for(lambda: _agent_host_pid(world, "slim") is None, 15, what="the agent to end with its server")
    assert world.container("slim")["State"]["Running"] is True
    # Pretend the server's Python changed meanwhile: the running containers mount a runtime
    # that is not the current one any more, and must be restarted to get it.
    key = world.server.data_dir / "docker" / "agent-runtime" / "runtime" / "KEY"
    real = key.read_text()
    key.write_text("stale\n")
    try:
        world.server.start()
        for name in ("slim", "cvm"):
            wait_for(lambda n=name: world.ssh_works(n), 60, interval=0.5, what=f"{name} back after kill -9 of the server")
    finally:
        key.write_text(real)
    assert world.server.log().count("it runs an older agent runtime") >= 2
    assert world.ssh("cvm", "cat ~/survivor").stdout.strip() == "kept"


def test_server_restart_stops_containers_and_brings_running_workspaces_back(world: World) -> None:
    world.server.stop()
    for name in ("slim", "cvm", "broken"):
        assert world.container(name)["State"]["Running"] is False, name
    started = time.monotonic()
    world.server.start()
    for name in ("slim", "cvm"):
        wait_for(lambda n=name: world.ssh_works(n), 60, interval=0.5, what=f"{name} back after the server restart")
    world.timings["slim and cvm back after a server restart"] = time.monotonic() - started
    assert world.ssh("cvm", "cat ~/survivor").stdout.strip() == "kept"


def test_what_an_image_lacks_is_said_clearly(world: World) -> None:
    r = world.alice.run("workspaces", "create", "nope", "--provider", "dock", "--image", "hatchway-test/missing:1")
    assert r.code == 1
    assert r.err == (
        'hatchway: cannot use image "hatchway-test/missing:1": image "hatchway-test/missing:1" is not on the '
        "provider's Docker engine: build or pull it there, then try again (docker build / docker pull on the engine "
        "hatchway providers list shows site managers; without a registry see docs/images/openssh/build-offline)\n")
    r = world.alice.run("workspaces", "create", "x", "--image", world.images["slim"])
    assert r.code == 1 and "--image and --cvm are for docker workspaces" in r.err
    r = world.alice.run("workspaces", "create", "x", "--provider", "dock")
    assert r.code == 1 and "a docker workspace needs an image" in r.err

    r = world.alice.run("workspaces", "create", "noinit", "--provider", "dock", "--image", world.images["noinit"], "--cvm")
    world.ids["noinit"] = world.show("noinit")["id"]
    assert r.code == 1
    assert 'workspace "noinit" is failed' in r.err
    assert "the image has no /sbin/init: --cvm needs an image with systemd" in r.err

    r = world.alice.run("workspaces", "create", "noshell", "--provider", "dock", "--image", world.images["noshell"])
    world.ids["noshell"] = world.show("noshell")["id"]
    assert r.code == 1
    assert "the image has no shell (/bin/sh)" in r.err


def test_delete_removes_containers_and_volumes(world: World) -> None:
    for name in list(world.ids):
        ws_id = world.ids[name]
        label = f"hatchway.workspace.id={ws_id}"
        assert world.engine.ids("volume", label)
        world.alice.ok("workspaces", "delete", name, "-y")
        assert world.engine.ids("container", label) == []
        assert world.engine.ids("volume", label) == []
        assert not (world.server.data_dir / "docker" / "workspaces" / ws_id).exists()
        del world.ids[name]
    assert world.engine.ids("container", "hatchway.managed=true") == []
