"""Who is calling: users by session token, agents by per-workspace agent token.

Both kinds of token are bearer secrets stored only as hashes. Every lookup re-reads the user,
so suspension and role changes take effect on the very next request.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import Depends, Request
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import ApiToken, User, Workspace, new_id, utcnow
from hatchway.server.audit import record
from hatchway.server.context import client_source, get_db
from hatchway.server.crypto import hash_token, new_token
from hatchway.server.errors import APIError
from hatchway.server.policy import SUSPENDED_MESSAGE
from hatchway.server.session_tokens import (
    SOURCE_MAX,
    client_label,
    due_for_touch,
    printable,
)

USER_TOKEN_PREFIX = "hws_"
AGENT_TOKEN_PREFIX = "hwa_"


def bearer_token(headers: object) -> str | None:
    value = headers.get("authorization") if hasattr(headers, "get") else None  # type: ignore[union-attr]
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def issue_session_token(db: AsyncSession, user: User, ttl_s: int, request: Request | None = None) -> str:
    """A new session for ``user``; ``request`` (the sign-in) names its client and address.

    Audited as ``session.sign-in`` in the caller's transaction, with the session's public id:
    with the ``session.sign-out`` and ``session.revoke`` records it tells when a token came to
    be and from where, which is what looking into a stolen one needs (never the token itself).
    """
    token, digest = new_token(USER_TOKEN_PREFIX)
    now = utcnow()
    client = client_label(request.headers.get("user-agent")) if request is not None else None
    session = ApiToken(
        id=new_id(), user_id=user.id, token_hash=digest, created_at=now, last_used_at=now,
        expires_at=now + timedelta(seconds=ttl_s), client=client,
        source=printable(request.client.host, SOURCE_MAX) if request is not None and request.client else None,
    )
    db.add(session)
    record(db, user, "session.sign-in", user.username, client_source(request) if request is not None else None,
           session=session.id, client=client)
    return token


async def _session(db: AsyncSession, token: str | None) -> ApiToken:
    """The live session a token names, or a 401 saying why not."""
    if not token or not token.startswith(USER_TOKEN_PREFIX):
        raise APIError(401, "not authenticated", "log in first: hatchway login URL --username NAME")
    row = (
        await db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))
    ).scalar_one_or_none()
    if row is None or row.expires_at <= utcnow():
        raise APIError(401, "session expired or revoked", "log in again: hatchway login URL --username NAME")
    return row


async def user_for_token(db: AsyncSession, token: str | None) -> User:
    """The active user a session token belongs to, or an APIError saying why not."""
    return (await user_and_session(db, token))[0]


async def user_and_session(db: AsyncSession, token: str | None) -> tuple[User, str]:
    """:func:`user_for_token`, and the id of the sign-in session: what the token opens (an SSH
    stream) ends when that session is signed out."""
    row = await _session(db, token)
    user, session_id = row.user, row.id
    if user.suspended:
        raise APIError(403, "account suspended", SUSPENDED_MESSAGE)
    now = utcnow()
    if due_for_touch(row.last_used_at, now):
        await db.execute(update(ApiToken).where(ApiToken.id == row.id).values(last_used_at=now))
        await db.commit()  # first thing in the request: nothing else is pending yet
        row.last_used_at = now
    return user, session_id


async def token_holder(db: AsyncSession, token: str | None) -> User | None:
    """Whoever a live session token belongs to, suspended or not: a refused attempt (a suspended
    user's SSH, say) is recorded under its user, so an audit finds it."""
    try:
        return (await _session(db, token)).user
    except APIError:
        return None


async def workspace_for_agent_token(db: AsyncSession, token: str | None) -> Workspace:
    if not token or not token.startswith(AGENT_TOKEN_PREFIX):
        raise APIError(401, "not authenticated", "the agent needs its workspace's agent token (--token)")
    ws = (
        await db.execute(select(Workspace).where(Workspace.agent_token_hash == hash_token(token)))
    ).scalar_one_or_none()
    if ws is None:
        raise APIError(
            401,
            "agent token not valid",
            "the token was replaced or the workspace deleted; get a new one with "
            "hatchway workspaces agent-token NAME",
        )
    return ws


async def current_user(request: Request, db: AsyncSession = Depends(get_db)) -> User:
    return await user_for_token(db, bearer_token(request.headers))


async def site_manager(user: User = Depends(current_user)) -> User:
    if user.role != "site-manager":
        raise APIError(403, "forbidden", "only a site manager can do this; ask one of your site managers")
    return user


async def current_agent(request: Request, db: AsyncSession = Depends(get_db)) -> Workspace:
    return await workspace_for_agent_token(db, bearer_token(request.headers))
