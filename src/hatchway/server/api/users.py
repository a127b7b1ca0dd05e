"""Sign-in, the first user, and user administration."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hatchway import __version__
from hatchway.db.models import User, new_id, utcnow
from hatchway.db.turns import take_turns
from hatchway.names import could_be_username
from hatchway.paging import MAX_LIMIT, MAX_OFFSET
from hatchway.server import crypto, passwords
from hatchway.server.api import schemas
from hatchway.server.api import sessions as sessions_api
from hatchway.server.api.convert import user_out
from hatchway.server.api.lookup import get_user, name_contains
from hatchway.server.api.standing import change_standing
from hatchway.server.api.workspaces import refuse_demoting_unisolated_owner
from hatchway.server.audit import record
from hatchway.server.auth import bearer_token, current_user, issue_session_token, site_manager
from hatchway.server.broadcast import Broadcast
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.failed_signins import (
    SUSPENDED,
    THROTTLED,
    TOO_LONG,
    failure_reason,
    record_failed_password_change,
    record_failed_sign_in,
)
from hatchway.server.policy import SUSPENDED_MESSAGE
from hatchway.server.relay import StreamMatch

router = APIRouter(prefix="/api/v1", tags=["users"])


async def new_user(ctx: ServerContext, username: str, email: str, role: str, password: str | None) -> User:
    """A user row with a fresh platform key pair, its private half sealed at rest."""
    user = User(username=username, email=email, role=role)
    user.id = new_id()  # needed now: the sealed key is bound to it
    set_user_key(ctx.box, user)
    user.password_hash = await passwords.hash_password(password) if password else None
    return user


def set_user_key(box: crypto.SecretBox, user: User) -> None:
    """Give ``user`` a fresh platform key pair, its private half sealed with ``box`` (the
    server's; ``hatchway server rotate-secret --old-secret-lost`` passes the new secret's)."""
    pair = crypto.generate_ssh_keypair(f"hatchway-{user.username}")
    user.ssh_public_key = pair.public_key
    user.ssh_private_key_sealed = box.seal(pair.private_key_pem, context=f"user-key:{user.id}")
    user.ssh_key_fingerprint = pair.fingerprint
    user.ssh_key_updated_at = utcnow()


def login_source(request: Request) -> str:
    """The address password failures are counted against (the host alone: a guesser gets a new
    port with every connection)."""
    return request.client.host if request.client else "unknown"


def _refuse_if_throttled(ctx: ServerContext, username: str, source: str) -> None:
    wait = ctx.throttle.retry_after(username, source)
    if wait > 0:
        raise APIError(
            429,
            "too many failed logins",
            f"wait {int(wait) + 1} seconds before trying again",
            headers={"Retry-After": str(int(wait) + 1)},
        )


def too_long(username: str, password: str) -> bool:
    """Whether the name or the password is longer than any can be (see ``schemas.LoginIn``)."""
    return len(username) > schemas.LOGIN_NAME_MAX or len(password) > schemas.PASSWORD_MAX


async def password_matches(ctx: ServerContext, user: User | None, username: str, password: str, source: str) -> bool:
    """The one password check (login, and changing your own password): refused without a look
    at the password while ``username`` is throttled, as slow for an unknown name or a user
    without a password as for a wrong one, and every failure counted on every replica. A name
    or password longer than any can be fails unchecked (Argon2 could only say no, slowly), and
    is counted all the same, under the name's first ``LOGIN_NAME_MAX`` characters (the
    throttle keeps its counts in memory: a megabyte of name must not be a key)."""
    counted_as = username[:schemas.LOGIN_NAME_MAX]
    _refuse_if_throttled(ctx, counted_as, source)
    stored = user.password_hash if user is not None else None
    ok = not too_long(username, password) and await passwords.verify_password(
        stored or crypto.DUMMY_PASSWORD_HASH, password)
    if not ok or not stored:
        await ctx.broadcast.login_failed(counted_as, source)
        return False
    return True


#: Audits a refused password check, given why it was refused (the reasons of failed_signins).
AuditRefusal = Callable[[str], Awaitable[None]]


async def audited_password_matches(
    ctx: ServerContext, user: User | None, username: str, password: str, source: str, audit: AuditRefusal,
) -> bool:
    """:func:`password_matches`, each refusal (throttled ones included) audited by ``audit``
    with its reason: the record says why, the client is told only that it failed."""
    try:
        ok = await password_matches(ctx, user, username, password, source)
    except APIError as exc:
        if exc.status == 429:  # refused unchecked: most of a guesser's flood is these
            await audit(THROTTLED)
        raise
    if not ok:
        await audit(TOO_LONG if too_long(username, password) else failure_reason(user))
    return ok


async def _user_count(db: AsyncSession) -> int:
    return (await db.execute(select(func.count()).select_from(User))).scalar_one()


@router.get("/deployment", response_model=schemas.DeploymentOut)
async def deployment(ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)) -> schemas.DeploymentOut:
    return schemas.DeploymentOut(
        version=__version__,
        access_url=ctx.settings.url,
        needs_first_user=await _user_count(db) == 0,
        replica=ctx.cluster.id,
    )


@router.post("/auth/first-user", response_model=schemas.TokenOut, status_code=201)
async def first_user(
    body: schemas.FirstUserIn,
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.TokenOut:
    taken = APIError(
        409,
        "this deployment already has users",
        "--first-user only works on an empty deployment; log in with hatchway login URL --username NAME",
    )
    await take_turns(db, FIRST_USER_LOCK)
    if await _user_count(db) > 0:
        raise taken
    user = await new_user(ctx, body.username, body.email, "site-manager", body.password)
    db.add(user)
    try:
        await db.flush()
        # Checked again in the transaction that adds it: requests that raced past the first
        # check (each with its own name) must not all become site managers.
        if await _user_count(db) != 1:
            raise taken
        record(db, user, "user.create", user.username, client_source(request), role="site-manager", first_user=True)
        token = await issue_session_token(db, user, ctx.settings.session_ttl_s, request)
        await db.commit()
    except IntegrityError:  # the same name, raced
        await db.rollback()
        raise taken from None
    except APIError:
        await db.rollback()
        raise
    return schemas.TokenOut(token=token, user=user_out(user))


#: The PostgreSQL advisory lock that first-user requests take in turn (any constant of our own).
FIRST_USER_LOCK = 0x48415443  # "HATC"




@router.post("/auth/login", response_model=schemas.TokenOut)
async def login(
    body: schemas.LoginIn,
    request: Request,
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.TokenOut:
    source = login_source(request)
    # A name no account can have is not worth a query: it may be a megabyte long, or hold a NUL
    # that PostgreSQL refuses with an error (a 500, neither throttled nor audited).
    user = None if not could_be_username(body.username) else (
        await db.execute(select(User).where(User.username == body.username))).scalar_one_or_none()
    # The database connection goes back to the pool while Argon2 works (or waits its turn): a
    # burst of sign-ins must not hold every connection the rest of the server needs.
    await db.commit()
    audit = partial(record_failed_sign_in, ctx, db, request, source, body.username, account=user)
    ok = await audited_password_matches(ctx, user, body.username, body.password, source, audit)
    if not ok or user is None:  # an unknown name never matches; this narrows the type
        raise APIError(401, "wrong username or password", "check both and try again")
    if user.suspended:
        await record_failed_sign_in(ctx, db, request, source, body.username, SUSPENDED, user)
        raise APIError(403, "account suspended", SUSPENDED_MESSAGE)
    await ctx.broadcast.login_succeeded(body.username, source)
    token = await issue_session_token(db, user, ctx.settings.session_ttl_s, request)
    await db.commit()
    return schemas.TokenOut(token=token, user=user_out(user))


@router.post("/auth/logout", response_model=schemas.OkOut)
async def logout(
    request: Request,
    _user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.OkOut:
    await sessions_api.sign_out(db, ctx.broadcast, bearer_token(request.headers), client_source(request))
    return schemas.OkOut()


@router.get("/users/me", response_model=schemas.UserOut)
async def me(user: User = Depends(current_user)) -> schemas.UserOut:
    return user_out(user)


async def _store_password(
    db: AsyncSession, broadcast: Broadcast, actor: User, user: User, password: str, keep_token: str | None,
    source: str,
) -> int:
    """Give ``user`` a new password and end their sessions but ``keep_token``'s (the caller's
    own, when it is theirs), and the SSH connections those opened: whoever held the old
    password, or a token obtained with it, is out. Audited without the password or its hash;
    returns how many sessions ended."""
    had_password = user.password_hash is not None
    user.password_hash = await passwords.hash_password(password)
    kept = await sessions_api.kept_session_id(db, user, keep_token)
    ended = await sessions_api.end_sessions(db, user, keep_token)
    record(db, actor, "user.password", user.username, source, had_password=had_password, sessions_ended=ended)
    await db.commit()
    await sessions_api.end_streams(broadcast, user, kept)
    return ended


async def change_own_password(
    ctx: ServerContext, db: AsyncSession, user: User, body: schemas.PasswordChangeIn, current_token: str | None,
    request: Request,
) -> int:
    """What PUT /users/me/password and Account > Password do. The current password is checked
    (and throttled) exactly as a login is, so a stolen session cannot be turned into the
    account for good, nor used to guess the password faster than the sign-in page allows."""
    source = login_source(request)
    audit = partial(record_failed_password_change, ctx, db, request, source, user)
    if not await audited_password_matches(ctx, user, user.username, body.current_password, source, audit):
        raise APIError(
            403, "current password is wrong",
            "type the password you sign in with now and try again; if you forgot it, ask a site manager "
            f"to set a new one (hatchway users set-password {user.username})",
        )
    if body.new_password == body.current_password:
        raise APIError(422, "the new password is the same as the current one", "choose a different new password")
    await ctx.broadcast.login_succeeded(user.username, source)
    return await _store_password(db, ctx.broadcast, user, user, body.new_password, current_token, client_source(request))


#: Why a site manager's own password is not set here (:func:`reset_password`).
OWN_PASSWORD_REFUSED = APIError(
    409, "your own password is changed with your current one",
    "a session alone must not be enough to take an account over, a site manager's least of all: use hatchway "
    "password, Account > Password in the web UI, or PUT /api/v1/users/me/password",
)


async def reset_password(
    db: AsyncSession, broadcast: Broadcast, sm: User, username: str, password: str, source: str,
) -> int:
    """What PUT /users/{username}/password and Manage > Users > Set password do: every session of
    the user ends. Not for the site manager's own password: that change takes the current one
    (:func:`change_own_password`), else whoever holds a stolen session of theirs could set a
    password of their choosing and sign the owner out."""
    user = await get_user(db, username)
    if user.id == sm.id:
        raise OWN_PASSWORD_REFUSED
    return await _store_password(db, broadcast, sm, user, password, None, source)


@router.put("/users/me/password", response_model=schemas.RevokedOut)
async def change_password(
    body: schemas.PasswordChangeIn,
    request: Request,
    user: User = Depends(current_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.RevokedOut:
    """Change your own password; your other sign-in sessions end (this one stays)."""
    ended = await change_own_password(ctx, db, user, body, bearer_token(request.headers), request)
    return schemas.RevokedOut(revoked=ended)


def users_query(search: str | None = None) -> Select[tuple[User]]:
    """Users by name, narrowed to names containing ``search``: the API's list and Manage >
    Users, which pages it (a deployment can have thousands)."""
    q = select(User).order_by(User.username)
    return q.where(name_contains(User.username, search)) if search else q


@router.get("/users", response_model=list[schemas.UserOut])
async def list_users(
    limit: int | None = Query(None, ge=1, le=MAX_LIMIT, description="at most this many (default: all)"),
    offset: int = Query(0, ge=0, le=MAX_OFFSET, description="skip this many first"),
    search: str | None = Query(None, max_length=64, description="only users whose name contains this, in any case"),
    _sm: User = Depends(site_manager),
    db: AsyncSession = Depends(get_db),
) -> list[schemas.UserOut]:
    """By name. Without ``limit``, every user (as before paging existed)."""
    rows = (await db.execute(users_query(search).limit(limit).offset(offset))).scalars()
    return [user_out(u) for u in rows]


@router.post("/users", response_model=schemas.UserOut, status_code=201)
async def create_user(
    body: schemas.UserCreateIn,
    request: Request,
    sm: User = Depends(site_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.UserOut:
    user = await new_user(ctx, body.username, body.email, body.role, body.password)
    db.add(user)
    record(db, sm, "user.create", user.username, client_source(request), role=body.role)
    try:
        await db.commit()
    except IntegrityError:
        raise APIError(409, f'user "{body.username}" already exists', "pick another username") from None
    return user_out(user)


async def _set_suspended(
    username: str, suspended: bool, request: Request, sm: User, ctx: ServerContext, db: AsyncSession
) -> schemas.UserOut:
    user = await get_user(db, username)
    if user.id == sm.id and suspended:
        raise APIError(409, "you cannot suspend yourself", "ask another site manager")
    if not await change_standing(db, user, sm, suspended=suspended):
        return user_out(user)  # already so (a second click, another site manager first): nothing to record
    if not suspended:
        # Sign-in sessions from before the suspension stay refused (a stolen token must not come
        # back to life): they were refused while it lasted, so that a suspended user is told so.
        await sessions_api.end_sessions(db, user)
    record(db, sm, "user.suspend" if suspended else "user.activate", user.username, client_source(request))
    await db.commit()
    if suspended:
        await ctx.broadcast.end_sessions(StreamMatch(user_id=user.id), SUSPENDED_MESSAGE)
    return user_out(user)


@router.post("/users/{username}/suspend", response_model=schemas.UserOut)
async def suspend_user(
    username: str,
    request: Request,
    sm: User = Depends(site_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.UserOut:
    return await _set_suspended(username, True, request, sm, ctx, db)


@router.post("/users/{username}/activate", response_model=schemas.UserOut)
async def activate_user(
    username: str,
    request: Request,
    sm: User = Depends(site_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.UserOut:
    return await _set_suspended(username, False, request, sm, ctx, db)


@router.put("/users/{username}/role", response_model=schemas.UserOut)
async def set_role(
    username: str,
    body: schemas.RoleIn,
    request: Request,
    sm: User = Depends(site_manager),
    db: AsyncSession = Depends(get_db),
) -> schemas.UserOut:
    user = await get_user(db, username)
    if user.role == body.role:
        return user_out(user)  # nothing changed: nothing to record
    if body.role != "site-manager":
        await refuse_demoting_unisolated_owner(db, request, user)
    old = user.role
    if not await change_standing(db, user, sm, role=body.role):
        return user_out(user)  # another site manager made the same change first
    record(db, sm, "user.set-role", user.username, client_source(request), old=old, new=body.role)
    await db.commit()
    return user_out(user)


@router.put("/users/{username}/password", response_model=schemas.RevokedOut)
async def set_password(
    username: str,
    body: schemas.PasswordSetIn,
    request: Request,
    sm: User = Depends(site_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> schemas.RevokedOut:
    """Set or reset a user's password (site managers); all their sign-in sessions end, and the
    SSH connections they opened."""
    ended = await reset_password(db, ctx.broadcast, sm, username, body.password, client_source(request))
    return schemas.RevokedOut(revoked=ended)
