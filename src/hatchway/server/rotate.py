"""``hatchway server rotate-secret``: replace the deployment secret without losing anyone's key.

Users' private keys are sealed under a key derived from the deployment secret, so a new secret
means re-sealing every one of them. The steps are ordered so that a crash at any point loses
nothing and running the command again finishes the job:

1. the current secret is copied to ``deployment.secret.old`` (the backup) and the new one is
   written to ``deployment.secret.new``, both 0600 and fsynced;
2. one database transaction opens every user's sealed key with the old secret and seals it with
   the new one (each checked by opening it again) — all of them or none — and records the new
   secret's check, which every server starting on the database compares with its own
   (hatchway.server.secret_record);
3. ``deployment.secret.new`` is renamed over ``deployment.secret``, and only then is the backup
   removed.

While ``deployment.secret.new`` exists the server refuses to start (see
:func:`hatchway.server.crypto.load_or_create_deployment_secret`): after a crash between 2 and 3
the database already holds keys sealed with the new secret. Run the command with the server
stopped (every replica, with PostgreSQL): a running server keeps sealing with the secret it read
at start.

``--old-secret-lost`` (:func:`replace_lost_secret`) is the last resort when no copy of the secret
the database was set up with is left anywhere: the sealed keys cannot be opened, so instead of
re-sealing them step 2 gives every user a new key pair (as ``keys regenerate`` does) sealed with
the new secret, audits it, and records the new secret's check; steps 1 and 3 are the same, and
so is finishing an interrupted run by running the command again.
"""

from __future__ import annotations

import hmac
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cryptography.exceptions import InvalidTag
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import DeploymentSecret, Replica, User, utcnow
from hatchway.fileutil import atomic_write, fsync_dir
from hatchway.server import secret_record
from hatchway.server.api.users import set_user_key
from hatchway.server.audit import record
from hatchway.server.cluster import FORGET_AFTER_S
from hatchway.server.crypto import SECRET_FILE, SecretBox, parse_deployment_secret

NEW_SUFFIX = ".new"
OLD_SUFFIX = ".old"
#: The audit action of ``rotate-secret --old-secret-lost`` (each user's new key is a ``key.regenerate``).
LOST_SECRET_ACTION = "deployment.secret-replaced-lost"
LOST_SECRET_REASON = "deployment secret lost"
CONFIRM_FLAG = "--replace-every-users-key"


class RotationError(Exception):
    """The rotation cannot go ahead; nothing was changed (the message says what to do)."""


@dataclass
class RotationResult:
    keys_resealed: int
    finished_earlier_run: bool = False
    keys_replaced: int = 0  # --old-secret-lost: users given a new key pair


def _read_secret(path: Path) -> bytes:
    """The secret in ``path``, read as the server reads it; RotationError when it holds none."""
    try:
        return parse_deployment_secret(path.read_text(errors="replace"), path)
    except ValueError as exc:
        raise RotationError(f"{exc}; nothing was changed") from None


def _write_secret(path: Path, secret: bytes) -> None:
    atomic_write(path, (secret.hex() + "\n").encode(), 0o600)
    fsync_dir(path.parent)


def _put_in_place(new_path: Path, current_path: Path) -> None:
    """Step 3: the new secret replaces the current one (atomic rename, then the directory synced)."""
    os.replace(new_path, current_path)
    fsync_dir(current_path.parent)


@dataclass(frozen=True)
class _SecretFiles:
    """The data dir's secret and the two files a rotation keeps beside it until it is done."""

    current: Path
    new: Path
    old: Path

    @classmethod
    def of(cls, data_dir: Path) -> _SecretFiles:
        return cls(data_dir / SECRET_FILE, data_dir / (SECRET_FILE + NEW_SUFFIX), data_dir / (SECRET_FILE + OLD_SUFFIX))

    def finish(self) -> None:
        """After the commit: the new secret in place, then the old one's backup gone."""
        _put_in_place(self.new, self.current)
        self.old.unlink(missing_ok=True)


def _key_context(user: User) -> str:
    return f"user-key:{user.id}"  # as hatchway.server.api.users seals them


def _opens_all(box: SecretBox, users: list[User]) -> bool:
    try:
        for u in users:
            box.open(u.ssh_private_key_sealed, _key_context(u))
    except (InvalidTag, ValueError):
        return False
    return True


