"""The web UI: server-rendered pages over the same service functions the REST API uses.

Every change goes through the API's own functions (``apply_provider_edit``, ``create_user``,
``regenerate``, ...), called directly with the signed-in user, so the UI records the same
audit events, ends the same live sessions and pushes the same manifests as the API and CLI.
Sign-in goes through the API's login function too, so brute-force throttling is shared.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from hatchway.server.web import account, manage, signin, workspaces
from hatchway.server.web.base import STATIC


def install(app: FastAPI) -> None:
    """Serve the UI and its static assets from ``app``."""
    for pages in (signin, workspaces, account, manage):
        app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="web-static")
