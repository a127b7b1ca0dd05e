"""``hatchway server restore``: put a backup's database and deployment secret into a data dir.

Everything that can be checked is checked before anything is written: the archive's members
(hatchway.server.backup_format), the manifest's checksums, that this Hatchway knows the schema
revision, and that the secret is the one the database records (hatchway.server.secret_record),
since a database restored with another secret has every private key unreadable. Only then, with
the data dir taken as a server takes it (no server can start on it meanwhile, and none may be
running), are the files written: both new files (database and secret, 0600) whole and fsynced
in the 0700 data dir first, so that a full disk stops the restore before anything moves; then
the files it replaces (``--force``) are moved into a ``replaced-by-restore-<time>`` dir, never
deleted, and the new ones renamed into place. A failed rename moves the old files back.
Meanwhile ``restore.incomplete`` (hatchway.server.datadir.RESTORE_MARKER) keeps a server from
starting on a data dir that a killed restore left with a database but no secret, or neither.

A restore killed before it renamed its staged files into place leaves them behind (nothing
else can remove them: they are only ever renamed); the next restore, once it holds the data
dir, removes what matches their names, and says so.

Run as root into the data dir of a server that runs as its own user, ``hatchway server restore``
acts as that user once it has opened the backup (:func:`become_owner_of`): everything it places
is then theirs, as their server needs (files left root's, 0600, it could not open), and root
never works by path in a directory someone else can change under it.

A backup holding the secret alone (PostgreSQL, ``backup --secret-only``) is checked against the
database ``--db`` names, which the operator has restored with pg_restore first.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import sqlite3
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from hatchway import __version__
from hatchway.db.snapshot import DbFacts, integrity_problems, known_revisions, sqlite_facts
from hatchway.fileutil import atomic_write, fsync_dir, os_error_text
from hatchway.names import shown
from hatchway.server import datadir, secret_record
from hatchway.server.datadir import RESTORE_MARKER
from hatchway.server.backup import NOTHING, facts_of_postgres
from hatchway.server.backup_format import (
    DATABASE, MANIFEST, SECRET, BackupError, Manifest, RefusedArchive, check_digest, check_matches_manifest,
    check_members, parse_manifest, sha256,
)
from hatchway.server.crypto import parse_deployment_secret
from hatchway.server.errors import sqlite_file

#: What a restore replaces: the database with its WAL files and any rollback journal (SQLite would
#: roll a stale hot journal back into the restored database), the secret with a rotation's leftovers.
DATABASE_FILES = (DATABASE, DATABASE + "-wal", DATABASE + "-shm", DATABASE + "-journal")
SECRET_FILES = (SECRET, SECRET + ".new", SECRET + ".old")
_CHUNK = 1024 * 1024
#: What a staged file is named: tempfile.mkstemp's 8 random characters between ``.<final name>.``
#: and this suffix. Only these are removed as an earlier restore's leftovers.
_STAGING_SUFFIX = ".restoring"
_STAGING = re.compile(rf"\.(?:{re.escape(DATABASE)}|{re.escape(SECRET)})\.[a-z0-9_]{{8}}{re.escape(_STAGING_SUFFIX)}")


#: A file owner: (uid, gid).
Owner = tuple[int, int]


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    set_aside: Path | None  # where the replaced files went


def become_owner_of(data_dir: Path) -> Owner | None:
    """Run as root into a data dir another account owns, act as that account from here on, and
    say whom (None: nothing changed). For good: only a process that does nothing else afterwards
    calls this (the ``restore`` command, through :func:`restore`'s ``before_writing``, once the
    backup is open and checked and a PostgreSQL database read as whoever runs it).

    Root working by path in a directory another account can write could be raced into moving
    files anywhere (a symlink swapped in for the dir of the replaced files); as that account,
    restore can do no more than it could, and what it places is that account's, as its server
    needs. The account's groups are its own (initgroups), or none if it has no name here.

    A data dir not made yet is made by root, in a dir that must be root's: root does not act as
    whoever owns a dir above it (a dir someone made in /tmp, a mounted disk of another
    machine's uids), nor make a dir in theirs."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.stat(data_dir)
    except FileNotFoundError:
        _refuse_a_parent_of_another(data_dir)
        return None
    except OSError as exc:
        raise BackupError(f"cannot look at the data dir {data_dir}: {os_error_text(exc)}; {NOTHING}") from None
    if st.st_uid == 0:
        return None
    try:
        try:
            os.initgroups(pwd.getpwuid(st.st_uid).pw_name, st.st_gid)
        except KeyError:
            os.setgroups([])
        os.setresgid(st.st_gid, st.st_gid, st.st_gid)
        os.setresuid(st.st_uid, st.st_uid, st.st_uid)
    except OSError as exc:
        raise BackupError(f"cannot act as uid {st.st_uid}, the owner of the data dir {data_dir}: {os_error_text(exc)}; "
                          f"{NOTHING}") from None
    return st.st_uid, st.st_gid


def _refuse_a_parent_of_another(data_dir: Path) -> None:
    """A data dir not made yet, to be made by root: refused when the nearest dir above it that
    exists is another account's (:func:`become_owner_of`)."""
    above = data_dir.parent
    while True:
        try:
            st = os.stat(above)
            break
        except FileNotFoundError:
            above = above.parent
        except OSError as exc:
            raise BackupError(f"cannot look at {above}: {os_error_text(exc)}; {NOTHING}") from None
    if st.st_uid != 0:
        raise BackupError(
            f"the data dir {data_dir} does not exist yet, and {above}, where it would be made, belongs to uid "
            f"{st.st_uid}: run as root, restore would make it root's, which a server running as that account cannot "
            f"use. Make the data dir first as the account its server runs as (mkdir -m 700 -p {data_dir}, run as that "
            f"account), then run this again: restore then acts as that account; {NOTHING}"
        )


@dataclass(frozen=True)
class _Checked:
    manifest: Manifest
    secret: bytes
    tar: tarfile.TarFile
    db_member: tarfile.TarInfo | None


def _unreadable(archive: Path | str, why: str) -> BackupError:
    """Reading the backup failed, which is the backup's fault (or its disk's), not the data dir's."""
    return BackupError(
        f"cannot read the backup {archive}: {why}; {NOTHING} (the data dir is as it was). Check that the backup is "
        "whole (compare its size with the one the backup printed) and that the disk it is on reads without errors, "
        "or restore another copy of it"
    )


def _read_member(archive: Path | str, src: IO[bytes]) -> bytes:
    """Up to a chunk of the member ``src`` (all of the manifest or secret, which are far smaller); a
    read error says it was the backup's side that failed."""
    try:
        return src.read(_CHUNK)
    except OSError as exc:
        raise _unreadable(archive, os_error_text(exc)) from None
    except tarfile.ReadError as exc:  # the file ends before the member: it was cut short after it was checked
        raise _unreadable(archive, f"the file ends early ({exc}), so it was cut short after it was checked") from None


def _copy_hashing(archive: Path, src: IO[bytes], dst: IO[bytes] | None) -> str:
    digest = hashlib.sha256()
    while chunk := _read_member(archive, src):
        digest.update(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest()


#: What tarfile raises on a header it cannot parse (ValueError: e.g. a bad GNU.sparse.map).
_TAR_ERRORS = (tarfile.TarError, ValueError, OverflowError)


def _open_tar(name: str, fh: IO[bytes]) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=fh, mode="r:")  # reads the first header only
    except OSError as exc:
        raise _unreadable(name, os_error_text(exc)) from None
    except _TAR_ERRORS as exc:
        raise RefusedArchive(name, f"it is not a complete tar archive ({shown(str(exc))})") from None


def _headers(name: str, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The archive's headers one at a time, for check_members to check each before the next is
    read: getmembers() reads them all first, and follows a crafted header back to an earlier one
    forever (CVE-2025-8194)."""
    while True:
        try:
            member = tar.next()
        except OSError as exc:
            raise _unreadable(name, os_error_text(exc)) from None
        except _TAR_ERRORS as exc:
            raise RefusedArchive(name, f"it is not a complete tar archive ({shown(str(exc))})") from None
        if member is None:
            return
        yield member


def open_archive(archive: Path) -> int:
    """A descriptor reading ``archive``, opened without blocking (a FIFO must be refused, not
    waited on); what it is gets checked when it is read (:func:`restore`)."""
    try:
        return os.open(archive, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise BackupError(f"no such file: {archive}; name the file hatchway server backup wrote") from None
    except OSError as exc:
        raise BackupError(f"cannot read {archive}: {exc.strerror}") from None


@contextmanager
def _open_checked(archive: Path, fd: int) -> Iterator[_Checked]:
    """The archive (read through ``fd``, taken over), its members and checksums checked and
    nothing written; RefusedArchive if not."""
    name = str(archive)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            raise RefusedArchive(name, "it is empty or not a regular file")
        tar = _open_tar(name, fh)
        members = check_members(name, _headers(name, tar), st.st_size)
        by_name = {m.name: m for m in members}
        manifest = parse_manifest(name, _read_member(name, tar.extractfile(by_name[MANIFEST])))  # type: ignore[arg-type]
        check_matches_manifest(name, manifest, members)
        raw = _read_member(name, tar.extractfile(by_name[SECRET]))  # type: ignore[arg-type]
        check_digest(name, manifest, SECRET, sha256(raw))
        try:
            secret = parse_deployment_secret(raw.decode("ascii", "replace"), Path(f"{archive}:{SECRET}"))
        except ValueError:
            raise RefusedArchive(name, f"its {SECRET} holds no deployment secret") from None
        db_member = by_name.get(DATABASE)
        if db_member is not None:
            check_digest(name, manifest, DATABASE, _copy_hashing(archive, tar.extractfile(db_member), None))  # type: ignore[arg-type]
        if manifest.schema_revision not in known_revisions():
            raise BackupError(
                f"{archive} was made by Hatchway {shown(manifest.hatchway_version)} at schema revision "
                f"{shown(manifest.schema_revision)}, which this Hatchway ({__version__}) does not know: restore it with "
                f"Hatchway {shown(manifest.hatchway_version)} or later; {NOTHING}"
            )
        yield _Checked(manifest, secret, tar, db_member)


def _mismatch(archive: Path, which: str) -> BackupError:
    return BackupError(
        f"the deployment secret in {archive} is not the one {which} was set up with, so every user's private key "
        f"would be unreadable; restore a database and secret backed up together; {NOTHING}"
    )


def _take(data_dir: Path) -> int:
    """The data dir taken: the descriptor holding it. It must be the restoring account's own:
    working by path in another's, which they can change under it, is refused (a dir someone
    made at that path in /tmp meanwhile, say)."""
    try:
        fd = datadir.take(data_dir)
    except datadir.DataDirInUse as exc:
        who = f"a Hatchway server (pid {exc.pid})" if exc.pid else "a Hatchway server"
        raise BackupError(f"{who} is running on the data dir {data_dir}: stop it first, then restore; {NOTHING}") from None
    except PermissionError as exc:
        raise BackupError(f"cannot take the data dir {data_dir} as uid {os.geteuid()}: {exc.strerror}; that "
                          "account must be able to reach and write it, as a server running as it must; "
                          f"{NOTHING}") from None
    except OSError as exc:
        raise BackupError(f"cannot take the data dir {data_dir}: {exc}; {NOTHING}") from None
    try:
        owner = os.stat(data_dir).st_uid
    except OSError as exc:
        os.close(fd)
        raise BackupError(f"cannot look at the data dir {data_dir}: {os_error_text(exc)}; {NOTHING}") from None
    if owner != os.geteuid():
        os.close(fd)
        raise BackupError(
            f"the data dir {data_dir} belongs to uid {owner}, not to uid {os.geteuid()}, which restores into it (another "
            "account made it meanwhile, or it is not yours): restore into a data dir of your own; as root, restore acts "
            f"as the owner of a data dir that exists when it starts; {NOTHING}"
        )
    return fd


def _extract_database(checked: _Checked, archive: Path, data_dir: Path) -> Path:
    """The backup's database in a temp file in ``data_dir``, checked; removed again if refused."""
    tfd, tmp_name = tempfile.mkstemp(prefix=f".{DATABASE}.", suffix=_STAGING_SUFFIX, dir=data_dir)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(tfd, "wb") as out:
            digest = _copy_hashing(archive, checked.tar.extractfile(checked.db_member), out)  # type: ignore[arg-type]
            out.flush()
            os.fsync(out.fileno())
        check_digest(str(archive), checked.manifest, DATABASE, digest)  # the file changed since it was checked
        try:
            problems = integrity_problems(tmp)
            facts: DbFacts | None = None if problems else sqlite_facts(tmp)
        except sqlite3.Error as exc:
            raise RefusedArchive(str(archive), f"its {DATABASE} is not a Hatchway database ({exc})") from None
        if facts is None:
            raise RefusedArchive(str(archive), f"its {DATABASE} fails SQLite's integrity check ({problems[0]})")
        if facts.revision != checked.manifest.schema_revision:
            raise RefusedArchive(str(archive), f"its {DATABASE} is at schema revision {facts.revision}, not the "
                                               f"{checked.manifest.schema_revision} its {MANIFEST} says")
        if not secret_record.matches(facts.secret_check, checked.secret):
            raise _mismatch(archive, "its database")
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_secret(data_dir: Path, secret: bytes) -> Path:
    """The secret in a temp file in ``data_dir`` (0600, fsynced), ready to be renamed into place."""
    fd, name = tempfile.mkstemp(prefix=f".{SECRET}.", suffix=_STAGING_SUFFIX, dir=data_dir)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write((secret.hex() + "\n").encode())
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _remove_stale_staging(data_dir: Path) -> list[str]:
    """Remove the staged files an earlier restore left in ``data_dir`` when it was killed before
    renaming them into place; their names. Called with the data dir taken, so no restore still
    running can own them; only regular files named as restore names them are touched."""
    removed = []
    try:
        for entry in sorted(os.scandir(data_dir), key=lambda e: e.name):
            if _STAGING.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(entry.name)
    except OSError as exc:
        raise BackupError(f"cannot remove the files an earlier, interrupted restore staged in {data_dir}: "
                          f"{os_error_text(exc)}; remove them by hand (named .<file>.<8 characters>.restoring), "
                          "then run this again") from None
    return removed


def _stage(checked: _Checked, archive: Path, data_dir: Path) -> dict[str, Path]:
    """Every new file written and fsynced beside its final name: once files start to move, only
    renames are left, which need no space (the new database is what fills a disk)."""
    staged: dict[str, Path] = {}
    try:
        if checked.db_member is not None:
            staged[DATABASE] = _extract_database(checked, archive, data_dir)
        staged[SECRET] = _write_secret(data_dir, checked.secret)
    except BaseException as exc:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise BackupError(f"cannot write the restored files into {data_dir}: {os_error_text(exc)}; {NOTHING} "
                              "(the data dir is as it was)") from None
        raise
    return staged


def _begin(data_dir: Path, present: list[str]) -> Path | None:
    """The dir the replaced files go to (None: nothing to replace), and the marker naming it, which
    keeps a server from starting on the data dir until the restore is done (hatchway.server.datadir)."""
    aside = None
    if present:
        aside = data_dir / f"replaced-by-restore-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"
        aside.mkdir(mode=0o700)
    atomic_write(data_dir / RESTORE_MARKER, f"{aside or ''}\n".encode(), 0o600)
    fsync_dir(data_dir)
    return aside


def _roll_back(data_dir: Path, aside: Path | None, moved: list[str], placed: list[str], cause: OSError) -> BackupError:
    """Put the data dir back as it was after ``cause`` stopped the restore; the error to raise says how it ended."""
    failed = f"cannot restore into {data_dir}: {os_error_text(cause)}"
    try:
        for name in placed:
            if name not in moved:  # new where there was nothing: the moves back replace the others
                (data_dir / name).unlink()
        for name in moved:
            os.replace(aside / name, data_dir / name)  # type: ignore[operator]
        (data_dir / RESTORE_MARKER).unlink()
        fsync_dir(data_dir)
        if aside is not None:
            aside.rmdir()
    except OSError as again:
        where = f"the files it replaced are in {aside}" if moved else "it had replaced no files"
        return BackupError(
            f"{failed}, and putting the data dir back failed too ({os_error_text(again)}): {where}; move them back into "
            f"{data_dir} and remove {data_dir / RESTORE_MARKER}, or fix the cause and run this restore again with --force"
        )
    return BackupError(f"{failed}; the files it had moved aside are back in place, so the data dir is as it was")


def _commit(data_dir: Path, present: list[str], staged: dict[str, Path]) -> Path | None:
    """Set the ``present`` files aside and rename the ``staged`` ones into place, all or none."""
    try:
        aside = _begin(data_dir, present)
    except OSError as exc:
        (data_dir / RESTORE_MARKER).unlink(missing_ok=True)
        raise BackupError(f"cannot restore into {data_dir}: {os_error_text(exc)}; {NOTHING} (the data dir is as it was)") from None
    moved: list[str] = []
    placed: list[str] = []
    try:
        for name in present:
            os.replace(data_dir / name, aside / name)  # type: ignore[operator]
            moved.append(name)
        for name, tmp in staged.items():
            os.replace(tmp, data_dir / name)
            placed.append(name)
        fsync_dir(data_dir)
        (data_dir / RESTORE_MARKER).unlink()
        fsync_dir(data_dir)
    except OSError as exc:
        raise _roll_back(data_dir, aside, moved, placed, exc) from None
    return aside


def restore(archive: Path, data_dir: Path, db_url: str | None, *, report: Callable[[str], None],
            force: bool = False, archive_fd: int | None = None,
            before_writing: Callable[[], None] = lambda: None) -> RestoreResult:
    """Restore ``archive`` into ``data_dir`` (and check a secret-only one against ``db_url``);
    ``report`` is told what it cleaned up first, which stands even when the restore is refused.
    ``archive_fd``: the archive already opened (:func:`open_archive`), taken over.
    ``before_writing`` runs once everything is read and checked, just before the data dir is
    taken (the command's :func:`become_owner_of`)."""
    with _open_checked(archive, open_archive(archive) if archive_fd is None else archive_fd) as checked:
        full = checked.manifest.holds_database
        if full and db_url is not None and sqlite_file(db_url) != str(data_dir / DATABASE):
            raise BackupError(
                f"{archive} holds a SQLite database, which is restored into the data dir as {DATABASE}: leave out "
                f"--db (and unset HATCHWAY_DB), and start the server without it; {NOTHING}"
            )
        if not full:
            if db_url is None or sqlite_file(db_url) is not None:
                raise BackupError(
                    f"{archive} holds the deployment secret alone: its database is PostgreSQL's, restored with "
                    "pg_restore from the dump made with it; name that database with --db postgresql://… so the "
                    f"secret can be checked against it; {NOTHING}"
                )
            if not secret_record.matches(facts_of_postgres(db_url).secret_check, checked.secret):
                raise _mismatch(archive, "the database --db names")
        before_writing()
        fd = _take(data_dir)
        try:
            ours = (DATABASE_FILES + SECRET_FILES) if full else SECRET_FILES
            stale = _remove_stale_staging(data_dir)  # first: a killed restore's copy of a database takes room
            if stale:
                report(f"Removed {len(stale)} file(s) that an earlier, interrupted restore had staged in {data_dir}: "
                       f"{', '.join(stale)}.")
            try:
                staged = _stage(checked, archive, data_dir)  # before asking for --force: a mismatch is told first
                try:
                    present = [n for n in ours if os.path.lexists(data_dir / n)]
                    if present and not force:
                        raise BackupError(
                            f"the data dir {data_dir} already holds {', '.join(present)}; to replace them (they are "
                            f"kept in a replaced-by-restore-<time> dir beside them), run this again with --force; {NOTHING}"
                        )
                    aside = _commit(data_dir, present, staged)
                finally:
                    for tmp in staged.values():
                        tmp.unlink(missing_ok=True)  # left only if the restore stopped before renaming them
            except BackupError as exc:
                if not stale:
                    raise
                raise BackupError(f"{exc}; only the {len(stale)} file(s) the interrupted restore had staged are gone, "
                                  "as said above") from None
        finally:
            os.close(fd)
    return RestoreResult(checked.manifest, aside)
