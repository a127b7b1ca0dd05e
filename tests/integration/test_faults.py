"""Faults: the database going away, agents and clients killed mid-transfer, the port-22 server
dying, a full disk. After each, the server and the agent hold nothing extra and new SSH works.

One deployment: bob's manual workspace "dev" (agent process, built-in server), carol's manual
workspace "p22" whose agent forwards to a real sshd (root), and alice's supervised local
workspace "loc" (unisolated, so this runs the same way without root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.helpers import postgres
from tests.helpers.cli import Cli
from tests.helpers.netns import needs_root_reason
from tests.helpers.server import api, free_port, wait_for
from tests.helpers.sshclient import ssh_connect
from tests.helpers.world import World, build_world, children, process_fds


def _processes_with(assignment: str) -> list[int]:
    from tests.integration.test_local_provider_unisolated import processes_with

    return processes_with(assignment)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("faults"), server_env={"HATCHWAY_LOCAL_ISOLATION": "off"})
    try:
        yield w
    finally:
        w.close()
        for ws in ("loc",):
            with contextlib.suppress(Exception):
                ws_id = w.workspace("alice", ws)["id"]
                for pid in _processes_with(f"HATCHWAY_WORKSPACE_ID={ws_id}"):
                    os.kill(pid, signal.SIGKILL)


def connections(world: World, **params: str) -> list[dict]:
    with world.api("alice") as c:
        return c.get("/connections", params=params).json()


def settle(pid: int, baseline: int, what: str, timeout: float = 15) -> None:
    wait_for(lambda: process_fds(pid) <= baseline, timeout, what=f"{what} fds back to {baseline} (now {process_fds(pid)})")


# ---- agents killed ----------------------------------------------------------------------------


async def test_agent_killed_mid_session_ends_the_connection_and_is_recorded(world: World) -> None:
    t = await world.ssh("bob")
    proc = await t.ssh.create_process("cat /dev/zero", encoding=None)
    assert len(await proc.stdout.readexactly(1 << 20)) == 1 << 20
    world.agents["bob"].stop(signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError, OSError, asyncssh.Error)):
        while True:  # the client sees its connection end, promptly
            await asyncio.wait_for(proc.stdout.readexactly(1 << 20), 10)
    assert time.monotonic() - t0 < 5
    await t.abort()
    wait_for(lambda: (r := connections(world, user="bob", workspace="dev")) and r[0]["ended_at"], 10,
             what="the connection row to be ended")
    row = connections(world, user="bob", workspace="dev")[0]
    assert row["result"] == "closed" and row["bytes_from_workspace"] >= 1 << 20
    wait_for(lambda: not world.workspace("bob")["agent_connected"], 10, what="the agent to be seen gone")
    world.start_agent("bob")  # a manual workspace's agent comes back when its owner restarts it
    t = await world.ssh("bob")
    assert (await t.run("echo back")).stdout == b"back\n"
    await t.close()


async def test_a_supervised_agent_killed_mid_session_comes_back(world: World) -> None:
    with world.api("alice") as c:
        c.post("/workspaces", json={"name": "loc"}).raise_for_status()
    wait_for(lambda: world.workspace("alice", "loc")["state"] == "running", 30, what="the local workspace to run")
    ws_id = world.workspace("alice", "loc")["id"]
    home = world.server.data_dir / "workspaces" / ws_id / "home"

    def agent_pids() -> list[int]:
        return [p for p in _processes_with(f"HOME={home}")
                if b"agent" in Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")]

    agents = agent_pids()
    assert len(agents) == 1, agents
    alice = world.people["alice"]
    assert alice.key is not None
    t = await ssh_connect(world.url, alice.token, "loc", world.os_user, alice.key)
    proc = await t.ssh.create_process("cat /dev/zero", encoding=None)
    await proc.stdout.readexactly(1 << 16)
    os.kill(agents[0], signal.SIGKILL)
    with pytest.raises((asyncio.IncompleteReadError, ConnectionError, OSError, asyncssh.Error)):
        while True:
            await asyncio.wait_for(proc.stdout.readexactly(1 << 20), 10)
    await t.abort()
    t0 = time.monotonic()
    wait_for(lambda: (w := world.workspace("alice", "loc"))["agent_connected"] and w["state"] == "running"
             and agent_pids() not in ([], agents), 20, what="the supervisor to restart the agent")
    restarted = time.monotonic() - t0
    t = await ssh_connect(world.url, alice.token, "loc", world.os_user, alice.key)
    assert (await t.run("echo again")).stdout == b"again\n"
    await t.close()
    rows = connections(world, user="alice", workspace="loc")
    assert rows[-1]["ended_at"] is not None and rows[-1]["result"] == "closed"
    assert restarted < 10
    with world.api("alice") as c:
        c.delete("/workspaces/loc").raise_for_status()


# ---- clients killed -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)")
def test_a_client_killed_mid_transfer_leaves_nothing_behind_in_server_or_agent(world: World) -> None:
    bob = Cli(world.tmp / "bob-cli")
    bob.login(world.url, "bob", world.people["bob"].password)
    ssh_config = world.tmp / "bob-ssh-config"
    bob.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
    spid = world.server.proc.pid  # type: ignore[union-attr]
    apid = world.agents["bob"].proc.pid  # type: ignore[union-attr]
    # Warm up (the first connection loads the built-in server's modules), then take the baseline.
    assert subprocess.run(["ssh", "-F", str(ssh_config), "hatchway.dev", "true"], env=bob.env(), timeout=30, check=False).returncode == 0
    base_server, base_agent = process_fds(spid), process_fds(apid)
    assert children(apid) == []
    for direction in ("download", "upload"):
        command = "cat /dev/zero" if direction == "download" else "cat > /dev/null"
        client = subprocess.Popen(
            ["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev", command],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=bob.env(), start_new_session=True,
        )
        assert client.stdin is not None and client.stdout is not None
        if direction == "download":
            assert len(client.stdout.read(4 << 20)) == 4 << 20
        else:
            for _ in range(64):
                client.stdin.write(b"\0" * 65536)
            client.stdin.flush()
        assert children(apid), "the session's command runs in the workspace"
        os.killpg(client.pid, signal.SIGKILL)  # ssh and its ProxyCommand, no goodbye
        client.wait()
        settle(spid, base_server, f"server ({direction})")
        settle(apid, base_agent, f"agent and its children ({direction})")
        assert children(apid) == [], "the session's processes are gone"
    rows = connections(world, user="bob", workspace="dev")[:2]
    assert all(r["ended_at"] and r["result"] == "closed" for r in rows), rows
    assert rows[0]["bytes_to_workspace"] >= 4 << 20 or rows[1]["bytes_from_workspace"] >= 4 << 20


# ---- the port-22 server dies --------------------------------------------------------------------

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {pid}
AuthorizedKeysFile {home}/.ssh/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
"""


