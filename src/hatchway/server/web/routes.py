"""The web UI: server-rendered pages over the same service functions the REST API uses.

Every change goes through the API's own functions (``apply_provider_edit``, ``create_user``,
``regenerate``, ...), called directly with the signed-in user, so the UI records the same
audit events, ends the same live sessions and pushes the same manifests as the API and CLI.
Sign-in goes through the API's login function too, so brute-force throttling is shared.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hatchway import __version__, names
from hatchway.db.models import ApiToken, AuditEvent, SSHConnection, User
from hatchway.server import crypto
from hatchway.server.api import keys as keys_api
from hatchway.server.api import providers as providers_api
from hatchway.server.api import schemas
from hatchway.server.api import sessions as sessions_api
from hatchway.server.api import users as users_api
from hatchway.server.api import workspaces as ws_api
from hatchway.server.api.convert import audit_out, connection_out
from hatchway.server.auth import user_for_token
from hatchway.server.connlog import workspace_filter
from hatchway.server.context import ServerContext, client_source, get_ctx, get_db
from hatchway.server.errors import APIError
from hatchway.server.policy import SSHFacts, external_connect_off_message, ssh_refusal
from hatchway.server.web import format as fmt
from hatchway.server.web.security import (
    CSRF_FIELD,
    CSRF_HEADER,
    FLASH_COOKIE,
    PRESESSION_COOKIE,
    SESSION_COOKIE,
    add_security_headers,
    clear_cookie,
    csrf_token,
    csrf_valid,
    get_cookie,
    pop_flash,
    set_cookie,
    set_flash,
)

log = logging.getLogger("hatchway.server.web")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PAGE_SIZE = 25

templates = Jinja2Templates(directory=str(TEMPLATES))
templates.env.filters.update(
    bytes=fmt.human_bytes,
    duration=fmt.human_duration,
    utc=fmt.utc_text,
    iso=fmt.iso,
    ago=fmt.ago,
    until=fmt.until,
    client=fmt.client_text,
    ssh_mode=fmt.ssh_mode_text,
    detail=fmt.detail_text,
    source=fmt.source_text,
)
templates.env.globals.update(version=__version__, SSH_DISABLED=fmt.SSH_DISABLED)


class SignInRequired(Exception):
    def __init__(self, next_url: str) -> None:
        super().__init__("sign in required")
        self.next_url = next_url


class CSRFRefused(Exception):
    pass


class AccountSuspended(Exception):
    pass


class WebRoute(APIRoute):
    """Routes of the UI answer in HTML: errors become pages, anonymous users go to sign-in,
    every unsafe request must carry the CSRF token, and every page gets security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                if request.method not in ("GET", "HEAD", "OPTIONS"):
                    await _check_csrf(request)
                response = await inner(request)
            except SignInRequired as exc:
                target = "/" if exc.next_url in ("/", "") else "/?" + urlencode({"next": exc.next_url})
                response = RedirectResponse(target, status_code=303)
            except AccountSuspended:
                response = error_page(
                    request, 403, "Your account is suspended", "Ask a site manager to reactivate it, then sign in again."
                )
                clear_cookie(request, response, SESSION_COOKIE)
            except CSRFRefused:
                response = error_page(
                    request,
                    403,
                    "This form could not be verified",
                    "It has expired or was not sent from a Hatchway page. Go back, reload the page "
                    "and try again.",
                )
            except APIError as exc:
                response = error_page(request, exc.status, exc.error, exc.detail)
                if exc.headers:
                    response.headers.update(exc.headers)
            except RequestValidationError:
                response = error_page(request, 400, "This request is not valid", "Go back and try again.")
            except HTTPException as exc:
                response = error_page(request, exc.status_code, str(exc.detail or "Error"))
            except Exception:
                log.exception("web UI: unhandled error on %s %s", request.method, request.url.path)
                response = error_page(
                    request, 500, "Something went wrong", "The server hit an unexpected error; it has been logged."
                )
            add_security_headers(response)
            return response

        return handler


async def _check_csrf(request: Request) -> None:
    submitted = request.headers.get(CSRF_HEADER)
    if not submitted:
        ctype = request.headers.get("content-type", "")
        if ctype.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get(CSRF_FIELD)
            submitted = value if isinstance(value, str) else None
    if not csrf_valid(request, submitted):
        raise CSRFRefused()


