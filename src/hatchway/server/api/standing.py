"""A user's standing (role and suspension), changed so that concurrent changes cannot both count.

Two site managers suspending one user at the same instant must record one suspension, not two.
Two site managers demoting (or suspending) each other at the same instant must not leave the
deployment with no active site manager, which nobody could then undo from the API or the web UI.
So each change is one conditional UPDATE (it changes nothing when another got there first), made
in turn with every other change of standing, and checked, before it commits, against what is left.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import User
from hatchway.db.turns import take_turns
from hatchway.server.errors import APIError

#: The PostgreSQL advisory lock that changes of standing take in turn (any constant of our own).
STANDING_LOCK = 0x48415453  # "HATS"


async def active_site_managers(db: AsyncSession) -> int:
    return (
        await db.execute(
            select(func.count()).select_from(User).where(User.role == "site-manager", User.suspended.is_(False))
        )
    ).scalar_one()


async def change_standing(db: AsyncSession, user: User, by: User, **values: Any) -> bool:
    """Set ``values`` (``role``, ``suspended``) on ``user`` in the open transaction, unless they
    are so already: then roll back and return False (a second click, or another site manager
    first), so the caller records nothing. A change that would leave no active site manager is
    rolled back and refused."""
    oneself = user.id == by.id  # read now: a rollback expires both
    await take_turns(db, STANDING_LOCK)
    changed = await db.execute(
        update(User)
        .where(User.id == user.id, or_(*(getattr(User, name) != value for name, value in values.items())))
        .values(**values)
    )
    if changed.rowcount == 0:
        await db.rollback()
        await db.refresh(user)
        return False
    if values.get("role", "site-manager") != "site-manager" or values.get("suspended") is True:
        if await active_site_managers(db) == 0:
            await db.rollback()
            if oneself:
                raise APIError(409, "you are the last site manager", "make someone else a site manager first")
            raise APIError(
                409, "that would leave no active site manager",
                "another site manager's change came first; see hatchway users list",
            )
    return True
