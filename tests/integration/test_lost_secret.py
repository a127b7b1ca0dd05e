"""``hatchway server rotate-secret --old-secret-lost``: the way out for a deployment whose
database was set up with a deployment secret no data dir holds any more. A server refuses to
start on it and says so; the command (confirmed) makes a new secret, gives every user a new key
pair sealed with it and audits that, in one transaction between the same ``.old``/``.new`` files
as a rotation, so a run cut short is finished by running it again. It is refused when the secret
is not lost (the one in the data dir is the database's, or a server runs on the database).
Both databases, with real server and CLI processes.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from hatchway.server import rotate
from hatchway.server.crypto import SECRET_FILE
from tests.helpers.cli import Cli
from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.server import HATCHWAY, RunningServer, api, first_user

REFUSED = (
    "cannot start: this server's deployment secret differs from the one this deployment's database was set up with; "
    "every replica needs the same secret: copy deployment.secret from a running replica's data dir into this one's, "
    "or put back the one this database was set up with (to change the secret, stop every replica and run hatchway "
    "server rotate-secret). Last resort, if no data dir, replica or backup holds that secret any more: stop every "
    "replica and run hatchway server rotate-secret --old-secret-lost, which gives every user a new SSH key pair"
)
UNCONFIRMED = (
    "Error: --old-secret-lost gives every user a new SSH key pair (2 user(s)): their current private keys cannot be "
    "opened without the lost secret, so each of them must run hatchway config-ssh again afterwards; nothing was "
    "changed. If no data dir, replica or backup holds the secret this database was set up with, run this again "
    "with --replace-every-users-key\n"
)
SOURCE = f"hatchway server rotate-secret on {socket.gethostname()}"[:100]
FINISHED = "Finished the interrupted rotation: the new deployment secret is in place.\n"


def done(data_dir: Path, users: int) -> str:
    return (
        f"Made a new deployment secret and gave {users} user(s) a new SSH key pair (their old private keys cannot "
        "be opened any more).\n"
        "Next:\n"
        f"  1. With several replicas, copy {data_dir / SECRET_FILE} into each one's data dir; then start the "
        "server(s).\n"
        "  2. Every user runs hatchway config-ssh again to download their new key (or hatchway keys download).\n"
        "  3. Running workspaces' agents keep retrying the stopped server and, once it is back, rewrite "
        "authorized_keys with the new public key as they reconnect (within seconds): until then the old key is "
        "the one they accept. Stopped workspaces get the new key when they start.\n"
    )


@dataclass
class Deployment:
    server: RunningServer
    alice: Cli  # the site manager
    bob: Cli  # a member
    tmp: Path

    @property
    def data(self) -> Path:
        return self.server.data_dir

    def rotate(self, *flags: str) -> subprocess.CompletedProcess[str]:
        argv = [HATCHWAY, "server", "rotate-secret", "--data-dir", str(self.data), "--db", str(self.server.db_url), *flags]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)

    def secret_files(self) -> list[str]:
        return sorted(p.name for p in self.data.glob(SECRET_FILE + "*"))


@pytest.fixture
def deployment(db_url: str, tmp_path: Path) -> Iterator[Deployment]:
    """A server on ``db_url`` with a site manager and a member, each signed in with the CLI."""
    server = RunningServer(tmp_path / "server-data", db_url=db_url)
    server.start()
    try:
        token = first_user(server.url, "alice", "alice-password-1")
        with api(server.url, token) as c:
            c.post("/users", json={"username": "bob", "email": "bob@example.com", "password": "bob-password-1"}).raise_for_status()
        alice, bob = Cli(tmp_path / "alice"), Cli(tmp_path / "bob")
        alice.login(server.url, "alice", "alice-password-1")
        bob.login(server.url, "bob", "bob-password-1")
        yield Deployment(server, alice, bob, tmp_path)
    finally:
        if server.proc is not None:
            server.stop()


def _public_half(pem_path: Path) -> str:
    key = serialization.load_ssh_private_key(pem_path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def _key(cli: Cli) -> dict[str, str]:
    return cli.ok("keys", "show", "--json").json()


def _lose_the_secret(d: Deployment) -> None:
    """The data dir lost its secret: the server makes a new one at its next start, and is refused."""
    d.server.stop()
    (d.data / SECRET_FILE).unlink()
    with pytest.raises(RuntimeError) as refused:
        d.server.start()
    said = [line for line in str(refused.value).splitlines() if "cannot start" in line]
    assert len(said) == 1 and said[0].split()[2] == "ERROR" and said[0].split(": ", 1)[1] == REFUSED, str(refused.value)


@ON_BOTH_DATABASES
def test_a_lost_secret_is_replaced_with_new_keys_for_everyone(deployment: Deployment) -> None:
    d = deployment
    before = {name: _key(cli) for name, cli in (("alice", d.alice), ("bob", d.bob))}
    d.bob.ok("keys", "download", "--output", str(d.tmp / "bob-old-key"))
    assert _public_half(d.tmp / "bob-old-key") == before["bob"]["public_key"].rsplit(" ", 1)[0]
    _lose_the_secret(d)
    wrong = (d.data / SECRET_FILE).read_text()

    r = d.rotate()  # a plain rotation cannot open the keys, and says where the way out is
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: the secret in {d.data / SECRET_FILE} does not open every user's key; nothing was changed (is this "
        "the data directory that belongs to this database? If no data dir, replica or backup holds the secret it "
        "was set up with any more, see rotate-secret --old-secret-lost)\n"
    ))
    r = d.rotate("--old-secret-lost")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", UNCONFIRMED)
    assert (d.data / SECRET_FILE).read_text() == wrong and d.secret_files() == [SECRET_FILE]

    r = d.rotate("--old-secret-lost", "--replace-every-users-key")
    assert (r.returncode, r.stdout, r.stderr) == (0, done(d.data, 2), "")
    assert (d.data / SECRET_FILE).read_text() != wrong and d.secret_files() == [SECRET_FILE]

    d.server.start()
    after = {name: _key(cli) for name, cli in (("alice", d.alice), ("bob", d.bob))}  # CLI sessions kept
    for name in after:
        assert after[name]["public_key"] != before[name]["public_key"], name
        assert after[name]["fingerprint"] != before[name]["fingerprint"], name
        assert after[name]["public_key"].endswith(f" hatchway-{name}"), after[name]
    r = d.bob.ok("keys", "download", "--output", str(d.tmp / "bob-new-key"))
    assert r.out == f"Wrote {d.tmp / 'bob-new-key'} (mode 0600), {after['bob']['fingerprint']}\n"
    assert _public_half(d.tmp / "bob-new-key") == after["bob"]["public_key"].rsplit(" ", 1)[0]

    events = d.alice.ok("audit", "list", "--json").json()
    mine = [{k: e[k] for k in ("actor", "action", "target", "detail", "source")} for e in events
            if e["action"] in ("key.regenerate", rotate.LOST_SECRET_ACTION)]
    assert sorted(mine, key=lambda e: (e["action"], e["target"])) == [
        {"actor": None, "action": "deployment.secret-replaced-lost", "target": "deployment.secret",
         "detail": {"keys_replaced": 2}, "source": SOURCE},
        *({"actor": None, "action": "key.regenerate", "target": name,
           "detail": {"old": before[name]["fingerprint"], "new": after[name]["fingerprint"],
                      "reason": "deployment secret lost"}, "source": SOURCE} for name in ("alice", "bob")),
    ]


@ON_BOTH_DATABASES
def test_it_is_refused_when_the_secret_is_not_lost(deployment: Deployment) -> None:
    d = deployment
    before = _key(d.bob)
    d.server.stop()
    secret = (d.data / SECRET_FILE).read_text()
    r = d.rotate("--old-secret-lost", "--replace-every-users-key")
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr == (
        f"Error: the secret in {d.data / SECRET_FILE} is the one this deployment's database was set up with: it is "
        "not lost, and every user's key can be kept; nothing was changed (to replace the secret, run hatchway "
        "server rotate-secret without --old-secret-lost)\n"
    )
    assert (d.data / SECRET_FILE).read_text() == secret and d.secret_files() == [SECRET_FILE]
    d.server.start()
    assert _key(d.bob) == before

    # Another data dir (a replica that lost its file) while a server runs on the database: not lost either.
    other = d.tmp / "other-data"
    other.mkdir(mode=0o700)
    r = subprocess.run([HATCHWAY, "server", "rotate-secret", "--data-dir", str(other), "--db", str(d.server.db_url),
                        "--old-secret-lost", "--replace-every-users-key"], capture_output=True, text=True, timeout=120,
                       check=False)
    replica_id = _replica_id(d.server.db_url)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: a Hatchway server is running on this database (replica {replica_id}, reachable at {d.server.url}), "
        "so the deployment secret is not lost: copy deployment.secret from its data dir instead; nothing was "
        "changed (if it was just stopped, run this again in 4 s)\n"
    ))
    assert sorted(p.name for p in other.iterdir()) == ["server.lock"]
    assert _key(d.bob) == before

    # The confirmation means nothing without --old-secret-lost.
    d.server.stop()
    r = d.rotate("--replace-every-users-key")
    assert r.returncode == 2 and r.stderr.endswith(
        "Error: --replace-every-users-key confirms --old-secret-lost; without it, nothing is replaced but the secret\n"
    ), r.stderr
    assert (d.data / SECRET_FILE).read_text() == secret


def _rows(db_url: str | None, sql: str) -> list[tuple[object, ...]]:
    """``sql``'s rows, read from the test's database (either kind) as the server reads it."""
    from sqlalchemy import text

    from hatchway.db.engine import create_engine

    assert db_url is not None

    async def query() -> list[tuple[object, ...]]:
        engine = create_engine(db_url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in (await conn.execute(text(sql))).all()]
        finally:
            await engine.dispose()

    return asyncio.run(query())


def _replica_id(db_url: str | None) -> str:
    rows = _rows(db_url, "SELECT id FROM replicas")
    assert len(rows) == 1, rows
    return str(rows[0][0])


def _audit_count(db_url: str | None) -> int:
    """Audit rows of the lost secret's replacement (its own event and the users' new keys)."""
    rows = _rows(db_url, "SELECT count(*) FROM audit_events WHERE source LIKE 'hatchway server rotate-secret on %'")
    return int(rows[0][0])  # type: ignore[call-overload]


@ON_BOTH_DATABASES
def test_a_run_cut_short_is_finished_by_running_it_again(deployment: Deployment) -> None:
    d = deployment
    before = _key(d.bob)
    _lose_the_secret(d)
    wrong = (d.data / SECRET_FILE).read_text()
    url = str(d.server.db_url)

    # Cut short inside the transaction: nothing reached the database, so the next run starts again.
    real_record = rotate.secret_record.record

    async def crash_in_transaction(*args: object) -> None:
        raise OSError("simulated crash before the commit")

    rotate.secret_record.record = crash_in_transaction  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="simulated crash before the commit"):
            asyncio.run(rotate.replace_lost_secret(d.data, url, confirmed=True))
    finally:
        rotate.secret_record.record = real_record  # type: ignore[assignment]
    assert d.secret_files() == [SECRET_FILE, SECRET_FILE + ".new", SECRET_FILE + ".old"]
    assert (d.data / (SECRET_FILE + ".old")).read_text() == wrong
    assert _audit_count(d.server.db_url) == 0
    # Cut short after the commit, before the new secret is in place.
    real_put = rotate._put_in_place

    def crash_before_rename(new_path: Path, current_path: Path) -> None:
        raise OSError("simulated crash after the commit")

    rotate._put_in_place = crash_before_rename  # type: ignore[assignment]
    try:
        with pytest.raises(OSError, match="simulated crash after the commit"):
            asyncio.run(rotate.replace_lost_secret(d.data, url, confirmed=True))
    finally:
        rotate._put_in_place = real_put  # type: ignore[assignment]
    assert d.secret_files() == [SECRET_FILE, SECRET_FILE + ".new", SECRET_FILE + ".old"]
    assert (d.data / SECRET_FILE).read_text() == wrong
    assert _audit_count(d.server.db_url) == 3  # the operator's event and two users' new keys, once
    with pytest.raises(RuntimeError, match="rotation was interrupted"):
        d.server.start(timeout=15)

    r = d.rotate("--old-secret-lost")  # finishing replaces nothing more: no confirmation needed
    assert (r.returncode, r.stdout, r.stderr) == (0, FINISHED, "")
    assert d.secret_files() == [SECRET_FILE] and (d.data / SECRET_FILE).read_text() != wrong
    assert _audit_count(d.server.db_url) == 3
    d.server.start()
    after = _key(d.bob)
    assert after["public_key"] != before["public_key"]
    d.bob.ok("keys", "download", "--output", str(d.tmp / "bob-new-key"))
    assert _public_half(d.tmp / "bob-new-key") == after["public_key"].rsplit(" ", 1)[0]

