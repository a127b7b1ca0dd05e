"""One error shape for the whole API: ``{"error": short, "detail": what to do}``.

Clients (our CLI, scripts, the UI) show ``error`` and ``detail`` to people, so both must be
sentences a person can act on; stack traces never leave the server.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from starlette.exceptions import HTTPException as StarletteHTTPException

from hatchway.server import nosniff

log = logging.getLogger("hatchway.server")

DB_UNAVAILABLE = "database unavailable"
DB_UNAVAILABLE_DETAIL = "the server cannot reach its database right now; try again in a few seconds"
DB_FULL = "database out of disk space"
DB_FULL_DETAIL = (
    "the server's database has no disk space left, so nothing was changed; try again once a site manager "
    "has freed space on the database's disk (the server's log names the error)"
)
#: What SQLite (SQLITE_FULL) and PostgreSQL (SQLSTATE 53100 and its relatives) say when the disk
#: holding the database is full.
_FULL_MARKERS = ("database or disk is full", "no space left on device", "could not extend file")
#: Modules whose frames in a traceback say an OSError came from talking to the database.
_DB_MODULES = ("sqlalchemy.", "asyncpg.", "aiosqlite.")

_DEFAULT_ERRORS = {
    400: "bad request",
    401: "not authenticated",
    403: "forbidden",
    404: "not found",
    405: "method not allowed",
    409: "conflict",
    413: "request too large",
    422: "invalid request",
    429: "too many attempts",
    503: "service unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, error: str, detail: str = "", headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def error_response(status: int, error: str, detail: str = "", headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def db_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means the database cannot be reached (down, restarting, pool exhausted),
    as opposed to a bug: such a request deserves 503 and a retry, not 500.

    SQLAlchemy wraps errors on open connections (OperationalError, InterfaceError, or any DBAPI
    error that invalidated its connection), but a refused *connect* reaches us raw: an OSError,
    or one of asyncpg's own errors ("the database system is starting up"). Those count only when
    raised from database code, so an unrelated OSError still shows as the bug it is.
    """
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError)):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated)
    from_db_driver = type(exc).__module__.startswith("asyncpg")
    if not (from_db_driver or isinstance(exc, OSError)):
        return False
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith(_DB_MODULES):
            return True
        tb = tb.tb_next
    return False


def sqlite_file(db_url: str) -> str | None:
    """The database file of a SQLite URL (None for any other database, or in-memory SQLite)."""
    url = make_url(db_url)
    return url.database or None if url.get_backend_name() == "sqlite" else None


def _nearly_full(path: str) -> bool:
    """Whether the file system holding ``path`` has (next to) no space left for this process."""
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024 * 1024


def db_failure(exc: BaseException, sqlite_path: str | None = None) -> tuple[str, str] | None:
    """``(error, detail)`` for a request that failed because of the database, None for a bug.

    A full disk is told apart from an outage: waiting a few seconds does not fix it, and the
    person who can fix it needs to know that it is the disk, not the network.
    """
    if not db_unavailable(exc):
        return None
    return (DB_FULL, DB_FULL_DETAIL) if db_out_of_space(exc, sqlite_path) else (DB_UNAVAILABLE, DB_UNAVAILABLE_DETAIL)


def db_out_of_space(exc: BaseException, sqlite_path: str | None = None) -> bool:
    """Whether ``exc`` (or the driver error it wraps) says the database's disk is full.

    SQLite says so ("database or disk is full") only when a write runs out of room; when it is
    its write-ahead log that cannot grow, it says "disk I/O error", so for SQLite (given its
    file) that counts as full when the file system has no space left.
    """
    seen: BaseException | None = exc
    for _ in range(5):  # SQLAlchemy wraps the driver's error, which may chain further
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno == errno.ENOSPC:
            return True
        text = str(seen).lower()
        if getattr(seen, "sqlstate", None) == "53100" or any(m in text for m in _FULL_MARKERS):
            return True
        if sqlite_path and "disk i/o error" in text and _nearly_full(sqlite_path):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def db_error_text(exc: BaseException) -> str:
    """A database error in one line, for a log: the driver's type and its first line of words.
    SQLAlchemy's own text goes on with the statement, its parameters and a link to its docs,
    over several lines that split a log and hide what failed."""
    driver = getattr(exc, "orig", None) or exc
    lines = str(driver).strip().splitlines()
    return f"{type(driver).__name__}: {lines[0]}" if lines else type(driver).__name__


