"""One error shape for the whole API: ``{"error": short, "detail": what to do}``.

Clients (our CLI, scripts, the UI) show ``error`` and ``detail`` to people, so both must be
sentences a person can act on; stack traces never leave the server.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("hatchway.server")

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


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        msg = err.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_req: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid request", _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = _DEFAULT_ERRORS.get(exc.status_code, "error")
        detail = exc.detail if isinstance(exc.detail, str) else ""
        if detail == error or detail in ("Not Found", "Method Not Allowed"):
            detail = ""
        return error_response(exc.status_code, error, detail, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", req.method, req.url.path)
        return error_response(500, "internal error", "the server hit an unexpected error; it has been logged")
