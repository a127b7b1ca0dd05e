"""Static files (the web UI's, Swagger UI's for /api/v1/docs) are sent with the pages' security
headers, ``nosniff`` above all: a browser must never run one as another type than it is served as.
Every other HTTP response, the API's JSON and its errors included, says ``nosniff`` too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers.server import RunningServer, running_server


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(Path(tmp_path_factory.mktemp("static"))) as server:
        yield server


@pytest.mark.parametrize(("path", "content_type"), [
    ("/static/hatchway.css", "text/css; charset=utf-8"),
    ("/static/hatchway.js", "text/javascript; charset=utf-8"),
    ("/static/favicon.svg", "image/svg+xml"),
    ("/api/v1/docs/static/swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
    ("/api/v1/docs/static/swagger-ui.css", "text/css; charset=utf-8"),
])
def test_a_static_file_comes_with_the_security_headers(srv: RunningServer, path: str, content_type: str) -> None:
    page = httpx.get(srv.url + "/sign-in")
    r = httpx.get(srv.url + path)
    assert (r.status_code, r.headers["content-type"]) == (200, content_type)
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("x-frame-options", "referrer-policy", "content-security-policy"):
        assert r.headers[name] == page.headers[name], name


@pytest.mark.parametrize(("method", "path", "body", "status"), [
    ("GET", "/api/v1/deployment", None, 200),
    ("GET", "/api/v1/openapi.json", None, 200),
    ("GET", "/api/v1/users", None, 401),
    ("GET", "/api/v1/no-such-thing", None, 404),
    ("DELETE", "/api/v1/deployment", None, 405),
    ("POST", "/api/v1/auth/login", b"{", 422),
    ("POST", "/api/v1/auth/login", b"x" * (2 * 1024 * 1024), 413),
    ("GET", "/sign-in", None, 303),  # no first user yet: to the set-up page
    ("GET", "/no-such-page", None, 404),
])
def test_every_response_says_nosniff_once(srv: RunningServer, method: str, path: str, body: bytes | None, status: int) -> None:
    r = httpx.request(method, srv.url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]
