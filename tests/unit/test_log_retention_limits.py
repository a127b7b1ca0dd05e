"""How long the logs keep their records (hatchway.server.retention): the days an operator gives
are taken or refused with a message that says what was wrong and what to give instead, unset
keeps every record, and the cutoff is exactly that many days before now."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from click.testing import CliRunner

from hatchway.cli.server_cmd import server
from hatchway.server.retention import MAX_KEEP_DAYS, cutoff, parse_keep_days


@pytest.mark.parametrize(("value", "days"), [(None, None), ("", None), ("1", 1), ("90", 90), (" 365 ", 365), ("36500", 36500)])
def test_days_taken(value: str | None, days: int | None) -> None:
    assert parse_keep_days(value, "--keep-connections", "HATCHWAY_KEEP_CONNECTIONS") == days


@pytest.mark.parametrize(("value", "why"), [
    ("0", "records must be kept at least 1 day; leave it unset to keep every record"),
    ("-30", "records must be kept at least 1 day; leave it unset to keep every record"),
    ("36501", "at most 36500 days (100 years); leave it unset to keep every record"),
    ("99999999999", "at most 36500 days (100 years); leave it unset to keep every record"),
    ("90d", "expected a whole number of days, e.g. 90; leave it unset to keep every record"),
    ("1.5", "expected a whole number of days, e.g. 90; leave it unset to keep every record"),
    ("forever", "expected a whole number of days, e.g. 90; leave it unset to keep every record"),
])
def test_days_refused_saying_what_to_give(value: str, why: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_keep_days(value, "--keep-audit", "HATCHWAY_KEEP_AUDIT")
    assert str(exc.value) == f"invalid --keep-audit (env HATCHWAY_KEEP_AUDIT) {value!r}: {why}"


def test_cutoff_is_exactly_the_days_before_now() -> None:
    now = datetime(2026, 3, 1, 12, 30, 15, 250_000, tzinfo=UTC)
    assert cutoff(now, 1) == datetime(2026, 2, 28, 12, 30, 15, 250_000, tzinfo=UTC)
    assert cutoff(now, 90) == datetime(2025, 12, 1, 12, 30, 15, 250_000, tzinfo=UTC)
    assert cutoff(now, 366) == datetime(2025, 2, 28, 12, 30, 15, 250_000, tzinfo=UTC)  # 2025 is no leap year
    assert cutoff(now, MAX_KEEP_DAYS) == datetime(1926, 3, 26, 12, 30, 15, 250_000, tzinfo=UTC)  # 100 years hold 25 leap days


def test_server_help_documents_both_settings_and_that_everything_is_kept_by_default() -> None:
    out = " ".join(CliRunner().invoke(server, ["--help"]).output.split())
    assert ("--keep-connections DAYS Delete the records of SSH connections that ended (or were refused) more than DAYS "
            "days ago, 1 to 36500; connections still open are kept. Pruned hourly [env HATCHWAY_KEEP_CONNECTIONS; "
            "default: keep every record].") in out
    assert ("--keep-audit DAYS Delete audit events (admin actions) recorded more than DAYS days ago, 1 to 36500. "
            "Pruned hourly [env HATCHWAY_KEEP_AUDIT; default: keep every record].") in out