async def rotate_secret(data_dir: Path, db_url: str, new_secret: bytes | None = None) -> RotationResult:
    files = _SecretFiles.of(data_dir)
    current_path, new_path, old_path = files.current, files.new, files.old
    if not current_path.exists():
        raise RotationError(f"no deployment secret at {current_path}: is --data-dir the server's data directory?")
    current = _read_secret(current_path)
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        sessions = sessionmaker(engine)
        async with sessions() as db:
            users = list((await db.execute(select(User).order_by(User.id))).scalars())
            if new_path.exists():
                pending = _read_secret(new_path)
                if users and _opens_all(SecretBox(pending), users):
                    # An earlier run committed the re-sealed keys and stopped before the rename.
                    files.finish()
                    return RotationResult(0, finished_earlier_run=True)
                new_path.unlink()  # it never reached the database: start again
            old_box = SecretBox(current)
            if not _opens_all(old_box, users):
                raise RotationError(
                    f"the secret in {current_path} does not open every user's key; nothing was changed "
                    "(is this the data directory that belongs to this database? If no data dir, replica or backup "
                    "holds the secret it was set up with any more, see rotate-secret --old-secret-lost)"
                )
            fresh = new_secret or secrets.token_bytes(32)
            new_box = SecretBox(fresh)
            _write_secret(old_path, current)  # the backup, until the new secret is in place
            _write_secret(new_path, fresh)
            for u in users:
                pem = old_box.open(u.ssh_private_key_sealed, _key_context(u))
                u.ssh_private_key_sealed = new_box.seal(pem, _key_context(u))
                if new_box.open(u.ssh_private_key_sealed, _key_context(u)) != pem:  # pragma: no cover
                    raise RotationError(f're-sealing the key of "{u.username}" failed; nothing was changed')
            await secret_record.record(db, secret_record.check_value(fresh))
            await db.commit()
    finally:
        await engine.dispose()
    files.finish()
    return RotationResult(len(users))


def _operator_source() -> str:
    """The audit ``source`` of an action taken at the server's shell rather than over HTTP."""
    return f"hatchway server rotate-secret on {socket.gethostname()}"[:100]


async def _refuse_if_a_server_runs(db: AsyncSession) -> None:
    """A replica that beat within FORGET_AFTER_S is running (a clean stop removes its row): it
    joined with the secret the database records, so that secret is not lost."""
    now = utcnow()
    live = list((await db.execute(
        select(Replica).where(Replica.heartbeat_at >= now - timedelta(seconds=FORGET_AFTER_S)).order_by(Replica.id)
    )).scalars())
    if live:
        r = live[0]
        raise RotationError(
            f"a Hatchway server is running on this database (replica {r.id}, reachable at {r.relay_url}), so the "
            "deployment secret is not lost: copy deployment.secret from its data dir instead; nothing was changed "
            f"(if it was just stopped, run this again in {FORGET_AFTER_S:.0f} s)"
        )


async def replace_lost_secret(
    data_dir: Path, db_url: str, confirmed: bool, new_secret: bytes | None = None
) -> RotationResult:
    """``rotate-secret --old-secret-lost``: a new secret and a new key pair for every user.

    For a deployment none of whose data dirs holds the secret its database was set up with (so
    no server can start, and no sealed key can be opened): refused when the secret in
    ``data_dir`` is that one (nothing is lost: plain rotation keeps every key) or a server is
    running on the database; needs ``confirmed`` (every user's key is replaced). Like
    :func:`rotate_secret`, it runs in one transaction between the ``.old``/``.new`` files, and a
    run cut short after its commit is finished by running it again (plain ``rotate-secret``
    finishes it too)."""
    files = _SecretFiles.of(data_dir)
    current_path, new_path, old_path = files.current, files.new, files.old
    current = _read_secret(current_path) if current_path.exists() else None
    engine = create_engine(db_url)
    try:
        await migrate(engine)
        sessions = sessionmaker(engine)
        async with sessions() as db:
            recorded = (await db.execute(select(DeploymentSecret.secret_check))).scalar_one_or_none()
            if new_path.exists():
                pending = secret_record.check_value(_read_secret(new_path))
                if recorded is not None and hmac.compare_digest(recorded, pending):
                    # An earlier run committed the new keys and secret's check, and stopped before the rename.
                    files.finish()
                    return RotationResult(0, finished_earlier_run=True)
                new_path.unlink()  # it never reached the database: start again
            users = list((await db.execute(select(User).order_by(User.id))).scalars())
            if current is not None and (
                hmac.compare_digest(recorded, secret_record.check_value(current)) if recorded is not None
                else _opens_all(SecretBox(current), users)
            ):
                raise RotationError(
                    f"the secret in {current_path} is the one this deployment's database was set up with: it is not "
                    "lost, and every user's key can be kept; nothing was changed (to replace the secret, run "
                    "hatchway server rotate-secret without --old-secret-lost)"
                )
            await _refuse_if_a_server_runs(db)
            if not confirmed:
                raise RotationError(
                    f"--old-secret-lost gives every user a new SSH key pair ({len(users)} user(s)): their current "
                    "private keys cannot be opened without the lost secret, so each of them must run hatchway "
                    "config-ssh again afterwards; nothing was changed. If no data dir, replica or backup holds "
                    f"the secret this database was set up with, run this again with {CONFIRM_FLAG}"
                )
            fresh = new_secret or secrets.token_bytes(32)
            new_box = SecretBox(fresh)
            if current is not None:
                _write_secret(old_path, current)  # the backup, until the new secret is in place
            _write_secret(new_path, fresh)
            source = _operator_source()
            for u in users:
                old = u.ssh_key_fingerprint
                set_user_key(new_box, u)
                record(db, None, "key.regenerate", u.username, source, old=old, new=u.ssh_key_fingerprint,
                       reason=LOST_SECRET_REASON)
            record(db, None, LOST_SECRET_ACTION, SECRET_FILE, source, keys_replaced=len(users))
            await secret_record.record(db, secret_record.check_value(fresh))
            await db.commit()
    finally:
        await engine.dispose()
    files.finish()
    return RotationResult(0, keys_replaced=len(users))
