"""Admin actions land in the audit table in the same transaction as the change they record."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hatchway.db.models import AuditEvent, User


def record(
    db: AsyncSession, actor: User | None, action: str, target: str, source: str | None = None, **detail: Any
) -> AuditEvent:
    """Add the event to ``db``'s transaction; returned for a caller that amends it later."""
    event = AuditEvent(actor=actor.username if actor else None, action=action, target=target, detail=detail, source=source)
    db.add(event)
    return event
