"""What every page of the web UI shares: the route class that turns errors into pages and
checks CSRF, who is signed in, rendering, redirects and form fields.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hatchway import __version__, names
from hatchway.db.models import User
from hatchway.server.auth import user_for_token
from hatchway.server.context import get_db
from hatchway.server.errors import APIError
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
    reveal=fmt.revealed,
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


class PageGone(Exception):
    """A long list's page past its last (its last rows deleted since, an old bookmark): the
    browser is sent to ``url``, the page that is now its last, so the address says the page shown."""

    def __init__(self, url: str) -> None:
        super().__init__("page past the last")
        self.url = url


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
            except PageGone as exc:
                response = RedirectResponse(exc.url, status_code=303)  # the flash cookie rides along
            except AccountSuspended:
                response = error_page(
                    request, 403, "Your account is suspended", "Ask a site manager to reactivate it, then sign in again."
                )
                clear_cookie(request, response, SESSION_COOKIE)
            except CSRFRefused:
                response = await stale_form_page(request)
            except APIError as exc:
                exc = page_refusal(request, exc)
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


def page_router() -> APIRouter:
    """A router for pages: HTML errors, CSRF checks, security headers (:class:`WebRoute`)."""
    return APIRouter(route_class=WebRoute, include_in_schema=False)


# --- who is asking --------------------------------------------------------------------------


async def session_user(request: Request, db: AsyncSession) -> User | None:
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
    user = await session_user(request, db)
    if user is None:
        path = request.url.path if request.method == "GET" else "/"
        if request.method == "GET" and request.url.query:
            path += "?" + request.url.query
        raise SignInRequired(path)
    return user


#: What a member who reaches a site manager's page or button is told to do next.
MANAGERS_ONLY_DETAIL = (
    "It is for administering this deployment. Ask one of your site managers if you need access or a change here.")


def managers_only(request: Request) -> APIError:
    """A member at a site manager's page (an old bookmark), or pressing one of its buttons (a
    page left open while they were made a member): what happened and what to do next."""
    what = "open this page" if request.method == "GET" else "do this"
    return APIError(403, f"Only site managers can {what}", MANAGERS_ONLY_DETAIL)


def page_refusal(request: Request, exc: APIError) -> APIError:
    """The API's bare 403 "forbidden" (a site manager's action, by a member) said as a page
    says it; every other refusal already says what happened."""
    return managers_only(request) if exc.status == 403 and exc.error == "forbidden" else exc


async def web_manager(request: Request, user: User = Depends(web_user)) -> User:
    if user.role != "site-manager":
        raise managers_only(request)
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


#: Paths that are never pages: the API, the agents' and replicas' endpoints, static files.
NOT_PAGES = ("/api/", "/internal/", "/static/")

#: What a browser is told when no page answers its request (the API answers JSON instead).
ROUTING_ERRORS = {
    404: ("There is no page at this address", "Check the address for a typo, or go on from here."),
    405: (
        "This address cannot be opened directly",
        "It only takes what a Hatchway form sends when you press its button. Go back to the page "
        "with the form and use it there.",
    ),
}


def wants_page(request: Request) -> bool:
    """Whether a request no route answers came from a browser navigating the UI (a typed or
    reloaded address, an old bookmark): it asked for HTML, so it gets a page, not JSON."""
    path = request.url.path
    return not path.startswith(NOT_PAGES) and "text/html" in request.headers.get("accept", "")


async def _who_is_asking(request: Request) -> None:
    """Sign the request's page in as whoever is signed in, for a page shown before (or instead
    of) the route's own dependencies: its header, its links, its forms' tokens."""
    async with request.app.state.ctx.sessions() as db:
        try:
            await session_user(request, db)
        except AccountSuspended:
            pass  # the page says nothing about the account; signing in says it is suspended


async def routing_error_page(request: Request, status: int, headers: dict[str, str] | None = None) -> Response:
    """The UI's page for a 404 or 405 of the router, with the header of whoever is signed in."""
    await _who_is_asking(request)
    response = error_page(request, status, *ROUTING_ERRORS[status])
    if headers:
        response.headers.update(headers)  # a 405's Allow
    add_security_headers(response)
    return response


