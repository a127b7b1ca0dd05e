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
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from sqlalchemy import select

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import User
from hatchway.fileutil import atomic_write
from hatchway.server import secret_record
from hatchway.server.crypto import SECRET_FILE, SecretBox

NEW_SUFFIX = ".new"
OLD_SUFFIX = ".old"


class RotationError(Exception):
    """The rotation cannot go ahead; nothing was changed (the message says what to do)."""


@dataclass
class RotationResult:
    keys_resealed: int
    finished_earlier_run: bool = False


def _read_secret(path: Path) -> bytes:
    secret = bytes.fromhex(path.read_text().strip())
    if len(secret) < 32:
        raise RotationError(f"{path}: the deployment secret must be at least 32 bytes of hex")
    return secret


def _write_secret(path: Path, secret: bytes) -> None:
    atomic_write(path, (secret.hex() + "\n").encode(), 0o600)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_in_place(new_path: Path, current_path: Path) -> None:
    """Step 3: the new secret replaces the current one (atomic rename, then the directory synced)."""
    os.replace(new_path, current_path)
    _fsync_dir(current_path.parent)


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
    current_path = data_dir / SECRET_FILE
    new_path = data_dir / (SECRET_FILE + NEW_SUFFIX)
    old_path = data_dir / (SECRET_FILE + OLD_SUFFIX)
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
                    _put_in_place(new_path, current_path)
                    old_path.unlink(missing_ok=True)
                    return RotationResult(0, finished_earlier_run=True)
                new_path.unlink()  # it never reached the database: start again
            old_box = SecretBox(current)
            if not _opens_all(old_box, users):
                raise RotationError(
                    f"the secret in {current_path} does not open every user's key; nothing was changed "
                    "(is this the data directory that belongs to this database?)"
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
    _put_in_place(new_path, current_path)
    old_path.unlink(missing_ok=True)
    return RotationResult(len(users))
