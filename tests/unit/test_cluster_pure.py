"""Replica signatures, stream-id origins and bus events: the pure parts of scale-out."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from hatchway.db.models import Replica
from hatchway.server.bus import MAX_FIELD, decode_event, encode_event
from hatchway.server.cluster import (
    FORGET_AFTER_S, SIGNATURE_WINDOW_S, SeenNonces, derive_key, origin_of, proven_dead, sign, verify,
)
from hatchway.server.presence import DatabaseView
from hatchway.server.supervision import command_args

KEY = derive_key(b"\x07" * 32, b"replica-relay/v1")
NOW = 1_800_000_000.0


RID = "0123456789abcdef"
DIAL = "/internal/v1/dial"
BODY = b'{"action": "stop", "workspace_id": "w1"}'


def check(header: str | None, method: str = "POST", path: str = DIAL, query: str = "", body: bytes = BODY,
          now: float = NOW, seen: SeenNonces | None = None) -> str | None:
    """``verify`` with a replay cache of its own unless one is given."""
    return verify(KEY, header, method, path, query, body, seen=SeenNonces() if seen is None else seen, now=now)


def test_a_signature_verifies_for_its_request_and_names_the_sender() -> None:
    header = sign(KEY, RID, "POST", DIAL, body=BODY, now=NOW)
    assert check(header) == RID
    assert check(header, now=NOW + SIGNATURE_WINDOW_S) == RID
    assert check(header, now=NOW - SIGNATURE_WINDOW_S) == RID  # a clock ahead of ours, as before
    ws = sign(KEY, RID, "GET", "/internal/v1/streams/s1", "workspace=w1", now=NOW)
    assert check(ws, "GET", "/internal/v1/streams/s1", "workspace=w1", b"") == RID


def test_a_signature_fails_for_another_path_key_sender_or_time() -> None:
    header = sign(KEY, RID, "POST", DIAL, body=BODY, now=NOW)
    rid, ts, nonce, mac = header.split(".")
    assert check(header, path="/internal/v1/supervise") is None
    assert verify(derive_key(b"\x08" * 32, b"replica-relay/v1"), header, "POST", DIAL, "", BODY, seen=SeenNonces(), now=NOW) is None
    assert verify(derive_key(b"\x07" * 32, b"other-purpose"), header, "POST", DIAL, "", BODY, seen=SeenNonces(), now=NOW) is None
    assert check(f"fedcba9876543210.{ts}.{nonce}.{mac}") is None
    assert check(f"{rid}.{int(ts) + 1}.{nonce}.{mac}") is None
    assert check(f"{rid}.{ts}.{'0' * 32}.{mac}") is None  # the nonce is signed: it cannot be swapped
    assert check(header, now=NOW + SIGNATURE_WINDOW_S + 1) is None
    assert check(header, now=NOW - SIGNATURE_WINDOW_S - 1) is None


def test_a_signature_fails_for_another_body_query_or_method() -> None:
    """What a captured header could otherwise be reused for: another workspace to delete,
    another stream's workspace, the same path asked another way."""
    header = sign(KEY, RID, "POST", "/internal/v1/supervise", body=BODY, now=NOW)
    assert check(header, path="/internal/v1/supervise") == RID
    tampered = b'{"action": "delete", "workspace_id": "w2"}'
    assert check(header, path="/internal/v1/supervise", body=tampered) is None
    assert check(header, path="/internal/v1/supervise", body=BODY + b" ") is None
    assert check(header, path="/internal/v1/supervise", body=b"") is None
    assert check(header, "GET", path="/internal/v1/supervise") is None
    assert check(header, path="/internal/v1/supervise", query="workspace=w2") is None
    ws = sign(KEY, RID, "GET", "/internal/v1/streams/s1", "workspace=w1", now=NOW)
    for query in ("workspace=w2", "", "workspace=w1&workspace=w2"):
        assert check(ws, "GET", "/internal/v1/streams/s1", query, b"") is None
    assert check(ws, "GET", "/internal/v1/streams/s2", "workspace=w1", b"") is None


def test_a_signature_is_accepted_once() -> None:
    seen = SeenNonces()
    header = sign(KEY, RID, "POST", DIAL, body=BODY, now=NOW)
    assert check(header, seen=seen) == RID
    assert check(header, seen=seen) is None
    assert check(header, seen=seen, now=NOW + SIGNATURE_WINDOW_S) is None  # still remembered, still fresh
    assert check(sign(KEY, RID, "POST", DIAL, body=BODY, now=NOW), seen=seen) == RID  # a new nonce each time
    # A rejected signature spends nothing: the genuine one still goes through after a forgery.
    genuine = sign(KEY, RID, "POST", DIAL, body=BODY, now=NOW)
    assert check(genuine, body=b"{}", seen=seen) is None
    assert check(genuine, seen=seen) == RID


def test_nonces_are_forgotten_with_their_window_and_never_more_than_the_limit_are_kept() -> None:
    seen = SeenNonces(limit=100)
    for i in range(100):
        assert seen.first_use(f"{i:032x}", int(NOW), NOW)
    assert not seen.first_use("f" * 32, int(NOW), NOW)  # full of fresh ones: refused, not forgotten
    assert not seen.first_use(f"{5:032x}", int(NOW), NOW + SIGNATURE_WINDOW_S)
    assert seen.first_use("f" * 32, int(NOW) + 31, NOW + SIGNATURE_WINDOW_S + 1)  # the old ones expired
    assert seen.remembered() == 1


@given(st.one_of(st.none(), st.text(max_size=200)))
def test_any_header_that_is_not_a_signature_is_refused(header: str | None) -> None:
    assert check(header) is None


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


def test_a_replica_is_proven_dead_only_silent_unconnected_and_with_postgresql_up_since_well_before_its_beat() -> None:
    now = datetime(2027, 1, 1, tzinfo=UTC)

    def silent_for(replica_id: str, seconds: float) -> Replica:
        return Replica(id=replica_id, relay_url="http://127.0.0.1:7080", secret_check="",
                       heartbeat_at=now - timedelta(seconds=seconds))

    rows = [
        silent_for("gone", FORGET_AFTER_S + 1),
        silent_for("beating", FORGET_AFTER_S - 0.5),  # not silent long enough
        silent_for("connected", 60),  # a connection of its own is open: cut off, maybe alive
        silent_for("since-restart", 60),  # silent since before PostgreSQL's last start
    ]
    up_s = 30.0
    assert proven_dead(rows, DatabaseView(frozenset({"connected", "beating"}), up_s), now) == ["gone"]
    assert proven_dead(rows, None, now) == []  # SQLite: nobody to judge
    # PostgreSQL must have been up FORGET_AFTER_S longer than the replica has been silent: its
    # clock stamped the beat, PostgreSQL's measures the uptime.
    edge = FORGET_AFTER_S + 1 + FORGET_AFTER_S
    assert proven_dead(rows[:1], DatabaseView(frozenset(), edge), now) == ["gone"]
    assert proven_dead(rows[:1], DatabaseView(frozenset(), edge - 0.1), now) == []
