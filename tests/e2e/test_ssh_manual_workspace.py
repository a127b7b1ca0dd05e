"""SSH end to end through the control plane with the real OpenSSH client: a `manual`
workspace whose agent runs as its own process with its own HOME, served by the built-in server."""

from __future__ import annotations

import json
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from hatchway.cli.session import StoredSession, save_session
from hatchway.server.api.sessions import SIGNED_OUT
from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.server import HATCHWAY, RunningServer, api, csrf_token, free_port, wait_for

USER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO5Rl4u0wzqfDtRlUOVnrz0bE8aNoTqUZ3dzCqNfH0KG my-laptop"
ENV_START = "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------"
ENV_END = "# ----------------- END HATCHWAY -----------------------"
PINNED = ": Hatchway sets it, to take the connection through Hatchway and check the workspace's pinned host key"
SUSPENDED = "your account is suspended; ask a site manager to reactivate it"


@dataclass
class World:
    server: RunningServer
    alice: Cli  # site manager
    bob: Cli  # member who owns workspace "dev"
    agent: AgentProcess
    ssh_config: Path
    tmp: Path

    def ssh(self, *args: str, timeout: float = 60, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", *args],
            input=stdin, capture_output=True, timeout=timeout, env=self.bob.env(),
        )

    def workspace(self) -> dict:
        return self.bob.ok("workspaces", "show", "dev", "--json").json()

    def live_session(self, cli: Cli | None = None) -> subprocess.Popen[bytes]:
        """An interactive-like session that is surely established when this returns: it echoes
        each line sent to it. ``cli`` is the sign-in session its proxy uses (bob's by default)."""
        live = subprocess.Popen(
            ["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", "hatchway.dev", "echo started; exec cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=(cli or self.bob).env(),
        )
        assert live.stdout is not None and live.stdout.readline() == b"started\n"
        return live


def _show_lines(cli: Cli) -> list[list[str]]:
    return [line.split(None, 1) for line in cli.ok("workspaces", "show", "dev").out.splitlines()]


def _token(path: Path) -> str:
    return json.loads((path / "session.json").read_text())["token"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("e2e")
    srv = RunningServer(tmp / "data")
    srv.start()
    alice, bob = Cli(tmp / "alice"), Cli(tmp / "bob")
    alice.login(srv.url, "alice", "alice-password", first=True)
    alice.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password\n")
    alice.ok("providers", "create", "byo", "--kind", "manual")
    bob.login(srv.url, "bob", "bob-password")
    created = bob.ok(
        "workspaces", "create", "dev", "--provider", "byo", "--env", "FOO=bar baz", "--env", "EDITOR=vim",
        "--env", "HATCHWAY_URL=http://evil.invalid",
    ).out
    token = created.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]
    home = tmp / "ws-home"
    (home / ".ssh").mkdir(parents=True)
    # The user's own content, which the agent must keep byte for byte.
    (home / ".ssh" / "authorized_keys").write_bytes(f"# my own keys\n{USER_KEY}\n".encode())
    (home / ".ssh" / "environment").write_bytes(b"MY_VAR=mine\n# trailing comment without newline")
    agent = AgentProcess(srv.url, token, home)
    agent.start()
    w = World(srv, alice, bob, agent, tmp / "bob" / "ssh_config", tmp)
    wait_for(lambda: w.workspace()["agent_connected"] and w.workspace()["host_keys"], 20, what="agent to connect")
    bob.ok("config-ssh", "--ssh-config", str(w.ssh_config), "-y")
    try:
        yield w
    finally:
        agent.stop()
        srv.stop()


def test_echo_and_exit_codes(world: World) -> None:
    r = world.ssh("hatchway.dev", "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr
    assert world.ssh("hatchway.dev", "exit 7").returncode == 7
    r = world.ssh("hatchway.dev", "id -un; pwd; echo $FOO; echo $HATCHWAY_WORKSPACE_NAME; echo $MY_VAR")
    user = world.workspace()["os_user"]
    assert r.stdout.decode().splitlines() == [user, str(world.agent.home), "bar baz", "dev", "mine"]


def test_start_stop_and_restart_leave_a_manual_workspace_to_its_agent(world: World) -> None:
    """Hatchway does not run a manual workspace's agent: the commands say so and change nothing
    (a start never marks it "starting", which nothing would undo)."""
    for action in ("start", "stop", "restart"):
        r = world.bob.run("workspaces", action, "dev")
        assert (r.code, r.out, r.err) == (1, "", 'hatchway: workspace "dev" is not started by Hatchway: it runs on '
                                          'provider "byo" (manual): start or stop its agent where it runs\n')
    w = world.workspace()
    assert (w["state"], w["state_reason"], w["agent_connected"]) == ("running", None, True)
    r = world.ssh("hatchway.dev", "echo ok")
    assert (r.returncode, r.stdout) == (0, b"ok\n"), r.stderr


def test_stdin_round_trip(world: World) -> None:
    payload = bytes(range(256)) * 40000  # 10 MB of every byte value
    r = world.ssh("hatchway.dev", "cat", stdin=payload)
    assert r.returncode == 0 and r.stdout == payload


def test_authorized_keys_block_and_user_content(world: World) -> None:
    path = world.agent.home / ".ssh" / "authorized_keys"
    lines = path.read_text().splitlines()
    key = world.bob.ok("keys", "show", "--json").json()["public_key"]
    assert lines[0] == "# ------------START-HATCHWAY-KEYS------------"
    assert lines[1] == "# Managed by the Hatchway agent; your own keys go outside this block."
    assert lines[2] == key
    assert lines[3] == "# ------------END-HATCHWAY-KEYS--------------"
    assert path.read_bytes().endswith(f"# my own keys\n{USER_KEY}\n".encode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_environment_section_exact_shape(world: World) -> None:
    path = world.agent.home / ".ssh" / "environment"
    ws = world.workspace()
    text = path.read_text()
    section, _, rest = text.partition(ENV_END + "\n")
    assert rest == "MY_VAR=mine\n# trailing comment without newline"
    assert section.splitlines() == [
        ENV_START,
        "# The following has been auto-generated at workspace startup",
        "# You should not hand-edit this section unless you are deleting it.",
        "",
        "HATCHWAY_USER_EMAIL=bob@example.com",
        "HATCHWAY_USER_NAME=bob",
        "HATCHWAY_WORKSPACE_NAME=dev",
        f"HATCHWAY_WORKSPACE_ID={ws['id']}",
        "HATCHWAY_PROVIDER_NAME=byo",
        f"HATCHWAY_URL={world.server.url}",
        "FOO=bar baz",
        "EDITOR=vim",
        "",
    ]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # The image variable that tried to override a Hatchway default was refused and reported.
    assert any("HATCHWAY_URL" in d for d in ws["diagnostics"]), ws["diagnostics"]
    assert "HATCHWAY_URL" in world.agent.log() and "evil.invalid" not in text


def test_unsafe_env_value_is_refused_at_creation(world: World) -> None:
    r = world.bob.run("workspaces", "create", "dev2", "--provider", "byo", "--env", "X=a\nb")
    assert r.code == 1 and "newline" in r.err
    r = world.bob.run("workspaces", "create", "dev2", "--provider", "byo", "--env", "BAD NAME=x")
    assert r.code == 1 and "invalid environment variable name" in r.err
    assert [w["name"] for w in world.bob.ok("workspaces", "list", "--json").json()] == ["dev"]


def test_workspace_shows_mode_and_host_key_is_pinned(world: World) -> None:
    ws = world.workspace()
    assert ws["ssh_mode"] == "built-in"
    assert ["ssh:", "built-in"] in _show_lines(world.bob)
    known = (world.bob.config_dir / "known_hosts").read_text()
    for key in ws["host_keys"]:
        assert f"hatchway.dev {' '.join(key.split()[:2])}" in known
    config = world.ssh_config.read_text()
    assert "StrictHostKeyChecking yes" in config and "HostKeyAlias hatchway.dev" in config
    assert "StrictHostKeyChecking no" not in config
    # A different pinned key must make ssh refuse: pinning is really in force.
    saved = (world.bob.config_dir / "known_hosts").read_text()
    try:
        bogus = "hatchway.dev ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO5Rl4u0wzqfDtRlUOVnrz0bE8aNoTqUZ3dzCqNfH0KG\n"
        (world.bob.config_dir / "known_hosts").write_text(bogus)
        r = world.ssh("hatchway.dev", "true")
        assert r.returncode == 255 and b"REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
    finally:
        (world.bob.config_dir / "known_hosts").write_text(saved)


def test_host_key_survives_agent_restart(world: World) -> None:
    before = world.workspace()["host_keys"]
    world.agent.stop()
    wait_for(lambda: not world.workspace()["agent_connected"], 10, what="agent to disconnect")
    r = world.ssh("hatchway.dev", "true")
    assert r.returncode == 255
    assert b'hatchway: workspace "dev" is not reachable: its agent is not connected' in r.stderr
    world.agent.start()
    wait_for(lambda: world.workspace()["agent_connected"], 20, what="agent to reconnect")
    assert world.workspace()["host_keys"] == before
    r = world.ssh("hatchway.dev", "echo again")
    assert r.stdout == b"again\n", r.stderr


def test_key_regeneration_reaches_the_running_agent(world: World) -> None:
    path = world.agent.home / ".ssh" / "authorized_keys"
    old = world.bob.ok("keys", "show", "--json").json()["public_key"]
    old_key_file = world.tmp / "old-key"
    world.bob.ok("keys", "download", "--output", str(old_key_file))
    world.bob.ok("keys", "regenerate", "--yes")
    new = world.bob.ok("keys", "show", "--json").json()["public_key"]
    started = time.monotonic()
    wait_for(lambda: new in path.read_text(), 5, what="the new key in authorized_keys")
    assert time.monotonic() - started < 5
    assert old not in path.read_text()
    # The old key no longer gets in; the new one (config-ssh refreshes the stale file) does.
    key_line = next(l for l in world.ssh_config.read_text().splitlines() if l.strip().startswith("IdentityFile "))
    old_config = world.tmp / "old_key_config"
    old_config.write_text(world.ssh_config.read_text().replace(key_line, f"  IdentityFile {old_key_file}"))
    r = subprocess.run(["ssh", "-F", str(old_config), "-o", "BatchMode=yes", "hatchway.dev", "true"],
                       capture_output=True, env=world.bob.env(), timeout=30)
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr, r.stderr
    world.bob.ok("config-ssh", "--ssh-config", str(world.ssh_config), "-y")
    assert world.ssh("hatchway.dev", "true").returncode == 0


def test_external_connect_off_refuses_and_ends_live_sessions(world: World) -> None:
    live = world.live_session()
    try:
        t0 = time.monotonic()
        world.alice.ok("providers", "edit", "byo", "--external-connect", "off")
        live.wait(timeout=10)
        assert time.monotonic() - t0 < 2.5, "the live session must end within 2 s"
        err = live.stderr.read().decode() if live.stderr else ""
        expected = 'hatchway: SSH access to workspaces on provider "byo" is disabled by a site manager (External Connect is off)'
        assert expected in err.splitlines()
        r = world.ssh("hatchway.dev", "true")
        assert r.returncode == 255 and expected in r.stderr.decode().splitlines()
        shortcut = world.bob.run("ssh", "dev", "true")
        assert (shortcut.code, shortcut.err.strip()) == (1, expected)
        # config-ssh leaves the workspace out and says why.
        # Bob's only workspace is on it: a dry run ends as the real run does, with exit status 1.
        for dry in (["--dry-run"], []):
            cs = world.bob.run("config-ssh", "--ssh-config", str(world.tmp / "other_config"), "-y", *dry)
            assert cs.code == 1, cs.err
            assert cs.err.splitlines() == [
                'hatchway: SSH is not enabled for workspace provider "byo": left out hatchway.dev '
                '(External Connect is off; ask a site manager if you need it, then run "hatchway config-ssh" again)',
                "hatchway: SSH is disabled or not available for any workspaces in your deployment",
            ]
        assert "Host hatchway.dev" not in (world.tmp / "other_config").read_text()
        assert world.workspace()["agent_connected"], "turning SSH off does not touch the workspace"
    finally:
        world.alice.ok("providers", "edit", "byo", "--external-connect", "on")
        live.kill()
        live.wait()
    r = world.ssh("hatchway.dev", "echo back")
    assert r.stdout == b"back\n", r.stderr


def test_other_users_and_unknown_workspaces_are_refused(world: World) -> None:
    def proxy(cli: Cli, target: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [HATCHWAY, "proxy", target], capture_output=True, text=True, env=cli.env(), timeout=30,
            stdin=subprocess.DEVNULL,
        )

    r = proxy(world.alice, "bob/dev")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == 'hatchway: workspace "bob/dev" belongs to another user; you can only connect to your own workspaces'
    r = proxy(world.bob, "nope")
    assert r.stderr.strip() == 'hatchway: no workspace named "nope" is yours; see "hatchway workspaces list"'
    r = proxy(world.alice, "dev")
    assert r.stderr.strip() == 'hatchway: no workspace named "dev" is yours; see "hatchway workspaces list"'


def test_proxy_through_the_websockets_library_when_a_proxy_is_configured(world: World) -> None:
    """``hatchway proxy`` relays plain ws:// itself; with a proxy in the environment it hands the
    stream to the websockets library, which honours it (no_proxy sends it direct here)."""
    env = {**world.bob.env(), "https_proxy": "http://127.0.0.1:9", "no_proxy": "127.0.0.1,localhost"}
    argv = ["ssh", "-F", str(world.ssh_config), "-o", "BatchMode=yes", "hatchway.dev"]
    down = subprocess.run([*argv, "head -c 300000 /dev/zero"], capture_output=True, timeout=60, env=env)
    assert down.returncode == 0 and len(down.stdout) == 300000, down.stderr
    up = subprocess.run([*argv, "wc -c"], input=b"x" * 300000, capture_output=True, timeout=60, env=env)
    assert up.stdout.strip() == b"300000", up.stderr


def test_suspended_user_is_refused_and_live_session_ends(world: World) -> None:
    live = world.live_session()
    try:
        world.alice.ok("users", "suspend", "bob")
        live.wait(timeout=5)
        # The live session is told what the next attempt is told.
        assert live.stderr is not None
        assert f"hatchway: {SUSPENDED}" in live.stderr.read().decode().splitlines()
        r = world.ssh("hatchway.dev", "true")
        assert r.returncode == 255
        assert f"hatchway: account suspended: {SUSPENDED}" in r.stderr.decode()
    finally:
        world.alice.ok("users", "activate", "bob")
        live.kill()
        live.wait()
    # Reactivated, bob signs in again: his session from before the suspension stays ended.
    stale = world.ssh("hatchway.dev", "true")
    assert stale.returncode == 255 and "hatchway: session expired or revoked" in stale.stderr.decode()
    world.bob.login(world.server.url, "bob", "bob-password")
    assert world.ssh("hatchway.dev", "true").returncode == 0


def _still_relays(live: subprocess.Popen[bytes]) -> bool:
    assert live.stdin is not None and live.stdout is not None
    live.stdin.write(b"still here\n")
    live.stdin.flush()
    return live.stdout.readline() == b"still here\n"


def _ended_signed_out(live: subprocess.Popen[bytes]) -> None:
    assert live.wait(timeout=5) == 255
    assert live.stderr is not None and f"hatchway: {SIGNED_OUT}" in live.stderr.read().decode().splitlines()


def _stop(*sessions: subprocess.Popen[bytes]) -> None:
    for live in sessions:
        live.kill()
        live.wait()


def test_signing_a_session_out_ends_the_ssh_connections_it_opened(world: World) -> None:
    """A lost laptop signed out loses its open shell too; the caller's own connections go on."""
    laptop, tablet = Cli(world.tmp / "bob-laptop"), Cli(world.tmp / "bob-tablet")
    laptop.login(world.server.url, "bob", "bob-password")
    tablet.login(world.server.url, "bob", "bob-password")
    kept, lost_one, lost_all = world.live_session(), world.live_session(laptop), world.live_session(tablet)
    try:
        laptop_id = next(s["id"] for s in laptop.ok("sessions", "list", "--json").json() if s["current"])
        out = world.bob.ok("sessions", "revoke", laptop_id[:12]).out
        assert out.strip().endswith("; SSH connections it opened have ended")
        _ended_signed_out(lost_one)
        assert _still_relays(lost_all) and _still_relays(kept), "only the signed-out session's connection ends"

        out = world.bob.ok("sessions", "revoke", "--others").out
        assert out.strip() == "Signed out 1 other session; SSH connections they opened have ended"
        _ended_signed_out(lost_all)
        assert _still_relays(kept), "the caller's own session and its connections stay"
        r = laptop.run("ssh", "dev", "true")
        assert r.code != 0 and "session expired or revoked" in r.err
    finally:
        _stop(kept, lost_one, lost_all)


def test_logging_out_ends_the_ssh_connections_of_that_session(world: World) -> None:
    """`hatchway logout` is signing that session out: what it opened ends as on a revoke (once
    logged out it is in no list, so nobody could end those connections any more)."""
    laptop = Cli(world.tmp / "bob-laptop-logout")
    laptop.login(world.server.url, "bob", "bob-password")
    kept, lost = world.live_session(), world.live_session(laptop)
    try:
        laptop.ok("logout")
        _ended_signed_out(lost)
        assert _still_relays(kept), "only the logged-out session's connection ends"
    finally:
        _stop(kept, lost)


def test_signing_out_of_the_web_ui_ends_the_ssh_connections_of_that_session(world: World) -> None:
    """The web UI's Sign out is the browser's logout: SSH connections opened with that browser
    session's token end as on a revoke, and the user's other connections go on."""
    with httpx.Client(base_url=world.server.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "bob", "password": "bob-password"}
        assert browser.post("/sign-in", data=form).status_code == 303
        tab = Cli(world.tmp / "bob-browser")  # a proxy using the browser's session
        save_session(StoredSession(world.server.url, browser.cookies["hatchway_session"], "bob"), tab.config_dir)
        kept, lost = world.live_session(), world.live_session(tab)
        try:
            signed_out = browser.post("/sign-out", data={"csrf_token": csrf_token(browser.get("/workspaces"))})
            assert (signed_out.status_code, signed_out.headers["location"]) == (303, "/")
            _ended_signed_out(lost)
            assert _still_relays(kept), "only the signed-out browser session's connection ends"
        finally:
            _stop(kept, lost)


def test_a_new_password_ends_the_ssh_connections_of_the_old_sessions(world: World) -> None:
    kept = world.live_session()
    try:
        world.alice.ok("users", "set-password", "bob", "--password-stdin", stdin="bob-password-2\n")
        _ended_signed_out(kept)
    finally:
        _stop(kept)
        world.alice.ok("users", "set-password", "bob", "--password-stdin", stdin="bob-password\n")
        world.bob.login(world.server.url, "bob", "bob-password")
    assert world.ssh("hatchway.dev", "echo back").stdout == b"back\n"


def test_agent_survives_server_restart(world: World) -> None:
    live = world.live_session()
    try:
        world.server.restart()
        assert live.wait(timeout=10) == 255
        assert live.stderr is not None
        said = live.stderr.read().decode().splitlines()
        assert "hatchway: the Hatchway server is shutting down; connect again once it is back" in said, said
    finally:
        _stop(live)
    said = [line.split(": ", 1)[-1] for line in world.server.log().splitlines()]  # the log appends
    down = said.index("shutting down: live SSH connections end, then local workspaces stop")
    assert "stopped" in said[down:] and said.index("stopped", down) < len(said) - 1  # and up again after
    started = time.monotonic()
    wait_for(lambda: world.workspace()["agent_connected"], 10, what="agent to reconnect after a server restart")
    assert time.monotonic() - started < 5
    r = world.ssh("hatchway.dev", "echo after-restart")
    assert r.stdout == b"after-restart\n", r.stderr
    assert world.agent.proc is not None and world.agent.proc.poll() is None, "the agent was not restarted"


def test_connection_log_records_accepted_and_refused(world: World) -> None:
    world.ssh("hatchway.dev", "head -c 100000 /dev/zero")
    rows = world.alice.ok("audit", "connections", "--json").json()
    accepted = [c for c in rows if c["result"] == "closed" and c["workspace"] == "dev"]
    assert accepted, rows
    newest = accepted[0]
    assert newest["username"] == "bob" and newest["mode"] == "built-in" and newest["provider"] == "byo"
    assert newest["bytes_from_workspace"] > 100000 and newest["bytes_to_workspace"] > 0
    assert newest["source"].startswith("127.0.0.1 ") and newest["ended_at"] is not None
    table = world.alice.ok("audit", "connections", "--user", "bob", "--limit", "1").out.splitlines()
    assert table[0].split() == ["STARTED", "USER", "WORKSPACE", "PROVIDER", "SOURCE", "MODE", "RESULT", "IN", "OUT", "DURATION", "REASON"]
    cells = table[1].split()  # STARTED is a date and a time; SOURCE an address and a port
    assert cells[2:5] + cells[7:11] == ["bob", "dev", "byo", "built-in", "closed", str(newest["bytes_to_workspace"]),
                                        str(newest["bytes_from_workspace"])]
    assert cells[11].endswith("s") and cells[12:] == ["-"]  # a duration ("<1s", "2s"), no reason
    refused = [c for c in rows if c["result"] == "refused"]
    reasons = {c["reason"] for c in refused}
    assert 'SSH access to workspaces on provider "byo" is disabled by a site manager (External Connect is off)' in reasons
    assert any(c["result"] == "ended" for c in rows), "the session ended by External Connect off is recorded"
    mine = world.bob.ok("audit", "connections", "--json").json()
    assert {c["username"] for c in mine} == {"bob"}
    only = world.alice.ok("audit", "connections", "--user", "bob", "--workspace", "dev", "--limit", "2", "--json").json()
    assert len(only) == 2 and {(c["username"], c["workspace"]) for c in only} == {("bob", "dev")}
    # A stream opened with a bad token is refused and recorded too.
    r = subprocess.run([HATCHWAY, "proxy", "dev"], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL, env={**world.bob.env(), "HATCHWAY_CONFIG_DIR": str(world.tmp / "forged")})
    assert r.returncode == 1 and "not logged in" in r.stderr
    import websockets.sync.client as wsc
    with wsc.connect(world.server.url.replace("http", "ws") + "/api/v1/workspaces/dev/ssh",
                     additional_headers={"Authorization": "Bearer hws_forged"}) as ws:
        assert "session expired or revoked" in ws.recv(timeout=10)
    anon = world.alice.ok("audit", "connections", "--limit", "1", "--json").json()[0]
    assert (anon["username"], anon["result"], anon["workspace"]) == (None, "refused", "dev")
    assert anon["reason"].startswith("session expired or revoked")
    with api(world.server.url, _token(world.bob.config_dir)) as c:
        assert c.get("/audit").status_code == 403


def test_hatchway_ssh_shortcut(world: World) -> None:
    r = subprocess.run(
        [HATCHWAY, "ssh", "dev", "--", "echo", "via-shortcut", "&&", "exit", "5"],
        capture_output=True, text=True, env=world.bob.env(), timeout=60,
    )
    assert (r.returncode, r.stdout) == (5, "via-shortcut\n"), r.stderr
    r = subprocess.run([HATCHWAY, "ssh", "nope"], capture_output=True, text=True, env=world.bob.env(), timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip() == 'hatchway: no workspace named "nope" is yours; see "hatchway workspaces list"'


def _hatchway_ssh(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HATCHWAY, "ssh", *args], capture_output=True, text=True, env=world.bob.env(), timeout=60)


def test_hatchway_ssh_passes_ssh_options_as_ssh_reads_them(world: World) -> None:
    r = _hatchway_ssh(world, "-v", "dev", "--", "echo", "hi")
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr
    assert "debug1: " in r.stderr and "debug2: " not in r.stderr
    r = _hatchway_ssh(world, "-o", "LogLevel=DEBUG2", "dev", "true")
    assert r.returncode == 0, r.stderr
    assert "debug2: " in r.stderr
    r = _hatchway_ssh(world, "dev", "-v", "true")  # after the workspace, as ssh reads options too
    assert r.returncode == 0, r.stderr
    assert "debug1: " in r.stderr
    # After "--" (and once the command has started) everything is the command's, as before.
    r = _hatchway_ssh(world, "dev", "--", "echo", "-v")
    assert (r.returncode, r.stdout) == (0, "-v\n"), r.stderr
    assert "debug1: " not in r.stderr
    r = _hatchway_ssh(world, "dev", "echo", "-v")
    assert (r.returncode, r.stdout) == (0, "-v\n"), r.stderr
    assert "debug1: " not in r.stderr


def test_hatchway_ssh_forwards_a_local_port(world: World) -> None:
    with socket.create_server(("127.0.0.1", 0)) as service:
        service.settimeout(30)
        local = free_port()
        client = subprocess.Popen(
            [HATCHWAY, "ssh", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local}:127.0.0.1:{service.getsockname()[1]}",
             "dev", "--", "echo ready; exec sleep 60"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.bob.env(),
        )
        try:
            assert client.stdout is not None and client.stdout.readline() == b"ready\n"
            with socket.create_connection(("127.0.0.1", local), timeout=30) as through:
                conn, _ = service.accept()
                with conn:
                    conn.sendall(b"from the service")
                    through.sendall(b"from the laptop")
                    assert conn.recv(100) == b"from the laptop"
                assert through.recv(100) == b"from the service"
        finally:
            client.terminate()
            client.communicate(timeout=20)


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        (["-F", "/dev/null", "dev"], "-F: it would replace the ssh config that takes the connection through Hatchway"),
        (["-vJjump.example", "dev"], "-J: it would take the connection around Hatchway's ProxyCommand"),
        (["dev", "-J", "jump.example", "true"], "-J: it would take the connection around Hatchway's ProxyCommand"),
        (["-o", "ProxyCommand=nc %h %p", "dev"], "-o ProxyCommand" + PINNED),
        (["-oproxyjump jump.example", "dev"], "-o ProxyJump" + PINNED),
        (["-o", '"UserKnownHostsFile" /dev/null', "dev"], "-o UserKnownHostsFile" + PINNED),
        (["-A", "dev", "-o", "StrictHostKeyChecking=no", "true"], "-o StrictHostKeyChecking" + PINNED),
    ],
    ids=["-F", "-J in a cluster", "-J after the workspace", "-o", "-o attached, any case", "-o quoted keyword",
         "-o after the workspace"],
)
def test_hatchway_ssh_refuses_options_that_go_around_hatchway(world: World, args: list[str], refused: str) -> None:
    r = _hatchway_ssh(world, *args)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"hatchway: refusing {refused}; use plain ssh for that\n")


