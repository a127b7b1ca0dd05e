"""``/api/v1/docs`` over plain HTTP: the page names nothing outside the server, sends the web UI's
security headers with a CSP that lets only its own inline script run (by hash, never
'unsafe-inline'), Swagger UI's files are served here with their content types, and HEAD (caches,
link checkers, ``curl -I``) answers as GET does."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib import metadata
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import RunningServer, running_server
from tests.unit.test_swagger_ui_licence import APACHE_2_0_SHA256, BUNDLE_NOTICES_SHA256

STATIC = "/api/v1/docs/static"
#: Everything the docs page is made of: the page, the document it shows, Swagger UI's files.
DOCS_PATHS = [
    "/api/v1/docs", "/api/v1/openapi.json", f"{STATIC}/swagger-ui-bundle.js", f"{STATIC}/swagger-ui.css", f"{STATIC}/favicon-32x32.png",
    f"{STATIC}/LICENSE", f"{STATIC}/NOTICE", f"{STATIC}/swagger-ui-bundle.js.LICENSE.txt",
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(Path(tmp_path_factory.mktemp("apidocs"))) as server:
        yield server


def _inline_script(html: str) -> str:
    """The text of the page's one ``<script>`` without ``src`` (the one starting Swagger UI)."""
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    assert len(scripts) == 1, scripts
    return scripts[0]


def test_docs_page_sends_a_csp_allowing_only_its_own_inline_script(srv: RunningServer) -> None:
    r = httpx.get(srv.url + "/api/v1/docs")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    digest = base64.b64encode(hashlib.sha256(_inline_script(r.text).encode()).digest()).decode()
    assert r.headers["content-security-policy"] == (
        f"default-src 'self'; script-src 'self' 'sha256-{digest}'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'"
    )
    assert "unsafe-inline" not in r.headers["content-security-policy"]


def test_docs_page_sends_the_web_ui_pages_other_security_headers(srv: RunningServer) -> None:
    docs = httpx.get(srv.url + "/api/v1/docs").headers
    ui_page = httpx.get(srv.url + "/").headers  # the sign-in page
    for name, value in {"x-content-type-options": "nosniff", "x-frame-options": "DENY", "referrer-policy": "same-origin"}.items():
        assert docs[name] == ui_page[name] == value


def test_docs_page_loads_swagger_ui_from_this_server_and_no_validator(srv: RunningServer) -> None:
    html = httpx.get(srv.url + "/api/v1/docs").text
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == [
        f"{STATIC}/swagger-ui.css", f"{STATIC}/favicon-32x32.png", f"{STATIC}/swagger-ui-bundle.js",
        f"{STATIC}/LICENSE", f"{STATIC}/NOTICE", f"{STATIC}/swagger-ui-bundle.js.LICENSE.txt",
    ]
    script = _inline_script(html)
    assert "url: '/api/v1/openapi.json'" in script
    assert '"validatorUrl": null' in script  # else Swagger UI shows a badge fetched from validator.swagger.io
    assert "http://" not in html and "https://" not in html


