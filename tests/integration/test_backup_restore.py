"""``hatchway server backup`` and ``restore`` with real server processes on real SQLite.

A backup taken while the server runs and users are being created is a consistent database
(SQLite's integrity check) with its secret; restored into a fresh data dir, a server starts on
it and gives a user the very private key they downloaded before. Every refusal (a server on the
data dir, data already there, a damaged, tampered, foreign or hostile archive, a secret that is
not the database's) says what happened and writes nothing.
"""

from __future__ import annotations

import asyncio
import grp
import io
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hatchway.db.engine import create_engine, sqlite_url_for
from hatchway.server.backup_format import sha256
from hatchway.server.web.format import human_bytes
from tests.helpers.cli import Cli
from tests.helpers.migrations import migrate
from tests.helpers.server import HATCHWAY, RunningServer, api, first_user, wait_for

NOTHING = "nothing was written"
REFUSED_TAIL = ("; nothing was written. Restore a file made by hatchway server backup, copied whole (compare its size "
                "with the one the backup printed)")


def hatchway(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("HATCHWAY_DB", "HATCHWAY_DATA_DIR")}
    return subprocess.run([HATCHWAY, "server", *args], capture_output=True, text=True, timeout=timeout, env={**environ, **(env or {})})


def tree(root: Path) -> dict[str, tuple[int, bytes]] | None:
    """Every file under ``root`` with its mode and content (None: ``root`` does not exist);
    server.lock's content is left out: it is the pid of whoever took the data dir last."""
    if not root.exists():
        return None
    return {str(p.relative_to(root)): (p.lstat().st_mode & 0o777, p.read_bytes() if p.is_file() and p.name != "server.lock" else b"")
            for p in sorted(root.rglob("*"))}


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]


def write_tar(path: Path, files: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in extra:
            tar.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))


def refused(archive: Path, reason: str) -> str:
    return f"Error: {archive} is not a usable Hatchway backup: {reason}{REFUSED_TAIL}\n"


@dataclass
class Deployment:
    server: RunningServer
    token: str  # alice's, the site manager
    bob: Cli
    tmp: Path

    @property
    def data(self) -> Path:
        return self.server.data_dir


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A server on SQLite with a site manager (alice), a member (bob) and one manual workspace."""
    server = RunningServer(tmp_path / "data")
    server.start()
    try:
        token = first_user(server.url, "alice", "alice-password-1")
        with api(server.url, token) as c:
            c.post("/users", json={"username": "bob", "email": "bob@example.com", "password": "bob-password-1"}).raise_for_status()
        alice = Cli(tmp_path / "alice")
        alice.login(server.url, "alice", "alice-password-1")
        alice.ok("providers", "create", "byo", "--kind", "manual")
        alice.ok("workspaces", "create", "box", "--provider", "byo")
        bob = Cli(tmp_path / "bob")
        bob.login(server.url, "bob", "bob-password-1")
        yield Deployment(server, token, bob, tmp_path)
    finally:
        if server.proc is not None:
            server.stop()


class UserWriter(threading.Thread):
    """Creates users through the API until stopped: the server writes throughout the backup."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.created = 0
        self.halt = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with api(self.url, self.token) as c:
                while not self.halt.is_set():
                    n = self.created
                    c.post("/users", json={"username": f"load{n}", "email": f"load{n}@example.com",
                                           "password": "load-password-1"}).raise_for_status()
                    self.created += 1
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.failure = exc


def wait_created(writer: UserWriter, at_least: int) -> None:
    wait_for(lambda: writer.created >= at_least or writer.failure, 30, what=f"{at_least} users created")
    assert writer.failure is None, writer.failure


def backup_line(out: Path, users: int, workspaces: int = 1) -> str:
    return (f"Wrote {out} ({human_bytes(out.stat().st_size)}, mode 0600): the SQLite database and the deployment secret; "
            f"schema revision 0007, {users} user(s), {workspaces} workspace(s).\n"
            "It opens every user's private key: keep it as safe as the deployment secret.\n")


