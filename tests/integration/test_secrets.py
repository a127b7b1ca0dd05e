"""Secrets: never in a log or the database in the clear, private files and directories, and a
deployment secret that can be rotated without losing anyone's key (even if rotation is cut short).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway.server import rotate
from hatchway.server.crypto import SECRET_FILE
from tests.helpers.cli import Cli
from tests.helpers.server import HATCHWAY, api, wait_for
from tests.helpers.world import World, build_world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("secrets"))
    try:
        yield w
    finally:
        w.close()


def _key_body(pem: str) -> list[str]:
    """The base64 lines of a private key: any one of them in a log is a leak."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_no_secret_reaches_a_log_or_the_database_in_the_clear(world: World) -> None:
    secrets: dict[str, str] = {}
    # Everything that happens in a day: CLI logins, a failed login (the password typed into the
    # username field too), key download and regeneration, agent token rotation, SSH.
    cli = Cli(world.tmp / "bob-cli")
    cli.login(world.url, "bob", world.people["bob"].password)
    bad = cli.run("login", world.url, "--username", world.people["bob"].password, "--password-stdin",
                  stdin="bob-password-1\n")
    assert bad.code != 0
    cli.ok("keys", "download", "--output", str(world.tmp / "bob-key"))
    ssh_config = world.tmp / "bob-ssh-config"
    cli.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
    if shutil.which("ssh"):
        r = subprocess.run(["ssh", "-F", str(ssh_config), "-o", "BatchMode=yes", "hatchway.dev", "echo ok"],
                           capture_output=True, env=cli.env(), timeout=60, check=False)
        assert r.stdout == b"ok\n", r.stderr
        cli_output = r.stderr.decode(errors="replace")
    else:
        cli_output = ""
    session = json.loads((cli.config_dir / "session.json").read_text())["token"]
    secrets["bob's CLI session token"] = session
    for name, p in world.people.items():
        secrets[f"{name}'s API token"] = p.token
        secrets[f"{name}'s password"] = p.password
        for i, line in enumerate(_key_body(p.key_pem)):
            secrets[f"{name}'s private key line {i}"] = line
    for owner, token in world.agent_tokens.items():
        secrets[f"{owner}'s agent token"] = token
    with world.api("carol") as c:
        carol_new = c.post("/workspaces/dev/agent-token").json()["agent_token"]
        secrets["carol's replaced agent token"] = carol_new
        regenerated = c.get("/users/me/key/private").json()["private_key"]
        c.post("/users/me/key/regenerate").raise_for_status()
        newest = c.get("/users/me/key/private").json()["private_key"]
    for label, pem in (("carol's old", regenerated), ("carol's new", newest)):
        for i, line in enumerate(_key_body(pem)):
            secrets[f"{label} private key line {i}"] = line
    wait_for(lambda: "agent token not valid" in world.agents["carol"].log() or "refused" in world.agents["carol"].log(), 10,
             what="carol's agent to notice its token was replaced")
    secrets["deployment secret"] = (world.server.data_dir / SECRET_FILE).read_text().strip()
    secrets["bob's host key"] = "\n".join(_key_body((world.agents["bob"].state_dir / "ssh_host_ed25519_key").read_text()))

    logs = {
        "server log": world.server.log(),
        **{f"{owner}'s agent log": a.log() for owner, a in world.agents.items()},
        "ssh -v/CLI stderr": cli_output + bad.err + bad.out,
    }
    assert all(logs.values()), "every log has content"
    leaks = [f"{what} in the {where}" for what, value in secrets.items() for where, text in logs.items() if value in text]
    assert not leaks, leaks
    # The database holds hashes and sealed keys only (checked in the raw file, WAL included).
    raw = b"".join(p.read_bytes() for p in world.server.data_dir.glob("hatchway.db*"))
    in_db = [what for what, value in secrets.items() if value.encode() in raw]
    assert not in_db, in_db
    print(f"\nsecrets checked: {len(secrets)} in {len(logs)} logs and the database")


