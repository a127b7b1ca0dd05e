"""Port 22 (SPEC 3.3): with Debian's real sshd on the workspace's own port 22 the agent forwards
to it byte for byte; with a non-SSH listener there it falls back to the built-in server.

The workspace is a network namespace of its own, reaching the server only through a veth pair
with link-local addresses; the agent runs inside it as an unprivileged user."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.netns import Namespace, TempUser, needs_root_reason, run
from tests.helpers.server import RunningServer, wait_for

pytestmark = pytest.mark.skipif(needs_root_reason() is not None, reason=str(needs_root_reason()))

SSHD_CONFIG = """\
Port 22
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid}
PermitUserEnvironment yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile .ssh/authorized_keys
UsePAM no
X11Forwarding no
"""

NOT_SSH = """
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 22)); s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"HTTP/1.1 400 Bad Request\\r\\n\\r\\n")
    c.close()
"""


class Box:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ns = Namespace()
        self.user = TempUser()
        self.procs: list[subprocess.Popen[bytes]] = []
        # The server listens on the host end of the veth: the namespace's only way out.
        self.server = RunningServer(tmp / "data", host=self.ns.host_ip)

    def spawn(self, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def start_agent(self, token: str, extra_env: dict[str, str] | None = None) -> AgentProcess:
        """The workspace's agent, inside the namespace as the workspace user, forwarding to port 22."""
        agent = AgentProcess(
            self.server.url, token, self.user.home, ssh_port=22, extra_env=extra_env,
            argv_prefix=[*self.ns.prefix(), *self.user.prefix()],
        )
        agent.log_path = self.tmp / "agent.log"
        agent.start()
        self.procs.append(agent.proc)  # type: ignore[arg-type]
        return agent

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
        self.user.close()
        self.ns.close()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    b = Box(tmp_path)
    try:
        yield b
    finally:
        b.close()


