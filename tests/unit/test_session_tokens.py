"""hatchway.server.session_tokens: when a session's last use is written, and what of a client's
User-Agent is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hatchway.server.session_tokens import (
    CLIENT_MAX,
    TOUCH_INTERVAL,
    client_label,
    due_for_touch,
    printable,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_last_use_is_written_once_a_minute_not_per_request() -> None:
    assert due_for_touch(None, NOW)
    assert not due_for_touch(NOW, NOW)
    assert not due_for_touch(NOW - TOUCH_INTERVAL + timedelta(seconds=1), NOW)
    assert due_for_touch(NOW - TOUCH_INTERVAL, NOW)
    assert due_for_touch(NOW - timedelta(days=3), NOW)
    assert not due_for_touch(NOW + timedelta(seconds=30), NOW)  # another replica's clock ahead


def test_client_labels_are_printable_folded_and_bounded() -> None:
    assert client_label(None) is None
    assert client_label("") is None
    assert client_label("\x00\x1b\x85") is None  # nothing printable left
    assert client_label("hatchway-cli/1.0 (laptop)") == "hatchway-cli/1.0 (laptop)"
    assert client_label("a\nb\r\nc\x1b[31m  d\t\te \x00 f") == "a b c[31m d e f"
    long = client_label("x" * 1000)
    assert long is not None and len(long) == CLIENT_MAX and long.endswith("…")
    assert printable("y" * 64, 64) == "y" * 64
    assert printable("y" * 65, 64) == "y" * 63 + "…"
