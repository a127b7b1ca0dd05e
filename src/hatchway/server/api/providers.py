"""Workspace providers and their Features (External Connect)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import Provider, User, Workspace
from hatchway.names import could_be_provider_name, quoted
from hatchway.server.api import schemas
from hatchway.server.audit import record
from hatchway.server.auth import current_user, site_manager
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.policy import external_connect_off_message
from hatchway.server.relay import StreamMatch

router = APIRouter(prefix="/api/v1/providers", tags=["providers"])


async def provider_rows(db: AsyncSession, viewer: User | None = None) -> list[schemas.ProviderOut]:
    """Every provider, as a site manager sees it; as a member (``viewer``) sees it, with only its
    own workspaces counted and no engine addresses: how many workspaces others have, and when that
    changes, is not a member's to watch, and where a Docker engine listens is the site's."""
    member = viewer is not None and viewer.role != "site-manager"
    counting = select(Workspace.provider_id, func.count()).group_by(Workspace.provider_id)
    if member:
        counting = counting.where(Workspace.owner_id == viewer.id)  # type: ignore[union-attr]
    counts = dict((await db.execute(counting)).all())
    rows = (await db.execute(select(Provider).order_by(Provider.name))).scalars()
    return [
        schemas.ProviderOut(
            name=p.name, kind=p.kind, external_connect=p.external_connect, workspace_count=counts.get(p.id, 0),
            docker_host=None if member else p.docker_host, docker_network=None if member else p.docker_network,
        )
        for p in rows
    ]


async def get_provider(db: AsyncSession, name: str) -> Provider:
    """The provider named ``name``, or a 404. A name no provider can have (a NUL, say) is not
    looked up: PostgreSQL would answer such a query with an error (a 500), not with no row."""
    p = (await db.execute(select(Provider).where(Provider.name == name))).scalar_one_or_none() if (
        could_be_provider_name(name)) else None
    if p is None:
        raise APIError(404, f"no provider named {quoted(name)}", "see hatchway providers list")
    return p


@router.get("", response_model=list[schemas.ProviderOut], response_model_exclude_none=True)
async def list_providers(user: User = Depends(current_user), db: AsyncSession = Depends(get_db)) -> list[schemas.ProviderOut]:
    return await provider_rows(db, user)


@router.post("", response_model=schemas.ProviderOut, status_code=201, response_model_exclude_none=True)
async def create_provider(
    body: schemas.ProviderCreateIn,
    request: Request,
    sm: User = Depends(site_manager),
    db: AsyncSession = Depends(get_db),
) -> schemas.ProviderOut:
    if body.kind != "docker" and (body.docker_host or body.docker_network):
        raise APIError(422, "--docker-host and --docker-network are for docker providers", f"provider kind is {body.kind}")
    p = Provider(
        name=body.name, kind=body.kind, external_connect=body.external_connect, config={},
        docker_host=body.docker_host, docker_network=body.docker_network,
    )
    db.add(p)
    extra = {"docker_host": body.docker_host, "docker_network": body.docker_network} if body.kind == "docker" else {}
    record(db, sm, "provider.create", body.name, client_source(request), kind=body.kind, external_connect=body.external_connect, **extra)
    try:
        await db.commit()
    except IntegrityError:
        raise APIError(409, f'provider "{body.name}" already exists', "pick another name") from None
    return schemas.ProviderOut(
        name=p.name, kind=p.kind, external_connect=p.external_connect, workspace_count=0,
        docker_host=p.docker_host, docker_network=p.docker_network,
    )


@router.patch("/{name}", response_model=schemas.ProviderOut, response_model_exclude_none=True)
async def edit_provider(
    name: str,
    body: schemas.ProviderEditIn,
    request: Request,
    sm: User = Depends(site_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.ProviderOut:
    return await apply_provider_edit(ctx, db, sm, name, body, client_source(request))


@router.delete("/{name}", response_model=schemas.OkOut)
async def delete_provider(
    name: str, request: Request, sm: User = Depends(site_manager), db: AsyncSession = Depends(get_db)
) -> schemas.OkOut:
    """Delete a provider that has no workspaces (a mistyped Docker host, say)."""
    await remove_provider(db, sm, name, client_source(request))
    return schemas.OkOut()


async def refuse_deletion(db: AsyncSession, p: Provider) -> None:
    """Raise the refusal if ``p`` may not be deleted: the built-in provider, or one that still
    has workspaces (deleting it would strand them). The web UI asks this before its
    confirmation page, so nobody confirms a deletion that is then refused."""
    if p.name == "local":
        raise APIError(
            409, 'the built-in "local" provider cannot be deleted',
            "turn its External Connect off to refuse SSH to its workspaces: hatchway providers edit local --external-connect off",
        )
    count = (await db.execute(select(func.count()).select_from(Workspace).where(Workspace.provider_id == p.id))).scalar_one()
    if count:
        raise APIError(
            409, f"provider {quoted(p.name)} still has {count} workspace{'s' if count != 1 else ''}",
            "delete them first; see hatchway workspaces list --all",
        )


async def remove_provider(db: AsyncSession, sm: User, name: str, source: str) -> None:
    """Shared by the API and the web UI so both refuse, delete and audit identically."""
    p = await get_provider(db, name)
    await refuse_deletion(db, p)
    provider_id, provider_name, kind = p.id, p.name, p.kind  # a rollback expires p: reading it then would be a 500
    try:
        # A statement of its own, not the session's delete, for its row count: the session's
        # only warns when the row is gone, and would answer and audit a deletion made by someone else.
        deleted = (await db.execute(
            delete(Provider).where(Provider.id == provider_id).execution_options(synchronize_session=False)
        )).rowcount
    except IntegrityError:  # a workspace created since refuse_deletion counted them (its foreign key)
        await db.rollback()
        raise APIError(409, f"provider {quoted(provider_name)} got a workspace meanwhile", "delete it first; see hatchway workspaces list --all") from None
    if not deleted:  # deleted meanwhile (another site manager, a second click): theirs is the audited one
        await db.rollback()
        raise APIError(404, f"no provider named {quoted(provider_name)}", "it was deleted meanwhile; see hatchway providers list")
    record(db, sm, "provider.delete", provider_name, source, kind=kind)
    await db.commit()


async def apply_provider_edit(
    ctx: ServerContext, db: AsyncSession, sm: User, name: str, body: schemas.ProviderEditIn, source: str
) -> schemas.ProviderOut:
    """Shared by the API and the web UI so both take effect identically."""
    p = await get_provider(db, name)
    changes = {}
    if body.external_connect is not None and body.external_connect != p.external_connect:
        changes["external_connect"] = {"old": p.external_connect, "new": body.external_connect}
        p.external_connect = body.external_connect
    if changes:
        record(db, sm, "provider.edit", p.name, source, **changes)
    await db.commit()
    if "external_connect" in changes:
        if not p.external_connect:
            await ctx.broadcast.end_sessions(StreamMatch(provider_id=p.id), external_connect_off_message(p.name))
        await ctx.broadcast.push_manifests(provider_id=p.id)
    return next(r for r in await provider_rows(db) if r.name == p.name)