@pytest.mark.skipif(needs_root_reason() is not None, reason=str(needs_root_reason()))
async def test_port22_server_dying_mid_life_falls_back_to_the_built_in_server(world: World) -> None:
    port = free_port()
    home = world.tmp / "carol-p22-home"
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    host_key = world.tmp / "p22_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    cfg = world.tmp / "p22_sshd_config"
    cfg.write_text(SSHD_CONFIG.format(port=port, host_key=host_key, pid=world.tmp / "p22.pid", home=home))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stderr=subprocess.DEVNULL)
    try:
        with world.api("carol") as c:
            r = c.post("/workspaces", json={"name": "p22", "provider": "byo"})
            r.raise_for_status()
        world.agent_tokens["carol"] = r.json()["agent_token"]
        world.agents["carol"].stop()
        from tests.helpers.agent import AgentProcess

        agent = AgentProcess(world.url, world.agent_tokens["carol"], home, ssh_port=port)
        agent.start()
        world.agents["carol-p22"] = agent
        wait_for(lambda: (w := world.workspace("carol", "p22"))["agent_connected"] and w["ssh_mode"] == "openssh", 20,
                 what="the agent to forward to sshd")
        live = await world.ssh("carol", "p22")
        assert re.match(r"SSH-2\.0-OpenSSH_\d", live.ssh.get_extra_info("server_version"))
        sshd.kill()  # the listener dies; the session's own sshd process lives on, as with any sshd
        sshd.wait()
        t = await world.ssh("carol", "p22")
        assert t.ssh.get_extra_info("server_version").startswith("SSH-2.0-OpenSSH_compatible Hatchway_"), "new connections fall back"
        assert (await t.run("echo built-in")).stdout == b"built-in\n"
        await t.close()
        assert (await live.run("echo still-openssh")).stdout == b"still-openssh\n"
        await live.close()
        wait_for(lambda: world.workspace("carol", "p22")["ssh_mode"] == "built-in", 40, what="the mode change reported")
        modes = [r["mode"] for r in connections(world, user="carol", workspace="p22")]
        assert modes[:2] == ["built-in", "openssh"]
    finally:
        if sshd.poll() is None:
            sshd.kill()
        sshd.wait()
        subprocess.run(["pkill", "-KILL", "-F", str(world.tmp / "p22.pid")], check=False, capture_output=True)


