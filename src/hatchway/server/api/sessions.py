"""Your own sign-in sessions: see them, sign one out, or sign out everywhere else.

There is deliberately no route to anyone else's sessions: a site manager who wants someone out
suspends them, or sets a new password for them; either ends all their sessions at once.

A session signed out takes the SSH connections its token opened with it, wherever they are
relayed: signing out a stolen laptop must also cut the shell it has open.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import ApiToken, User, utcnow
from hatchway.server.api import schemas
from hatchway.server.audit import record
from hatchway.server.auth import bearer_token, current_user
from hatchway.server.broadcast import Broadcast
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.crypto import hash_token
from hatchway.server.errors import APIError
from hatchway.server.relay import StreamMatch

router = APIRouter(prefix="/api/v1/users/me/sessions", tags=["sessions"])

SIGNED_OUT = (
    "the sign-in session that opened this connection was signed out (a new password, or "
    '"hatchway sessions revoke"); log in again: hatchway login URL --username NAME'
)


async def list_for(db: AsyncSession, user: User, current_token: str | None) -> list[schemas.SessionOut]:
    """``user``'s unexpired sessions, the most recently used first; ``current_token`` marks the
    caller's own (the bearer token, or the browser's cookie)."""
    current = hash_token(current_token) if current_token else None
    rows = (
        await db.execute(
            select(ApiToken)
            .where(ApiToken.user_id == user.id, ApiToken.expires_at > utcnow())
            .order_by(ApiToken.last_used_at.desc().nulls_last(), ApiToken.created_at.desc())
        )
    ).scalars()
    return [
        schemas.SessionOut(
            id=r.id, client=r.client, source=r.source, created_at=r.created_at, last_used_at=r.last_used_at,
            expires_at=r.expires_at, current=current is not None and hmac.compare_digest(r.token_hash, current),
        )
        for r in rows
    ]


async def revoke_one(db: AsyncSession, broadcast: Broadcast, user: User, session_id: str, source: str) -> str:
    """Sign out one of ``user``'s sessions (the caller's own too, if asked) and end the SSH
    connections it opened; returns the hash of its token, so a caller can tell whether it
    signed itself out."""
    row = (
        await db.execute(select(ApiToken).where(ApiToken.id == session_id, ApiToken.user_id == user.id))
    ).scalar_one_or_none()
    if row is None:
        raise APIError(404, "no such session", "list your sessions with: hatchway sessions list")
    await db.delete(row)
    record(db, user, "session.revoke", user.username, source, session=session_id)
    await db.commit()
    await broadcast.end_sessions(StreamMatch(user_id=user.id, session_id=row.id), SIGNED_OUT)
    return row.token_hash


async def sign_out(db: AsyncSession, broadcast: Broadcast, token: str | None, source: str) -> None:
    """Sign out the session ``token`` names (``hatchway logout``, the web UI's Sign out), and end
    the SSH connections it opened, as revoking it would: once it is gone from the list, nobody
    could end them there any more.

    Audited like a revocation, in the same transaction: an investigation of a stolen token needs
    to tell "the owner signed it out from here, then" from "it was never signed out". The
    record names the session by its public id (the token is a secret, and only its hash is
    kept). It says nothing of how many SSH connections ended: they are ended after the commit,
    on whichever replicas relay them, and each one's own row in the connection log says so."""
    row = (
        await db.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token or "")))
    ).scalar_one_or_none()
    if row is None:
        return  # nothing was signed in with it: nothing happened, nothing to record
    await db.delete(row)
    record(db, row.user, "session.sign-out", row.user.username, source, session=row.id)
    await db.commit()
    await broadcast.end_sessions(StreamMatch(user_id=row.user_id, session_id=row.id), SIGNED_OUT)


async def end_sessions(db: AsyncSession, user: User, keep_token: str | None = None) -> int:
    """Delete ``user``'s sessions, all of them or all but the one ``keep_token`` names; returns
    how many ended. Nothing is committed, so the change that calls for it (a new password, a
    suspension lifted) and the end of the old sessions land in one transaction or not at all;
    once it is committed, :func:`end_streams` ends what they opened."""
    stmt = delete(ApiToken).where(ApiToken.user_id == user.id)
    if keep_token is not None:
        stmt = stmt.where(ApiToken.token_hash != hash_token(keep_token))
    result = await db.execute(stmt)
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def kept_session_id(db: AsyncSession, user: User, keep_token: str | None) -> str | None:
    """The id of ``user``'s session ``keep_token`` names, if any: the one :func:`end_sessions`
    spares, and so the one whose SSH connections :func:`end_streams` spares."""
    if not keep_token:
        return None
    return (
        await db.execute(
            select(ApiToken.id).where(ApiToken.user_id == user.id, ApiToken.token_hash == hash_token(keep_token))
        )
    ).scalar_one_or_none()


async def end_streams(broadcast: Broadcast, user: User, kept: str | None) -> None:
    """End the SSH connections of ``user`` that sessions other than ``kept`` (all, for None)
    opened: call once the sessions' end is committed."""
    await broadcast.end_sessions(StreamMatch(user_id=user.id, keep_session_id=kept), SIGNED_OUT)


async def revoke_others(
    db: AsyncSession, broadcast: Broadcast, user: User, current_token: str | None, source: str
) -> int:
    """Sign out every session of ``user`` but the caller's, and end the SSH connections they
    opened; returns how many sessions ended."""
    kept = await kept_session_id(db, user, current_token)
    revoked = await end_sessions(db, user, keep_token=current_token or "")
    record(db, user, "session.revoke-others", user.username, source, revoked=revoked)
    await db.commit()
    await end_streams(broadcast, user, kept)
    return revoked


@router.get("", response_model=list[schemas.SessionOut])
async def list_sessions(
    request: Request, user: User = Depends(current_user), db: AsyncSession = Depends(get_db)
) -> list[schemas.SessionOut]:
    return await list_for(db, user, bearer_token(request.headers))


@router.delete("/{session_id}", response_model=schemas.OkOut)
async def revoke_session(
    session_id: str,
    request: Request,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.OkOut:
    await revoke_one(db, ctx.broadcast, user, session_id, client_source(request))
    return schemas.OkOut()


@router.post("/revoke-others", response_model=schemas.RevokedOut)
async def revoke_other_sessions(
    request: Request,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.RevokedOut:
    revoked = await revoke_others(db, ctx.broadcast, user, bearer_token(request.headers), client_source(request))
    return schemas.RevokedOut(revoked=revoked)
