"""Everything the benchmark talks to, started on loopback and torn down on every path.

- one ``hatchway server`` (SQLite in a temporary data dir);
- Debian's ``sshd`` on a free 127.0.0.1 port with its own host key: the workspace's "port 22"
  and the direct baseline at the same time;
- workspace ``ossh``: an agent started with ``--ssh-port <that port>`` (forwards to sshd);
- workspace ``builtin``: an agent started with ``--ssh-port 0`` (the built-in server);
- one client with its own HOME and HATCHWAY_CONFIG_DIR, a ``config-ssh`` file for the two
  workspaces and a hand-written one for the direct path, both using the platform key;
- where Debian's nginx is installed: the documented nginx configuration with TLS in front of
  the server (a private CA, trusted through ``SSL_CERT_FILE``), and a second client logged in
  through it, as production runs (``wss://``): the path :data:`OSSH_TLS`, to the ``ossh``
  workspace.

Every child runs in its own process group (``setsid`` / ``start_new_session``) and is ended by
its pid in ``close()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.measure import kill_group
from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli, TrustingCli
from tests.helpers.nginx import Nginx, tls_config
from tests.helpers.nginx import why_cannot_run as why_no_nginx
from tests.helpers.server import HATCHWAY, RunningServer, free_port, wait_for
from tests.helpers.tlscerts import write_ca_and_certificate

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
PermitRootLogin prohibit-password
PermitUserEnvironment yes
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
X11Forwarding no
PrintMotd no
UseDNS no
MaxStartups 200:30:400
MaxSessions 50
LogLevel ERROR
Subsystem sftp {sftp}
# The workspace's HOME, not root's real one: no ~/.bashrc of this machine's admin (pyenv, cargo)
# slows the shells sshd starts, so OpenSSH and the built-in server run the same shell startup.
SetEnv HOME={home}
"""

PASSWORD = "bench-password-1"
USER = "bench"

#: The three ways to reach a shell, as the table names them.
OSSH, BUILTIN, DIRECT = "hatchway-openssh", "hatchway-builtin", "direct"
#: OpenSSH-on-22 again, with the client reaching the server through nginx over TLS.
OSSH_TLS = "hatchway-openssh-tls"
PATH_LABELS = {OSSH: "Hatchway → OpenSSH", BUILTIN: "Hatchway → built-in", DIRECT: "direct OpenSSH",
               OSSH_TLS: "Hatchway over TLS (nginx) → OpenSSH"}


@dataclass
class Target:
    key: str
    config: Path
    host: str


def why_cannot_run() -> str | None:
    """None when this machine can run the benchmark, else what is missing."""
    if os.geteuid() != 0:
        return "the benchmark runs sshd and agents as root (the workspace user is root); run it as root"
    for tool in (SSHD, shutil.which("ssh"), shutil.which("sftp"), HATCHWAY):
        if not tool or not os.path.exists(tool):
            return f"{tool or 'ssh/sftp'} missing: scripts/setup installs openssh-server and openssh-client"
    return None


