"""Workspaces: create, list, show, delete, and the agent token that lets an agent in."""

from __future__ import annotations

import shlex
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import Provider, User, Workspace
from hatchway.names import could_be_username, could_be_workspace_name, quoted
from hatchway.paging import MAX_LIMIT, MAX_OFFSET
from hatchway.server.api import schemas
from hatchway.server.api.convert import workspace_fields, workspace_out
from hatchway.server.api.lookup import get_user, workspace_search
from hatchway.server.api.providers import get_provider
from hatchway.server.audit import record
from hatchway.server.auth import AGENT_TOKEN_PREFIX, current_user
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.crypto import new_token
from hatchway.server.errors import APIError
from hatchway.server.relay import StreamMatch
from hatchway.providers.base import SetupError, WorkspaceSpec
from hatchway.providers.local import LocalProvider, members_refused

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"])

#: Refusals of a field another provider kind takes, in the CLI's words (its options); the web
#: UI's form says them with its own labels (``web/workspaces.py``), matching on these.
OPENSSH_NOT_LOCAL = "--openssh is only for local workspaces"
IMAGE_NOT_DOCKER = "--image and --cvm are for docker workspaces"
DOCKER_NEEDS_IMAGE = "a docker workspace needs an image"


def _supervisor(request: Request) -> Any:
    """The supervisor of server-managed workspaces (None when the app runs without one)."""
    return getattr(request.app.state, "supervisor", None)


def _supervised(request: Request, ws: Workspace) -> bool:
    """Whether Hatchway itself runs this workspace's agent (and starts and stops it)."""
    supervisor = _supervisor(request)
    return supervisor is not None and bool(supervisor.manages(ws.provider.kind))


def agent_command(url: str, token: str) -> str:
    """How to run the agent by hand; the token goes in the environment, not argv (ps shows argv)."""
    return f"HATCHWAY_AGENT_TOKEN={shlex.quote(token)} hatchway agent --url {shlex.quote(url)}"


def _refuse_others(user: User, owner_name: str, doing: str) -> None:
    """Only a site manager acts on another user's workspaces: ``doing`` says what was refused."""
    if owner_name != user.username and user.role != "site-manager":
        raise APIError(403, "forbidden", f"only a site manager can {doing}")


async def find_workspace(db: AsyncSession, user: User, name: str, owner: str | None) -> Workspace:
    """The caller's workspace ``name``, or (site managers only) ``owner``'s."""
    owner_name = owner or user.username
    _refuse_others(user, owner_name, "manage other users' workspaces")
    ws = (
        await db.execute(
            select(Workspace).join(Workspace.owner).where(Workspace.name == name, User.username == owner_name)
        )
    ).scalar_one_or_none() if could_be_workspace_name(name) and could_be_username(owner_name) else None
    if ws is None:
        who = "you have" if owner_name == user.username else f"{quoted(owner_name)} has"
        raise APIError(404, f"no workspace named {quoted(name)}", f'{who} no such workspace; see "hatchway workspaces list"')
    return ws


def workspaces_query(user: User, all_users: bool = False, search: str | None = None) -> Select[tuple[Workspace]]:
    """The caller's workspaces, or (site managers) everyone's, by owner and name, narrowed to
    those whose name or owner contains ``search``: the API's list and the Workspaces page,
    which pages it."""
    q = select(Workspace).join(Workspace.owner).order_by(User.username, Workspace.name)
    if not all_users:
        q = q.where(Workspace.owner_id == user.id)
    elif user.role != "site-manager":
        raise APIError(403, "forbidden", "only a site manager can list every user's workspaces")
    return q.where(workspace_search(search)) if search else q


