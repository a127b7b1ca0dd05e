"""nosniff on every response of the app as create_app assembles it: the middleware for what the
routes and handled errors answer, the unexpected-error handler (which Starlette runs outside
every middleware) for the 500, once each."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from hatchway.server.errors import install_error_handlers
from hatchway.server.nosniff import NoSniff, with_nosniff


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/ok")
    async def ok() -> PlainTextResponse:
        return PlainTextResponse("<b>hi</b>")

    @app.get("/already")
    async def already() -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(NoSniff)
    return app


@pytest.mark.parametrize(("path", "status"), [("/ok", 200), ("/already", 200), ("/nowhere", 404), ("/boom", 500)])
async def test_each_response_says_nosniff_once(path: str, status: int, caplog: pytest.LogCaptureFixture) -> None:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR, "hatchway.server"):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await client.get(path)
    assert r.status_code == status
    assert r.headers.get_list("x-content-type-options") == ["nosniff"]
    if status == 500:
        assert r.json() == {"error": "internal error", "detail": "the server hit an unexpected error; it has been logged"}


def test_headers_that_say_it_already_are_left_as_they_are() -> None:
    said = [(b"X-Content-Type-Options", b"nosniff"), (b"content-type", b"text/plain")]
    assert with_nosniff(said) is said
    assert with_nosniff([(b"content-type", b"text/plain")]) == [(b"content-type", b"text/plain"),
                                                               (b"x-content-type-options", b"nosniff")]
