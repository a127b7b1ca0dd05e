"""Replica signatures, stream-id origins and bus events: the pure parts of scale-out."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from hatchway.server.bus import MAX_FIELD, decode_event, encode_event
from hatchway.server.cluster import SIGNATURE_WINDOW_S, derive_key, origin_of, sign, verify
from hatchway.server.supervision import command_args

KEY = derive_key(b"\x07" * 32, b"replica-relay/v1")
NOW = 1_800_000_000.0


def test_a_signature_verifies_for_its_path_and_names_the_sender() -> None:
    header = sign(KEY, "0123456789abcdef", "/internal/v1/dial", now=NOW)
    assert verify(KEY, header, "/internal/v1/dial", now=NOW) == "0123456789abcdef"
    assert verify(KEY, header, "/internal/v1/dial", now=NOW + SIGNATURE_WINDOW_S) == "0123456789abcdef"


def test_a_signature_fails_for_another_path_key_sender_or_time() -> None:
    header = sign(KEY, "0123456789abcdef", "/internal/v1/dial", now=NOW)
    rid, ts, mac = header.split(".")
    assert verify(KEY, header, "/internal/v1/supervise", now=NOW) is None
    assert verify(derive_key(b"\x08" * 32, b"replica-relay/v1"), header, "/internal/v1/dial", now=NOW) is None
    assert verify(derive_key(b"\x07" * 32, b"other-purpose"), header, "/internal/v1/dial", now=NOW) is None
    assert verify(KEY, f"fedcba9876543210.{ts}.{mac}", "/internal/v1/dial", now=NOW) is None
    assert verify(KEY, f"{rid}.{int(ts) + 1}.{mac}", "/internal/v1/dial", now=NOW) is None
    assert verify(KEY, header, "/internal/v1/dial", now=NOW + SIGNATURE_WINDOW_S + 1) is None
    assert verify(KEY, header, "/internal/v1/dial", now=NOW - SIGNATURE_WINDOW_S - 1) is None


@given(st.one_of(st.none(), st.text(max_size=200)))
def test_any_header_that_is_not_a_signature_is_refused(header: str | None) -> None:
    assert verify(KEY, header, "/internal/v1/dial", now=NOW) is None


def test_stream_ids_name_the_replica_where_the_client_waits() -> None:
    assert origin_of("0123456789abcdef" + "ab" * 16) == "0123456789abcdef"


def test_events_round_trip_without_empty_fields_and_with_long_reasons_cut() -> None:
    payload = encode_event("end_sessions", "0123456789abcdef", {"reason": "r" * 5000, "user_id": None, "provider_id": "p1"})
    event = decode_event(payload)
    assert event == {"kind": "end_sessions", "origin": "0123456789abcdef", "reason": "r" * MAX_FIELD, "provider_id": "p1"}
    assert len(payload.encode()) < 8000  # PostgreSQL's NOTIFY limit


def test_fields_cannot_forge_the_kind_or_origin() -> None:
    event = decode_event(encode_event("push_manifests", "aaaa", {"kind": "end_sessions", "origin": "bbbb"}))
    assert event is not None and (event["kind"], event["origin"]) == ("push_manifests", "aaaa")


def test_notifications_that_are_not_events_are_ignored() -> None:
    deep = "[" * 3999 + "]" * 3999  # fits PostgreSQL's NOTIFY limit, and anyone connected may NOTIFY
    for payload in ("", "not json", "[]", json.dumps({"kind": 1, "origin": "a"}), json.dumps({"kind": "x"}), deep):
        assert decode_event(payload) is None


def test_forwarded_supervisor_commands_are_checked() -> None:
    assert command_args({"action": "stop", "workspace_id": "w1"}) == ("stop", "w1")
    for bad in (None, [], {"action": "rm -rf", "workspace_id": "w1"}, {"action": "stop"},
                {"action": "stop", "workspace_id": "x" * 33}, {"action": "stop", "workspace_id": ""}):
        try:
            command_args(bad)
        except Exception as exc:
            assert getattr(exc, "status", None) == 400
        else:
            raise AssertionError(f"{bad!r} was accepted")
