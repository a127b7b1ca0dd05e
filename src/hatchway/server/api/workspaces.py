"""Workspaces: create, list, show, delete, and the agent token that lets an agent in."""

from __future__ import annotations

import shlex

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import User, Workspace
from hatchway.server.api import schemas
from hatchway.server.api.convert import workspace_fields, workspace_out
from hatchway.server.api.providers import get_provider
from hatchway.server.audit import record
from hatchway.server.auth import AGENT_TOKEN_PREFIX, current_user
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.crypto import new_token
from hatchway.server.errors import APIError

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])


def agent_command(url: str, token: str) -> str:
    """How to run the agent by hand; the token goes in the environment, not argv (ps shows argv)."""
    return f"HATCHWAY_AGENT_TOKEN={shlex.quote(token)} hatchway agent --url {shlex.quote(url)}"


async def find_workspace(db: AsyncSession, user: User, name: str, owner: str | None) -> Workspace:
    """The caller's workspace ``name``, or (site managers only) ``owner``'s."""
    owner_name = owner or user.username
    if owner_name != user.username and user.role != "site-manager":
        raise APIError(403, "forbidden", "only a site manager can manage other users' workspaces")
    ws = (
        await db.execute(
            select(Workspace).join(Workspace.owner).where(Workspace.name == name, User.username == owner_name)
        )
    ).scalar_one_or_none()
    if ws is None:
        who = "you have" if owner_name == user.username else f'"{owner_name}" has'
        raise APIError(404, f'no workspace named "{name}"', f'{who} no such workspace; see "hatchway workspaces list"')
    return ws


@router.get("", response_model=list[schemas.WorkspaceOut])
async def list_workspaces(
    all_users: bool = Query(False, alias="all"),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
) -> list[schemas.WorkspaceOut]:
    q = select(Workspace).join(Workspace.owner).order_by(User.username, Workspace.name)
    if not all_users:
        q = q.where(Workspace.owner_id == user.id)
    elif user.role != "site-manager":
        raise APIError(403, "forbidden", "only a site manager can list every user's workspaces")
    return [workspace_out(w) for w in (await db.execute(q)).scalars()]


@router.post("", response_model=schemas.WorkspaceCreatedOut, status_code=201)
async def create_workspace(
    body: schemas.WorkspaceCreateIn,
    request: Request,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.WorkspaceCreatedOut:
    provider = await get_provider(db, body.provider)
    token, digest = new_token(AGENT_TOKEN_PREFIX)
    ws = Workspace(
        name=body.name,
        owner_id=user.id,
        provider_id=provider.id,
        env=body.env,
        agent_token_hash=digest,
        host_keys=[],
        diagnostics=[],
    )
    if provider.kind == "manual":
        # Nothing to start: the workspace is up whenever its owner runs the agent.
        ws.state = "running"
    else:
        ws.state = "pending"
        ws.state_reason = f'waiting for provider "{provider.name}" to start it'
    db.add(ws)
    record(db, user, "workspace.create", f"{user.username}/{body.name}", client_source(request), provider=provider.name)
    try:
        await db.commit()
    except IntegrityError:
        raise APIError(409, f'workspace "{body.name}" already exists', "pick another name or delete the old one") from None
    ws = await find_workspace(db, user, body.name, None)
    out = schemas.WorkspaceCreatedOut(**workspace_fields(ws))
    if provider.kind == "manual":
        out.agent_token = token
        out.agent_command = agent_command(ctx.settings.url, token)
    return out


@router.get("/{name}", response_model=schemas.WorkspaceOut)
async def show_workspace(
    name: str,
    owner: str | None = None,
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
) -> schemas.WorkspaceOut:
    return workspace_out(await find_workspace(db, user, name, owner))


@router.delete("/{name}", response_model=schemas.OkOut)
async def delete_workspace(
    name: str,
    request: Request,
    owner: str | None = None,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.OkOut:
    ws = await find_workspace(db, user, name, owner)
    ws_id, label = ws.id, f"{ws.owner.username}/{ws.name}"
    await db.delete(ws)
    record(db, user, "workspace.delete", label, client_source(request))
    await db.commit()
    await ctx.relay.end_sessions(workspace_id=ws_id, reason=f'workspace "{label}" was deleted')
    await ctx.hub.disconnect(ws_id, "workspace deleted")
    return schemas.OkOut()


@router.post("/{name}/agent-token", response_model=schemas.AgentTokenOut)
async def rotate_agent_token(
    name: str,
    request: Request,
    owner: str | None = None,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.AgentTokenOut:
    ws = await find_workspace(db, user, name, owner)
    token, digest = new_token(AGENT_TOKEN_PREFIX)
    ws.agent_token_hash = digest
    record(db, user, "workspace.agent-token", f"{ws.owner.username}/{ws.name}", client_source(request))
    await db.commit()
    # The agent holding the old token is no longer who it says it is.
    await ctx.hub.disconnect(ws.id, "agent token replaced")
    return schemas.AgentTokenOut(agent_token=token, agent_command=agent_command(ctx.settings.url, token))