@pytest.mark.parametrize(
    ("name", "content_type", "starts"),
    [
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", None),
        ("swagger-ui.css", "text/css; charset=utf-8", b".swagger-ui"),
        ("favicon-32x32.png", "image/png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_swagger_ui_files_are_served_with_their_content_types(
    srv: RunningServer, name: str, content_type: str, starts: bytes | None
) -> None:
    r = httpx.get(f"{srv.url}{STATIC}/{name}")
    assert r.status_code == 200 and r.headers["content-type"] == content_type
    if starts is not None:
        assert r.content.startswith(starts)
    else:
        assert b"SwaggerUIBundle" in r.content


def test_swagger_ui_licence_and_notice_are_served_and_linked_from_the_page(srv: RunningServer) -> None:
    # Apache-2.0 asks that Swagger UI's files travel with its licence and NOTICE; fastapi-swagger
    # ships neither.
    assert (
        '<footer><p>Swagger UI: Copyright 2020-2021 SmartBear Software Inc., licensed under the '
        f'<a href="{STATIC}/LICENSE">Apache License 2.0</a> (<a href="{STATIC}/NOTICE">NOTICE</a>); the libraries it '
        f'bundles: <a href="{STATIC}/swagger-ui-bundle.js.LICENSE.txt">their licences</a>.</p></footer>\n'
        "</body>"
    ) in httpx.get(srv.url + "/api/v1/docs").text
    page = httpx.get(srv.url + "/sign-in")
    for name, packaged in (("LICENSE", APACHE_2_0_SHA256), ("NOTICE", None),
                           ("swagger-ui-bundle.js.LICENSE.txt", BUNDLE_NOTICES_SHA256)):
        r = httpx.get(f"{srv.url}{STATIC}/{name}")
        assert (r.status_code, r.headers["content-type"]) == (200, "text/plain; charset=utf-8")
        for header in ("x-content-type-options", "x-frame-options", "referrer-policy", "content-security-policy"):
            assert r.headers[header] == page.headers[header], header
        if packaged:
            assert hashlib.sha256(r.content).hexdigest() == packaged
        else:
            assert r.content == b"swagger-ui\nCopyright 2020-2021 SmartBear Software Inc.\n"


def test_only_those_files_are_served(srv: RunningServer) -> None:
    # __init__.py sits beside them in the package they come from.
    for name in ("__init__.py", "index.html", "..%2F__init__.py"):
        r = httpx.get(f"{srv.url}{STATIC}/{name}")
        assert r.status_code == 404 and r.json() == {
            "error": "not found",
            "detail": "no such page or API endpoint; the API is described at /api/v1/docs (OpenAPI: /api/v1/openapi.json)",
        }
        head = httpx.head(f"{srv.url}{STATIC}/{name}")
        assert (head.status_code, head.content, head.headers["content-length"]) == (404, b"", r.headers["content-length"])


@pytest.mark.parametrize("path", DOCS_PATHS)
def test_head_answers_as_get_does_without_a_body(srv: RunningServer, path: str) -> None:
    get = httpx.get(srv.url + path)
    head = httpx.head(srv.url + path)
    assert (get.status_code, head.status_code, head.content) == (200, 200, b"")
    assert head.headers["content-length"] == str(len(get.content))
    # Every header, the security headers and validators (ETag, Last-Modified) included; only the
    # clock may have ticked between the two.
    assert {**head.headers, "date": ""} == {**get.headers, "date": ""}
    if path != "/api/v1/openapi.json":  # JSON, not something a browser renders
        assert head.headers["x-content-type-options"] == "nosniff" and head.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("path", DOCS_PATHS)
@pytest.mark.parametrize("method", ["POST", "DELETE", "OPTIONS"])
def test_other_methods_are_refused_naming_get_and_head(srv: RunningServer, path: str, method: str) -> None:
    r = httpx.request(method, srv.url + path)
    allow = r.headers["allow"]  # the order is Starlette's, not fixed
    assert r.status_code == 405 and sorted(allow.split(", ")) == ["GET", "HEAD"]
    assert r.json() == {"error": "method not allowed", "detail": f"{method} is not allowed here; use {allow} (see /api/v1/docs)"}


def test_a_server_whose_fastapi_swagger_lacks_the_files_says_so_on_the_docs_page_and_serves_the_rest(
    tmp_path: Path,
) -> None:
    # A fastapi_swagger package without Swagger UI's files, found before the installed one: as a
    # future release that moved or dropped them would be. Its import fails too (a release made
    # for another FastAPI): the server must not need to import it.
    shadow = tmp_path / "shadow" / "fastapi_swagger"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("from fastapi import not_a_name\n")
    server = RunningServer(tmp_path / "data", extra_env={"PYTHONPATH": str(shadow.parent)})
    server.start()
    try:
        why = (
            f"fastapi-swagger {metadata.version('fastapi-swagger')} (in {shadow}) has no "
            "swagger-ui-bundle.js, swagger-ui.css, favicon-32x32.png: Swagger UI's files, which the API docs page "
            "/api/v1/docs serves, are missing; reinstall it (pip install --force-reinstall fastapi-swagger), or, if "
            "this release no longer ships them, install the release before it"
        )
        assert server.log().count(
            f"WARNING hatchway.server: {why}; until then /api/v1/docs answers 503 (the API and everything else work)\n"
        ) == 1
        r = httpx.get(server.url + "/api/v1/docs")
        assert r.status_code == 503
        assert r.headers["content-type"] == "text/plain; charset=utf-8"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.text == ("The API docs page is unavailable: Swagger UI's files are missing from this server's installation; "
                          "its log says which and what to do.\nThe OpenAPI document is at /api/v1/openapi.json.\n")
        head = httpx.head(server.url + "/api/v1/docs")
        assert (head.status_code, head.content) == (503, b"")
        assert httpx.get(server.url + "/api/v1/openapi.json").json()["info"]["title"]
        assert httpx.get(server.url + "/api/v1/deployment").status_code == 200
        assert httpx.get(server.url + "/api/v1/docs/static/swagger-ui.css").status_code == 404
    finally:
        server.stop()
