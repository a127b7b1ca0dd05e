"""Admin actions land in the audit table in the same transaction as the change they record."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import AuditEvent, User


def record(
    db: AsyncSession, actor: User | None, action: str, target: str, source: str | None = None, **detail: Any
) -> None:
    db.add(
        AuditEvent(
            actor=actor.username if actor else None, action=action, target=target, detail=detail, source=source
        )
    )
