"""How the tallies of failed sign-ins read."""

from __future__ import annotations

from datetime import datetime, timezone

from hatchway.server.failed_signins import BY_ACCOUNT
from hatchway.server.unidentified import UnidentifiedAttempts

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_attempts_at_accounts_past_the_overall_cap_say_how_many_accounts() -> None:
    counts = UnidentifiedAttempts(BY_ACCOUNT, per_key=1, overall=1, window_s=60, clock=lambda: 0.0)
    assert counts.admit("alice", "10.0.0.1", T0) is None
    tally = counts.admit("bob", "10.0.0.2", T0)
    assert tally is not None and counts.admit("carol", "10.0.0.2", T0) is tally
    assert (tally.key, tally.first_key, tally.count) == (None, "bob", 2)
    assert tally.reason() == (
        '2 more failed sign-ins to 2 accounts from "10.0.0.2", from this row\'s start to its end, all refused; '
        "counted in this one row: all accounts together get at most 1 rows of their own per 60 s"
    )