def test_a_backup_taken_while_the_server_writes_restores_every_users_key(deployment: Deployment) -> None:
    d = deployment
    d.bob.ok("keys", "download", "--output", str(d.tmp / "bob-key-before"))
    out = d.tmp / "backups" / "hatchway.tar"
    out.parent.mkdir()

    writer = UserWriter(d.server.url, d.token)
    writer.start()
    try:
        wait_created(writer, 2)
        r = hatchway("backup", str(out), "--data-dir", str(d.data))
        during = writer.created
        wait_created(writer, during + 2)  # still writing after the backup: it never stopped the server
    finally:
        writer.halt.set()
        writer.join(30)
    assert writer.failure is None, writer.failure

    inside = members(out)
    manifest = json.loads(inside["manifest.json"])
    assert (r.returncode, r.stdout, r.stderr) == (0, backup_line(out, manifest["users"]), "")
    assert sorted(inside) == ["deployment.secret", "hatchway.db", "manifest.json"]
    assert os.listdir(out.parent) == ["hatchway.tar"] and out.stat().st_mode & 0o777 == 0o600
    assert inside["deployment.secret"] == (d.data / "deployment.secret").read_bytes()
    assert {k: v for k, v in manifest.items() if k not in ("created_at", "users", "secret_check")} == {
        "format": "hatchway-backup/1", "hatchway_version": "0.1.0", "schema_revision": "0007",
        "contents": "sqlite-database-and-secret", "database": "sqlite", "workspaces": 1,
        "files": {name: {"size": len(inside[name]), "sha256": sha256(inside[name])} for name in ("deployment.secret", "hatchway.db")},
    }
    (d.tmp / "copy.db").write_bytes(inside["hatchway.db"])
    copy = sqlite3.connect(d.tmp / "copy.db")
    assert copy.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    users = [row[0] for row in copy.execute("SELECT username FROM users")]
    copy.close()
    assert manifest["users"] == len(users) and 2 + 2 <= len(users) <= 2 + during  # alice, bob and what was created before it
    # one instant of the database: the users created one after another up to it, none missing
    assert sorted(users) == sorted(["alice", "bob"] + [f"load{i}" for i in range(len(users) - 2)])

    d.server.stop()
    restored = d.tmp / "elsewhere" / "data"
    r = hatchway("restore", str(out), "--data-dir", str(restored))
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        f"Restored the database and the deployment secret of {manifest['created_at']} (Hatchway 0.1.0, schema revision "
        f"0007, {len(users)} user(s), 1 workspace(s)) into {restored}.\n"), "")
    assert {name: mode for name, (mode, _) in tree(restored).items()} == {  # type: ignore[union-attr]
        "deployment.secret": 0o600, "hatchway.db": 0o600, "server.lock": 0o600}
    assert restored.stat().st_mode & 0o777 == 0o700
    assert (restored / "deployment.secret").read_bytes() == inside["deployment.secret"]
    assert (restored / "hatchway.db").read_bytes() == inside["hatchway.db"]

    server = RunningServer(restored)
    server.start()
    try:
        bob = Cli(d.tmp / "bob-on-the-new-machine")
        bob.login(server.url, "bob", "bob-password-1")
        bob.ok("keys", "download", "--output", str(d.tmp / "bob-key-after"))
        assert (d.tmp / "bob-key-after").read_bytes() == (d.tmp / "bob-key-before").read_bytes()
        with api(server.url, d.token) as c:  # alice's session came back with the database
            assert sorted(u["username"] for u in c.get("/users").json()) == sorted(users)
    finally:
        server.stop()


def make_backup(d: Deployment) -> Path:
    out = d.tmp / "good.tar"
    r = hatchway("backup", str(out), "--data-dir", str(d.data))
    assert r.returncode == 0, r.stderr
    return out


def test_restore_refuses_a_running_server_and_existing_data_unless_forced(deployment: Deployment) -> None:
    d = deployment
    out = make_backup(d)
    secret = (d.data / "deployment.secret").read_bytes()

    r = hatchway("restore", str(out), "--data-dir", str(d.data), "--force")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: a Hatchway server (pid {d.server.proc.pid}) is running on the data dir {d.data}: stop it first, then "  # type: ignore[union-attr]
        f"restore; {NOTHING}\n"))
    assert (d.data / "deployment.secret").read_bytes() == secret and not list(d.data.glob("replaced-by-restore-*"))

    d.server.stop()
    before = tree(d.data)
    assert sorted(before) == ["deployment.secret", "hatchway.db", "server.lock"]  # type: ignore[arg-type]
    r = hatchway("restore", str(out), "--data-dir", str(d.data))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: the data dir {d.data} already holds hatchway.db, deployment.secret; to replace them (they are kept in "
        f"a replaced-by-restore-<time> dir beside them), run this again with --force; {NOTHING}\n"))
    assert tree(d.data) == before

    # An archive that cannot be restored says so first, not that --force is needed.
    inside = members(out)
    other = (b"ab" * 32) + b"\n"
    body = json.loads(inside["manifest.json"])
    body["files"]["deployment.secret"] = {"size": len(other), "sha256": sha256(other)}
    tampered = d.tmp / "tampered.tar"
    write_tar(tampered, [("manifest.json", json.dumps(body).encode()), ("deployment.secret", other),
                         ("hatchway.db", inside["hatchway.db"])])
    r = hatchway("restore", str(tampered), "--data-dir", str(d.data))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: the deployment secret in {tampered} is not the one its database was set up with, so every user's "
        f"private key would be unreadable; restore a database and secret backed up together; {NOTHING}\n"))
    assert tree(d.data) == before

    journal = b"a stale rollback journal, which SQLite would play back into the restored database"
    (d.data / "hatchway.db-journal").write_bytes(journal)
    (d.data / "hatchway.db-journal").chmod(0o600)
    r = hatchway("restore", str(out), "--data-dir", str(d.data), "--force")
    [aside] = d.data.glob("replaced-by-restore-*")
    assert r.returncode == 0 and r.stderr == "" and r.stdout.endswith(f"into {d.data}.\nThe files it replaced are in {aside}.\n")
    assert tree(aside) == {**{name: before[name] for name in ("deployment.secret", "hatchway.db")},  # type: ignore[index]
                           "hatchway.db-journal": (0o600, journal)}
    assert not (d.data / "hatchway.db-journal").exists()
    assert aside.stat().st_mode & 0o777 == 0o700
    assert (d.data / "hatchway.db").read_bytes() == inside["hatchway.db"]
    assert (d.data / "deployment.secret").read_bytes() == inside["deployment.secret"]
    d.server.start()  # the restored pair is one the server accepts


def restored_line(archive: Path, data: Path) -> str:
    m = json.loads(members(archive)["manifest.json"])
    return (f"Restored the database and the deployment secret of {m['created_at']} (Hatchway 0.1.0, schema revision "
            f"{m['schema_revision']}, {m['users']} user(s), {m['workspaces']} workspace(s)) into {data}.\n")