def test_hatchway_ssh_usage(world: World) -> None:
    for args, error in (
        (["-Z", "dev"], "-Z is not an ssh option (see man ssh)"),
        (["--verbose", "dev"], "'--verbose' is not an ssh option: ssh's options are single letters (see man ssh)"),
        (["-v", "-L"], "ssh's option -L needs a value"),
        (["-v"], "name the workspace to connect to"),
    ):
        r = _hatchway_ssh(world, *args)
        assert (r.returncode, r.stdout) == (2, ""), r
        assert r.stderr.endswith(f"\nError: {error}\n"), r.stderr
    # "--" before the workspace ends the options there, as with ssh: "-F" is the command's.
    r = _hatchway_ssh(world, "--", "dev", "echo", "-F")
    assert (r.returncode, r.stdout) == (0, "-F\n"), r.stderr
    r = _hatchway_ssh(world, "--help")
    assert r.returncode == 0 and "hatchway ssh -v -L 8080:localhost:8080 dev" in r.stdout, r


def test_config_ssh_dry_run_remove_and_user_content(world: World) -> None:
    user_config = "# mine\r\nHost *\r\n  User someone-else\r\n\r\nHost build\r\n  HostName 127.0.0.1\r\n"
    path = world.tmp / "user_ssh_config"
    path.write_bytes(user_config.encode())
    others = [*world.bob.config_dir.iterdir(), *(world.bob.home / ".ssh").iterdir()]
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in others}
    dry = world.bob.ok("config-ssh", "--ssh-config", str(path), "--dry-run").out
    assert dry.startswith(f"--- {path}") and "+Host hatchway.dev" in dry
    assert path.read_bytes() == user_config.encode(), "--dry-run writes nothing"
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in others} == before, "not even Hatchway's own files"
    world.bob.ok("config-ssh", "--ssh-config", str(path), "-y")
    written = path.read_bytes().decode()
    assert written.index("Host hatchway.dev") < written.index("Host *"), "our block precedes the user's Host *"
    assert written.endswith(user_config.split("Host *")[1]), "the user's content is kept byte for byte"
    # The user's `Host * / User someone-else` does not override ours: ssh still gets in.
    r = subprocess.run(["ssh", "-F", str(path), "-o", "BatchMode=yes", "hatchway.dev", "id -un"],
                       capture_output=True, text=True, env=world.bob.env(), timeout=60)
    assert (r.returncode, r.stdout.strip()) == (0, world.workspace()["os_user"]), r.stderr
    world.bob.ok("config-ssh", "--ssh-config", str(path), "--remove")
    assert path.read_bytes() == user_config.encode(), "--remove restores the user's file exactly"


