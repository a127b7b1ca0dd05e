"""Hatchway as it runs in production: behind a TLS-terminating reverse proxy (Debian's nginx with
the documented configuration and ``listen ... ssl``), with an ``https://`` access URL.

The CLI logs in over HTTPS, the agent dials its control channel and dial-backs over ``wss://``,
and ``hatchway proxy`` (run by the real OpenSSH client) carries SSH over ``wss://``, each
trusting the deployment's own CA through ``SSL_CERT_FILE``. Without that CA, each refuses the
server and says what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli, TrustingCli
from tests.helpers.nginx import Nginx, tls_config, why_cannot_run
from tests.helpers.server import RunningServer, free_port, wait_for
from tests.helpers.tlscerts import write_ca_and_certificate

WORKSPACE = "tls-ws"


@dataclass
class Deployment:
    url: str
    nginx: Nginx
    bob: TrustingCli
    ssh_config: Path
    agent: AgentProcess


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if os.geteuid() != 0:
        pytest.skip("nginx needs root here (run scripts/test as root)")
    if why := why_cannot_run():
        pytest.fail(why)  # scripts/setup installs nginx as root: missing means the setup is broken
    tmp = tmp_path_factory.mktemp("tls")
    ca, cert, key = write_ca_and_certificate(tmp)
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    server = RunningServer(tmp / "data", extra_env={"HATCHWAY_ACCESS_URL": url, "HATCHWAY_TRUSTED_PROXIES": "127.0.0.1"})
    nginx = Nginx(tmp / "nginx", tls_config(port, [server.port], cert, key))
    agent: AgentProcess | None = None
    try:
        server.start()
        nginx.start(port)
        alice = TrustingCli(tmp / "alice", ca)
        alice.login(url, "alice", "alice-password-1", first=True)
        alice.ok("providers", "create", "byo", "--kind", "manual")
        alice.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password-1\n")
        bob = TrustingCli(tmp / "bob", ca)
        assert bob.login(url, "bob", "bob-password-1").code == 0
        out = bob.ok("workspaces", "create", WORKSPACE, "--provider", "byo").out
        assert f"--url {url}" in out  # the agent command names the https access URL
        token = out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]
        agent = AgentProcess(url, token, tmp / "ws-home", extra_env={"SSL_CERT_FILE": str(ca)})
        agent.start()
        wait_for(lambda: bob.ok("workspaces", "show", WORKSPACE, "--json").json()["host_keys"], 30,
                 what=f"the agent to connect over wss:// (log: {agent.log_path})")
        config = tmp / "ssh_config"
        bob.ok("config-ssh", "--ssh-config", str(config), "-y")
        yield Deployment(url, nginx, bob, config, agent)
    finally:
        if agent is not None and agent.proc is not None:
            agent.stop()
        nginx.stop()
        if server.proc is not None:
            server.stop()


def _ssh(d: Deployment, cli: Cli, command: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh", "-F", str(d.ssh_config), "-o", "BatchMode=yes", f"hatchway.{WORKSPACE}", command],
        input=stdin, capture_output=True, env=cli.env(), timeout=60,
    )


def test_ssh_scp_and_bulk_data_travel_over_wss_through_the_tls_proxy(tls: Deployment) -> None:
    r = _ssh(tls, tls.bob, "echo over-tls")
    assert (r.returncode, r.stdout) == (0, b"over-tls\n"), r.stderr.decode()
    payload = os.urandom(3_000_000)
    r = _ssh(tls, tls.bob, "sha256sum | cut -d' ' -f1", stdin=payload)
    assert r.stdout.decode().strip() == hashlib.sha256(payload).hexdigest(), r.stderr.decode()
    r = _ssh(tls, tls.bob, "head -c 3000000 /dev/zero | wc -c")
    assert r.stdout == b"3000000\n", r.stderr.decode()
    # Every byte went through nginx's TLS listener (the only one on that port): its access log
    # has the three streams' upgrades and the agent's dial-backs (each logged once it closed).
    def logged() -> str:
        return (tls.nginx.dir / "access.log").read_text()

    def streams() -> tuple[int, int]:
        text = logged()
        return (len(re.findall(rf'"GET /api/v1/workspaces/{WORKSPACE}/ssh HTTP/1.1" 101 \d+ "-" "hatchway-proxy/', text)),
                len(re.findall(r'"GET /api/v1/agent/streams/[0-9a-f]+ HTTP/1.1" 101 \d+ "-" "hatchway-agent/', text)))

    wait_for(lambda: min(streams()) >= 3, 10, what=f"nginx to log the three streams at both ends (so far {streams()})")


def test_a_client_that_does_not_trust_the_certificate_is_told_why(tls: Deployment) -> None:
    stranger = TrustingCli(tls.bob.home, None)  # bob's own login and ssh config, without the CA
    r = _ssh(tls, stranger, "echo should-not-run")
    err = r.stderr.decode()
    assert r.returncode == 255 and r.stdout == b""
    assert "certificate" in err and "SSL_CERT_FILE" in err, err
    # The CLI says the same for its API calls.
    shown = stranger.run("workspaces", "list")
    assert shown.code != 0 and "certificate" in shown.err and "SSL_CERT_FILE" in shown.err, shown.err


def test_an_agent_that_does_not_trust_the_certificate_keeps_retrying_and_says_why(tls: Deployment) -> None:
    untrusting = AgentProcess(tls.url, tls.agent.token, tls.agent.home.parent / "untrusting-home",
                              extra_env={"SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt"})  # the system store only
    untrusting.start()
    try:
        hint = f"the TLS certificate of the Hatchway server at {tls.url} is not trusted here"
        wait_for(lambda: hint in untrusting.log(), 30, what="the agent to explain the refused certificate")
        assert "SSL_CERT_FILE" in untrusting.log()
        assert untrusting.proc is not None and untrusting.proc.poll() is None  # it keeps retrying
    finally:
        untrusting.stop()
    r = _ssh(tls, tls.bob, "echo still-served")  # the trusted agent was never disturbed
    assert r.stdout == b"still-served\n", r.stderr.decode()