def opens_as(owner: tuple[int, int], data: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """Open each of ``names`` (relative to ``data``) for reading and writing as ``owner``, as the
    server running as that user would: the child enters ``data`` before it drops root, so the
    dirs above it (root's, 0700) are not in the way, and only each file's own owner and mode count."""
    opens = " && ".join(f"exec {fd}<>'{name}'" for fd, name in enumerate(names, 3))
    return subprocess.run(["/bin/sh", "-c", opens], cwd=data, user=owner[0], group=owner[1], extra_groups=[],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A dir every account can pass through (pytest's own are root's, 0700), as the dirs above a
    server's data dir are for the account it runs as."""
    base = Path(tempfile.mkdtemp(prefix="hw-restore-owner-", dir="/tmp"))
    base.chmod(0o711)
    try:
        yield base
    finally:
        shutil.rmtree(base)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can act as another account: restore does so only as root")
def test_a_restore_as_root_acts_as_the_data_dirs_owner(deployment: Deployment, reachable: Path) -> None:
    d = deployment
    out = make_backup(d)  # root's, 0600: read before restore stops being root
    assert (out.stat().st_uid, out.stat().st_mode & 0o777) == (0, 0o600)
    d.server.stop()
    nobody = pwd.getpwnam("nobody")  # an existing unprivileged account: the server's own user, say
    owner = (nobody.pw_uid, nobody.pw_gid)
    owner_text = f"{nobody.pw_name}:{grp.getgrgid(nobody.pw_gid).gr_name} ({owner[0]}:{owner[1]})"

    def acting(data: Path) -> str:
        return (f"Restoring as {owner_text}, the owner of {data}, so that what it places is theirs and a server "
                "running as that user can open it.\n")

    data = reachable / "data"
    shutil.copytree(d.data, data)
    for path in (data, *data.iterdir()):
        os.chown(path, *owner)

    # Into the data dir of a server running as nobody: the new files, and the dir of the replaced ones, are nobody's.
    r = hatchway("restore", str(out), "--data-dir", str(data), "--force")
    assert (r.returncode, r.stderr) == (0, "")
    [aside] = data.glob("replaced-by-restore-*")
    assert r.stdout == f"{acting(data)}{restored_line(out, data)}The files it replaced are in {aside}.\n"
    placed = {str(p.relative_to(data)): (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode & 0o777)
              for p in data.rglob("*")}
    assert placed == {
        "deployment.secret": (*owner, 0o600), "hatchway.db": (*owner, 0o600), "server.lock": (*owner, 0o600),
        aside.name: (*owner, 0o700), f"{aside.name}/deployment.secret": (*owner, 0o600),
        f"{aside.name}/hatchway.db": (*owner, 0o600),
    }
    r = opens_as(owner, data, "hatchway.db", "deployment.secret", "server.lock", f"{aside.name}/hatchway.db")
    assert (r.returncode, r.stderr) == (0, "")

    # Into a new data dir made for it: the lock restore creates there is nobody's too.
    fresh = reachable / "fresh"
    fresh.mkdir(mode=0o700)
    os.chown(fresh, *owner)
    r = hatchway("restore", str(out), "--data-dir", str(fresh))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == f"{acting(fresh)}{restored_line(out, fresh)}"
    assert {p.name: (p.stat().st_uid, p.stat().st_gid, p.stat().st_mode & 0o777) for p in fresh.iterdir()} == {
        name: (*owner, 0o600) for name in ("deployment.secret", "hatchway.db", "server.lock")}
    r = opens_as(owner, fresh, "hatchway.db", "deployment.secret", "server.lock")
    assert (r.returncode, r.stderr) == (0, "")

    # A data dir not made yet, in a dir of nobody's (its home, say, or a dir anyone made in /tmp):
    # root neither makes it there (a server running as nobody could not use it) nor becomes
    # whoever owns a dir above it. Refused, saying how to go on; nothing is made.
    home = reachable / "home"
    home.mkdir(mode=0o700)
    os.chown(home, *owner)
    later = home / ".local" / "share" / "hatchway"
    r = hatchway("restore", str(out), "--data-dir", str(later))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"Error: the data dir {later} does not exist yet, and {home}, where it would be made, belongs to uid "
        f"{owner[0]}: run as root, restore would make it root's, which a server running as that account cannot use. "
        f"Make the data dir first as the account its server runs as (mkdir -m 700 -p {later}, run as that account), "
        "then run this again: restore then acts as that account; nothing was written\n"
    )
    assert list(home.iterdir()) == []

    # A data dir another account makes at that path after restore looked (in /tmp, say) is
    # refused once taken: root does not work by path in a dir someone else can change under it.
    raced = reachable / "raced"
    r = restore_in_child(out, raced, f"""
import hatchway.server.datadir as datadir
taking = datadir.take
def take(path):
    os.mkdir(path, 0o700)
    os.chown(path, {owner[0]}, {owner[1]})
    return taking(path)
datadir.take = take
""")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == (
        f"Error: the data dir {raced} belongs to uid {owner[0]}, not to uid 0, which restores into it (another account "
        "made it meanwhile, or it is not yours): restore into a data dir of your own; as root, restore acts as the "
        "owner of a data dir that exists when it starts; nothing was written\n"
    )
    assert sorted(p.name for p in raced.iterdir()) == ["server.lock"]

    # A data dir its owner cannot reach (root's dirs above it, 0700) is one its server could not
    # use either: refused, saying so, with nothing written.
    hidden = d.tmp / "hidden"
    hidden.mkdir(mode=0o700)
    os.chown(hidden, *owner)
    r = hatchway("restore", str(out), "--data-dir", str(hidden))
    assert (r.returncode, r.stdout) == (1, acting(hidden))
    assert r.stderr == (f"Error: cannot take the data dir {hidden} as uid {owner[0]}: Permission denied; that account "
                        "must be able to reach and write it, as a server running as it must; nothing was written\n")
    assert list(hidden.iterdir()) == []

    # Into root's own data dir, nobody else is acted as, and nothing more is said.
    own = d.tmp / "own"
    r = hatchway("restore", str(out), "--data-dir", str(own))
    assert (r.returncode, r.stdout, r.stderr) == (0, restored_line(out, own), "")
    assert {(p.stat().st_uid, p.stat().st_gid) for p in own.iterdir()} == {(0, 0)}


def test_restore_refuses_damaged_foreign_and_hostile_archives(deployment: Deployment) -> None:
    d = deployment
    good = make_backup(d)
    inside = members(good)
    with tarfile.open(good, "r:") as tar:
        db = tar.getmember("hatchway.db")
    whole = good.read_bytes()
    target = d.tmp / "target"
    other_secret = (b"ab" * 32) + b"\n"

    def manifest_for(secret: bytes, revision: str = "0007") -> bytes:
        body = json.loads(inside["manifest.json"])
        body["schema_revision"] = revision
        body["files"]["deployment.secret"] = {"size": len(secret), "sha256": sha256(secret)}
        return json.dumps(body).encode()

    cases: list[tuple[str, bytes | None, list[tuple[str, bytes]], list[tarfile.TarInfo], str]] = []
    flipped = bytearray(whole)
    flipped[db.offset_data + 100] ^= 0xFF
    cases.append(("flipped", bytes(flipped), [], [], "hatchway.db does not match its checksum in manifest.json (it was altered or damaged)"))
    cases.append(("truncated", whole[: db.offset_data + 1000], [], [], f"member 'hatchway.db' is cut off (the file ends before its {db.size} bytes do)"))
    cases.append(("empty", b"", [], [], "it is empty or not a regular file"))
    cases.append(("noise", os.urandom(4096), [], [], "it is not a complete tar archive (invalid header)"))
    good_files = [(n, inside[n]) for n in ("manifest.json", "deployment.secret", "hatchway.db")]
    escape = tarfile.TarInfo("../escaped")
    escape.size = 0
    cases.append(("traversal", None, good_files, [escape], "member '../escaped' points outside the archive ('..')"))
    absolute = tarfile.TarInfo(str(d.tmp / "absolute"))
    cases.append(("absolute", None, good_files, [absolute], f"member '{d.tmp / 'absolute'}' has an absolute path"))
    link = tarfile.TarInfo("hatchway.db")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    cases.append(("symlink", None, good_files[:2], [link], "member 'hatchway.db' is a link to '/etc/passwd'"))
    sparse = io.BytesIO()  # a second header tarfile raised ValueError on
    with tarfile.open(fileobj=sparse, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(tarfile.TarInfo("manifest.json"))
        bad = tarfile.TarInfo("deployment.secret")
        bad.pax_headers = {"GNU.sparse.map": "x,y"}
        tar.addfile(bad)
    cases.append(("sparse", sparse.getvalue(), [], [], "it is not a complete tar archive (invalid literal for int() with base 10: 'x')"))
    cases.append(("foreign", None, [("README", b"hello\n")], [], "member 'README' is not part of a Hatchway backup"))
    huge = tarfile.TarInfo("hatchway.db")
    huge.size = 1 << 40  # a header claiming a terabyte the file does not hold
    cases.append(("huge", None, good_files[:2], [huge], "member 'hatchway.db' is cut off (the file ends before its 1099511627776 bytes do)"))
    cases.append(("unknown revision", None, [("manifest.json", manifest_for(inside["deployment.secret"], "9999")), *good_files[1:]], [], ""))

    for label, raw, files, extra, reason in cases:
        archive = d.tmp / f"{label}.tar"
        if raw is not None:
            archive.write_bytes(raw)
        else:
            write_tar(archive, files, extra)
        r = hatchway("restore", str(archive), "--data-dir", str(target))
        if label == "unknown revision":
            assert r.stderr == (f"Error: {archive} was made by Hatchway 0.1.0 at schema revision 9999, which this Hatchway "
                                f"(0.1.0) does not know: restore it with Hatchway 0.1.0 or later; {NOTHING}\n"), label
        else:
            assert r.stderr == refused(archive, reason), label
        assert (r.returncode, r.stdout) == (1, ""), label
        assert tree(target) is None and not (d.tmp / "escaped").exists() and not (d.tmp / "absolute").exists(), label

    fifo = d.tmp / "fifo.tar"
    os.mkfifo(fifo)  # would block a reader that opened it to look
    r = hatchway("restore", str(fifo), "--data-dir", str(target))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", refused(fifo, "it is empty or not a regular file"))
    assert tree(target) is None

    # A secret that is not the database's, with a manifest that agrees with it: only the database can tell.
    tampered = d.tmp / "tampered.tar"
    write_tar(tampered, [("manifest.json", manifest_for(other_secret)), ("deployment.secret", other_secret),
                         ("hatchway.db", inside["hatchway.db"])])
    r = hatchway("restore", str(tampered), "--data-dir", str(target))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: the deployment secret in {tampered} is not the one its database was set up with, so every user's "
        f"private key would be unreadable; restore a database and secret backed up together; {NOTHING}\n"))
    assert tree(target) == {"server.lock": (0o600, b"")}  # the data dir was taken (no server may start meanwhile), no more