@router.get("", response_model=list[schemas.WorkspaceOut])
async def list_workspaces(
    all_users: bool = Query(False, alias="all"),
    limit: int | None = Query(None, ge=1, le=MAX_LIMIT, description="at most this many (default: all)"),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="skip this many first"),
    search: str | None = Query(
        None, max_length=100, description="only workspaces whose name or owner contains this, in any case; OWNER/NAME for both",
    ),
    user: User = Depends(current_user),
    db: AsyncSession = Depends(get_db),
) -> list[schemas.WorkspaceOut]:
    """By owner, then name. Without ``limit``, all of them (as before paging existed)."""
    q = workspaces_query(user, all_users, search).limit(limit).offset(offset)
    return [workspace_out(w) for w in (await db.execute(q)).scalars()]


async def new_workspace_owner(db: AsyncSession, user: User, owner: str | None) -> User:
    """Whose workspace a create makes: the caller's own, or (site managers only) ``owner``'s,
    addressed by ``?owner=`` as every other workspace endpoint addresses another user's.

    A suspended owner is accepted: suspension already keeps them from signing in and from every
    SSH connection, so a workspace prepared for them grants nothing until a site manager
    activates them, and a platform team can set up a returning (or not yet started) developer's
    workspace before switching their account on, without a window in which they are active."""
    if not owner or owner == user.username:  # an empty ?owner= is the caller, as in find_workspace
        return user
    _refuse_others(user, owner, "create workspaces for other users")
    return await get_user(db, owner, "create the user first (hatchway users create NAME --email EMAIL), or see hatchway users list")


