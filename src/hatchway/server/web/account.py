"""The Account pages: your SSH key, your sign-in sessions, your password."""

from __future__ import annotations

import hmac

from fastapi import Depends, Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import Response

from hatchway.db.models import User
from hatchway.server import crypto
from hatchway.server.api import keys as keys_api
from hatchway.server.api import schemas
from hatchway.server.api import sessions as sessions_api
from hatchway.server.api import users as users_api
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.web.base import (
    form_secret,
    page_router,
    redirect,
    refusal_message,
    render,
    validation_message,
    web_user,
)
from hatchway.server.web.security import (
    SESSION_COOKIE,
    clear_cookie,
)

router = page_router()


# --- account: SSH key ---------------------------------------------------------------------


@router.get("/account/key")
async def key_page(request: Request, user: User = Depends(web_user)) -> Response:
    key = await keys_api.show_key(user=user)
    return render(request, "key.html", section="account", key=key, filename=_key_filename(user))


def _key_filename(user: User) -> str:
    return f"hatchway-{user.username}_ed25519"


@router.post("/account/key/download")
async def key_download(request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx)) -> Response:
    # Only ever the signed-in user's own key: there is no parameter naming whose.
    out = await keys_api.private_key(response=Response(), user=user, ctx=ctx)
    return Response(
        out.private_key,
        media_type="application/x-pem-file",
        headers={
            "Content-Disposition": f'attachment; filename="{_key_filename(user)}"',
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
        },
    )


@router.get("/account/key/regenerate")
async def key_regenerate_confirm(request: Request, user: User = Depends(web_user)) -> Response:
    return render(
        request,
        "confirm.html",
        section="account",
        title="Regenerate your SSH key?",
        body=[
            (f"Your current key ({user.ssh_key_fingerprint}) stops working within seconds in every "
            "workspace: running agents rewrite authorized_keys. SSH sessions already open stay open; "
            "if the old key may have leaked, also sign out the sessions you do not recognise under "
            "Account > Sessions: that ends the SSH connections they opened."),
            "Afterwards, download the new private key or run hatchway config-ssh again on each of your machines.",
        ],
        action="/account/key/regenerate",
        confirm_label="Regenerate key",
        danger=True,
        cancel="/account/key",
    )


@router.post("/account/key/regenerate")
async def key_regenerate(
    request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    out = await keys_api.regenerate(request=request, user=user, ctx=ctx, db=db)
    return redirect(
        request, "/account/key", "success",
        f"New key generated ({out.fingerprint}). The old key no longer works; download the new private key.",
    )


# --- account: sessions --------------------------------------------------------------------


@router.get("/account/sessions")
async def sessions_page(request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)) -> Response:
    rows = await sessions_api.list_for(db, user, request.state.session_token)
    return render(request, "sessions.html", section="account", sessions=rows)


@router.post("/account/sessions/revoke-others")
async def sessions_revoke_others(
    request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    n = await sessions_api.revoke_others(db, ctx.broadcast, user, request.state.session_token, client_source(request))
    return redirect(
        request, "/account/sessions", "success",
        f"Signed out {n} other session{'' if n == 1 else 's'}. SSH connections opened with them have ended.",
    )


@router.post("/account/sessions/{session_id}/revoke")
async def session_revoke(
    session_id: str, request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    try:
        revoked = await sessions_api.revoke_one(db, ctx.broadcast, user, session_id, client_source(request))
    except APIError:
        return redirect(request, "/account/sessions", "error", "That session had already ended.")
    if hmac.compare_digest(revoked, crypto.hash_token(request.state.session_token)):
        response = redirect(request, "/", "info", "You are signed out.")
        clear_cookie(request, response, SESSION_COOKIE)
        return response
    return redirect(request, "/account/sessions", "success", "Session signed out. It can no longer use Hatchway, and SSH connections it opened have ended.")


# --- account: password --------------------------------------------------------------------


def _password_page(request: Request, status: int = 200, error: str | None = None) -> Response:
    return render(request, "password.html", status=status, section="account", error=error)


@router.get("/account/password")
async def password_page(request: Request, _user: User = Depends(web_user)) -> Response:
    return _password_page(request)


def _own_password_refusal(exc: APIError) -> str:
    """The API's refusal of a password change, said for someone at the form."""
    if exc.status == 403:
        return ("Your current password is not right. Check it and try again; if you forgot it, "
                "ask a site manager to set a new one for you.")
    if exc.status == 429:
        return f"Too many wrong passwords. Please {exc.detail}."
    return refusal_message(exc) + "."


#: The password form's labels, for its refusals (:func:`validation_message`).
PASSWORD_LABELS = {"current_password": "Current password", "new_password": "New password"}


@router.post("/account/password")
async def password_change(
    request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    form = await request.form()
    new = form_secret(form, "new_password")
    if new != form_secret(form, "new_password_confirm"):
        return _password_page(request, 400, "The two new passwords do not match.")
    try:
        body = schemas.PasswordChangeIn(current_password=form_secret(form, "current_password"), new_password=new)
        # The API's own change: same password check and throttle as sign-in, same audit event.
        ended = await users_api.change_own_password(ctx, db, user, body, request.state.session_token, request)
    except ValidationError as exc:
        return _password_page(request, 400, validation_message(exc, PASSWORD_LABELS))
    except APIError as exc:
        response = _password_page(request, exc.status, _own_password_refusal(exc))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    others = f"{ended} other session{'' if ended == 1 else 's'}"
    return redirect(request, "/account/password", "success", f"Password changed. {others} signed out; this browser stays signed in.")