router = APIRouter(route_class=WebRoute, include_in_schema=False)


def install(app: FastAPI) -> None:
    """Serve the UI and its static assets from ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="web-static")


# --- who is asking --------------------------------------------------------------------------


async def _session_user(request: Request, db: AsyncSession) -> User | None:
    token = get_cookie(request, SESSION_COOKIE)
    if not token:
        return None
    try:
        user = await user_for_token(db, token)
    except APIError as exc:
        if exc.status == 403:  # suspended: say so rather than bouncing to sign-in forever
            raise AccountSuspended() from None
        return None
    request.state.user = user
    request.state.session_token = token
    return user


async def web_user(request: Request, db: AsyncSession = Depends(get_db)) -> User:
    user = await _session_user(request, db)
    if user is None:
        path = request.url.path if request.method == "GET" else "/"
        if request.method == "GET" and request.url.query:
            path += "?" + request.url.query
        raise SignInRequired(path)
    return user


async def web_manager(request: Request, user: User = Depends(web_user)) -> User:
    if user.role != "site-manager":
        raise APIError(403, "Only site managers can open this page", "Ask one of your site managers if you need a change here.")
    return user


# --- rendering ------------------------------------------------------------------------------


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    flash_raw = get_cookie(request, FLASH_COOKIE)
    scratch = Response()
    flash = pop_flash(request, scratch) if flash_raw else None
    user: User | None = getattr(request.state, "user", None)
    context.update(
        request=request,
        user=user,
        is_manager=bool(user and user.role == "site-manager"),
        csrf_field=CSRF_FIELD,
        csrf_token=csrf_token(request),
        flash=flash,
        path=request.url.path,
    )
    response = templates.TemplateResponse(request, template, context, status_code=status)
    response.headers["Cache-Control"] = "no-store"
    if flash_raw:
        clear_cookie(request, response, FLASH_COOKIE)
    new_pre = getattr(request.state, "new_presession", None)
    if new_pre:
        set_cookie(request, response, PRESESSION_COOKIE, new_pre, max_age=7 * 24 * 3600)
    return response


def error_page(request: Request, status: int, title: str, detail: str = "") -> HTMLResponse:
    return render(request, "error.html", status=status, status_code=status, title=title, detail=detail)


def redirect(request: Request, url: str, kind: str | None = None, message: str | None = None) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    if kind and message:
        set_flash(request, response, kind, message)
    return response


def form_str(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


def validation_message(exc: ValidationError, labels: dict[str, str] | None = None) -> str:
    """The model's refusals as sentences; ``labels`` names fields as the form's labels do."""
    parts = []
    for err in exc.errors()[:5]:
        msg = str(err.get("msg", "invalid"))
        msg = msg.removeprefix("Value error, ")
        loc = ".".join(str(x) for x in err.get("loc", ()))
        loc = (labels or {}).get(loc, loc)
        if "at least" in msg and loc:
            msg = f"{loc}: {msg}"
        parts.append(msg[:1].upper() + msg[1:])
    return "; ".join(parts)


def safe_next(value: str | None) -> str:
    """Only same-site paths: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/workspaces"


# --- sign in, first user, sign out -----------------------------------------------------------


async def _needs_first_user(db: AsyncSession) -> bool:
    return (await db.execute(select(func.count()).select_from(User))).scalar_one() == 0


@router.get("/")
async def home(request: Request, db: AsyncSession = Depends(get_db)) -> Response:
    if await _session_user(request, db) is not None:
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
            # The API's own login: same password check, same throttle, same suspension rule.
            out = await users_api.login(body=body, request=request, ctx=ctx, db=db)
        except ValidationError:
            error = "Wrong username or password. Check both and try again."
            await ctx.broadcast.login_failed(username[:64], request.client.host if request.client else "unknown")
        except APIError as exc:
            status = exc.status
            if exc.status == 429:
                retry_after = (exc.headers or {}).get("Retry-After")
                error = f"Too many failed sign-in attempts. Please {exc.detail}."
            elif exc.status == 403:
                error = "Your account is suspended. Ask a site manager to reactivate it."
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
            error = validation_message(exc)
        except APIError as exc:
            await db.rollback()
            error = f"{exc.error[:1].upper()}{exc.error[1:]}."
        else:
            response = redirect(request, "/workspaces", "success", f"Welcome, {out.user.username}. You are this deployment's first site manager.")
            set_cookie(request, response, SESSION_COOKIE, out.token, max_age=ctx.settings.session_ttl_s)
            clear_cookie(request, response, PRESESSION_COOKIE)
            return response
    return render(request, "setup.html", status=400, form=values, error=error)


