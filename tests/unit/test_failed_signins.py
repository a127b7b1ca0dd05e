"""How a failed sign-in's name is kept, and how its tallies read."""

from __future__ import annotations

from datetime import datetime, timezone

from hatchway.server.failed_signins import BY_ACCOUNT, NAME_MAX, stored_name
from hatchway.server.unidentified import UnidentifiedAttempts

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


def test_a_name_is_kept_as_typed_when_it_could_be_one() -> None:
    assert stored_name("alice") == "alice"
    assert stored_name("é" * NAME_MAX) == "é" * NAME_MAX


def test_a_hostile_name_is_escaped_and_cut_however_much_escaping_grows_it() -> None:
    assert stored_name("a\nb\x00\x1b[2J") == "a\\nb\\x00\\x1b[2J"
    widest = stored_name("\U000e0001" * 10_000)  # each shown as 10 characters: \U000e0001
    assert len(widest) == NAME_MAX and widest.endswith("…") and widest.startswith("\\U000e0001")
    assert stored_name("x" * (NAME_MAX + 1)) == "x" * (NAME_MAX - 1) + "…"


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
