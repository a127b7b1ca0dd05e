"""The web UI: server-rendered pages over the same service functions the REST API uses.

Every change goes through the API's own functions (``apply_provider_edit``, ``create_user``,
``regenerate``, ...), called directly with the signed-in user, so the UI records the same
audit events, ends the same live sessions and pushes the same manifests as the API and CLI.
Sign-in goes through the API's login function too, so brute-force throttling is shared.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from hatchway.server.web import account, manage, signin, workspaces
from hatchway.server.web.base import ROUTING_ERRORS, STATIC, routing_error_page, wants_page
from hatchway.server.web.security import add_security_headers


def install(app: FastAPI) -> None:
    """Serve the UI and its static assets from ``app``."""
    for pages in (signin, workspaces, account, manage):
        app.include_router(pages.router)
    app.mount("/static", _Assets(directory=str(STATIC)), name="web-static")
    _install_page_errors(app)


class _Assets(StaticFiles):
    """The UI's static files, sent with the pages' security headers: ``nosniff`` above all, so a
    browser never runs one as another type than it is served as."""

    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        add_security_headers(response)
        return response


def _install_page_errors(app: FastAPI) -> None:
    """A browser sent to an address no page answers (a typo, ``/manage``, reloading the address
    a form was posted to) gets a page it can go on from; everything else keeps the API's JSON."""
    api_answer = app.exception_handlers[StarletteHTTPException]

    async def answer(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code in ROUTING_ERRORS and wants_page(request):
            return await routing_error_page(request, exc.status_code, exc.headers)
        return await api_answer(request, exc)

    app.add_exception_handler(StarletteHTTPException, answer)