def test_secret_files_are_0600_and_their_directories_0700(world: World) -> None:
    cli = Cli(world.tmp / "alice-cli")
    cli.login(world.url, "alice", world.people["alice"].password)
    cli.ok("keys", "download", "--output", str(cli.home / ".ssh" / "hatchway_key"))
    checked = []
    for root in (world.server.data_dir, cli.config_dir, world.agents["bob"].state_dir):
        assert _mode(root) == 0o700, root
        for dirpath, dirnames, filenames in os.walk(root):
            for d in dirnames:
                assert _mode(Path(dirpath) / d) & 0o077 == 0, Path(dirpath) / d
            for f in filenames:
                path = Path(dirpath) / f
                assert _mode(path) & 0o077 == 0, f"{path} is {oct(_mode(path))}"
                checked.append(path)
    for path in (world.server.data_dir / SECRET_FILE, world.server.data_dir / "hatchway.db",
                 cli.config_dir / "session.json", cli.home / ".ssh" / "hatchway_key",
                 world.agents["bob"].state_dir / "ssh_host_ed25519_key"):
        assert _mode(path) == 0o600, path
    ssh_dir = world.agents["bob"].home / ".ssh"
    assert _mode(ssh_dir) == 0o700 and _mode(ssh_dir / "authorized_keys") == 0o600
    assert len(checked) >= 6


def test_rotating_the_deployment_secret_keeps_every_key_even_when_interrupted(world: World) -> None:
    before = {}
    for name, p in world.people.items():
        with world.api(name) as c:
            before[name] = c.get("/users/me/key/private").json()["private_key"]
    data = world.server.data_dir
    secret_path = data / SECRET_FILE
    old_secret = secret_path.read_text()
    world.server.stop()

    # A rotation that dies after committing, before the new secret is in place.
    real = rotate._put_in_place

    def crash(new_path: Path, current_path: Path) -> None:
        raise OSError("simulated crash")

    rotate._put_in_place = crash  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="simulated crash"):
            asyncio.run(rotate.rotate_secret(data, f"sqlite:///{data / 'hatchway.db'}"))
    finally:
        rotate._put_in_place = real  # type: ignore[assignment]
    assert (data / (SECRET_FILE + ".new")).exists() and (data / (SECRET_FILE + ".old")).read_text() == old_secret
    assert secret_path.read_text() == old_secret
    with pytest.raises(RuntimeError, match="rotation was interrupted"):
        world.server.start(timeout=15)  # the server refuses to run with half a rotation

    # Not while a server runs on the data dir (one that holds its lock stands in for it here).
    holder = subprocess.Popen(["flock", "--no-fork", "-x", str(data / "server.lock"), "sleep", "60"])
    try:
        wait_for(lambda: subprocess.run(["flock", "-n", str(data / "server.lock"), "true"]).returncode != 0, 5,
                 what="the stand-in server to hold the lock")
        r = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(data)], capture_output=True,
                           text=True, timeout=60, check=False)
        assert r.returncode == 1 and r.stderr.strip().startswith("Error: another Hatchway server"), r.stderr
        assert "is using the data dir" in r.stderr and secret_path.read_text() == old_secret
    finally:
        holder.kill()
        holder.wait()

    r = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(data)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and "Finished the interrupted rotation" in r.stdout, r.stdout + r.stderr
    once = secret_path.read_text()
    assert once != old_secret
    # And a clean rotation through the documented command.
    r = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(data)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0 and f"re-sealed {len(world.people)} private key(s)" in r.stdout, r.stdout + r.stderr
    assert secret_path.read_text() not in (old_secret, once)
    assert _mode(secret_path) == 0o600
    assert sorted(p.name for p in data.glob(SECRET_FILE + "*")) == [SECRET_FILE], "no backup or new file left"
    # A wrong secret is refused before anything changes.
    saved = secret_path.read_text()
    secret_path.write_text("ab" * 32 + "\n")
    r = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(data)], capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode != 0 and "does not open every user's key" in r.stderr
    secret_path.write_text(saved)

    world.server.start()
    for name in world.people:
        with world.api(name) as c:
            assert c.get("/users/me/key/private").json()["private_key"] == before[name], name
    with api(world.url) as c:  # passwords and tokens were never sealed: they keep working
        assert c.post("/auth/login", json={"username": "bob", "password": "bob-password-1"}).status_code == 200
    wait_for(lambda: world.workspace("bob")["agent_connected"], 15, what="bob's agent back after the restart")