def test_forwards_to_real_openssh_then_falls_back(box: Box) -> None:
    box.server.start()
    try:
        alice = Cli(box.tmp / "alice")
        alice.login(box.server.url, "alice", "alice-password", first=True)
        alice.ok("providers", "create", "byo", "--kind", "manual")
        out = alice.ok("workspaces", "create", "box", "--provider", "byo", "--env", "FOO=from-image").out
        token = out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]

        host_key = box.tmp / "ssh_host_ed25519_key"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        cfg = box.tmp / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(host_key=host_key, pid=box.tmp / "sshd.pid"))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = box.spawn(*box.ns.prefix(), "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg))
        wait_for(lambda: box.ns.exec("ss", "-ltn", "sport = :22").stdout.count("LISTEN") >= 1, 10, what="sshd listening")

        agent = box.start_agent(token)

        def ws() -> dict:
            return alice.ok("workspaces", "show", "box", "--json").json()

        wait_for(lambda: ws()["agent_connected"] and ws()["ssh_mode"] == "openssh", 30, what="agent to report openssh")
        info = ws()
        assert info["os_user"] == box.user.name
        assert info["ssh_server_version"].startswith("OpenSSH_")
        sshd_pub = (box.tmp / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        assert any(k.split()[:2] == sshd_pub for k in info["host_keys"]), "port-22 server's host key reported"
        shown = [line.split(None, 1) for line in alice.ok("workspaces", "show", "box").out.splitlines()]
        assert ["ssh:", f"openssh ({info['ssh_server_version']})"] in shown

        ssh_config = box.tmp / "ssh_config"
        alice.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")

        def ssh(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", *args],
                capture_output=True, text=True, env=alice.env(), timeout=60,
            )

        r = ssh("-v", "hatchway.box", "id -un; echo $FOO; echo $HATCHWAY_WORKSPACE_NAME")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [box.user.name, "from-image", "box"]
        assert re.search(r"remote software version OpenSSH_\d", r.stderr), "the client reached the real OpenSSH"

        # sshd goes away; a listener that is not SSH takes port 22: the built-in server answers.
        sshd.kill()
        sshd.wait()
        wait_for(lambda: "LISTEN" not in box.ns.exec("ss", "-ltn", "sport = :22").stdout, 10, what="sshd gone")
        box.spawn(*box.ns.prefix(), "python3", "-c", NOT_SSH)
        wait_for(lambda: "LISTEN" in box.ns.exec("ss", "-ltn", "sport = :22").stdout, 10, what="fake listener")
        alice.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
        r = ssh("-v", "hatchway.box", "id -un; echo $FOO")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == [box.user.name, "from-image"]
        assert "remote software version OpenSSH_compatible Hatchway_" in r.stderr, "fell back to the built-in server"
        assert "not an SSH server" in agent.log()
        wait_for(lambda: any("not an SSH server" in d for d in ws()["diagnostics"]), 40, what="the warning reported")
        assert ws()["ssh_mode"] == "built-in" and ws()["ssh_server_version"] is None
        rows = alice.ok("audit", "connections", "--json").json()
        assert [c["mode"] for c in rows[:2]] == ["built-in", "openssh"]
    finally:
        box.server.stop()


def test_an_sshd_that_starts_after_the_agent_is_reached_without_running_config_ssh_again(box: Box) -> None:
    """systemd starts sshd after the agent (or someone runs it by hand later). Its host keys
    are on disk before it answers: the agent reports them, config-ssh pins them beside the
    built-in server's, and when sshd comes up, ssh reaches it with no new host-key prompt."""
    box.server.start()
    try:
        alice = Cli(box.tmp / "alice")
        alice.login(box.server.url, "alice", "alice-password", first=True)
        alice.ok("providers", "create", "byo", "--kind", "manual")
        out = alice.ok("workspaces", "create", "late", "--provider", "byo").out
        token = out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]

        etc = box.user.home / "etc-ssh"  # readable by the agent's user, as /etc/ssh is
        etc.mkdir(mode=0o755)
        host_key = etc / "ssh_host_ed25519_key"
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key))
        cfg = etc / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(host_key=host_key, pid=box.tmp / "sshd.pid"))
        sshd_key = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])

        box.start_agent(token, {"HATCHWAY_SSHD_CONFIG": str(cfg)})

        def ws() -> dict:
            return alice.ok("workspaces", "show", "late", "--json").json()

        wait_for(lambda: ws()["agent_connected"] and sshd_key in ws()["host_keys"], 30,
                 what="the agent to report sshd's key from disk")
        assert ws()["ssh_mode"] == "built-in" and len(ws()["host_keys"]) == 2  # its own, and sshd's
        ssh_config = box.tmp / "ssh_config"
        alice.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")

        def ssh(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "-v", *args],
                capture_output=True, text=True, env=alice.env(), timeout=60, check=False,
            )

        r = ssh("hatchway.late", "id -un")
        assert (r.returncode, r.stdout) == (0, box.user.name + "\n"), r.stderr
        assert "remote software version OpenSSH_compatible Hatchway_" in r.stderr

        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        box.spawn(*box.ns.prefix(), "/usr/sbin/sshd", "-D", "-e", "-f", str(cfg))
        wait_for(lambda: "LISTEN" in box.ns.exec("ss", "-ltn", "sport = :22").stdout, 10, what="sshd listening")
        r = ssh("hatchway.late", "id -un")  # no config-ssh in between
        assert (r.returncode, r.stdout) == (0, box.user.name + "\n"), r.stderr
        assert re.search(r"remote software version OpenSSH_\d", r.stderr), "reached the sshd that started late"
        assert "REMOTE HOST IDENTIFICATION HAS CHANGED" not in r.stderr
        wait_for(lambda: ws()["ssh_mode"] == "openssh", 40, what="the agent to report openssh")
        assert sshd_key in ws()["host_keys"]
        # Its diagnostics read the same config (PermitUserEnvironment yes there): nothing to say.
        # The machine's own /etc/ssh/sshd_config leaves it at "no", which would be reported.
        assert not any("PermitUserEnvironment" in d for d in ws()["diagnostics"]), ws()["diagnostics"]
    finally:
        box.server.stop()