def test_config_ssh_goes_above_an_include_that_brings_host_star(world: World) -> None:
    """An Include above the first Host (OrbStack, Colima and company add one) must not get its
    `Host *` read before our entries: that would undo the pinned host key and the user."""
    included = world.tmp / "included_ssh_config"
    included.write_text("Host *\n  User someone-else\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n")
    user_config = f"Include {included}\nHost build\n  HostName 127.0.0.1\n"
    path = world.tmp / "user_ssh_config_with_include"
    path.write_text(user_config)
    world.bob.ok("config-ssh", "--ssh-config", str(path), "-y")
    written = path.read_text()
    assert written.index("Host hatchway.dev") < written.index("Include "), "our block precedes the Include"
    assert written.endswith("\n" + user_config)
    got = subprocess.run(["ssh", "-G", "-F", str(path), "hatchway.dev"], capture_output=True, text=True,
                         env=world.bob.env(), timeout=30, check=True).stdout.splitlines()
    assert "stricthostkeychecking true" in got
    assert f"userknownhostsfile {world.bob.config_dir / 'known_hosts'}" in got
    r = subprocess.run(["ssh", "-F", str(path), "-o", "BatchMode=yes", "hatchway.dev", "id -un"],
                       capture_output=True, text=True, env=world.bob.env(), timeout=60, check=False)
    assert (r.returncode, r.stdout.strip()) == (0, world.workspace()["os_user"]), r.stderr
    world.bob.ok("config-ssh", "--ssh-config", str(path), "--remove")
    assert path.read_text() == user_config


