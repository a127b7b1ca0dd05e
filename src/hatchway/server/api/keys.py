"""The caller's own platform SSH key. There is deliberately no route to anyone else's."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import User
from hatchway.server.api import schemas
from hatchway.server.api.users import set_user_key
from hatchway.server.audit import record
from hatchway.server.auth import current_user
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db

router = APIRouter(prefix="/api/v1/users/me/key", tags=["keys"])


def _key_out(user: User) -> schemas.KeyOut:
    return schemas.KeyOut(
        public_key=user.ssh_public_key, fingerprint=user.ssh_key_fingerprint, updated_at=user.ssh_key_updated_at
    )


@router.get("", response_model=schemas.KeyOut)
async def show_key(user: User = Depends(current_user)) -> schemas.KeyOut:
    return _key_out(user)


@router.get("/private", response_model=schemas.PrivateKeyOut)
async def private_key(
    response: Response, user: User = Depends(current_user), ctx: ServerContext = Depends(get_ctx)
) -> schemas.PrivateKeyOut:
    response.headers["Cache-Control"] = "no-store"
    pem = ctx.box.open(user.ssh_private_key_sealed, context=f"user-key:{user.id}")
    return schemas.PrivateKeyOut(
        private_key=pem.decode(), public_key=user.ssh_public_key, fingerprint=user.ssh_key_fingerprint
    )


@router.post("/regenerate", response_model=schemas.KeyOut)
async def regenerate(
    request: Request,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.KeyOut:
    old = user.ssh_key_fingerprint
    set_user_key(ctx.box, user)
    record(db, user, "key.regenerate", user.username, client_source(request), old=old, new=user.ssh_key_fingerprint)
    await db.commit()
    # Running agents rewrite authorized_keys now, so the old key stops working everywhere.
    await ctx.broadcast.push_manifests(owner_id=user.id)
    return _key_out(user)
