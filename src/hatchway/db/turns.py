"""Requests that must see each other's writes take turns on PostgreSQL.

Under PostgreSQL's READ COMMITTED, two transactions that each read and then write can both act
on what they read before the other committed. A transaction-scoped advisory lock makes them go
one after the other. SQLite needs nothing: it has one writer at a time, and a transaction whose
first statement writes sees everything committed before it.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


async def take_turns(db: AsyncSession, key: int) -> None:
    """Wait for, then hold until the transaction ends, PostgreSQL's advisory lock ``key``."""
    if db.get_bind().dialect.name == "postgresql":
        await db.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