def test_backup_refusals_leave_no_file(deployment: Deployment) -> None:
    d = deployment
    out = d.tmp / "b.tar"
    out.write_bytes(b"an older backup")
    r = hatchway("backup", str(out), "--data-dir", str(d.data))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: {out} already exists; choose another name, or pass --force to replace it; {NOTHING}\n"))
    assert out.read_bytes() == b"an older backup"
    r = hatchway("backup", str(out), "--data-dir", str(d.data), "--force")
    assert (r.returncode, r.stdout, r.stderr) == (0, backup_line(out, 2), "")

    wrong = d.tmp / "wrong-data"
    wrong.mkdir(mode=0o700)
    (wrong / "deployment.secret").write_text("cd" * 32 + "\n")
    fresh = d.tmp / "fresh" / "b.tar"
    fresh.parent.mkdir()
    r = hatchway("backup", str(fresh), "--data-dir", str(wrong), "--db", f"sqlite:///{d.data / 'hatchway.db'}")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: the deployment secret in {wrong / 'deployment.secret'} is not the one the database was set up with, "
        "so the two together would open no one's private key: back up with the data dir the server runs with "
        f"(--data-dir) and the database it runs on (--db); {NOTHING}\n"))
    assert os.listdir(fresh.parent) == []  # no half file, no temp dir

    secret = (d.data / "deployment.secret").read_bytes()
    elsewhere = d.tmp / "db-elsewhere"
    os.link(d.data / "hatchway.db", elsewhere)
    linked = d.tmp / "linked-secret"
    linked.symlink_to(d.data / "deployment.secret")
    for own in (d.data / "hatchway.db", d.data / "hatchway.db-wal", d.data / "new.tar", elsewhere, linked):
        r = hatchway("backup", str(own), "--data-dir", str(d.data), "--force")
        assert (r.returncode, r.stdout, r.stderr) == (1, "", (
            f"Error: {own} is one of the deployment's own files or in its data dir {d.data}: write the backup somewhere "
            f"else, better on another disk; {NOTHING}\n")), own
    # the server runs on: its database is still its database, not a tar, and no backup landed beside it
    assert (d.data / "hatchway.db").read_bytes()[:16] == b"SQLite format 3\0" and not tarfile.is_tarfile(d.data / "hatchway.db-wal")
    assert (d.data / "deployment.secret").read_bytes() == secret and not (d.data / "new.tar").exists()

    pending = d.data / "deployment.secret.new"
    pending.write_text("ef" * 32 + "\n")  # what an interrupted rotate-secret leaves
    r = hatchway("backup", str(fresh), "--data-dir", str(d.data))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: {pending} exists: a secret rotation was interrupted; finish it with 'hatchway server rotate-secret "
        f"--data-dir {d.data}' (server stopped), start the server, then back up; {NOTHING}\n"))
    assert os.listdir(fresh.parent) == []
    pending.unlink()

    r = hatchway("backup", str(fresh), "--data-dir", str(d.data), "--secret-only")  # a file restore could not take
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "Error: --secret-only is for PostgreSQL, whose database pg_dump backs up; with SQLite the backup holds the "
        f"database and its deployment secret in one file: run this again without --secret-only; {NOTHING}\n"))
    assert os.listdir(fresh.parent) == []

    r = hatchway("backup", str(fresh), "--data-dir", str(d.data), env={"HATCHWAY_DB": "postgresql://hatchway@127.0.0.1:9/hatchway"})
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "Error: the database is PostgreSQL, which is PostgreSQL's to back up: run pg_dump on it (for example pg_dump "
        "--format=custom --file hatchway.pgdump with the same URL), then run this again with --secret-only for what "
        "only Hatchway has, the deployment secret that opens every user's private key, and keep the two files "
        f"together; {NOTHING}\n"))
    assert os.listdir(fresh.parent) == []


