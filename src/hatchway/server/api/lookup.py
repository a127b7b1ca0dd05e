"""Rows found by the names people type, shared by routers that cannot import one another
(``users`` imports ``workspaces`` for its role-change guard; ``workspaces`` needs users too)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import User
from hatchway.names import could_be_username, quoted
from hatchway.server.errors import APIError


async def get_user(db: AsyncSession, username: str, advice: str = "see hatchway users list") -> User:
    """The user named ``username``, or a 404 naming them, with ``advice`` on what to do next."""
    user = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none() if (
        could_be_username(username)) else None
    if user is None:
        raise APIError(404, f"no user named {quoted(username)}", advice)
    return user