@router.post("", response_model=schemas.WorkspaceCreatedOut, status_code=201)
async def create_workspace(
    body: schemas.WorkspaceCreateIn,
    request: Request,
    owner: str | None = Query(None, description="The user it is for (site managers); you when left out."),
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.WorkspaceCreatedOut:
    """Create a workspace: yours, or with ``?owner=NAME`` (site managers) another user's, who
    then owns it in every respect (their key, their environment defaults, their OS user)."""
    owner_user = await new_workspace_owner(db, user, owner)
    provider = await get_provider(db, body.provider)
    supervisor = _supervisor(request)
    managed = supervisor is not None and supervisor.manages(provider.kind)
    if body.openssh and provider.kind != "local":
        raise APIError(
            422, OPENSSH_NOT_LOCAL,
            f'provider "{provider.name}" is {provider.kind}: run OpenSSH in that workspace yourself',
        )
    if provider.kind == "local" and owner_user.role != "site-manager":
        _refuse_unisolated(supervisor, owner_user, user)
    env = await _image_environment(body, provider, owner_user, supervisor)
    token, digest = new_token(AGENT_TOKEN_PREFIX)
    ws = Workspace(
        name=body.name,
        owner_id=owner_user.id,
        provider_id=provider.id,
        env=env,
        agent_token_hash=digest,
        host_keys=[],
        diagnostics=[],
        openssh=body.openssh,
        image=body.image,
        cvm=body.cvm,
    )
    if provider.kind == "manual":
        # Nothing to start: the workspace is up whenever its owner runs the agent.
        ws.state = "running"
    elif managed:
        ws.state, ws.state_reason, ws.desired_state = "starting", "setting up and starting its agent", "running"
    else:
        ws.state = "pending"
        ws.state_reason = f'waiting for provider "{provider.name}" to start it'
    db.add(ws)
    owner_name, for_another = owner_user.username, owner_user.id != user.id  # a failed commit expires the rows
    provider_id, provider_name = provider.id, provider.name
    record(db, user, "workspace.create", f"{owner_name}/{body.name}", client_source(request), provider=provider.name)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        if (await db.execute(select(Provider.id).where(Provider.id == provider_id))).scalar_one_or_none() is None:
            # Deleted since get_provider found it (its foreign key): not a name clash.
            raise APIError(404, f"no provider named {quoted(provider_name)}",
                           "it was deleted meanwhile; see hatchway providers list") from None
        raise _already_exists(owner_name if for_another else None, body.name) from None
    ws = await find_workspace(db, user, body.name, owner_name)
    if managed:
        assert supervisor is not None
        await supervisor.start(ws.id)
        await db.refresh(ws)
    out = schemas.WorkspaceCreatedOut(**workspace_fields(ws))
    if provider.kind == "manual":
        out.agent_token = token
        out.agent_command = agent_command(ctx.settings.url, token)
    return out


def _already_exists(other_owner: str | None, name: str) -> APIError:
    """Names are unique per owner: the clash is in the owner's workspaces (``other_owner``
    when they are not the caller), not the caller's."""
    if other_owner is None:
        return APIError(409, f"workspace {quoted(name)} already exists", "pick another name or delete the old one")
    return APIError(
        409, f"{quoted(other_owner)} already has a workspace named {quoted(name)}",
        f"pick another name, or delete theirs first: hatchway workspaces delete {other_owner}/{name}",
    )


def _unisolated(supervisor: Any) -> tuple[str, str] | None:
    """Why this server's local workspaces would run as the server's own user, and what would
    isolate them; None when they are isolated. Only a replica whose local provider has started
    knows; elsewhere the supervisor's start refuses a member's (``LocalProvider.prepare``), as it
    refuses one made before the server lost isolation."""
    local = supervisor.provider("local") if supervisor is not None else None
    return local.unisolated() if isinstance(local, LocalProvider) and local.started else None


def _refuse_unisolated(supervisor: Any, owner: User, caller: User) -> None:
    """Refuse a member's local workspace where it would run as the server's own user. The
    owner's role decides, not the caller's: a site manager handing a member one would hand them
    a shell as the server."""
    unisolated = _unisolated(supervisor)
    if unisolated is None:
        return
    if owner.id == caller.id:
        raise APIError(403, "local workspaces on this server are only for site managers", members_refused(*unisolated))
    raise APIError(
        403, f"local workspaces on this server are only for site managers, and {quoted(owner.username)} is a member",
        members_refused(*unisolated, member=owner.username),
    )


async def refuse_demoting_unisolated_owner(db: AsyncSession, request: Request, user: User) -> None:
    """A site manager who owns local workspaces running as the server's own user cannot become
    a member while they do: the workspace would stay theirs, and so would a shell as the server."""
    unisolated = _unisolated(_supervisor(request))
    if unisolated is None:
        return
    names = (
        await db.execute(
            select(Workspace.name).join(Workspace.provider)
            .where(Workspace.owner_id == user.id, Provider.kind == "local").order_by(Workspace.name)
        )
    ).scalars().all()
    if names:
        listed = ", ".join(quoted(f"{user.username}/{n}") for n in names)
        raise APIError(
            409, f"{quoted(user.username)} owns local workspaces that run as the server's own user",
            f"this server cannot isolate them ({unisolated[0]}) and a member may not own one: delete {listed} first "
            f"(hatchway workspaces delete OWNER/NAME), or {unisolated[1]}",
        )


async def _image_environment(body: schemas.WorkspaceCreateIn, provider: Provider, owner: User, supervisor: Any) -> dict[str, str]:
    """The workspace's variables: its image's ENV (container providers) overlaid with ``--env``;
    the image is read as the workspace's ``owner`` would run it."""
    if provider.kind != "docker":
        if body.image or body.cvm:
            raise APIError(422, IMAGE_NOT_DOCKER, f'provider "{provider.name}" is {provider.kind}')
        return dict(body.env)
    if not body.image:
        raise APIError(422, DOCKER_NEEDS_IMAGE, "give --image IMAGE (an image on the provider's Docker engine)")
    docker = supervisor.provider(provider.kind) if supervisor is not None else None
    if docker is None:
        raise APIError(409, "this server does not run docker workspaces", "start it with `hatchway server`")
    spec = WorkspaceSpec(
        id="", name=body.name, owner=owner.username, image=body.image, cvm=body.cvm,
        docker_host=provider.docker_host, docker_network=provider.docker_network,
    )
    try:
        image_env = await docker.image_environment(spec)
    except SetupError as exc:
        raise APIError(422, f'cannot use image "{body.image}"', str(exc)) from None
    return {**image_env, **body.env}


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
    supervisor = _supervisor(request)
    if supervisor is not None and supervisor.manages(ws.provider.kind):
        # Remove its processes, user, namespace and files first: a failure keeps the row, so
        # the workspace stays visible (failed, with the reason) instead of leaking silently.
        try:
            await supervisor.delete(ws_id)
        except SetupError as exc:
            raise APIError(500, f'could not delete workspace "{label}" completely', str(exc)) from None
    await db.delete(ws)
    record(db, user, "workspace.delete", label, client_source(request))
    await db.commit()
    await ctx.broadcast.end_sessions(StreamMatch(workspace_id=ws_id), f'workspace "{label}" was deleted')
    await ctx.broadcast.disconnect_agent(ws_id, "workspace deleted")
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
    if _supervised(request, ws):
        # Its agent gets a fresh token at every start: one issued here would only be replaced.
        raise APIError(
            409,
            f'workspace "{ws.name}" runs its agent under Hatchway, which gives it a new token at every start',
            f"to replace the token now, restart it: hatchway workspaces restart {ws.name}",
        )
    token, digest = new_token(AGENT_TOKEN_PREFIX)
    ws.agent_token_hash = digest
    record(db, user, "workspace.agent-token", f"{ws.owner.username}/{ws.name}", client_source(request))
    await db.commit()
    # The agent holding the old token is no longer who it says it is.
    await ctx.broadcast.disconnect_agent(ws.id, "agent token replaced")
    return schemas.AgentTokenOut(agent_token=token, agent_command=agent_command(ctx.settings.url, token))


Lifecycle = Literal["start", "stop", "restart"]


async def change_state(
    action: Lifecycle,
    name: str,
    owner: str | None,
    request: Request,
    user: User,
    db: AsyncSession,
) -> schemas.WorkspaceOut:
    """Start, stop or restart a workspace Hatchway runs (the API's and the web UI's way)."""
    ws = await find_workspace(db, user, name, owner)
    if not _supervised(request, ws):
        raise APIError(
            409,
            f'workspace "{ws.name}" is not started by Hatchway',
            f'it runs on provider "{ws.provider.name}" ({ws.provider.kind}): start or stop its agent where it runs',
        )
    ws_id = ws.id
    # A running workspace is left as it is by a start, and the answer says "already running":
    # nothing changes, so nothing is recorded (as for a role set to what it already is).
    if action != "start" or ws.state != "running":
        record(db, user, f"workspace.{action}", f"{ws.owner.username}/{ws.name}", client_source(request))
    await db.commit()
    try:
        await getattr(_supervisor(request), action)(ws_id)
    except SetupError as exc:
        raise APIError(500, f'could not {action} workspace "{ws.name}" cleanly', str(exc)) from None
    await db.refresh(ws)  # the supervisor changed the row through its own session
    return workspace_out(ws)


def _lifecycle_route(action: Lifecycle, doc: str) -> None:
    """POST /workspaces/{name}/<action>: one endpoint per action, all the same but for it."""

    async def endpoint(
        name: str,
        request: Request,
        owner: str | None = None,
        user: User = Depends(current_user),
        db: AsyncSession = Depends(get_db),
    ) -> schemas.WorkspaceOut:
        return await change_state(action, name, owner, request, user, db)

    endpoint.__name__ = endpoint.__qualname__ = f"{action}_workspace"  # its OpenAPI operation id
    endpoint.__doc__ = doc
    router.add_api_route(f"/{{name}}/{action}", endpoint, methods=["POST"], response_model=schemas.WorkspaceOut)


_lifecycle_route("start", """Start a stopped (or failed) workspace; returns at once with state "starting".
A workspace that is running, or already starting, is left as it is (and returned as it is).""")
_lifecycle_route("stop", """Stop a workspace; returns once nothing of it is running (live SSH sessions end).""")
_lifecycle_route("restart", """Stop the workspace's agent and start it again; returns with state "starting".""")