@router.post("/sign-out")
async def sign_out(request: Request, db: AsyncSession = Depends(get_db)) -> Response:
    token = get_cookie(request, SESSION_COOKIE)
    if token:
        await db.execute(delete(ApiToken).where(ApiToken.token_hash == crypto.hash_token(token)))
        await db.commit()
    response = redirect(request, "/", "info", "You are signed out.")
    clear_cookie(request, response, SESSION_COOKIE)
    return response


# --- workspaces ---------------------------------------------------------------------------


def _connect_facts(viewer: User, w: schemas.WorkspaceOut, owner_id: str) -> SSHFacts:
    return SSHFacts(
        requester=viewer.username,
        requester_id=viewer.id,
        requester_suspended=viewer.suspended,
        workspace=w.name,
        owner=w.owner,
        owner_id=owner_id,
        provider=w.provider,
        external_connect=w.external_connect,
        state=w.state,
        state_reason=w.state_reason,
        agent_connected=w.agent_connected,
        requester_sees_all=viewer.role == "site-manager",
    )


def _workspace_view(viewer: User, w: schemas.WorkspaceOut, managed: bool = False) -> dict[str, Any]:
    mine = w.owner == viewer.username
    refusal = ssh_refusal(_connect_facts(viewer, w, viewer.id if mine else "someone-else"))
    return {
        "ws": w,
        "mine": mine,
        "path": f"/workspaces/{w.owner}/{w.name}",
        "command": f"ssh hatchway.{w.name}",
        "ssh_disabled": not w.external_connect,
        "ssh_disabled_detail": external_connect_off_message(w.provider),
        "refusal": refusal,
        "not_ready": _not_ready(w),
        "managed": managed,
    }


def _not_ready(w: schemas.WorkspaceOut) -> str | None:
    """A short why-not for the list; the detail page has the full sentence."""
    if w.state != "running":
        return f"Not reachable while {w.state}"
    if not w.agent_connected:
        return "Not reachable: agent not connected"
    return None


async def _show_workspace(db: AsyncSession, user: User, owner: str, name: str) -> schemas.WorkspaceOut:
    try:
        return await ws_api.show_workspace(name=name, owner=owner, user=user, db=db)
    except APIError as exc:
        if exc.status == 404:
            raise APIError(404, f'No workspace "{owner}/{name}"', "It may have been deleted. See the Workspaces page.") from None
        raise


def _managed(request: Request, kind: str) -> bool:
    """Whether Hatchway itself starts and stops workspaces of this provider kind."""
    supervisor = getattr(request.app.state, "supervisor", None)
    manages = getattr(supervisor, "manages", None)
    return bool(manages(kind)) if callable(manages) else kind != "manual"


async def _workspaces_page(
    request: Request, user: User, db: AsyncSession, status: int = 200, form: dict[str, str] | None = None,
    error: str | None = None, created: schemas.WorkspaceCreatedOut | None = None,
) -> Response:
    show_all = user.role == "site-manager" and request.query_params.get("all") == "1"
    rows = await ws_api.list_workspaces(all_users=show_all, user=user, db=db)
    providers = await providers_api.provider_rows(db)
    return render(
        request,
        "workspaces.html",
        status=status,
        section="workspaces",
        workspaces=[_workspace_view(user, w, _managed(request, w.provider_kind)) for w in rows],
        providers=providers,
        show_all=show_all,
        form=form or {"provider": "local" if any(p.name == "local" for p in providers) else ""},
        error=error,
        created=created,
        supports_openssh=_SUPPORTS_OPENSSH,
    )


# Newer APIs let a local workspace run OpenSSH on its port 22; offer it when this one does.
_SUPPORTS_OPENSSH = "openssh" in schemas.WorkspaceCreateIn.model_fields


@router.get("/workspaces")
async def workspaces_page(request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)) -> Response:
    return await _workspaces_page(request, user, db)


