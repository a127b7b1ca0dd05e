"""The deployment secret a database belongs to, recorded in it, which every server's must match.

Every replica needs the same deployment secret: it seals users' private keys and signs the
replicas' requests to each other. Comparing a starting server's secret with the live replicas'
cannot be made safe: a replica cut off from the database looks dead, so one with another
secret could start meanwhile, and two starting at the same instant each see no one to compare
with. So the database records the secret's check once (a MAC under it: the secret cannot be
recovered from it), in a table whose key allows one row: the first server to start records
its own, every later one, and each of several starting at once but the one whose record was
taken, finds another and is refused. ``hatchway server rotate-secret`` records the new one.
"""

from __future__ import annotations

import hmac

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchway.db.models import DeploymentSecret
from hatchway.server.crypto import derive_key


def check_value(deployment_secret: bytes) -> str:
    """What is recorded of ``deployment_secret``."""
    return derive_key(deployment_secret, b"replica-check/v1").hex()


def matches(recorded: str | None, deployment_secret: bytes) -> bool:
    """Whether ``recorded`` (None: nothing recorded yet) is ``deployment_secret``'s check."""
    return recorded is not None and hmac.compare_digest(recorded, check_value(deployment_secret))


async def claim(sessions: async_sessionmaker[AsyncSession], check: str) -> str:
    """The check recorded in the database; ``check`` itself, recorded now, if none was."""
    async with sessions() as db:
        recorded = (await db.execute(select(DeploymentSecret.secret_check))).scalar_one_or_none()
        if recorded is not None:
            return recorded
        db.add(DeploymentSecret(id=1, secret_check=check))
        try:
            await db.commit()
            return check
        except IntegrityError:  # another server starting at this very moment recorded its own
            await db.rollback()
    async with sessions() as db:
        return (await db.execute(select(DeploymentSecret.secret_check))).scalar_one()


async def record(db: AsyncSession, check: str) -> None:
    """Make ``check`` the recorded one, in ``db``'s transaction (the secret's rotation)."""
    row = await db.get(DeploymentSecret, 1)
    if row is None:
        db.add(DeploymentSecret(id=1, secret_check=check))
    else:
        row.secret_check = check
