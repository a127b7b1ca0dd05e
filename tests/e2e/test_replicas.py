"""Three server replicas on one PostgreSQL behind Debian's nginx, driven with real OpenSSH.

Placement is forced with test-only nginx servers (tests.helpers.nginx.placement_config): on each
port, clients, agent control channels and agent dial-backs go to chosen replicas, so every
combination of (client replica, agent replica, dial-back replica) is exercised. The failure test
uses the documented configuration (deploy/nginx/hatchway.conf) as written.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.loadgen import run_load_sync
from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.netns import pids_of_uid
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
    alice_token: str
    ssh_configs: list[Path]
    pg: object = None  # tests.helpers.postgres.TempPostgres: pause() and resume() for outages
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
        """Through the balancer, which skips a dead replica (bob's CLIs are pinned to one each)."""
        with self.api() as c:
            r = c.get(f"/workspaces/{name}")
            r.raise_for_status()
            return r.json()

    def api(self, replica: int | None = None):  # type: ignore[no-untyped-def]
        """bob's API client, through the balancer or straight to one replica."""
        return api(self.lb_url if replica is None else self.servers[replica].url, self.bob_token)

    def admin(self, replica: int):  # type: ignore[no-untyped-def]
        """alice (site manager) talking straight to one replica."""
        return api(self.servers[replica].url, self.alice_token)

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
        return psql(self.db_url, query)


def psql(db_url: str, query: str) -> str:
    return subprocess.run(["psql", db_url, "-tAc", query], capture_output=True, text=True, check=True, timeout=30).stdout.strip()


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
    # nginx on loopback carries every client: trusted, so the per-address handshake cap is not its.
    servers = [RunningServer(tmp / f"replica{i}", db_url=db_url, extra_env={"HATCHWAY_TRUSTED_PROXIES": "127.0.0.1"})
               for i in range(REPLICAS)]
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
            alice_token = c.post("/auth/login", json={"username": "alice", "password": "alice-password-1"}).json()["token"]
        f = Fleet(
            tmp, db_url, servers, ids, nginx, lb_url,
            {pair: f"http://127.0.0.1:{p}" for pair, p in agent_ports.items()},
            [f"http://127.0.0.1:{p}" for p in client_ports], alice, bob, bob_token, alice_token,
            [tmp / f"ssh_config{c}" for c in range(REPLICAS)], pg_cluster,
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
        # Whichever replica the CLI asks, it names the one holding the agent.
        shown = fleet.bob[c].ok("workspaces", "show", f"w{a}{d}").out.splitlines()
        assert [line.replace(",", " ").split()[:5] for line in shown if line.startswith("agent:")] == [
            ["agent:", "connected", "through", "replica", fleet.ids[a]]
        ]


def _ended_within(live: subprocess.Popen[bytes], seconds: float, started: float) -> str:
    live.wait(timeout=15)
    took = time.monotonic() - started
    assert took < seconds, f"the session took {took:.2f} s to end"
    return live.stderr.read().decode() if live.stderr else ""


def test_external_connect_off_on_one_replica_ends_a_session_held_by_another(fleet: Fleet) -> None:
    live = fleet.live_session(0, "w12")  # client on replica 0, agent on 1, dial-back on 2
    expected = 'hatchway: SSH access to workspaces on provider "byo" is disabled by a site manager (External Connect is off)'
    try:
        with fleet.admin(1) as c:
            t0 = time.monotonic()
            c.patch("/providers/byo", json={"external_connect": False}).raise_for_status()
        assert expected in _ended_within(live, 2.5, t0).splitlines()
        # The agent hears why from the replica it dialled back to, as from the client's own.
        ended = f"the server ended the connection (4410): {expected.removeprefix('hatchway: ')}"
        wait_for(lambda: ended in fleet.agents["w12"].log(), 5, what=f"the agent of w12 to log {ended!r}")
        for client in range(REPLICAS):  # refused everywhere
            r = fleet.ssh(client, "w00", "true")
            assert r.returncode == 255 and expected in r.stderr.decode().splitlines(), r.stderr
    finally:
        with fleet.admin(2) as c:
            c.patch("/providers/byo", json={"external_connect": True}).raise_for_status()
        live.kill()
        live.wait()
    assert fleet.ssh(1, "w21", "echo back").stdout == b"back\n"


def test_suspension_on_one_replica_ends_sessions_on_the_others(fleet: Fleet) -> None:
    sessions = [fleet.live_session(c, f"w{c}{(c + 1) % REPLICAS}") for c in range(REPLICAS)]
    try:
        with fleet.admin(2) as c:
            t0 = time.monotonic()
            c.post("/users/bob/suspend").raise_for_status()
        for live in sessions:
            _ended_within(live, 2.5, t0)
        r = fleet.ssh(0, "w00", "true")
        assert r.returncode == 255
        assert "hatchway: account suspended: your account is suspended; ask a site manager to reactivate it" in r.stderr.decode()
    finally:
        with fleet.admin(0) as c:
            c.post("/users/bob/activate").raise_for_status()
        for live in sessions:
            live.kill()
            live.wait()
        # Reactivation does not revive the sessions from before the suspension: bob signs in again.
        for cli, url in zip(fleet.bob, fleet.client_urls):
            cli.login(url, "bob", "bob-password-1")
        with api(fleet.lb_url) as c:
            fleet.bob_token = c.post("/auth/login", json={"username": "bob", "password": "bob-password-1"}).json()["token"]
    assert fleet.ssh(2, "w11", "true").returncode == 0


def test_key_regeneration_on_one_replica_reaches_agents_on_every_replica(fleet: Fleet) -> None:
    with fleet.api(0) as c:
        old = c.get("/users/me/key").json()["public_key"]
        t0 = time.monotonic()
        new = c.post("/users/me/key/regenerate").json()["public_key"]
    assert new != old
    for a in range(REPLICAS):  # agents held by replicas 0, 1 and 2
        keys = fleet.tmp / f"w{a}{a}-home" / ".ssh" / "authorized_keys"
        wait_for(lambda: new in keys.read_text() and old not in keys.read_text(), 5, what=f"the new key on w{a}{a}")
    assert time.monotonic() - t0 < 5
    for c in range(REPLICAS):  # the CLI fetches the new private key
        fleet.bob[c].ok("config-ssh", "--ssh-config", str(fleet.ssh_configs[c]), "-y")
    assert fleet.ssh(1, "w20", "echo new-key").stdout == b"new-key\n"


def test_deleting_a_workspace_on_one_replica_ends_its_sessions_and_agent_elsewhere(fleet: Fleet) -> None:
    fleet.create_workspace("doomed")
    agent = fleet.start_agent("doomed", fleet.agent_urls[(2, 1)])  # agent on replica 2, dial-back on 1
    wait_for(lambda: fleet.workspace("doomed")["agent_replica"] == fleet.ids[2], 20, what="the agent on replica 2")
    fleet.bob[0].ok("config-ssh", "--ssh-config", str(fleet.ssh_configs[0]), "-y")
    live = fleet.live_session(0, "doomed")
    try:
        with fleet.api(1) as c:
            t0 = time.monotonic()
            c.delete("/workspaces/doomed").raise_for_status()
        assert 'hatchway: workspace "bob/doomed" was deleted' in _ended_within(live, 2.5, t0).splitlines()
        assert agent.proc is not None
        assert agent.proc.wait(timeout=15) != 0  # its token is gone: the agent stops, saying so
        assert "agent token not valid: the token was replaced or the workspace deleted" in agent.log()
    finally:
        live.kill()
        live.wait()
    r = fleet.ssh(0, "doomed", "true")
    assert r.returncode == 255 and 'no workspace named "doomed" is yours' in r.stderr.decode()


def test_concurrent_connections_across_replicas_succeed_like_through_one(fleet: Fleet) -> None:
    key = fleet.tmp / "bob-key"
    with fleet.api() as c:
        key.write_text(c.get("/users/me/key/private").json()["private_key"])
    key.chmod(0o600)
    ws = fleet.workspace("w01")  # agent on replica 0, dial-backs on replica 1
    common = dict(token=fleet.bob_token, workspace="w01", user=ws["os_user"], key_path=str(key),
                  host_key=ws["host_keys"][0], n=100, timeout=120, in_flight=16)
    one = run_load_sync(base_url=fleet.servers[2].url, **common)  # every client on replica 2
    spread = run_load_sync(base_url=fleet.lb_url, **common)  # round robin over all three
    assert (one.succeeded, one.errors()) == (100, {})
    assert (spread.succeeded, spread.errors()) == (one.succeeded, {})
    rows = fleet.connections("w01")
    assert {r["replica"] for r in rows[:100]} == set(fleet.ids), "the balancer spread the clients"


def test_failed_logins_spread_over_replicas_are_throttled_as_on_one(fleet: Fleet) -> None:
    attempt = {"username": "target-user", "password": "wrong-password"}
    for i in range(5):  # the limit (5 per user and source), spread over replicas 0 and 1 only
        with api(fleet.servers[i % 2].url) as c:
            assert c.post("/auth/login", json=attempt).status_code == 401
    # Replica 2 saw none of them itself. Counting alone it would allow five more wrong guesses;
    # sharing, it refuses at once (allowing one attempt for the notification still in flight,
    # while the password hash of that attempt takes tens of milliseconds).
    for replica in (2, 0, 1):
        with api(fleet.servers[replica].url) as c:
            codes = [c.post("/auth/login", json=attempt).status_code for _ in range(2)]
            assert codes[-1] == 429 and codes.count(401) <= 1, (replica, codes)
            r = c.post("/auth/login", json=attempt)
            assert r.json()["error"] == "too many failed logins" and int(r.headers["Retry-After"]) > 0


def _agent_pids(uid: int) -> list[int]:
    """The workspace agents running as ``uid``, read from /proc (no user name lookups)."""
    out = []
    for pid in pids_of_uid(uid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"hatchway" in argv and argv[argv.index(b"hatchway") + 1:][:1] == [b"agent"]:
            out.append(pid)
    return out


def _expect_agents(fleet: Fleet, lead: int, user: str, uid: int, n: int) -> None:
    """``n`` agents of ``user`` within a few seconds (an agent that has just connected may still be
    exec-ing, one being stopped still exiting); otherwise fail showing what runs and what the
    supervising replica said about the workspace."""
    deadline = time.monotonic() + 10
    while len(_agent_pids(uid)) != n:
        if time.monotonic() > deadline:
            ps = subprocess.run(["ps", "-eo", "pid,user:32,args"], capture_output=True, text=True).stdout
            said = [line for line in fleet.servers[lead].log().splitlines() if "bob/loc" in line]
            raise AssertionError(
                f"expected {n} agent(s) of {user}, found {_agent_pids(uid)}\n"
                + "\n".join(line for line in ps.splitlines() if user in line or " agent" in line)
                + "\nsupervisor log:\n" + "\n".join(said[-20:])
            )
        time.sleep(0.05)


def test_one_replica_supervises_local_workspaces_and_the_others_pass_commands_to_it(fleet: Fleet) -> None:
    leaders = fleet.psql("SELECT id FROM replicas WHERE supervises").split()
    assert len(leaders) == 1, leaders
    lead = fleet.ids.index(leaders[0])
    other = (lead + 1) % REPLICAS
    with fleet.api(other) as c:  # every command goes to a replica that does not supervise
        try:
            c.post("/workspaces", json={"name": "loc", "provider": "local"}).raise_for_status()
            wait_for(lambda: c.get("/workspaces/loc").json()["state"] == "running", 60, what="loc running")
            ws = c.get("/workspaces/loc").json()
            assert ws["agent_replica"] == fleet.ids[lead]  # the supervisor's agents connect to it
            user = ws["os_user"]
            uid = pwd.getpwnam(user).pw_uid
            _expect_agents(fleet, lead, user, uid, 1)  # exactly one, however many replicas
            fleet.bob[other].ok("config-ssh", "--ssh-config", str(fleet.ssh_configs[other]), "-y")
            r = fleet.ssh(other, "loc", "id -un")
            assert r.stdout.decode().strip() == user, r.stderr
            assert c.post("/workspaces/loc/stop").json()["state"] == "stopped"
            _expect_agents(fleet, lead, user, uid, 0)
            c.post("/workspaces/loc/start").raise_for_status()
            wait_for(lambda: c.get("/workspaces/loc").json()["agent_connected"], 60, what="loc back")
            _expect_agents(fleet, lead, user, uid, 1)
            c.delete("/workspaces/loc").raise_for_status()
        finally:  # a failed step must not leave the workspace's Unix user and namespace behind
            if c.get("/workspaces/loc").status_code == 200:
                c.delete("/workspaces/loc")
    assert subprocess.run(["getent", "passwd", user], capture_output=True).returncode == 2
    assert pids_of_uid(uid) == []  # nothing of the workspace's user is left running


def test_a_database_outage_longer_than_the_heartbeat_timeout_is_ridden_out(fleet: Fleet) -> None:
    """After the outage the first replica to beat forgets the others (their beats are old):
    they register again and claim their agents again, and nobody's workspace was stopped."""
    leader = fleet.psql("SELECT id FROM replicas WHERE supervises")
    fleet.pg.pause()  # type: ignore[attr-defined]
    try:
        time.sleep(6)  # an outage of a chosen length: longer than the 4 s after which a replica is forgotten
        assert all(s.proc is not None and s.proc.poll() is None for s in fleet.servers)
    finally:
        fleet.pg.resume()  # type: ignore[attr-defined]
    back = fleet.psql("SELECT now() AT TIME ZONE 'UTC'")
    # Judge once every replica has beaten for longer than the forget timeout since the outage:
    # whatever forgetting and reclaiming the outage causes has happened by then.
    wait_for(lambda: fleet.psql(
        f"SELECT count(*) FROM replicas WHERE heartbeat_at > TIMESTAMP '{back}' AT TIME ZONE 'UTC' + interval '5 seconds'"
    ) == str(REPLICAS), 30, interval=0.5, what="every replica beating for 5 s after the outage")

    def claims_restored() -> bool:
        with fleet.api() as c:
            rows = {w["name"]: w for w in c.get("/workspaces").json()}
        return all(rows[f"w{a}{d}"]["agent_connected"] and rows[f"w{a}{d}"]["agent_replica"] == fleet.ids[a] for a, d in PAIRS)

    wait_for(claims_restored, 30, interval=0.5, what="every agent claimed by its replica again")
    assert fleet.psql("SELECT count(*) FROM replicas") == str(REPLICAS)
    # The same replica supervises: nothing was moved (or restarted) because the database restarted.
    wait_for(lambda: fleet.psql("SELECT id FROM replicas WHERE supervises") == leader, 10, what="the same supervisor")
    for a in range(REPLICAS):
        r = fleet.ssh((a + 1) % REPLICAS, f"w{a}{(a + 2) % REPLICAS}", "echo after-outage")
        assert r.stdout == b"after-outage\n", r.stderr


def test_a_wrong_agent_claim_in_the_database_is_repaired(fleet: Fleet) -> None:
    """A claim a lost write left wrong (the agent of w00 is on replica 0; the row says 1):
    the replica asked for the dial corrects it, the holder claims it again within seconds, and
    SSH works again without anyone restarting anything."""
    for _ in range(5):
        fleet.psql(f"UPDATE workspaces SET agent_replica_id = '{fleet.ids[1]}' WHERE name = 'w00'")
        r = fleet.ssh(2, "w00", "true")
        if r.returncode == 255:
            break
        # Replica 0's periodic reclaim (every RECLAIM_EVERY beats) can land between the write
        # and the dial; then the claim was already right again, and the ssh rightly worked.
        assert r.returncode == 0 and fleet.workspace("w00")["agent_replica"] == fleet.ids[0], r.stderr
    assert 'workspace "w00": lost the connection to its agent; try again' in r.stderr.decode()
    wait_for(lambda: fleet.workspace("w00")["agent_replica"] == fleet.ids[0], 15, what="replica 0 to claim w00 again")
    assert fleet.ssh(2, "w00", "echo repaired").stdout == b"repaired\n"


def test_a_replica_killed_mid_session_is_survived(fleet: Fleet) -> None:
    fleet.create_workspace("survivor")
    agent = fleet.start_agent("survivor", fleet.lb_url)  # through the documented configuration
    wait_for(lambda: fleet.workspace("survivor")["agent_connected"], 20, what="the agent to connect")
    x = fleet.ids.index(fleet.workspace("survivor")["agent_replica"])
    y = (x + 1) % REPLICAS
    for c in range(REPLICAS):
        fleet.bob[c].ok("config-ssh", "--ssh-config", str(fleet.ssh_configs[c]), "-y")
    carried = fleet.live_session(x, "survivor")  # the client's stream is relayed by replica x
    dead = fleet.ids[x]
    try:
        fleet.servers[x].stop(signal.SIGKILL)
        t0 = time.monotonic()
        carried.wait(timeout=15)  # the connection it carried ends
        # Its agents reconnect through the balancer to the others, within 5 s.
        wait_for(lambda: fleet.workspace("survivor")["agent_replica"] not in (None, dead), 10, what="the agent back")
        assert time.monotonic() - t0 < 5, f"the agent took {time.monotonic() - t0:.1f} s to reconnect"
        assert fleet.workspace("survivor")["agent_connected"]
        # New connections work, through another replica and through the balancer.
        assert fleet.ssh(y, "survivor", "echo after").stdout == b"after\n"
        lb_cli = Cli(fleet.tmp / "bob-lb")
        lb_cli.login(fleet.lb_url, "bob", "bob-password-1")
        lb_cli.ok("config-ssh", "--ssh-config", str(fleet.tmp / "ssh_config_lb"), "-y")
        for _ in range(REPLICAS):  # round robin: at least one would have picked the dead replica
            r = subprocess.run(["ssh", "-F", str(fleet.tmp / "ssh_config_lb"), "-o", "BatchMode=yes",
                                "hatchway.survivor", "echo via-lb"], capture_output=True, env=lb_cli.env(), timeout=60)
            assert r.stdout == b"via-lb\n", r.stderr
        # Nothing in the database still claims the dead replica.
        wait_for(lambda: fleet.psql(
            f"SELECT (SELECT count(*) FROM replicas WHERE id = '{dead}')"
            f" + (SELECT count(*) FROM workspaces WHERE agent_replica_id = '{dead}')"
            f" + (SELECT count(*) FROM ssh_connections WHERE replica_id = '{dead}' AND result = 'open')"
        ) == "0", 15, what="the dead replica to be forgotten")
        ended = [r for r in fleet.connections("survivor") if r["replica"] == dead]
        assert ended and all(r["result"] in ("failed", "closed") and r["ended_at"] for r in ended), ended
        assert any(r["reason"] == "the Hatchway server process relaying it stopped" for r in ended), ended
        assert int(fleet.psql("SELECT count(*) FROM replicas")) == REPLICAS - 1
    finally:
        carried.kill()
        carried.wait()
        agent.stop()
        fleet.servers[x].start()  # for whatever runs after; a new replica id


def test_a_replica_stopped_mid_session_tells_its_client_another_replica_takes_the_connection(fleet: Fleet) -> None:
    """Alone, a server going down says to connect again once it is back; a replica says that
    another one takes the connection at once (the balancer sends it elsewhere)."""
    fleet.create_workspace("moving")
    agent = fleet.start_agent("moving", fleet.lb_url)
    wait_for(lambda: fleet.workspace("moving")["agent_connected"], 20, what="the agent to connect")
    holder = fleet.workspace("moving")["agent_replica"]

    def replica_id(c: int) -> str:  # asked, not fleet.ids: an earlier test may have restarted one
        with fleet.api(c) as api:
            return api.get("/deployment").json()["replica"]

    x = next(c for c in range(REPLICAS) if replica_id(c) != holder)  # not the agent's
    fleet.bob[x].ok("config-ssh", "--ssh-config", str(fleet.ssh_configs[x]), "-y")
    live = fleet.live_session(x, "moving")
    try:
        assert fleet.servers[x].stop() == 0
        assert live.wait(timeout=15) == 255
        assert live.stderr is not None
        said = live.stderr.read().decode().splitlines()
        assert ("hatchway: this Hatchway server is shutting down; connect again: another replica takes the "
                "connection (or this one once it is back)") in said, said
    finally:
        live.kill()
        live.wait()
        agent.stop()
        fleet.servers[x].start()  # for whatever runs after; a new replica id


def test_replicas_starting_together_on_a_fresh_database_all_come_up_and_a_wrong_secret_is_refused(
    pg_cluster: object, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    db_url = _new_database(pg_cluster)
    secret = os.urandom(32).hex() + "\n"
    servers = [RunningServer(tmp_path / f"r{i}", db_url=db_url) for i in range(REPLICAS + 1)]
    for i, s in enumerate(servers):
        s.data_dir.mkdir(mode=0o700)
        (s.data_dir / "deployment.secret").write_text(secret if i < REPLICAS else os.urandom(32).hex() + "\n")
        (s.data_dir / "deployment.secret").chmod(0o600)
    try:
        with ThreadPoolExecutor(REPLICAS) as pool:  # one migration, one "local" provider, three replicas
            list(pool.map(lambda s: s.start(timeout=60), servers[:REPLICAS]))
        assert psql(db_url, "SELECT count(*) FROM replicas") == str(REPLICAS)
        assert psql(db_url, "SELECT count(*) FROM providers WHERE name = 'local'") == "1"
        assert psql(db_url, "SELECT count(*) FROM replicas WHERE supervises") == "1"
        with pytest.raises(RuntimeError) as err:
            servers[REPLICAS].start()
        assert "cannot start: this server's deployment secret differs from the one this deployment's database was set up with" in str(err.value)
        assert "copy deployment.secret from a running replica's data dir into this one's" in str(err.value)
    finally:
        for s in servers:
            if s.proc is not None:
                s.stop()
