"""Signing in and out, and creating the deployment's first site manager."""

from __future__ import annotations

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import RedirectResponse, Response

from hatchway.db.models import User
from hatchway.server.api import schemas
from hatchway.server.api import sessions as sessions_api
from hatchway.server.api import users as users_api
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.web.base import (
    form_str,
    page_router,
    redirect,
    render,
    safe_next,
    session_user,
    validation_message,
)
from hatchway.server.web.security import (
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    clear_cookie,
    get_cookie,
    set_cookie,
)

router = page_router()

#: What a setup form that lost to another one is told, on the sign-in page it is sent to.
SETUP_DONE = (
    "This deployment is already set up: someone else created its first site manager, so your account was "
    "not created. Sign in, or ask a site manager to create an account for you."
)


async def _needs_first_user(db: AsyncSession) -> bool:
    return (await db.execute(select(func.count()).select_from(User))).scalar_one() == 0


@router.get("/")
async def home(request: Request, db: AsyncSession = Depends(get_db)) -> Response:
    if await session_user(request, db) is not None:
        return RedirectResponse("/workspaces", status_code=303)
    if await _needs_first_user(db):
        response = render(request, "setup.html", form={})
    else:
        response = render(request, "signin.html", next=request.query_params.get("next", ""), username="", error=None)
    if get_cookie(request, SESSION_COOKIE):
        # It signs nobody in (expired, signed out elsewhere), and as long as the browser sends
        # it only a session's CSRF token is accepted: this page's form would be refused.
        clear_cookie(request, response, SESSION_COOKIE)
    return response


@router.get("/sign-in")
@router.get("/setup")
async def form_address() -> Response:
    """The address a failed sign-in or setup form leaves in the address bar: opening it again
    (a reload, a new tab) goes back to the form rather than to a "method not allowed"."""
    return RedirectResponse("/", status_code=303)


@router.post("/sign-in")
async def sign_in(
    request: Request, ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    form = await request.form()
    username, password = form_str(form, "username"), form.get("password")
    password = password if isinstance(password, str) else ""
    next_url = form_str(form, "next")
    error = None
    status = 401
    retry_after = None
    if not username or not password:
        error, status = "Enter your username and password.", 400
    else:
        try:
            body = schemas.LoginIn(username=username, password=password)
            # The API's own login: same password check, same throttle, same suspension rule, and
            # the same audit (a name or password longer than any included: the form's body is
            # held to the same size as the API's, so it always fits LoginIn).
            out = await users_api.login(body=body, request=request, ctx=ctx, db=db)
        except APIError as exc:
            status = exc.status
            if exc.status == 429:
                retry_after = (exc.headers or {}).get("Retry-After")
                error = f"Too many failed sign-in attempts. Please {exc.detail}."
            elif exc.status == 403:
                error = "Your account is suspended. Ask a site manager to reactivate it."
            elif exc.status == 503:
                retry_after = (exc.headers or {}).get("Retry-After")
                error = f"The server is checking too many passwords at once. Please try again in {retry_after} seconds."
            else:
                error = "Wrong username or password. Check both and try again."
        else:
            response = RedirectResponse(safe_next(next_url), status_code=303)
            set_cookie(request, response, SESSION_COOKIE, out.token, max_age=ctx.settings.session_ttl_s)
            clear_cookie(request, response, PRESESSION_COOKIE)
            return response
    response = render(request, "signin.html", status=status, next=next_url, username=username, error=error)
    if retry_after:
        response.headers["Retry-After"] = retry_after
    return response


#: The setup form's labels, for its refusals (:func:`validation_message`).
SETUP_LABELS = {"username": "Username", "email": "Email", "password": "Password"}


@router.post("/setup")
async def setup(request: Request, ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("username", "email")}
    password, confirm = form.get("password"), form.get("password_confirm")
    error = None
    if password != confirm:
        error = "The two passwords do not match."
    else:
        try:
            body = schemas.FirstUserIn(username=values["username"], email=values["email"], password=password or "")
            out = await users_api.first_user(body=body, request=request, ctx=ctx, db=db)
        except ValidationError as exc:
            error = validation_message(exc, SETUP_LABELS)
        except APIError as exc:
            await db.rollback()
            if exc.status == 409:
                # Someone else's setup got there first (a race, or a form left open): this one's
                # account will not be made, and the setup form is no use any more.
                return redirect(request, "/", "error", SETUP_DONE)
            error = f"{exc.error[:1].upper()}{exc.error[1:]}."
        else:
            response = redirect(request, "/workspaces", "success", f"Welcome, {out.user.username}. You are this deployment's first site manager.")
            set_cookie(request, response, SESSION_COOKIE, out.token, max_age=ctx.settings.session_ttl_s)
            clear_cookie(request, response, PRESESSION_COOKIE)
            return response
    return render(request, "setup.html", status=400, form=values, error=error)


@router.post("/sign-out")
async def sign_out(request: Request, ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)) -> Response:
    token = get_cookie(request, SESSION_COOKIE)
    if token:
        await sessions_api.sign_out(db, ctx.broadcast, token, client_source(request))
    response = redirect(request, "/", "info", "You are signed out.")
    clear_cookie(request, response, SESSION_COOKIE)
    return response