def test_deleting_the_workspace_ends_live_sessions(world: World) -> None:
    """Runs last in this module: it deletes the shared workspace."""
    live = world.live_session()
    try:
        t0 = time.monotonic()
        world.bob.ok("workspaces", "delete", "dev", "--yes")
        live.wait(timeout=10)
        assert time.monotonic() - t0 < 2.5
        assert b'hatchway: workspace "bob/dev" was deleted' in live.stderr.read()  # type: ignore[union-attr]
    finally:
        live.kill()
        live.wait()
    r = world.ssh("hatchway.dev", "true")
    assert r.returncode == 255
    assert 'hatchway: no workspace named "dev" is yours' in r.stderr.decode()


def test_a_name_the_server_cannot_route_is_explained_by_the_proxy(world: World) -> None:
    """A workspace argument with a path or query in it never reaches Hatchway's code on the
    server (the router refuses it with a bare HTTP status): the proxy says what is wrong."""
    for target, shown in (("../../x?owner=admin", "'../x?owner=admin'"), ("bob/a/b", "'a/b'")):
        r = subprocess.run([HATCHWAY, "proxy", target], capture_output=True, text=True, timeout=30,
                           stdin=subprocess.DEVNULL, env=world.bob.env())
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr == (
            f"hatchway: invalid workspace name {shown}: use 1-63 lowercase letters, digits and '-', starting and "
            "ending with a letter or digit; name a workspace as NAME or OWNER/NAME (see: hatchway workspaces list)\n"
        )