async def stale_form_page(request: Request) -> HTMLResponse:
    """A form post whose CSRF token does not check: nothing was done. Most often the page was
    opened before the deployment secret the tokens derive from changed (``rotate-secret``), and
    the session itself is fine, so the page shows who is signed in (a bare 403 looked signed
    out) and links back to the form's page for a fresh token. The form is not re-filled: a post
    from another site looks the same, and its values must not become a form a click away."""
    await _who_is_asking(request)
    return render(
        request, "error.html", status=403, status_code=403, title="This form was out of date",
        detail=("Nothing was done. The page it was on was opened before the server's keys changed (a secret "
                "rotation or a reinstall), or it was not sent from a Hatchway page. Reload the page and try again."),
        retry=_form_page(request),
    )


def _form_page(request: Request) -> str | None:
    """The path of the page the refused form was on (its Referer), when that page is on this
    site; None otherwise, so a post from another site is offered no way back to it."""
    try:
        came_from = urlsplit(request.headers.get("referer", ""))
    except ValueError:
        return None
    ours = {request.headers.get("host", ""), urlsplit(request.app.state.ctx.settings.url).netloc}
    if came_from.scheme not in ("http", "https") or came_from.netloc not in ours - {""}:
        return None
    path = came_from.path + ("?" + came_from.query if came_from.query else "")
    return path if safe_next(path) == path else None


def redirect(
    request: Request, url: str, kind: str | None = None, message: str | None = None, links: Sequence[tuple[str, str]] = ()
) -> RedirectResponse:
    """To ``url``, whose page shows ``message`` and then ``links`` (label, address)."""
    response = RedirectResponse(url, status_code=303)
    if kind and message:
        set_flash(request, response, kind, message, links)
    return response


def refusal_message(exc: APIError) -> str:
    """The API's refusal as a page shows it (a flash, a form's alert): the API's own words,
    what happened and then what to do next, so the UI and the CLI say the same."""
    return f"{exc.error[:1].upper()}{exc.error[1:]}: {exc.detail}"


def form_str(form: FormData, key: str) -> str:
    value = form.get(key)
    return value.strip() if isinstance(value, str) else ""


#: How the form says what pydantic refused, by the kind of refusal: ``{label}`` is the field's
#: label on the form, the rest comes from the limit the value broke. Pydantic's own wording
#: ("String should have at least 8 characters") names neither the field nor what to do.
_REFUSALS = {
    "missing": "{label} is required",
    "string_too_short": "{label} must have at least {min_length} characters",
    "string_too_long": "{label} must have at most {max_length} characters",
    "literal_error": "{label} must be {expected}",
}


def _field_label(loc: tuple[Any, ...], labels: dict[str, str]) -> str:
    """The form's label for the refused field; a field without one is named after it
    ("docker_host": "Docker host")."""
    key = str(loc[0]) if loc else ""
    if key in labels:
        return labels[key]
    words = key.replace("_", " ").strip()
    return words[:1].upper() + words[1:] if words else "This field"


def _refusal_sentence(err: Any, labels: dict[str, str]) -> str:
    ctx = err.get("ctx") or {}
    label = _field_label(tuple(err.get("loc", ())), labels)
    if isinstance(ctx.get("error"), names.Refused):
        msg = ctx["error"].for_label(label)
    elif err.get("type") == "value_error":
        # Our other checks (environment, images, Docker hosts) name what they refuse and say
        # what is allowed.
        msg = str(ctx.get("error") or err.get("msg", "")).removeprefix("Value error, ")
    else:
        template = _REFUSALS.get(str(err.get("type")))
        if template is None:
            msg = f"{label}: {err.get('msg', 'not valid')}"
        elif err.get("type") == "string_too_short" and ctx.get("min_length") == 1:
            msg = f"{label} cannot be empty"
        else:
            msg = template.format(label=label, **ctx)
    msg = msg[:1].upper() + msg[1:]
    return msg if msg.endswith(".") else msg + "."


