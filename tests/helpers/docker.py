"""A Docker engine and locally built images for the docker provider's tests.

No registry is reachable from the test machines, so nothing is pulled: the engine is Debian's
``dockerd`` (package docker.io), started here on its own socket and data root when none is given
(``HATCHWAY_TEST_DOCKER_HOST`` names an engine to use instead), and every image is built from a
debootstrapped Debian base by ``docs/images/openssh/build-offline``. That base is cached in the
engine's data root (its tag carries a hash of the recipe): the first run on a machine spends
about 100 s on debootstrap, later runs seconds.

Containers have no network but their own loopback (``--docker-network none``), so the engine needs
no bridge and no iptables: ``dockerd --bridge=none --iptables=false``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD_OFFLINE = REPO / "docs" / "images" / "openssh" / "build-offline"
DATA_ROOT = Path("/var/lib/hatchway-test-docker")
EXEC_ROOT = Path("/run/hatchway-test-docker")
SOCKET = EXEC_ROOT / "docker.sock"
LOG = Path("/var/log/hatchway-test-dockerd.log")


def docker_cli() -> str | None:
    return shutil.which("docker")


def unavailable_reason() -> str | None:
    """Why these tests cannot run here (None: they can try)."""
    if os.environ.get("HATCHWAY_TEST_DOCKER_HOST"):
        return None if docker_cli() else "the docker CLI is missing: scripts/setup installs docker.io"
    if os.geteuid() != 0:
        return "needs root: starts dockerd, and the docker provider enters containers' network namespaces"
    for tool, package in (("dockerd", "docker.io"), ("docker", "docker.io"), ("debootstrap", "debootstrap")):
        if not shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"):
            return f"{tool} is missing: scripts/setup installs the Debian package {package}"
    return None


@dataclass
class Engine:
    host: str
    proc: subprocess.Popen[bytes] | None = None  # set when these tests started dockerd
    created_images: list[str] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, input: str | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        cli = docker_cli()
        assert cli
        r = subprocess.run([cli, *args], input=input, capture_output=True, text=True, timeout=timeout, env=self.env())
        if check and r.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def ping(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=10, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def inspect(self, kind: str, ref: str) -> dict | None:
        r = self.docker(kind, "inspect", ref, check=False)
        return json.loads(r.stdout)[0] if r.returncode == 0 else None

    def ids(self, kind: str, label: str) -> list[str]:
        if kind == "volume":
            out = self.docker("volume", "ls", "-q", "--filter", f"label={label}").stdout
        else:
            out = self.docker("ps", "-aq", "--filter", f"label={label}").stdout
        return out.split()

    def build(self, tag: str, dockerfile: str) -> None:
        """Build an image from a Dockerfile given as text (no context), remembered for cleanup."""
        self.docker("build", "-q", "-t", tag, "-", input=dockerfile, timeout=600)
        self.created_images.append(tag)

    def remove_images(self) -> None:
        for tag in reversed(self.created_images):
            self.docker("rmi", "-f", tag, check=False)
        self.created_images.clear()
        self.docker("image", "prune", "-f", check=False)  # dangling layers of our builds

    def stop(self) -> None:
        """Stop the dockerd these tests started, unless another run's workspaces still use it."""
        if self.proc is not None and self.proc.poll() is None and self.ids("container", "hatchway.managed=true"):
            return
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_engine() -> Engine:
    """The engine to test with: HATCHWAY_TEST_DOCKER_HOST, one already answering on our socket,
    or a dockerd started now (stopped again by :meth:`Engine.stop`). Raises RuntimeError saying
    exactly why when dockerd cannot run on this machine."""
    given = os.environ.get("HATCHWAY_TEST_DOCKER_HOST")
    if given:
        engine = Engine(given)
        if not engine.ping():
            raise RuntimeError(f"HATCHWAY_TEST_DOCKER_HOST={given} does not answer")
        return engine
    engine = Engine(f"unix://{SOCKET}")
    if SOCKET.exists() and engine.ping():
        return engine
    EXEC_ROOT.mkdir(parents=True, exist_ok=True)
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    dockerd = shutil.which("dockerd", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert dockerd
    argv = [
        dockerd,
        "--host", engine.host,
        "--data-root", str(DATA_ROOT),
        "--exec-root", str(EXEC_ROOT / "exec"),
        "--pidfile", str(EXEC_ROOT / "dockerd.pid"),
        # Containers run with --network none: no bridge, no NAT rules, nothing leaves the machine.
        "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        "--userland-proxy=false",
    ]
    if LOG.exists() and LOG.stat().st_size > 8 * 1024 * 1024:
        LOG.replace(LOG.with_name(LOG.name + ".1"))
    log = open(LOG, "ab")
    offset = log.tell()
    proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    log.close()
    engine.proc = proc
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = LOG.read_bytes()[offset:].decode(errors="replace").strip().splitlines()[-8:]
            raise RuntimeError(f"dockerd exited with status {proc.returncode}: " + " | ".join(tail))
        if SOCKET.exists() and engine.ping():
            return engine
        time.sleep(0.25)
    engine.stop()
    raise RuntimeError(f"dockerd did not answer within 60 s; see {LOG}")


@dataclass
class Images:
    base: str
    openssh: str  # the documented Dockerfile, built on the debootstrapped base
    build_seconds: float


def build_openssh_image(engine: Engine, tag: str) -> Images:
    started = time.monotonic()
    r = subprocess.run(
        [str(BUILD_OFFLINE), tag], capture_output=True, text=True, timeout=1800, env=engine.env(),
    )
    if r.returncode != 0:
        raise AssertionError(f"build-offline failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    engine.created_images.append(tag)
    return Images(base=r.stdout.strip().splitlines()[-1], openssh=tag, build_seconds=time.monotonic() - started)
