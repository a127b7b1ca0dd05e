"""Three server replicas on one PostgreSQL behind Debian's nginx, driven with real OpenSSH.

Placement is forced with test-only nginx servers (tests.helpers.nginx.placement_config): on each
port, clients, agent control channels and agent dial-backs go to chosen replicas, so every
combination of (client replica, agent replica, dial-back replica) is exercised. The failure test
uses the documented configuration (deploy/nginx/hatchway.conf) as written.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.loadgen import run_load_sync
from tests.helpers import postgres
from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.nginx import Nginx, example_config, placement_config, why_cannot_run
from tests.helpers.server import RunningServer, api, free_port, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(why_cannot_run() is not None, reason=str(why_cannot_run())),
]

REPLICAS = 3
PAIRS = list(itertools.product(range(REPLICAS), repeat=2))  # (agent replica, dial-back replica)


@dataclass
class Fleet:
    tmp: Path
    db_url: str
    servers: list[RunningServer]
    ids: list[str]
    nginx: Nginx
    lb_url: str  # the documented configuration, round robin over all replicas
    agent_urls: dict[tuple[int, int], str]  # (a, d) -> port routing control to a, streams to d
    client_urls: list[str]  # c -> port routing clients to replica c
    alice: Cli
    bob: list[Cli]  # bob logged in through client port c
    bob_token: str
    ssh_configs: list[Path]
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    agent_tokens: dict[str, str] = field(default_factory=dict)

    def ssh(self, c: int, host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_configs[c]), "-o", "BatchMode=yes", f"hatchway.{host}", command],
            capture_output=True, env=self.bob[c].env(), timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def live_session(self, c: int, host: str) -> subprocess.Popen[bytes]:
        live = subprocess.Popen(
            ["ssh", "-F", str(self.ssh_configs[c]), "-o", "BatchMode=yes", f"hatchway.{host}", "echo started; sleep 120"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=self.bob[c].env(),
        )
        assert live.stdout is not None and live.stdout.readline() == b"started\n", live.stderr.read() if live.stderr else ""
        return live

    def workspace(self, name: str) -> dict:
        return self.bob[0].ok("workspaces", "show", name, "--json").json()

    def api(self, replica: int | None = None):  # type: ignore[no-untyped-def]
        """bob's API client, through the balancer or straight to one replica."""
        return api(self.lb_url if replica is None else self.servers[replica].url, self.bob_token)

    def create_workspace(self, name: str) -> None:
        with self.api() as c:
            r = c.post("/workspaces", json={"name": name, "provider": "byo"})
            r.raise_for_status()
            self.agent_tokens[name] = r.json()["agent_token"]

    def connections(self, workspace: str) -> list[dict]:
        with self.api() as c:
            return c.get("/connections", params={"workspace": workspace}).json()

    def start_agent(self, name: str, url: str) -> AgentProcess:
        agent = AgentProcess(url, self.agent_tokens[name], self.tmp / f"{name}-home")
        agent.start()
        self.agents[name] = agent
        return agent

    def psql(self, query: str) -> str:
        return subprocess.run(
            ["psql", self.db_url, "-tAc", query], capture_output=True, text=True, check=True, timeout=30
        ).stdout.strip()