async def at_revision(url: str, revision: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(migrate, revision)
    finally:
        await engine.dispose()


def test_a_database_from_before_0006_is_backed_up_once_a_server_has_upgraded_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    asyncio.run(at_revision(sqlite_url_for(data), "0005"))  # as a Hatchway of before 0006 left it
    (data / "deployment.secret").write_text("5e" * 32 + "\n")
    (data / "deployment.secret").chmod(0o600)
    out = tmp_path / "backups" / "b.tar"
    out.parent.mkdir()
    r = hatchway("backup", str(out), "--data-dir", str(data))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        "Error: the database is at schema revision 0005; backups need revision 0006 or later, where the database "
        "records which deployment secret is its own (restore checks the two against each other): start hatchway "
        f"server on this data dir ({data}) once (it upgrades the schema), then run the backup again; {NOTHING}\n"))
    assert os.listdir(out.parent) == []

    server = RunningServer(data)
    server.start()
    server.stop()
    r = hatchway("backup", str(out), "--data-dir", str(data))
    assert (r.returncode, r.stdout, r.stderr) == (0, backup_line(out, 0, 0), "")


@pytest.mark.postgres
def test_with_postgresql_the_backup_is_the_secret_alone_and_restores_against_the_database(pg_url: str, tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "data", db_url=pg_url)
    server.start()
    try:
        token = first_user(server.url, "alice", "alice-password-1")
        with api(server.url, token) as c:
            c.post("/users", json={"username": "bob", "email": "bob@example.com", "password": "bob-password-1"}).raise_for_status()
        bob = Cli(tmp_path / "bob")
        bob.login(server.url, "bob", "bob-password-1")
        bob.ok("keys", "download", "--output", str(tmp_path / "bob-key-before"))
        out = tmp_path / "secret.tar"
        r = hatchway("backup", str(out), "--data-dir", str(server.data_dir), "--secret-only", env={"HATCHWAY_DB": pg_url})
        assert (r.returncode, r.stdout, r.stderr) == (0, (
            f"Wrote {out} ({human_bytes(out.stat().st_size)}, mode 0600): the deployment secret alone (no database: back "
            "it up with pg_dump); schema revision 0007, 2 user(s), 0 workspace(s).\n"
            "It opens every user's private key: keep it as safe as the deployment secret.\n"), "")
    finally:
        server.stop()
    inside = members(out)
    manifest = json.loads(inside["manifest.json"])
    assert sorted(inside) == ["deployment.secret", "manifest.json"]
    assert (manifest["contents"], manifest["database"], manifest["note"]) == (
        "secret-only", "postgresql", "The deployment secret and this manifest only: the PostgreSQL database is not in "
        "this file; back it up with pg_dump, and keep both together")

    fresh = tmp_path / "new-machine"
    r = hatchway("restore", str(out), "--data-dir", str(fresh))
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: {out} holds the deployment secret alone: its database is PostgreSQL's, restored with pg_restore from "
        "the dump made with it; name that database with --db postgresql://… so the secret can be checked against it; "
        f"{NOTHING}\n"))
    assert tree(fresh) is None
    r = hatchway("restore", str(out), "--data-dir", str(fresh), "--db", pg_url)
    assert (r.returncode, r.stdout, r.stderr) == (0, (
        f"Restored the deployment secret of {manifest['created_at']} (Hatchway 0.1.0, schema revision 0007, 2 user(s), "
        f"0 workspace(s)) into {fresh}.\n"), "")
    assert tree(fresh) == {"deployment.secret": (0o600, inside["deployment.secret"]), "server.lock": (0o600, b"")}

    moved = RunningServer(fresh, port=server.port, db_url=pg_url)  # where the CLI session points
    moved.start()
    try:
        bob.ok("keys", "download", "--output", str(tmp_path / "bob-key-after"))  # the same CLI session, on the new server
    finally:
        moved.stop()
    assert (tmp_path / "bob-key-after").read_bytes() == (tmp_path / "bob-key-before").read_bytes()


