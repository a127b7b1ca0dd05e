"""A small deployment for reliability tests: a server process, a site manager (alice), members
with a ``manual`` workspace "dev" each whose agent runs as its own process (built-in server),
and in-process SSH through the relay (tests.helpers.sshclient)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from tests.helpers.agent import AgentProcess
from tests.helpers.server import RunningServer, api, first_user, wait_for
from tests.helpers.sshclient import Tunnel, ssh_connect


@dataclass
class Person:
    name: str
    password: str
    token: str
    key_pem: str = ""
    key: asyncssh.SSHKey | None = None


@dataclass
class World:
    server: RunningServer
    tmp: Path
    people: dict[str, Person] = field(default_factory=dict)
    agents: dict[str, AgentProcess] = field(default_factory=dict)  # by owner
    agent_tokens: dict[str, str] = field(default_factory=dict)  # by owner
    os_user: str = ""

    @property
    def url(self) -> str:
        return self.server.url

    def api(self, who: str | None = "alice"):  # type: ignore[no-untyped-def]
        return api(self.url, self.people[who].token if who else None)

    def workspace(self, owner: str, name: str = "dev") -> dict:
        with self.api(owner) as c:
            r = c.get(f"/workspaces/{name}")
            r.raise_for_status()
            return r.json()

    async def ssh(self, who: str, workspace: str = "dev", timeout: float = 30) -> Tunnel:
        p = self.people[who]
        assert p.key is not None
        return await ssh_connect(self.url, p.token, workspace, self.os_user, p.key, timeout=timeout)

    def start_agent(self, owner: str, ssh_port: int = 0, workspace: str = "dev") -> AgentProcess:
        agent = AgentProcess(self.url, self.agent_tokens[owner], self.tmp / f"{owner}-ws-home", ssh_port=ssh_port)
        agent.start()
        self.agents[owner] = agent
        wait_for(lambda: self.workspace(owner, workspace)["agent_connected"], 20, what=f"{owner}'s agent to connect")
        return agent

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None:
                agent.stop()
        if self.server.proc is not None:
            self.server.stop()


def build_world(tmp: Path, members: tuple[str, ...] = ("bob", "carol"), server_env: dict[str, str] | None = None,
                db_url: str | None = None, start_agents: bool = True, server: RunningServer | None = None) -> World:
    """The deployment described above; ``server`` (not started yet) replaces the plain server
    process, for tests that start it differently (``db_url`` and ``server_env`` are then its)."""
    server = server or RunningServer(tmp / "data", db_url=db_url, extra_env=server_env)
    server.start()
    w = World(server, tmp)
    try:
        w.people["alice"] = Person("alice", "alice-password-1", first_user(server.url, "alice", "alice-password-1"))
        with w.api("alice") as c:
            c.post("/providers", json={"name": "byo", "kind": "manual"}).raise_for_status()
            for name in members:
                c.post("/users", json={"username": name, "email": f"{name}@example.com", "password": f"{name}-password-1"}).raise_for_status()
        with api(server.url) as c:
            for name in members:
                r = c.post("/auth/login", json={"username": name, "password": f"{name}-password-1"})
                r.raise_for_status()
                w.people[name] = Person(name, f"{name}-password-1", r.json()["token"])
        for p in w.people.values():
            with w.api(p.name) as c:
                p.key_pem = c.get("/users/me/key/private").json()["private_key"]
                p.key = asyncssh.import_private_key(p.key_pem)
        for name in members:
            with w.api(name) as c:
                r = c.post("/workspaces", json={"name": "dev", "provider": "byo"})
                r.raise_for_status()
                w.agent_tokens[name] = r.json()["agent_token"]
        w.os_user = __import__("pwd").getpwuid(os.getuid()).pw_name
        if start_agents:
            for name in members:
                w.start_agent(name)
    except BaseException:
        w.close()
        raise
    return w


def fd_count(pid: int) -> int:
    """Open sockets, pipes and other non-file descriptors of ``pid``: what a leaked stream holds.

    Regular files are left out on purpose: the database pool opens SQLite files (database, WAL,
    shared memory) lazily as concurrency rises, which is growth, not a leak."""
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed while we looked
        if not target.startswith("/"):
            n += 1
    return n


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/*/stat), so leaked child processes show up."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def process_fds(pid: int) -> int:
    """fds of ``pid`` and all its descendants."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            total += fd_count(p)
        except OSError:
            pass
    return total
