"""One error shape for the whole API: ``{"error": short, "detail": what to do}``.

Clients (our CLI, scripts, the UI) show ``error`` and ``detail`` to people, so both must be
sentences a person can act on; stack traces never leave the server.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("hatchway.server")

DB_UNAVAILABLE = "database unavailable"
DB_UNAVAILABLE_DETAIL = "the server cannot reach its database right now; try again in a few seconds"
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
        if db_unavailable(exc):
            log.warning("%s %s: %s (%s)", req.method, req.url.path, DB_UNAVAILABLE, type(exc).__name__)
            return error_response(503, DB_UNAVAILABLE, DB_UNAVAILABLE_DETAIL, {"Retry-After": "2"})
        return await _unexpected(req, exc)

    for exc_type in _db_exception_types():
        app.add_exception_handler(exc_type, _maybe_db)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        if db_unavailable(exc):
            return error_response(503, DB_UNAVAILABLE, DB_UNAVAILABLE_DETAIL, {"Retry-After": "2"})
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return error_response(500, "internal error", "the server hit an unexpected error; it has been logged")