#: Run in a private mount namespace: a small tmpfs at argv[1] holding the data dir argv[2] (copied
#: in) with just enough room left for the restored database, then the restore of argv[3] with
#: --force; prints its exit code, stderr and the data dir's tree (the tmpfs goes with the namespace).
RESTORE_ON_A_FULL_DISK = r"""
import json, os, shutil, subprocess, sys
mount, source, archive, hatchway, db_size = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", mount], check=True)
data = os.path.join(mount, "data")
shutil.copytree(source, data)
os.chmod(data, 0o700)
page = os.statvfs(mount).f_frsize
room = os.statvfs(mount).f_bavail * page - -(-db_size // page) * page
with open(os.path.join(mount, "filler"), "wb") as fh:
    fh.write(b"\0" * room)
r = subprocess.run([hatchway, "server", "restore", archive, "--data-dir", data, "--force"], capture_output=True, text=True)
files = {os.path.relpath(os.path.join(d, f), data): open(os.path.join(d, f), "rb").read().hex()
         for d, _, fs in os.walk(data) for f in fs if f != "server.lock"}
print(json.dumps([r.returncode, r.stdout, r.stderr, files, sorted(os.listdir(data))]))
"""


def test_a_full_disk_during_restore_leaves_the_data_dir_as_it_was(deployment: Deployment) -> None:
    d = deployment
    out = make_backup(d)
    d.server.stop()
    db_size = len(members(out)["hatchway.db"])
    mount = d.tmp / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", RESTORE_ON_A_FULL_DISK,
         str(mount), str(d.data), str(out), HATCHWAY, str(db_size)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    code, stdout, stderr, files, names = json.loads(done.stdout)
    data = mount / "data"
    # The database fitted; the secret beside it did not: nothing was moved, no file is left half-done.
    assert (code, stdout, stderr) == (1, "", (
        f"Error: cannot write the restored files into {data}: the disk is full; {NOTHING} (the data dir is as it was)\n"))
    assert files == {name: (d.data / name).read_bytes().hex() for name in ("deployment.secret", "hatchway.db")}
    assert names == ["deployment.secret", "hatchway.db", "server.lock"]


def restore_in_child(archive: Path, data: Path, hook: str) -> subprocess.CompletedProcess[str]:
    """``restore --force`` of ``archive`` into ``data`` in a child that first runs ``hook``: Python
    that wraps a function of os or tempfile to act at one moment of the restore. Errors as the CLI
    gives them."""
    script = f"""
import errno, os, signal, sys, tempfile
from pathlib import Path
from hatchway.server.backup_format import BackupError
from hatchway.server.restore import restore
{hook}
try:
    restore(Path({str(archive)!r}), Path({str(data)!r}), None, report=print, force=True)
except BackupError as exc:
    sys.exit(f"Error: {{exc}}")
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def restore_failing_at(archive: Path, data: Path, name: str, failure: str) -> str:
    """Restore ``archive`` into ``data`` in a child whose rename of the new ``name`` (hatchway.db or
    deployment.secret) into place fails: with ENOSPC (``failure`` "enospc"), or by the process being
    killed there with SIGKILL ("kill"). The child's stderr."""
    r = restore_in_child(archive, data, f"""
real = os.replace
def replace(src, dst):
    if Path(dst) == Path({str(data / name)!r}) and Path(src).name.startswith({f".{name}."!r}):
        if {failure!r} == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
    real(src, dst)
os.replace = replace
""")
    assert r.returncode == (-signal.SIGKILL if failure == "kill" else 1), r.stderr
    return r.stderr


