"""Database engines and schema migrations.

One code path for SQLite (the embedded default) and PostgreSQL: URLs are normalised to their
asyncio drivers, and Alembic migrations run at server start inside the same engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from hatchway.db import keepalive

MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL advisory lock key serialising migrations across replicas ("hatchway" in ASCII).
MIGRATION_LOCK_KEY = 0x6861746368776179


def normalize_url(url: str) -> str:
    """Map the URLs people write to the async drivers we ship."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        u = u.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(f"unsupported database URL scheme {u.drivername!r}: use sqlite or postgresql")
    return u.render_as_string(hide_password=False)


def sqlite_url_for(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'hatchway.db'}"


def create_engine(url: str, application_name: str | None = None) -> AsyncEngine:
    """An engine on ``url``; on PostgreSQL its connections are named ``application_name``, which
    is how PostgreSQL tells whose they are (see hatchway.server.presence), and each end drops
    the other once it has stayed silent too long (hatchway.db.keepalive)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    settings = keepalive.server_settings()
    if application_name:
        settings["application_name"] = application_name
    engine = create_async_engine(
        url, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args={"server_settings": settings},
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _watch_peer(dbapi_conn: Any, _record: Any) -> None:
        keepalive.watch_peer(dbapi_conn.driver_connection)

    return engine


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker[Any]:
    return async_sessionmaker(engine, expire_on_commit=False)


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent)."""

    def _upgrade(connection: Any) -> None:
        cfg = _alembic_config()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "head")

    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Replicas starting together must not run the same migration twice: the first one
            # takes this lock for its transaction, the others wait and then find nothing to do.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await conn.run_sync(_upgrade)
