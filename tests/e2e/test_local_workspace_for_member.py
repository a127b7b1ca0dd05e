"""A site manager sets up a member's local workspace (``hatchway workspaces create OWNER/NAME``)
and, as root, it is the member's through and through: their Unix user ``hw-<member>-<name>``,
their name and email in its environment, their key in its authorized_keys, reached by the
member with the real OpenSSH client, and refused to the site manager who created it."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli
from tests.helpers.netns import local_workspaces_reason, sweep_local_workspaces
from tests.helpers.server import HATCHWAY, RunningServer



_REASON = local_workspaces_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_REASON is not None, reason=str(_REASON))]


@dataclass
class Onboarded:
    server: RunningServer
    alice: Cli  # site manager
    bob: Cli  # member, whose workspace alice created
    member: str  # bob's username: unique per run, so concurrent runs never share Unix user names
    created: str  # what ``workspaces create`` printed
    ws_id: str
    tmp: Path

    def ssh(self, who: Cli, config: Path, command: str, *opts: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *opts, "hatchway.dev", command],
            capture_output=True, text=True, timeout=30, env=who.env(),
        )


@pytest.fixture(scope="module")
def onboarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Onboarded]:
    tmp = tmp_path_factory.mktemp("onboard")
    server = RunningServer(tmp / "data")
    server.start()
    alice, bob = Cli(tmp / "alice"), Cli(tmp / "bob")
    member = "bob" + secrets.token_hex(3)
    ws_id = ""
    try:
        alice.login(server.url, "alice" + secrets.token_hex(3), "alice-password", first=True)
        alice.ok("users", "create", member, "--email", f"{member}@example.com", "--password-stdin", stdin="bob-password\n")
        bob.login(server.url, member, "bob-password")
        created = alice.ok("workspaces", "create", f"{member}/dev", "--env", "FOO=for bob").out
        ws_id = bob.ok("workspaces", "show", "dev", "--json").json()["id"]
        yield Onboarded(server, alice, bob, member, created, ws_id, tmp)
    finally:
        try:
            if server.proc is not None and server.proc.poll() is None and ws_id:
                alice.run("workspaces", "delete", f"{member}/dev", "-y")
        finally:
            if server.proc is not None:
                server.stop()
            sweep_local_workspaces(server.data_dir, [ws_id] if ws_id else [])


def test_the_site_manager_is_told_who_connects_and_how(onboarded: Onboarded) -> None:
    m = onboarded.member
    assert onboarded.created.splitlines() == [
        f"Created workspace dev for {m} on provider local (starting)",
        f"Workspace {m}/dev is running (agent connected)",
        f'Only {m} can connect: they run "hatchway config-ssh", then "ssh hatchway.dev"',
    ]


def test_the_member_lists_it_and_reaches_it_with_their_own_key(onboarded: Onboarded) -> None:
    m = onboarded.member
    rows = [line.split()[:4] for line in onboarded.bob.ok("workspaces", "list").out.splitlines()]
    assert rows == [["NAME", "OWNER", "PROVIDER", "STATE"], ["dev", m, "local", "running"]]
    config = onboarded.tmp / "bob_ssh_config"
    onboarded.bob.ok("config-ssh", "--ssh-config", str(config), "-y")
    r = onboarded.ssh(onboarded.bob, config, 'id -un; echo "$HATCHWAY_USER_NAME $HATCHWAY_USER_EMAIL $FOO"')
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"hw-{m}-dev", f"{m} {m}@example.com for bob"]
    # The agent wrote the owner's defaults into the managed section of ~/.ssh/environment.
    r = onboarded.ssh(onboarded.bob, config, "cat ~/.ssh/environment")
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("# ----------------- END HATCHWAY")[0].splitlines()
    assert section[4] == f"HATCHWAY_USER_EMAIL={m}@example.com"
    assert f"HATCHWAY_USER_NAME={m}" in section
    assert f"HATCHWAY_WORKSPACE_ID={onboarded.ws_id}" in section
    # ... and the owner's platform key, the only one, into the managed authorized_keys block.
    bob_key = onboarded.bob.ok("keys", "show", "--json").json()["public_key"]
    r = onboarded.ssh(onboarded.bob, config, "grep -v '^#' ~/.ssh/authorized_keys")
    assert (r.returncode, r.stdout) == (0, bob_key.strip() + "\n"), r.stderr


def test_the_site_manager_who_created_it_cannot_enter_it(onboarded: Onboarded) -> None:
    m = onboarded.member
    config = onboarded.tmp / "alice_ssh_config"
    cs = onboarded.alice.run("config-ssh", "--ssh-config", str(config), "-y")
    assert "hatchway.dev" not in (config.read_text() if config.exists() else ""), cs.out + cs.err
    key = onboarded.tmp / "alice_key"
    onboarded.alice.ok("keys", "download", "--output", str(key))
    r = subprocess.run(
        ["ssh", "-F", "none", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i", str(key),
         "-o", f"ProxyCommand={HATCHWAY} proxy {m}/dev", "-o", "StrictHostKeyChecking=no",
         "-o", f"UserKnownHostsFile={onboarded.tmp / 'alice_known_hosts'}", f"hw-{m}-dev@hatchway.dev", "id -un"],
        capture_output=True, text=True, timeout=30, env=onboarded.alice.env(),
    )
    assert (r.returncode, r.stdout) == (255, "")
    assert (f'hatchway: workspace "{m}/dev" belongs to another user; you can only connect to your own workspaces'
            in r.stderr.splitlines()), r.stderr
