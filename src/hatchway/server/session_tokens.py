"""Sign-in sessions as people see them: which client signed in, from where, when last used.

A session is a row of ``api_tokens`` (the CLI's token and the browser's cookie alike). Pure
rules only; the API (``hatchway.server.api.sessions``) and the token check
(``hatchway.server.auth``) do the I/O.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: ``last_used_at`` is written when it is older than this: a database write per minute and
#: session at most, not one per request, and still precise enough to tell a live session from
#: a forgotten one.
TOUCH_INTERVAL = timedelta(minutes=1)
CLIENT_MAX = 200
SOURCE_MAX = 64


def due_for_touch(last_used_at: datetime | None, now: datetime) -> bool:
    """Whether a session used at ``now`` should have its ``last_used_at`` written."""
    return last_used_at is None or now - last_used_at >= TOUCH_INTERVAL


def printable(value: str | None, limit: int) -> str | None:
    """``value`` with every run of white space made one space and anything else unprintable
    dropped, cut to ``limit`` characters (it comes from request headers: shown in tables and
    pages, never trusted)."""
    if not value:
        return None
    words = ("".join(ch for ch in word if ch.isprintable()) for word in value.split())
    text = " ".join(word for word in words if word)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text or None


def client_label(user_agent: str | None) -> str | None:
    """What to store as the client of a new session: its User-Agent, made safe to show."""
    return printable(user_agent, CLIENT_MAX)