def _parse_env(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        k, v = names.parse_env_assignment(line.strip())
        env[k] = v
    return env


@router.post("/workspaces")
async def create_workspace(
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("name", "provider")}
    env_raw = form.get("env")
    values["env"] = env_raw if isinstance(env_raw, str) else ""
    extra: dict[str, Any] = {}
    if _SUPPORTS_OPENSSH:
        extra["openssh"] = form.get("openssh") == "on"
        values["openssh"] = "on" if extra["openssh"] else ""
    values["image"] = form_str(form, "image")
    extra["cvm"] = form.get("cvm") == "on"
    values["cvm"] = "on" if extra["cvm"] else ""
    try:
        body = schemas.WorkspaceCreateIn(
            name=values["name"], provider=values["provider"] or "local", env=_parse_env(values["env"]),
            image=values["image"] or None, **extra,
        )
        out = await ws_api.create_workspace(body=body, request=request, user=user, ctx=ctx, db=db)
    except ValueError as exc:  # ValidationError is a ValueError too
        msg = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
        return await _workspaces_page(request, user, db, 400, values, msg)
    except APIError as exc:
        await db.rollback()
        await db.refresh(user)  # the rollback expired it; the page below reads it again
        return await _workspaces_page(request, user, db, exc.status, values, f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}")
    if out.agent_command:
        # A manual provider's agent token is shown exactly once, so render it now.
        return render(request, "agent_token.html", section="workspaces", ws=out, agent_command=out.agent_command, created=True)
    return redirect(request, "/workspaces", "success", f'Workspace "{out.name}" created on provider "{out.provider}".')


@router.get("/workspaces/{owner}/{name}")
async def workspace_page(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    view = _workspace_view(user, w, _managed(request, w.provider_kind))
    view["connections"] = await _recent_connections(db, user, w.id)
    return render(request, "workspace.html", section="workspaces", view=view)


#: SSH connections shown on a workspace's page (the Audit page has them all, for site managers).
RECENT_CONNECTIONS = 10


async def _recent_connections(db: AsyncSession, viewer: User, workspace_id: str) -> list[dict[str, Any]]:
    """The newest connections to the workspace: a member sees their own (as the API shows
    them), a site manager everyone's, refused attempts by other users included."""
    stmt = select(SSHConnection).where(SSHConnection.workspace_id == workspace_id)
    if viewer.role != "site-manager":
        stmt = stmt.where(SSHConnection.user_id == viewer.id)
    stmt = stmt.order_by(SSHConnection.started_at.desc(), SSHConnection.id.desc()).limit(RECENT_CONNECTIONS)
    rows = (await db.execute(stmt)).scalars().all()
    return [{"c": connection_out(r), "duration": fmt.connection_duration(r.started_at, r.ended_at)} for r in rows]


@router.get("/workspaces/{owner}/{name}/delete")
async def workspace_delete_confirm(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    return render(request, "confirm.html", section="workspaces", **_delete_confirm_text(w))


def _delete_confirm_text(w: schemas.WorkspaceOut) -> dict[str, Any]:
    return {
        "title": f'Delete workspace "{w.name}"?',
        "body": [
            f'Workspace "{w.owner}/{w.name}" on provider "{w.provider}" will be deleted.',
            "Live SSH sessions to it end now and its agent is disconnected. This cannot be undone.",
        ],
        "action": f"/workspaces/{w.owner}/{w.name}/delete",
        "confirm_label": "Delete workspace",
        "danger": True,
        "cancel": f"/workspaces/{w.owner}/{w.name}",
    }


@router.post("/workspaces/{owner}/{name}/delete")
async def workspace_delete(
    owner: str,
    name: str,
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    await ws_api.delete_workspace(name=name, request=request, owner=owner, user=user, ctx=ctx, db=db)
    back = "/workspaces" if owner == user.username else "/workspaces?all=1"
    return redirect(request, back, "success", f'Workspace "{owner}/{name}" deleted.')


@router.get("/workspaces/{owner}/{name}/agent-token")
async def agent_token_confirm(
    owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db)
) -> Response:
    w = await _show_workspace(db, user, owner, name)
    return render(
        request,
        "confirm.html",
        section="workspaces",
        title=f'New agent token for "{w.name}"?',
        body=[
            ("A new token is generated and shown once. The old token stops working now: an agent "
            "running with it is disconnected until you restart it with the new one."),
        ],
        action=f"/workspaces/{w.owner}/{w.name}/agent-token",
        confirm_label="Generate new token",
        danger=False,
        cancel=f"/workspaces/{w.owner}/{w.name}",
    )


@router.post("/workspaces/{owner}/{name}/agent-token")
async def agent_token(
    owner: str,
    name: str,
    request: Request,
    user: User = Depends(web_user),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    out = await ws_api.rotate_agent_token(name=name, request=request, owner=owner, user=user, ctx=ctx, db=db)
    w = await ws_api.show_workspace(name=name, owner=owner, user=user, db=db)
    return render(request, "agent_token.html", section="workspaces", ws=w, agent_command=out.agent_command, created=False)


def _lifecycle_route(action: ws_api.Lifecycle) -> None:
    """POST /workspaces/{owner}/{name}/<action> from the buttons: the API's change, then back
    to the page the button was on with what happened."""

    async def endpoint(
        owner: str, name: str, request: Request, user: User = Depends(web_user), db: AsyncSession = Depends(get_db),
    ) -> Response:
        form = await request.form()
        back = form_str(form, "next")
        if not back.startswith("/workspaces") or back.startswith("//"):
            back = f"/workspaces/{owner}/{name}"
        try:
            out = await ws_api.change_state(action, name, owner, request, user, db)
        except APIError as exc:
            return redirect(request, back, "error", f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}")
        label = f'"{owner}/{name}"'
        if out.state == "failed":
            return redirect(request, back, "error", f"Workspace {label} failed: {out.state_reason or 'see its details'}")
        if action == "start" and out.state == "running":  # a page older than the workspace's start
            return redirect(request, back, "success", f"Workspace {label} is already running.")
        done = {"start": f"Starting workspace {label}.", "stop": f"Workspace {label} stopped.",
                "restart": f"Restarting workspace {label}."}
        return redirect(request, back, "success", done[action])

    endpoint.__name__ = f"workspace_{action}"
    router.add_api_route(f"/workspaces/{{owner}}/{{name}}/{action}", endpoint, methods=["POST"])


for _action in ("start", "stop", "restart"):
    _lifecycle_route(_action)


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


def _form_secret(form: FormData, key: str) -> str:
    """A password field exactly as typed: unlike names, passwords are never trimmed."""
    value = form.get(key)
    return value if isinstance(value, str) else ""


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
    return f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}."


@router.post("/account/password")
async def password_change(
    request: Request, user: User = Depends(web_user), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    form = await request.form()
    new = _form_secret(form, "new_password")
    if new != _form_secret(form, "new_password_confirm"):
        return _password_page(request, 400, "The two new passwords do not match.")
    try:
        body = schemas.PasswordChangeIn(current_password=_form_secret(form, "current_password"), new_password=new)
        # The API's own change: same password check and throttle as sign-in, same audit event.
        ended = await users_api.change_own_password(ctx, db, user, body, request.state.session_token, request)
    except ValidationError as exc:
        return _password_page(request, 400, validation_message(exc, {"new_password": "New password"}))
    except APIError as exc:
        response = _password_page(request, exc.status, _own_password_refusal(exc))
        if exc.headers:
            response.headers.update(exc.headers)
        return response
    others = f"{ended} other session{'' if ended == 1 else 's'}"
    return redirect(request, "/account/password", "success", f"Password changed. {others} signed out; this browser stays signed in.")


# --- manage: providers --------------------------------------------------------------------


@router.get("/manage/providers")
async def providers_page(request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return render(request, "providers.html", section="manage", providers=await providers_api.provider_rows(db), form={}, error=None)


@router.post("/manage/providers")
async def provider_create(request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("name", "kind")}
    try:
        body = schemas.ProviderCreateIn(name=values["name"], kind=values["kind"] or "manual", external_connect=form.get("external_connect") == "on")  # type: ignore[arg-type]
        out = await providers_api.create_provider(body=body, request=request, sm=sm, db=db)
    except ValidationError as exc:
        error = validation_message(exc)
    except APIError as exc:
        await db.rollback()
        error = f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}"
    else:
        return redirect(request, "/manage/providers", "success", f'Provider "{out.name}" created.')
    return render(request, "providers.html", status=400, section="manage", providers=await providers_api.provider_rows(db), form=values, error=error)


async def _provider_row(db: AsyncSession, name: str) -> schemas.ProviderOut:
    for p in await providers_api.provider_rows(db):
        if p.name == name:
            return p
    raise APIError(404, f'No provider named "{name}"', "See Manage > Providers for the providers of this deployment.")


@router.get("/manage/providers/{name}/edit")
async def provider_edit_page(name: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return render(request, "provider_edit.html", section="manage", provider=await _provider_row(db, name))


@router.post("/manage/providers/{name}/edit")
async def provider_edit(
    name: str,
    request: Request,
    sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    form = await request.form()
    before = await _provider_row(db, name)
    wanted = form.get("external_connect") == "on"
    # The API's own edit: audit event, live sessions ended, manifests pushed — identically.
    after = await providers_api.apply_provider_edit(
        ctx, db, sm, name, schemas.ProviderEditIn(external_connect=wanted), client_source(request)
    )
    if before.external_connect == after.external_connect:
        return redirect(request, "/manage/providers", "info", f'No changes to provider "{name}".')
    if after.external_connect:
        msg = f'Saved. External Connect is on for provider "{name}": users can connect to its workspaces over SSH again.'
    else:
        msg = (
            f'Saved. External Connect is off for provider "{name}": new SSH connections to its '
            "workspaces are refused and live sessions were ended."
        )
    return redirect(request, "/manage/providers", "success", msg)


# --- manage: users ------------------------------------------------------------------------


async def _users_page(request: Request, sm: User, db: AsyncSession, status: int = 200, form: dict[str, str] | None = None, error: str | None = None) -> Response:
    users = await users_api.list_users(_sm=sm, db=db)
    return render(request, "users.html", status=status, section="manage", users=users, form=form or {"role": "member"}, error=error)


@router.get("/manage/users")
async def users_page(request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    return await _users_page(request, sm, db)


@router.post("/manage/users")
async def user_create(
    request: Request, sm: User = Depends(web_manager), ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db)
) -> Response:
    form = await request.form()
    values = {k: form_str(form, k) for k in ("username", "email", "role")}
    password = form.get("password")
    try:
        body = schemas.UserCreateIn(
            username=values["username"], email=values["email"], role=values["role"] or "member",  # type: ignore[arg-type]
            password=password if isinstance(password, str) else "",
        )
        out = await users_api.create_user(body=body, request=request, sm=sm, ctx=ctx, db=db)
    except ValidationError as exc:
        return await _users_page(request, sm, db, 400, values, validation_message(exc))
    except APIError as exc:
        await db.rollback()
        return await _users_page(request, sm, db, exc.status, values, f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}")
    return redirect(request, "/manage/users", "success", f'User "{out.username}" created as {out.role}.')


async def _user_action(request: Request, fn: Any, done: str, **kw: Any) -> Response:
    try:
        out = await fn(request=request, **kw)
    except APIError as exc:
        return redirect(request, "/manage/users", "error", f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}")
    return redirect(request, "/manage/users", "success", done.format(u=out))


@router.post("/manage/users/{username}/suspend")
async def user_suspend(
    username: str, request: Request, sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db),
) -> Response:
    return await _user_action(
        request, users_api.suspend_user, 'User "{u.username}" suspended: they cannot sign in or connect, and their live sessions were ended.',
        username=username, sm=sm, ctx=ctx, db=db,
    )


@router.post("/manage/users/{username}/activate")
async def user_activate(
    username: str, request: Request, sm: User = Depends(web_manager),
    ctx: ServerContext = Depends(get_ctx), db: AsyncSession = Depends(get_db),
) -> Response:
    return await _user_action(request, users_api.activate_user, 'User "{u.username}" activated: they can sign in again (sessions from before the suspension stay ended).', username=username, sm=sm, ctx=ctx, db=db)


@router.post("/manage/users/{username}/role")
async def user_role(username: str, request: Request, sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    form = await request.form()
    try:
        body = schemas.RoleIn(role=form_str(form, "role"))  # type: ignore[arg-type]
    except ValidationError:
        return redirect(request, "/manage/users", "error", "Choose a role: member or site-manager.")
    return await _user_action(request, users_api.set_role, 'User "{u.username}" is now a {u.role}.', username=username, body=body, sm=sm, db=db)


async def _user_row(db: AsyncSession, username: str) -> User:
    try:
        return await users_api.get_user(db, username)
    except APIError:
        raise APIError(404, f"No user named {names.quoted(username)}", "See Manage > Users for the users of this deployment.") from None


def _user_password_page(request: Request, target: User, status: int = 200, error: str | None = None) -> Response:
    return render(request, "user_password.html", status=status, section="manage", target=target, error=error)


@router.get("/manage/users/{username}/password")
async def user_password_page(
    username: str, request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)
) -> Response:
    return _user_password_page(request, await _user_row(db, username))


@router.post("/manage/users/{username}/password")
async def user_password_set(
    username: str, request: Request, sm: User = Depends(web_manager), ctx: ServerContext = Depends(get_ctx),
    db: AsyncSession = Depends(get_db),
) -> Response:
    target = await _user_row(db, username)
    form = await request.form()
    password = _form_secret(form, "password")
    if password != _form_secret(form, "password_confirm"):
        return _user_password_page(request, target, 400, "The two passwords do not match.")
    try:
        body = schemas.PasswordSetIn(password=password)
    except ValidationError as exc:
        return _user_password_page(request, target, 400, validation_message(exc, {"password": "New password"}))
    # The API's own reset: every session of theirs ends (the caller's kept if it is their own), audited.
    ended = await users_api.reset_password(
        db, ctx.broadcast, sm, target.username, body.password, request.state.session_token, client_source(request)
    )
    sessions = f"{ended} sign-in session{'' if ended == 1 else 's'} of theirs ended"
    return redirect(request, "/manage/users", "success", f'Password of "{target.username}" set; {sessions}.')


# --- manage: audit ------------------------------------------------------------------------


def _page_number(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


def _pager(request: Request, page: int, total: int) -> dict[str, Any]:
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    params = {k: v for k, v in request.query_params.items() if k != "page" and v}

    def link(p: int) -> str:
        return "/manage/audit?" + urlencode({**params, "page": str(p)})

    return {
        "page": page,
        "pages": pages,
        "total": total,
        "first": (page - 1) * PAGE_SIZE + 1 if total else 0,
        "last": min(page * PAGE_SIZE, total),
        "newer": link(page - 1) if page > 1 else None,
        "older": link(page + 1) if page < pages else None,
    }


@router.get("/manage/audit")
async def audit_page(request: Request, _sm: User = Depends(web_manager), db: AsyncSession = Depends(get_db)) -> Response:
    q = request.query_params
    view = "admin" if q.get("view") == "admin" else "connections"
    user_f = (q.get("user") or "").strip()
    ws_f = (q.get("workspace") or "").strip()
    page = _page_number(request)

    if view == "connections":
        stmt = select(SSHConnection)
        if user_f:
            stmt = stmt.where(SSHConnection.username == user_f)
        if ws_f:
            stmt = stmt.where(workspace_filter(ws_f))
        order = (SSHConnection.started_at.desc(), SSHConnection.id.desc())
    else:
        stmt = select(AuditEvent)
        if user_f:
            stmt = stmt.where(
                or_(AuditEvent.actor == user_f, AuditEvent.target == user_f, AuditEvent.target.startswith(user_f + "/", autoescape=True))
            )
        if ws_f:
            target = AuditEvent.target == ws_f if "/" in ws_f else or_(AuditEvent.target == ws_f, AuditEvent.target.endswith("/" + ws_f, autoescape=True))
            stmt = stmt.where(and_(AuditEvent.action.startswith("workspace."), target))
        order = (AuditEvent.id.desc(),)

    total = (await db.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    pager = _pager(request, page, total)
    rows = (await db.execute(stmt.order_by(*order).offset((pager["page"] - 1) * PAGE_SIZE).limit(PAGE_SIZE))).scalars().all()
    if view == "connections":
        items = [
            {"c": connection_out(r), "duration": fmt.connection_duration(r.started_at, r.ended_at)} for r in rows
        ]
    else:
        items = [{"e": audit_out(r)} for r in rows]
    usernames = [u.username for u in (await db.execute(select(User).order_by(User.username))).scalars()]
    base = {k: v for k, v in (("user", user_f), ("workspace", ws_f)) if v}
    return render(
        request,
        "audit.html",
        section="manage",
        view=view,
        items=items,
        pager=pager,
        user_filter=user_f,
        workspace_filter=ws_f,
        usernames=usernames,
        tab_links={
            "connections": "/manage/audit?" + urlencode(base),
            "admin": "/manage/audit?" + urlencode({**base, "view": "admin"}),
        },
        clear_link="/manage/audit" + ("?view=admin" if view == "admin" else ""),
    )

