"""The REST API's browsable documentation (Swagger UI at ``/api/v1/docs``), served wholly by
this server.

FastAPI's own docs page loads Swagger UI from a CDN and sends no Content-Security-Policy: code
from a third party would run on the control plane's origin, where site managers have signed-in
web sessions, and a deployment without internet access would get a blank page. Here Swagger UI's
files come from the fastapi-swagger package and the page is FastAPI's, pointed at them, sent with
the web UI's headers; its one inline script (the one that starts Swagger UI) is allowed by its
hash, so no other inline script can run.

Swagger UI is Apache-2.0, whose redistributions must carry its licence and NOTICE, and its
bundle carries libraries under their own licences, whose notices its first line points to
(``swagger-ui-bundle.js.LICENSE.txt``, next to it). fastapi-swagger ships none of the three, so
they are in ``swagger_ui/`` here, served next to Swagger UI's files and linked from the page's
footer. All three are the files of the npm package swagger-ui-dist 5.34.0, whose
``swagger-ui-bundle.js`` and ``swagger-ui.css`` are byte for byte the ones fastapi-swagger
0.4.64 ships (``LICENSE`` is the Apache License 2.0 as apache.org publishes it). The notices
belong to that bundle: fastapi-swagger is pinned to that release, and a unit test checks the
installed bundle is still that one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from html.parser import HTMLParser
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse

from hatchway.server import swagger_files
from hatchway.server.errors import API_DOCS
from hatchway.server.web.security import SECURITY_HEADERS, content_security_policy

log = logging.getLogger("hatchway.server")

STATIC = f"{API_DOCS}/static"
#: The bundled libraries' notices, where the bundle's first line says they are.
BUNDLE_NOTICES = "swagger-ui-bundle.js.LICENSE.txt"
#: Swagger UI's licence, NOTICE and its bundle's notices (see above), served under ``STATIC``.
LICENCE_FILES = {name: Path(__file__).with_name("swagger_ui") / name for name in ("LICENSE", "NOTICE", BUNDLE_NOTICES)}
FOOTER = (
    f'<footer><p>Swagger UI: Copyright 2020-2021 SmartBear Software Inc., licensed under the '
    f'<a href="{STATIC}/LICENSE">Apache License 2.0</a> (<a href="{STATIC}/NOTICE">NOTICE</a>); '
    f'the libraries it bundles: <a href="{STATIC}/{BUNDLE_NOTICES}">their licences</a>.</p></footer>\n'
)


class _InlineScripts(HTMLParser):
    """Collects the text of each ``<script>`` without ``src``, as the browser hashes it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._inside = True
            self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.scripts[-1] += data


def inline_script_hashes(html: str) -> list[str]:
    """The CSP sources (``'sha256-…'``) that allow exactly the inline scripts of ``html``."""
    parser = _InlineScripts()
    parser.feed(html)
    parser.close()
    return [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in parser.scripts]


def install(app: FastAPI) -> None:
    """Serve the docs page at ``API_DOCS`` for ``app``'s OpenAPI document (FastAPI's own
    ``docs_url`` must be off) and Swagger UI's files under ``STATIC``: only those are served.
    Without Swagger UI's files the page says why instead (:func:`_install_unavailable`)."""
    assert app.docs_url is None and app.openapi_url is not None
    try:
        served = {**swagger_files.installed(), **LICENCE_FILES}
    except swagger_files.SwaggerUIMissing as exc:
        _install_unavailable(app, str(exc))
        return
    page = get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} API",
        swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC}/favicon-32x32.png",
        # Swagger UI would otherwise show a badge fetched from validator.swagger.io, sending it
        # the document's address.
        swagger_ui_parameters={"validatorUrl": None},
    )
    assert bytes(page.body).count(b"</body>") == 1
    body = bytes(page.body).replace(b"</body>", FOOTER.encode() + b"</body>")
    headers = {**SECURITY_HEADERS, "Content-Security-Policy": content_security_policy(*inline_script_hashes(body.decode()))}

    # HEAD too (caches, link checkers, ``curl -I``): the same status and headers, no body.
    @app.api_route(API_DOCS, methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> HTMLResponse:
        return HTMLResponse(body, headers=headers)

    @app.api_route(STATIC + "/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(name: str) -> FileResponse:
        if name not in served:
            raise HTTPException(404)
        # The licence files have no suffix, or not their type's, to tell it by.
        media_type = "text/plain" if name in LICENCE_FILES else None
        return FileResponse(served[name], media_type=media_type, headers=SECURITY_HEADERS)


def _install_unavailable(app: FastAPI, why: str) -> None:
    """A broken or changed fastapi-swagger costs the docs page only: the API, the web UI and every
    SSH connection go on. The server logs why once; the page answers 503 saying where to look and
    where the OpenAPI document itself is (not the install's paths and versions: it is public)."""
    log.warning("%s; until then %s answers 503 (the API and everything else work)", why, API_DOCS)
    text = ("The API docs page is unavailable: Swagger UI's files are missing from this server's installation; "
            f"its log says which and what to do.\nThe OpenAPI document is at {app.openapi_url}.\n")

    @app.api_route(API_DOCS, methods=["GET", "HEAD"], include_in_schema=False)
    async def docs() -> PlainTextResponse:
        return PlainTextResponse(text, status_code=503, headers=SECURITY_HEADERS)