# ---- a full disk ------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tiny tmpfs")
def test_a_full_disk_keeps_the_old_authorized_keys_and_the_agent_says_so(world: World) -> None:
    home = world.tmp / "tiny-home"
    home.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(home)], check=True)
    try:
        with world.api("bob") as c:
            r = c.post("/workspaces", json={"name": "tiny", "provider": "byo"})
            r.raise_for_status()
        from tests.helpers.agent import AgentProcess

        agent = AgentProcess(world.url, r.json()["agent_token"], home)
        agent.log_path = world.tmp / "tiny-agent.log"  # not on the full disk
        agent.start()
        world.agents["bob-tiny"] = agent
        wait_for(lambda: world.workspace("bob", "tiny")["agent_connected"], 20, what="the agent on the tiny disk")
        keys = home / ".ssh" / "authorized_keys"
        before = keys.read_bytes()
        with contextlib.suppress(OSError), open(home / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        with world.api("bob") as c:
            new_key = c.post("/users/me/key/regenerate").json()["public_key"]
        wait_for(lambda: any("authorized_keys" in d for d in world.workspace("bob", "tiny")["diagnostics"]), 10,
                 what="the write failure reported")
        assert keys.read_bytes() == before, "the old file is intact"
        assert not [p for p in (home / ".ssh").iterdir() if p.name.startswith(".")], "no temp file left behind"
        (home / "filler").unlink()  # space again: the agent's next try writes the new key, unasked
        wait_for(lambda: new_key in keys.read_text(), 15, what="the new key once there is space")
        wait_for(lambda: not world.workspace("bob", "tiny")["diagnostics"], 10, what="the failure no longer reported")
        agent.stop()
        wait_for(lambda: not world.workspace("bob", "tiny")["agent_connected"], 10, what="the agent to stop")
        # Everyone else kept their key in sync: refresh the in-process key of bob for later tests.
        with world.api("bob") as c:
            import asyncssh

            world.people["bob"].key = asyncssh.import_private_key(c.get("/users/me/key/private").json()["private_key"])
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


# ---- the database goes away --------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[postgres.TempPostgres]:
    """A cluster of this module's own: stopping the session's would break other tests."""
    reason = postgres.can_run() or (None if postgres._bindir() else "PostgreSQL is not installed")
    if reason or os.environ.get("HATCHWAY_TEST_PG_URL"):
        pytest.skip(reason or "an external PostgreSQL cannot be stopped by the tests")
    pg = postgres.TempPostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


async def test_database_outage_answers_503_then_recovers_without_restart(own_postgres: postgres.TempPostgres, tmp_path: Path) -> None:
    pg = own_postgres
    w = build_world(tmp_path, members=("bob",), db_url=pg.new_database())
    try:
        t = await w.ssh("bob")
        assert (await t.run("echo before")).stdout == b"before\n"
        pg.pause()
        try:
            t0 = time.monotonic()
            with w.api("bob") as c:
                for path in ("/users/me", "/workspaces", "/connections"):
                    r = c.get(path)
                    assert r.status_code == 503, (path, r.status_code, r.text)
                    assert r.json() == {"error": "database unavailable",
                                        "detail": "the server cannot reach its database right now; try again in a few seconds"}
                    assert r.headers["retry-after"] == "2"
            with api(w.url) as c:
                r = c.post("/auth/login", json={"username": "bob", "password": "bob-password-1"})
                assert r.status_code == 503 and r.json()["error"] == "database unavailable"
            assert time.monotonic() - t0 < 5, "refused quickly, not after a long hang"
            # A new SSH connection is refused with the reason; the live one keeps going (no DB needed).
            with pytest.raises(Exception, match="database unavailable"):
                await w.ssh("bob")
            assert (await t.run("echo during")).stdout == b"during\n"
        finally:
            pg.resume()
        with w.api("bob") as c:
            wait_for(lambda: c.get("/users/me").status_code == 200, 10, what="the API to recover")
        t2 = await w.ssh("bob")
        assert (await t2.run("echo after")).stdout == b"after\n"
        await t2.close()
        await t.close()
        assert w.server.proc is not None and w.server.proc.poll() is None, "the server did not restart"
        log = w.server.log()
        assert "Traceback" not in log, log[-4000:]
        assert "database unavailable" in log
        # The agent's control channel survived or came back by itself.
        wait_for(lambda: w.workspace("bob")["agent_connected"], 15, what="the agent connected after the outage")
    finally:
        w.close()