def test_a_backup_cut_short_after_its_checks_is_blamed_on_the_backup_not_the_data_dir(deployment: Deployment) -> None:
    d = deployment
    out = make_backup(d)
    d.server.stop()
    before = tree(d.data)
    with tarfile.open(out, "r:") as tar:
        db = tar.getmember("hatchway.db")
    # Checked whole, then cut in the middle of its database as restore starts to copy it into the data dir.
    r = restore_in_child(out, d.data, f"""
real = tempfile.mkstemp
def mkstemp(*args, **kwargs):
    if kwargs.get("prefix") == ".hatchway.db.":
        os.truncate({str(out)!r}, {db.offset_data + db.size // 2})
    return real(*args, **kwargs)
tempfile.mkstemp = mkstemp
""")
    assert out.stat().st_size == db.offset_data + db.size // 2
    assert (r.returncode, r.stdout, r.stderr) == (1, "", (
        f"Error: cannot read the backup {out}: the file ends early (unexpected end of data), so it was cut short after "
        f"it was checked; {NOTHING} (the data dir is as it was). Check that the backup is whole (compare its size with "
        "the one the backup printed) and that the disk it is on reads without errors, or restore another copy of it\n"))
    assert tree(d.data) == before


def test_a_restore_that_fails_after_moving_files_puts_them_back_or_keeps_the_server_from_starting(
        deployment: Deployment) -> None:
    d = deployment
    out = make_backup(d)
    with api(d.server.url, d.token) as c:  # the data dir now differs from the backup
        c.post("/users", json={"username": "carol", "email": "carol@example.com", "password": "carol-password-1"}).raise_for_status()
    d.server.stop()
    before = tree(d.data)

    # The failure is injected at the rename of the new secret into place (the database is in place by then).
    stderr = restore_failing_at(out, d.data, "deployment.secret", "enospc")
    assert stderr == (f"Error: cannot restore into {d.data}: the disk is full ({d.data / 'deployment.secret'}); the files "
                      "it had moved aside are back in place, so the data dir is as it was\n")
    assert tree(d.data) == before

    # Killed there: the marker keeps any server from starting on a database without its secret.
    assert restore_failing_at(out, d.data, "deployment.secret", "kill") == ""
    [aside] = d.data.glob("replaced-by-restore-*")
    with pytest.raises(RuntimeError) as refusal:
        d.server.start(timeout=15)
    marker = d.data / "restore.incomplete"
    assert (f"{marker} exists: a hatchway server restore into {d.data} was interrupted (the files it replaced are in "
            f"{aside}); finish it by running the same hatchway server restore again with --force, or move the files it "
            f"replaced back into {d.data} and remove {marker}; then start the server") in str(refusal.value)

    r = hatchway("restore", str(out), "--data-dir", str(d.data), "--force")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert not marker.exists() and tree(aside) == {n: before[n] for n in ("deployment.secret", "hatchway.db")}  # type: ignore[index]
    d.server.start()  # the backup's database with its secret: carol, created after it, is not there
    with api(d.server.url, d.token) as c:
        assert sorted(u["username"] for u in c.get("/users").json()) == ["alice", "bob"]


def test_a_restore_removes_what_a_killed_one_had_staged_and_nothing_else(deployment: Deployment) -> None:
    d = deployment
    out = make_backup(d)
    d.server.stop()
    inside = members(out)
    data = d.tmp / "new-data"
    data.mkdir(mode=0o700)
    lookalikes = {  # named almost as restore names what it stages, or not regular files: never removed
        ".hatchway.db.short.restoring": (0o600, b"1"), "hatchway.db.abcdefgh.restoring": (0o600, b"2"),
        ".hatchway.db.abcdefgh.restoring.keep": (0o600, b"3"), ".server.lock.abcdefgh.restoring": (0o600, b"4"),
        ".deployment.secret.ABCDEFGH.restoring": (0o600, b"5"), ".deployment.secret.abcdefgh.restoring": (0o700, b""),
        ".hatchway.db.zzzzzzzz.restoring": (0o777, b"1"),  # a link to the first
    }
    for name, (mode, content) in lookalikes.items():
        if name == ".deployment.secret.abcdefgh.restoring":
            (data / name).mkdir(mode=mode)
        elif name == ".hatchway.db.zzzzzzzz.restoring":
            (data / name).symlink_to(data / ".hatchway.db.short.restoring")
        else:
            (data / name).write_bytes(content)
            (data / name).chmod(mode)

    # Killed as it renames the first new file into place: both are still staged.
    assert restore_failing_at(out, data, "hatchway.db", "kill") == ""
    staged = sorted(set(os.listdir(data)) - set(lookalikes) - {"server.lock", "restore.incomplete"})
    assert [name.split(".")[1] for name in staged] == ["deployment", "hatchway"]
    assert (data / staged[1]).read_bytes() == inside["hatchway.db"]

    r = hatchway("restore", str(out), "--data-dir", str(data))
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == (f"Removed 2 file(s) that an earlier, interrupted restore had staged in {data}: {staged[0]}, "
                        f"{staged[1]}.\n{restored_line(out, data)}")
    assert tree(data) == {**lookalikes, "deployment.secret": (0o600, inside["deployment.secret"]),
                          "hatchway.db": (0o600, inside["hatchway.db"]), "server.lock": (0o600, b"")}
    r = hatchway("restore", str(out), "--data-dir", str(data), "--force")  # nothing left to remove: nothing said
    assert (r.returncode, r.stderr) == (0, "") and r.stdout.startswith(restored_line(out, data))

    # Refused for want of --force after removing another killed restore's file: the refusal says
    # what did change instead of "nothing was written" alone.
    before = tree(data)
    (data / ".hatchway.db.a1b2c3d4.restoring").write_bytes(b"half a database")
    r = hatchway("restore", str(out), "--data-dir", str(data))
    assert r.returncode == 1
    assert r.stdout == (f"Removed 1 file(s) that an earlier, interrupted restore had staged in {data}: "
                        ".hatchway.db.a1b2c3d4.restoring.\n")
    assert r.stderr == (
        f"Error: the data dir {data} already holds hatchway.db, deployment.secret; to replace them (they are kept in "
        "a replaced-by-restore-<time> dir beside them), run this again with --force; nothing was written; only the "
        "1 file(s) the interrupted restore had staged are gone, as said above\n")
    assert tree(data) == before