def log_db_failure(where: str, exc: BaseException, sqlite_path: str | None = None, then: str = "") -> None:
    """One log line for a request the database failed: a full disk is an error the operator
    must act on, with the driver's own words; an outage is a warning (it passes). ``then`` ends
    the line with what becomes of what was not written."""
    if db_out_of_space(exc, sqlite_path):
        log.error("%s: %s (%s); free space on the disk that holds the database%s", where, DB_FULL,
                  db_error_text(exc), then)
    else:
        log.warning("%s: %s (%s)%s", where, DB_UNAVAILABLE, type(exc).__name__, then)


def _db_exception_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [sa_exc.DBAPIError, sa_exc.TimeoutError, OSError]
    try:
        import asyncpg

        types += [asyncpg.PostgresError, asyncpg.InterfaceError]
    except ImportError:  # pragma: no cover - asyncpg is a dependency
        pass
    return tuple(types)


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = err.get("msg", "invalid")
        msg = msg.removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


API_DOCS = "/api/v1/docs"


def _routing_detail(status: int, method: str, headers: dict[str, str] | None) -> str:
    """What to do about a request no route answers (the router's own 404 and 405 say nothing)."""
    if status == 405:
        allowed = (headers or {}).get("Allow") or (headers or {}).get("allow")
        return f"{method} is not allowed here" + (f"; use {allowed}" if allowed else "") + f" (see {API_DOCS})"
    if status == 404:
        return f"no such page or API endpoint; the API is described at {API_DOCS} (OpenAPI: /api/v1/openapi.json)"
    return ""


def app_sqlite_file(app: Any) -> str | None:
    """The running server's SQLite file, if that is its database (see :func:`db_out_of_space`)."""
    ctx = getattr(app.state, "ctx", None)
    return sqlite_file(ctx.settings.db_url) if ctx is not None else None


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = _DEFAULT_ERRORS.get(exc.status_code, "error")
        headers = getattr(exc, "headers", None)
        detail = exc.detail if isinstance(exc.detail, str) else ""
        if detail == error or detail in ("Not Found", "Method Not Allowed"):
            detail = _routing_detail(exc.status_code, req.method, headers)
        return error_response(exc.status_code, error, detail, headers)

    async def _maybe_db(req: Request, exc: Exception) -> JSONResponse:
        # Registered per type (not only under Exception) so a database outage is answered here,
        # without Starlette re-raising it into a traceback for every request of the outage.
        if req.scope["type"] != "http":
            raise exc  # WebSockets: hatchway.server.guards.AcceptDeadline answers those
        failure = db_failure(exc, app_sqlite_file(req.app))
        if failure is not None:
            log_db_failure(f"{req.method} {req.url.path}", exc, app_sqlite_file(req.app))
            return error_response(503, *failure, {"Retry-After": "2"})
        return await _unexpected(req, exc)

    for exc_type in _db_exception_types():
        app.add_exception_handler(exc_type, _maybe_db)

    # Starlette runs this one outside the app's middleware (hatchway.server.nosniff): its
    # answers carry nosniff themselves.
    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        failure = db_failure(exc, app_sqlite_file(req.app))
        if failure is not None:
            return error_response(503, *failure, {"Retry-After": "2", nosniff.NAME: nosniff.VALUE})
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return error_response(500, "internal error", "the server hit an unexpected error; it has been logged",
                              {nosniff.NAME: nosniff.VALUE})