def validation_message(exc: ValidationError, labels: dict[str, str] | None = None) -> str:
    """The model's refusals as sentences of the form: ``labels`` maps each field to its label
    on the form, so the message names the field the person sees ("Initial password must have
    at least 8 characters.", not "password: String should have at least 8 characters")."""
    return " ".join(_refusal_sentence(err, labels or {}) for err in exc.errors()[:5])


def safe_next(value: str | None) -> str:
    """Only same-site paths: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/workspaces"


def form_secret(form: FormData, key: str) -> str:
    """A password field exactly as typed: unlike names, passwords are never trimmed."""
    value = form.get(key)
    return value if isinstance(value, str) else ""


# --- long lists -----------------------------------------------------------------------------

#: Rows per page of every long list (the audit log, users, everyone's workspaces).
PAGE_SIZE = 25


def page_number(request: Request) -> int:
    """The ``?page=`` asked for: 1 for anything that is not a whole number from 1 up."""
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


#: The longest filter a list's box takes (its ``maxlength``); the rest of a longer one is dropped.
SEARCH_MAX = 100


def list_filter(request: Request) -> str:
    """A list's filter box as typed (``?search=``); the query decides what it can match."""
    return (request.query_params.get("search") or "").strip()[:SEARCH_MAX]


def page_link(request: Request, page: int) -> str:
    """Page ``page`` of the list ``request`` shows, with its other parameters (filters, tab)."""
    params = {k: v for k, v in request.query_params.items() if k != "page" and v}
    return request.url.path + "?" + urlencode({**params, "page": str(page)})


def pager(request: Request, page: int, total: int) -> dict[str, Any]:
    """Where this page of ``total`` rows is and links to the others (the ``pager`` macro),
    each keeping the page's other parameters (its filters, its tab); a page past the last is
    the last."""
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(page, pages)
    link = functools.partial(page_link, request)
    return {
        "page": page,
        "pages": pages,
        "total": total,
        "first": (page - 1) * PAGE_SIZE + 1 if total else 0,
        "last": min(page * PAGE_SIZE, total),
        "start": link(1) if page > 1 else None,
        "prev": link(page - 1) if page > 1 else None,
        "next": link(page + 1) if page < pages else None,
        "end": link(pages) if page < pages else None,
    }


def page_of(position: int) -> int:
    """The page of a long list on which its row number ``position`` (from 1) is shown."""
    return (position - 1) // PAGE_SIZE + 1


async def position(db: AsyncSession, stmt: Select[Any], key: Any, value: Any) -> int | None:
    """Where the row whose ``key`` column is ``value`` comes in ``stmt``'s rows (from 1), in the
    order :func:`paged` pages them, or None when ``stmt`` leaves it out: the list's own query
    decides, so a notice can say whether a row is on the page shown, and which page it is on,
    without a second copy of the list's filter. The database numbers the rows (a window
    function) and returns one number, however long the list."""
    numbered = stmt.with_only_columns(
        key.label("key"), func.row_number().over(order_by=stmt._order_by_clauses).label("n")  # the order paged() uses
    ).order_by(None).subquery()
    return (await db.execute(select(numbered.c.n).where(numbered.c.key == value))).scalar_one_or_none()


async def paged(request: Request, db: AsyncSession, stmt: Select[Any]) -> tuple[Sequence[Any], dict[str, Any]]:
    """The page asked for of ``stmt``'s rows, and its :func:`pager`: the database counts the
    rows and returns one page, so a list of thousands costs a page's rendering. A page past the
    last is not shown under its number: the browser goes to the last one (:class:`PageGone`)."""
    total = (await db.execute(select(func.count()).select_from(stmt.order_by(None).subquery()))).scalar_one()
    asked = page_number(request)
    where = pager(request, asked, total)
    if asked > where["page"] and request.method in ("GET", "HEAD"):
        # Not on a form's refusal (a POST): its page keeps what was typed.
        raise PageGone(page_link(request, where["page"]))
    rows = (await db.execute(stmt.offset((where["page"] - 1) * PAGE_SIZE).limit(PAGE_SIZE))).scalars().all()
    return rows, where
