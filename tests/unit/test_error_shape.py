"""The API's error shape for requests no route answers: a person learns what to do next."""

from __future__ import annotations

from pathlib import Path

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


# ---- telling a full disk from an outage ---------------------------------------------------------


def _wrapped(message: str) -> Exception:
    import sqlite3

    from sqlalchemy import exc as sa_exc

    return sa_exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError(message))


def test_a_full_sqlite_database_is_out_of_space_and_an_unopenable_one_is_not(tmp_path: Path) -> None:
    from hatchway.server.errors import DB_FULL, DB_FULL_DETAIL, DB_UNAVAILABLE, DB_UNAVAILABLE_DETAIL, db_failure

    full, unavailable = (DB_FULL, DB_FULL_DETAIL), (DB_UNAVAILABLE, DB_UNAVAILABLE_DETAIL)
    assert db_failure(_wrapped("database or disk is full")) == full
    assert db_failure(_wrapped("unable to open database file")) == unavailable
    # "disk I/O error" counts as full only when the database's file system really has no room.
    assert db_failure(_wrapped("disk I/O error"), str(tmp_path / "db.sqlite")) == unavailable
    assert db_failure(ValueError("a bug")) is None


def test_postgres_disk_full_is_recognised_by_its_sqlstate() -> None:
    from sqlalchemy import exc as sa_exc

    from hatchway.server.errors import db_out_of_space

    class DiskFullError(Exception):
        sqlstate = "53100"

    assert db_out_of_space(sa_exc.OperationalError("INSERT ...", {}, DiskFullError("could not write block")))
    assert not db_out_of_space(sa_exc.OperationalError("INSERT ...", {}, ConnectionRefusedError(111, "refused")))


async def test_a_database_error_is_one_line_of_the_drivers_words(tmp_path: Path) -> None:
    """What SQLAlchemy raises, from a real database: its text runs over several lines, with the
    statement, its parameters and a link; the log gets the driver's first line."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from hatchway.server.errors import db_error_text

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM replicas WHERE id = :id"), {"id": "secret-ish parameter"})
    except Exception as exc:
        raised = exc
    finally:
        await engine.dispose()
    assert "\n" in str(raised) and "sqlalche.me" in str(raised)  # what used to be logged
    assert db_error_text(raised) == "OperationalError: no such table: replicas"
    assert db_error_text(ConnectionRefusedError(111, "Connection refused")) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert db_error_text(TimeoutError()) == "TimeoutError"
