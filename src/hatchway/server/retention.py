"""How long the connection log and the audit log keep their records (pure).

By default every record is kept, as before these settings existed; an operator bounds either log
with a number of days (``--keep-connections``, ``--keep-audit``), checked here before the server
starts so that a typo is refused at once rather than found out when records vanish or never go.
"""

from __future__ import annotations

from datetime import datetime, timedelta

#: The longest limit taken, 100 years: longer is certainly a typo (and would reach before the
#: year 1, which datetime cannot hold).
MAX_KEEP_DAYS = 36_500


def parse_keep_days(value: str | None, option: str, envvar: str) -> int | None:
    """The days ``option`` (also set as ``envvar``) keeps records for; None when unset (keep
    every record). Raises ValueError, saying what was wrong and what to give instead."""
    if value is None or value == "":
        return None
    given = f"invalid {option} (env {envvar}) {value!r}"
    try:
        days = int(value)
    except ValueError:
        raise ValueError(f"{given}: expected a whole number of days, e.g. 90; leave it unset to keep every record") from None
    if days < 1:
        raise ValueError(f"{given}: records must be kept at least 1 day; leave it unset to keep every record")
    if days > MAX_KEEP_DAYS:
        raise ValueError(f"{given}: at most {MAX_KEEP_DAYS} days (100 years); leave it unset to keep every record")
    return days


def cutoff(now: datetime, keep_days: int) -> datetime:
    """The instant before which a log's records are older than ``keep_days`` days at ``now``."""
    return now - timedelta(days=keep_days)