class World:
    def __init__(self, keep: bool = False) -> None:
        self.keep = keep  # keep the temporary directory (logs) afterwards
        self.tmp = Path(tempfile.mkdtemp(prefix="hatchway-bench-"))
        # Files that SFTP moves live in tmpfs, so the disk is not what we measure.
        shm = Path("/dev/shm")
        self.files = Path(tempfile.mkdtemp(prefix="hatchway-bench-", dir=shm if shm.is_dir() else self.tmp))
        self.server = RunningServer(self.tmp / "data")
        self.client = Cli(self.tmp / "client")
        self.agents: dict[str, AgentProcess] = {}
        self.sshd: subprocess.Popen | None = None
        self.sshd_port = 0
        self.key_path = self.client.home / "platform_key"
        self.hatchway_config = self.client.home / "ssh_config"
        self.direct_config = self.client.home / "ssh_config_direct"
        self.workspaces: dict[str, dict] = {}
        self.targets: dict[str, Target] = {}
        self.token = ""
        self.nginx: Nginx | None = None
        self.tls_client: TrustingCli | None = None
        self.tls_missing: str | None = None  # why there is no TLS front, if there is none

    # ---- start ------------------------------------------------------------------------------

    def start(self) -> None:
        self.server.start(timeout=60)
        self.client.login(self.server.url, USER, PASSWORD, first=True)
        self.token = json.loads((self.client.config_dir / "session.json").read_text())["token"]
        self.client.ok("providers", "create", "byo", "--kind", "manual")
        tokens = {}
        for name in ("ossh", "builtin"):
            out = self.client.ok("workspaces", "create", name, "--provider", "byo").out
            tokens[name] = out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]
        self._start_sshd()
        for name, port in (("ossh", self.sshd_port), ("builtin", 0)):
            agent = AgentProcess(self.server.url, tokens[name], self.tmp / f"ws-{name}", ssh_port=port,
                                 argv_prefix=["setsid"])
            self.agents[name] = agent
            agent.start()
        want = {"ossh": "openssh", "builtin": "built-in"}
        for name, mode in want.items():
            wait_for(lambda: self._ready(name, mode), 60, interval=0.2, what=f"agent of {name} ({mode})")
        self.client.ok("keys", "download", "--output", str(self.key_path))
        self.client.ok("config-ssh", "--ssh-config", str(self.hatchway_config), "-y")
        self._write_direct_config()
        self.targets = {
            OSSH: Target(OSSH, self.hatchway_config, "hatchway.ossh"),
            BUILTIN: Target(BUILTIN, self.hatchway_config, "hatchway.builtin"),
            DIRECT: Target(DIRECT, self.direct_config, "direct"),
        }
        self._start_tls_front()

    def _start_tls_front(self) -> None:
        self.tls_missing = why_no_nginx()
        if self.tls_missing:
            return
        d = self.tmp / "tls"
        d.mkdir()
        ca, cert, key = write_ca_and_certificate(d)
        port = free_port()
        self.nginx = Nginx(d / "nginx", tls_config(port, [self.server.port], cert, key))
        self.nginx.start(port)
        self.tls_client = TrustingCli(self.tmp / "client-tls", ca)
        self.tls_client.login(f"https://127.0.0.1:{port}", USER, PASSWORD)
        config = self.tls_client.home / "ssh_config"
        self.tls_client.ok("config-ssh", "--ssh-config", str(config), "-y")
        self.targets[OSSH_TLS] = Target(OSSH_TLS, config, "hatchway.ossh")

    def _ready(self, name: str, mode: str) -> bool:
        r = self.client.run("workspaces", "show", name, "--json")
        if r.code != 0:
            return False
        ws = json.loads(r.out)
        if ws.get("agent_connected") and ws.get("ssh_mode") == mode and ws.get("host_keys"):
            self.workspaces[name] = ws
            return True
        return False

    def _start_sshd(self) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        host_key = self.tmp / "sshd_host_ed25519_key"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True,
                       capture_output=True, timeout=30)
        self.sshd_port = free_port()
        cfg = self.tmp / "sshd_config"
        cfg.write_text(SSHD_CONFIG.format(
            port=self.sshd_port, host_key=host_key, pid_file=self.tmp / "sshd.pid",
            authorized_keys=self.tmp / "ws-ossh" / ".ssh" / "authorized_keys", home=self.tmp / "ws-ossh",
            sftp=SFTP_SERVER if os.path.exists(SFTP_SERVER) else "internal-sftp",
        ))
        with open(self.tmp / "sshd.log", "ab") as log:
            self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

        def listening() -> bool:
            if self.sshd is not None and self.sshd.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.tmp / 'sshd.log').read_text(errors='replace')}")
            import socket
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.sshd_port)) == 0

        wait_for(listening, 15, what="sshd to listen")

    def _write_direct_config(self) -> None:
        pub = (self.tmp / "sshd_host_ed25519_key.pub").read_text().split()
        known = self.client.home / "known_hosts_direct"
        known.write_text(f"[127.0.0.1]:{self.sshd_port} {pub[0]} {pub[1]}\n")
        self.direct_config.write_text(
            "Host direct\n"
            "  HostName 127.0.0.1\n"
            f"  Port {self.sshd_port}\n"
            "  User root\n"
            f"  IdentityFile {self.key_path}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known}\n"
            "  StrictHostKeyChecking yes\n"
        )

    # ---- use --------------------------------------------------------------------------------

    def env(self, target: str | None = None) -> dict[str, str]:
        """The client's environment; the TLS client's for :data:`OSSH_TLS`."""
        if target == OSSH_TLS and self.tls_client is not None:
            return self.tls_client.env()
        return self.client.env()

    def ssh_argv(self, target: Target, *args: str, program: str = "ssh", cipher: str | None = None) -> list[str]:
        """ssh/sftp to ``target`` with no connection sharing, so each run is a fresh connection."""
        argv = [program, "-F", str(target.config), "-o", "BatchMode=yes", "-o", "ControlMaster=no",
                "-o", "ControlPath=none", "-o", "LogLevel=ERROR"]
        if cipher:
            argv += ["-c", cipher]
        return [*argv, *args] if program == "sftp" else [*argv, target.host, *args]

    def pids(self) -> dict[str, int]:
        out = {"server": self.server.proc.pid} if self.server.proc else {}
        for name, agent in self.agents.items():
            if agent.proc is not None:
                out[f"agent-{name}"] = agent.proc.pid
        return out

    def alive(self) -> list[str]:
        """Names of the processes that should be running and are not."""
        dead = [n for n, a in self.agents.items() if a.proc is None or a.proc.poll() is not None]
        if self.server.proc is None or self.server.proc.poll() is not None:
            dead.append("server")
        if self.sshd is None or self.sshd.poll() is not None:
            dead.append("sshd")
        return dead

    def logs(self) -> str:
        parts = [f"--- server\n{self.server.log()[-4000:]}"]
        for name, agent in self.agents.items():
            parts.append(f"--- agent {name}\n{agent.log()[-4000:]}")
        return "\n".join(parts)

    # ---- stop -------------------------------------------------------------------------------

    def close(self, keep: bool | None = None) -> None:
        keep = self.keep if keep is None else keep
        for agent in self.agents.values():
            if agent.proc is not None:
                kill_group(agent.proc, grace=10)
        if self.sshd is not None:
            kill_group(self.sshd, grace=5)
        if self.nginx is not None:
            self.nginx.stop()
        if self.server.proc is not None:
            try:
                self.server.stop(timeout=15)
            finally:
                if self.server.proc.poll() is None:
                    self.server.proc.kill()
                    self.server.proc.wait()
        shutil.rmtree(self.files, ignore_errors=True)
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> World:
        try:
            self.start()
        except BaseException:
            self.close(keep=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(keep=self.keep or exc[0] is not None)


def settle(seconds: float = 0.3) -> None:
    """Let the previous connection's teardown (server log row, agent cleanup) finish."""
    time.sleep(seconds)
