"""The record: admin actions and SSH connections."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import AuditEvent, SSHConnection, User
from hatchway.paging import MAX_LIMIT, MAX_OFFSET
from hatchway.server.api import schemas
from hatchway.server.api.convert import audit_out, connection_out
from hatchway.server.auth import current_user, site_manager
from hatchway.server.connlog import workspace_filter
from hatchway.server.context import get_db

router = APIRouter(prefix="/api/v1", tags=["audit"])


def _unstorable(*values: str | None) -> bool:
    """Whether a filter holds what no stored row can (a NUL: PostgreSQL text cannot hold one,
    and would answer the query with an error, a 500): such a filter matches nothing."""
    return any(v is not None and "\x00" in v for v in values)


@router.get("/audit", response_model=list[schemas.AuditOut])
async def list_audit(
    limit: int = Query(200, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    actor: str | None = Query(None, max_length=64, description="only actions by this user"),
    action: str | None = Query(None, max_length=60, description="only this action, e.g. session.sign-in-failed"),
    target: str | None = Query(None, max_length=200, description="only actions on this target (a user, workspace or provider name)"),
    _sm: User = Depends(site_manager),
    db: AsyncSession = Depends(get_db),
) -> list[schemas.AuditOut]:
    """Newest first. Failed sign-ins have no actor (nobody signed in): find those against an
    account by ``action`` and ``target``."""
    if _unstorable(actor, action, target):
        return []
    q = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    for column, value in ((AuditEvent.actor, actor), (AuditEvent.action, action), (AuditEvent.target, target)):
        if value:
            q = q.where(column == value)
    return [audit_out(e) for e in (await db.execute(q)).scalars()]


@router.get("/connections", response_model=list[schemas.ConnectionOut])
async def list_connections(
    limit: int = Query(200, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    username: str | None = Query(None, alias="user", max_length=64, description="only this user's connections"),
    workspace: str | None = Query(
        None, max_length=200,
        description="only connections to this workspace: OWNER/NAME, or NAME for every workspace of that name",
    ),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
) -> list[schemas.ConnectionOut]:
    """Newest first. Site managers see every connection; members see their own."""
    if _unstorable(username, workspace):
        return []
    q = select(SSHConnection).order_by(SSHConnection.started_at.desc()).limit(limit).offset(offset)
    if user.role != "site-manager":
        q = q.where(SSHConnection.user_id == user.id)
    if username:
        q = q.where(SSHConnection.username == username)
    if workspace:
        q = q.where(workspace_filter(workspace))
    return [connection_out(c) for c in (await db.execute(q)).scalars()]
