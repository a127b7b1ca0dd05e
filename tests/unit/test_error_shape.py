"""The API's error shape for requests no route answers: a person learns what to do next."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from hatchway.server.errors import install_error_handlers


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/api/v1/things")
    async def things() -> list[str]:
        return []

    return app


async def test_unknown_routes_and_wrong_methods_say_where_the_api_is_described() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as c:
        r = await c.get("/api/v1/nope")
        assert r.status_code == 404 and r.json() == {
            "error": "not found",
            "detail": "no such page or API endpoint; the API is described at /api/v1/docs (OpenAPI: /api/v1/openapi.json)",
        }
        r = await c.delete("/api/v1/things")
        assert r.status_code == 405 and r.headers["allow"] == "GET"
        assert r.json() == {"error": "method not allowed", "detail": "DELETE is not allowed here; use GET (see /api/v1/docs)"}
        assert (await c.get("/api/v1/things")).json() == []