def header(name: str, size: int) -> bytes:
    """A ustar header for ``name`` claiming ``size`` bytes, in base-256 when negative (as no tar
    writer would: it is how a crafted archive sends a reader back to an earlier header)."""
    info = tarfile.TarInfo(name)
    info.mode = 0o600
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"\xff" + (size % 256 ** 11).to_bytes(11, "big") if size < 0 else b"%011o\0" % size
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def test_a_tar_crafted_to_loop_the_reader_is_refused_at_once(tmp_path: Path) -> None:
    # The third header's size of -1024 takes a reader back to the second, and from there to the
    # third again, for ever (CVE-2025-8194): 10 KB that made restore loop with its memory growing.
    archive = tmp_path / "loop.tar"
    archive.write_bytes(header("manifest.json", 0) + header("deployment.secret", 0) + header("hatchway.db", -1024)
                        + b"\0" * 8704)
    target = tmp_path / "data"
    r = hatchway("restore", str(archive), "--data-dir", str(target), timeout=20)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", refused(archive, "member 'hatchway.db' has a negative size (-1024)"))
    assert tree(target) is None


#: Run in a private mount namespace: a tmpfs of argv[2] bytes at argv[1], then ``hatchway server``
#: with the rest of argv; prints its exit code, stdout, stderr and what the tmpfs holds after it.
ON_A_SMALL_DISK = r"""
import json, os, subprocess, sys
mount, size = sys.argv[1], sys.argv[2]
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", mount], check=True)
r = subprocess.run(sys.argv[3:], capture_output=True, text=True)
print(json.dumps([r.returncode, r.stdout, r.stderr, os.listdir(mount)]))
"""


def on_a_small_disk(mount: Path, size: int, *args: str) -> tuple[int, str, str, list[str]]:
    mount.mkdir(exist_ok=True)
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", ON_A_SMALL_DISK,
                           str(mount), str(size), HATCHWAY, "server", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(json.loads(done.stdout))  # type: ignore[return-value]


def test_a_full_disk_under_out_is_blamed_on_out_and_leaves_nothing(deployment: Deployment) -> None:
    d = deployment
    db_size = len(members(make_backup(d))["hatchway.db"])
    mount = d.tmp / "small"
    out = mount / "b.tar"
    # Too small for the copy of the database: SQLite's error, but OUT's disk, not the database, is at fault.
    code, stdout, stderr, left = on_a_small_disk(mount, db_size // 2, "backup", str(out), "--data-dir", str(d.data))
    assert (code, stdout, left) == (1, "", [])
    assert stderr == (f"Error: cannot write the backup into {mount}: the disk is full (database or disk is full); free "
                      f"space there, or choose another place for it; {NOTHING}\n")
    # Room for the copy, not for the archive beside it.
    code, stdout, stderr, left = on_a_small_disk(mount, db_size * 3 // 2, "backup", str(out), "--data-dir", str(d.data))
    assert (code, stdout, left) == (1, "", [])
    assert stderr == f"Error: cannot write the backup into {mount}: the disk is full; free space there, or choose another place for it; {NOTHING}\n"


def backup_without_hard_links(out: Path, data: Path) -> subprocess.CompletedProcess[str]:
    """``backup`` in a child whose link() fails with EPERM, as it does on vfat and exFAT (the
    failure is injected there: mounting one needs a loop device, which is the machine's)."""
    script = f"""
import errno, os, sys
from pathlib import Path
from hatchway.db.engine import sqlite_url_for
from hatchway.server.backup import backup
from hatchway.server.backup_format import BackupError
def link(src, dst):
    raise OSError(errno.EPERM, os.strerror(errno.EPERM), src, dst)
os.link = link
try:
    backup(Path({str(out)!r}), Path({str(data)!r}), sqlite_url_for(Path({str(data)!r})))
except BackupError as exc:
    sys.exit(f"Error: {{exc}}")
"""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_a_backup_is_written_where_hard_links_are_not_supported_and_still_replaces_nothing(deployment: Deployment) -> None:
    d = deployment
    out = d.tmp / "nolinks" / "b.tar"
    out.parent.mkdir()
    r = backup_without_hard_links(out, d.data)
    assert (r.returncode, r.stderr) == (0, "")
    assert os.listdir(out.parent) == ["b.tar"] and out.stat().st_mode & 0o777 == 0o600
    assert members(out)["deployment.secret"] == (d.data / "deployment.secret").read_bytes()
    before = out.read_bytes()
    r = backup_without_hard_links(out, d.data)
    assert (r.returncode, r.stderr) == (1, f"Error: {out} already exists; choose another name, or pass --force to replace it; {NOTHING}\n")
    assert out.read_bytes() == before and os.listdir(out.parent) == ["b.tar"]