def _new_database(pg_cluster: object) -> str:
    if isinstance(pg_cluster, str):
        pytest.skip("the scale-out tests start their own PostgreSQL database (not with HATCHWAY_TEST_PG_URL)")
    return pg_cluster.new_database()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fleet(pg_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    if os.geteuid() != 0:
        pytest.skip("nginx and PostgreSQL for the scale-out tests need root (run scripts/test as root)")
    tmp = tmp_path_factory.mktemp("fleet")
    db_url = _new_database(pg_cluster)
    servers = [RunningServer(tmp / f"replica{i}", db_url=db_url) for i in range(REPLICAS)]
    lb_port = free_port()
    agent_ports = {pair: free_port() for pair in PAIRS}
    client_ports = [free_port() for _ in range(REPLICAS)]
    routes = [(0, a, d, p) for (a, d), p in agent_ports.items()] + [(c, c, c, p) for c, p in enumerate(client_ports)]
    nginx = Nginx(
        tmp / "nginx",
        example_config(lb_port, [s.port for s in servers]),
        placement_config([s.port for s in servers], routes),
    )
    started: list[RunningServer] = []
    f: Fleet | None = None
    try:
        servers[0].start()
        started.append(servers[0])
        for s in servers[1:]:  # every replica needs the deployment secret of the first
            s.data_dir.mkdir(mode=0o700, parents=True)
            shutil.copy2(servers[0].data_dir / "deployment.secret", s.data_dir / "deployment.secret")
            s.start()
            started.append(s)
        nginx.start(lb_port)
        ids = []
        for s in servers:
            with api(s.url) as c:
                ids.append(c.get("/deployment").json()["replica"])
        assert len(set(ids)) == REPLICAS
        lb_url = f"http://127.0.0.1:{lb_port}"
        alice = Cli(tmp / "alice")
        alice.login(lb_url, "alice", "alice-password-1", first=True)
        alice.ok("providers", "create", "byo", "--kind", "manual")
        alice.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password-1\n")
        bob = [Cli(tmp / f"bob{c}") for c in range(REPLICAS)]
        for c, cli in enumerate(bob):
            cli.login(f"http://127.0.0.1:{client_ports[c]}", "bob", "bob-password-1")
        with api(lb_url) as c:
            bob_token = c.post("/auth/login", json={"username": "bob", "password": "bob-password-1"}).json()["token"]
        f = Fleet(
            tmp, db_url, servers, ids, nginx, lb_url,
            {pair: f"http://127.0.0.1:{p}" for pair, p in agent_ports.items()},
            [f"http://127.0.0.1:{p}" for p in client_ports], alice, bob, bob_token,
            [tmp / f"ssh_config{c}" for c in range(REPLICAS)],
        )
        for a, d in PAIRS:
            f.create_workspace(f"w{a}{d}")
            f.start_agent(f"w{a}{d}", f.agent_urls[(a, d)])
        for a, d in PAIRS:
            wait_for(lambda: f.workspace(f"w{a}{d}")["agent_replica"] == ids[a], 30, what=f"agent of w{a}{d} on replica {a}")
        for c in range(REPLICAS):
            bob[c].ok("config-ssh", "--ssh-config", str(f.ssh_configs[c]), "-y")
        yield f
    finally:
        if f is not None:
            for agent in f.agents.values():
                if agent.proc is not None:
                    agent.stop()
        nginx.stop()
        for s in started:
            s.stop()


def _handovers(fleet: Fleet, d: int, origin: int) -> int:
    return fleet.servers[d].log().count(f"handed over to replica {fleet.ids[origin]}")


def test_every_placement_of_client_agent_and_dial_back_carries_ssh(fleet: Fleet) -> None:
    for (a, d), c in itertools.product(PAIRS, range(REPLICAS)):
        before = _handovers(fleet, d, c)
        r = fleet.ssh(c, f"w{a}{d}", f"echo client={c} agent={a} dial={d}; head -c 3000000 /dev/zero | wc -c")
        assert r.returncode == 0, (c, a, d, r.stderr.decode())
        assert r.stdout == f"client={c} agent={a} dial={d}\n3000000\n".encode()
        # The dial-back crossed replicas exactly when its replica is not the client's.
        assert _handovers(fleet, d, c) == before + (1 if d != c else 0), (c, a, d)
        def newest(name: str = f"w{a}{d}") -> dict:
            return max(fleet.connections(name), key=lambda row: row["started_at"])

        wait_for(lambda: newest()["result"] == "closed", 10, what="the connection row to close")
        assert newest()["replica"] == fleet.ids[c], (c, a, d, newest())
