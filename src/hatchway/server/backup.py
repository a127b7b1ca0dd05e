"""``hatchway server backup``: the control plane's state in one file, taken while it runs.

The control plane's state is the database and the deployment secret that seals every user's
private key in it: one without the other restores no one's key, so a backup holds both, and
is refused when the data dir's secret is not the one the database records. With SQLite the
database is copied with SQLite's online backup API (hatchway.db.snapshot), never as a file,
while the server keeps running. A PostgreSQL database is PostgreSQL's to back up (pg_dump):
``--secret-only`` then gives what only Hatchway has, the secret, with a manifest that says
which database and schema revision it belongs to.

The file is built in a private temp dir beside OUT and linked into place only when complete,
so a failed backup never leaves a half file under OUT's name.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import shutil
import sqlite3
import tarfile
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from hatchway import __version__
from hatchway.db.snapshot import (
    SECRET_RECORD_REVISION, DbFacts, copy_sqlite, integrity_problems, postgres_facts, predates_secret_record, sqlite_facts,
)
from hatchway.fileutil import NotRegularFileError, fsync_dir, os_error_text, read_regular
from hatchway.server import secret_record
from hatchway.server.backup_format import (
    DATABASE, FULL, LIMITS, MANIFEST, SECRET, SECRET_ONLY, BackupError, FileEntry, Manifest, sha256,
)
from hatchway.server.crypto import parse_deployment_secret
from hatchway.server.errors import db_out_of_space, sqlite_file

NOTHING = "nothing was written"
POSTGRES_REFUSAL = (
    "the database is PostgreSQL, which is PostgreSQL's to back up: run pg_dump on it (for example "
    "pg_dump --format=custom --file hatchway.pgdump with the same URL), then run this again with --secret-only "
    "for what only Hatchway has, the deployment secret that opens every user's private key, and keep the two "
    f"files together; {NOTHING}"
)

#: A secret-only backup of a SQLite deployment could only be restored beside a database copied
#: some other way, which restore cannot check; the full backup is one file already.
SQLITE_SECRET_ONLY_REFUSAL = (
    "--secret-only is for PostgreSQL, whose database pg_dump backs up; with SQLite the backup holds the database and "
    f"its deployment secret in one file: run this again without --secret-only; {NOTHING}"
)


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    manifest: Manifest


def read_secret(data_dir: Path) -> tuple[bytes, bytes]:
    """The data dir's deployment secret: the file's bytes and the secret they hold."""
    path = data_dir / SECRET
    if (data_dir / (SECRET + ".new")).exists():  # the database may hold keys sealed with the new one
        raise BackupError(
            f"{path}.new exists: a secret rotation was interrupted; finish it with 'hatchway server rotate-secret "
            f"--data-dir {data_dir}' (server stopped), start the server, then back up; {NOTHING}"
        )
    try:
        _, raw = read_regular(path, LIMITS[SECRET])
    except FileNotFoundError:
        raise BackupError(f"no deployment secret at {path}: is --data-dir the server's data dir? {NOTHING}") from None
    except (NotRegularFileError, OSError) as exc:
        raise BackupError(f"cannot read the deployment secret: {exc}; {NOTHING}") from None
    try:
        return raw, parse_deployment_secret(raw.decode("ascii", "replace"), path)
    except ValueError as exc:
        raise BackupError(f"{exc}; {NOTHING}") from None


def _cannot_write(out: Path, why: str) -> BackupError:
    return BackupError(f"cannot write the backup into {out.parent}: {why}; free space there, or choose another place "
                       f"for it; {NOTHING}")


def _facts_of_copy(source: Path, copy: Path, out: Path) -> DbFacts:
    """The facts of a consistent copy of ``source`` made at ``copy`` (beside ``out``)."""
    try:
        copy_sqlite(source, copy)
        problems = integrity_problems(copy)
        if problems:
            raise BackupError(
                f"the database {source} fails SQLite's integrity check ({problems[0]}): it is damaged; "
                f"restore the last good backup instead; {NOTHING}"
            )
        return sqlite_facts(copy)
    except sqlite3.Error as exc:
        if db_out_of_space(exc, str(copy)):  # the copy's disk, OUT's, not the database's
            raise _cannot_write(out, f"the disk is full ({exc})") from None
        raise BackupError(f"cannot back up the database {source}: {exc}; is it a Hatchway database? {NOTHING}") from None


def facts_of_postgres(db_url: str) -> DbFacts:
    """The facts of the PostgreSQL database at ``db_url``, or BackupError saying it cannot be read."""
    try:
        return asyncio.run(postgres_facts(db_url))
    except (OSError, SQLAlchemyError) as exc:
        said = str(getattr(exc, "orig", None) or exc).partition("\n")[0]
        raise BackupError(f"cannot read the database named by --db ({said}); check that it is running and that --db "
                          f"names the server's; {NOTHING}") from None


def _check_pair(facts: DbFacts, secret: bytes, secret_path: Path, where: str) -> None:
    """The database records ``secret``; ``where`` names what a server must be started on to make it
    record one (the data dir, or the database --db names)."""
    if predates_secret_record(facts.revision):
        raise BackupError(
            f"the database is at schema revision {facts.revision}; backups need revision {SECRET_RECORD_REVISION} or "
            "later, where the database records which deployment secret is its own (restore checks the two against "
            f"each other): start hatchway server on {where} once (it upgrades the schema), then run the backup again; "
            f"{NOTHING}"
        )
    if facts.revision is None or facts.secret_check is None:
        raise BackupError(
            "the database records no deployment secret yet: start hatchway server on it once (it records its "
            f"secret at start), then back up again; {NOTHING}"
        )
    if not secret_record.matches(facts.secret_check, secret):
        raise BackupError(
            f"the deployment secret in {secret_path} is not the one the database was set up with, so the two "
            "together would open no one's private key: back up with the data dir the server runs with "
            f"(--data-dir) and the database it runs on (--db); {NOTHING}"
        )


def _member(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o600, mtime
    return info


def _write_archive(target: Path, manifest: Manifest, secret_raw: bytes, db_copy: Path | None, mtime: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
            body = manifest.to_json()
            tar.addfile(_member(MANIFEST, len(body), mtime), io.BytesIO(body))
            tar.addfile(_member(SECRET, len(secret_raw), mtime), io.BytesIO(secret_raw))
            if db_copy is not None:
                with open(db_copy, "rb") as db:
                    tar.addfile(_member(DATABASE, db_copy.stat().st_size, mtime), db)
        fh.flush()
        os.fsync(fh.fileno())


def _put_in_place(built: Path, out: Path, force: bool) -> None:
    """``built`` becomes ``out``: replacing it only with ``force``, and never half-written."""
    if force:
        os.replace(built, out)
    else:
        try:
            os.link(built, out)  # fails, rather than replaces, if OUT appeared meanwhile
        except FileExistsError:
            raise _exists(out) from None
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            _claim_and_replace(built, out)
    fsync_dir(out.parent)


#: What link() says on a file system without hard links: vfat and exFAT (EPERM), some SMB and FUSE ones.
_NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def _exists(out: Path) -> BackupError:
    return BackupError(f"{out} already exists; choose another name, or pass --force to replace it; {NOTHING}")


def _claim_and_replace(built: Path, out: Path) -> None:
    """``built`` becomes ``out`` where hard links are not supported: OUT is first created empty with
    O_EXCL, which fails, as link() would, if it exists, and the rename then replaces only that
    empty file of ours (removed again if the rename fails)."""
    try:
        os.close(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except FileExistsError:
        raise _exists(out) from None
    try:
        os.replace(built, out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _refuse_own_files(out: Path, data_dir: Path, db_path: str | None) -> None:
    """OUT may be none of the deployment's files, nor in its data dir: with --force the backup would
    replace the live database or secret with a tar, and a backup there is lost with the data dir."""
    inside = Path(os.path.realpath(out)).is_relative_to(os.path.realpath(data_dir))
    own = [data_dir / SECRET, *(Path(db_path + suffix) for suffix in ("", "-wal", "-shm") if db_path is not None)]
    if inside or any(f.exists() and out.exists() and os.path.samefile(out, f) for f in own):
        raise BackupError(f"{out} is one of the deployment's own files or in its data dir {data_dir}: write the backup "
                          f"somewhere else, better on another disk; {NOTHING}")


def backup(out: Path, data_dir: Path, db_url: str, *, secret_only: bool = False, force: bool = False) -> BackupResult:
    """Write the backup of the deployment at ``data_dir`` and ``db_url`` to ``out``."""
    db_path = sqlite_file(db_url)
    if db_path is None and not secret_only:
        raise BackupError(POSTGRES_REFUSAL)
    if db_path is not None and secret_only:
        raise BackupError(SQLITE_SECRET_ONLY_REFUSAL)
    _refuse_own_files(out, data_dir, db_path)
    if out.exists() and not force:
        raise _exists(out)
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent} is not a directory: create it first, or choose another place; {NOTHING}")
    secret_raw, secret = read_secret(data_dir)
    check = secret_record.check_value(secret)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))  # 0700
    except OSError as exc:
        raise _cannot_write(out, os_error_text(exc)) from None
    try:
        copy = None if secret_only else work / DATABASE
        if copy is not None:
            source = Path(db_path)  # type: ignore[arg-type]
            if not source.is_file():
                raise BackupError(f"no database at {source}: is --data-dir the server's data dir? {NOTHING}")
            facts = _facts_of_copy(source, copy, out)
        else:
            facts = facts_of_postgres(db_url)
        _check_pair(facts, secret, data_dir / SECRET,
                    f"this data dir ({data_dir})" if db_path is not None else "this database (the one --db names)")
        files = {SECRET: FileEntry(len(secret_raw), sha256(secret_raw))}
        if copy is not None:
            with open(copy, "rb") as fh:
                files[DATABASE] = FileEntry(copy.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest())
        manifest = Manifest(
            hatchway_version=__version__, schema_revision=str(facts.revision), created_at=now.isoformat().replace("+00:00", "Z"),
            contents=SECRET_ONLY if secret_only else FULL, database="sqlite" if db_path is not None else "postgresql",
            users=facts.users, workspaces=facts.workspaces, secret_check=check, files=files,
        )
        built = work / "backup.tar"
        try:
            _write_archive(built, manifest, secret_raw, copy, int(now.timestamp()))
            _put_in_place(built, out, force)
        except OSError as exc:
            raise _cannot_write(out, os_error_text(exc)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return BackupResult(out, out.stat().st_size, manifest)
