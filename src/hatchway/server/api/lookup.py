"""Rows found by the names people type, shared by routers that cannot import one another
(``users`` imports ``workspaces`` for its role-change guard; ``workspaces`` needs users too)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, and_, false, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import User, Workspace
from hatchway.names import could_be_username, name_fragment, quoted
from hatchway.server.errors import APIError


async def get_user(db: AsyncSession, username: str, advice: str = "see hatchway users list") -> User:
    """The user named ``username``, or a 404 naming them, with ``advice`` on what to do next."""
    user = (await db.execute(select(User).where(User.username == username))).scalar_one_or_none() if (
        could_be_username(username)) else None
    if user is None:
        raise APIError(404, f"no user named {quoted(username)}", advice)
    return user


def name_contains(column: ColumnElement[str], text: str) -> ColumnElement[bool]:
    """Rows whose name in ``column`` contains ``text``, in any case (the lists' filters: the
    API's ``search``, the web UI's filter box); "_" is a name's character, not LIKE's wildcard."""
    fragment = name_fragment(text)
    return column.contains(fragment, autoescape=True) if fragment is not None else false()


def workspace_search(text: str) -> ColumnElement[bool]:
    """Workspaces whose name or owner contains ``text``; ``OWNER/NAME`` narrows to both, as
    workspaces are written elsewhere ("bob/de" finds bob's dev). Needs ``User`` joined as owner."""
    owner, sep, name = text.partition("/")
    if sep:
        return and_(name_contains(User.username, owner), name_contains(Workspace.name, name))
    return or_(name_contains(User.username, text), name_contains(Workspace.name, text))
