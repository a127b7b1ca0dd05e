"""The per-address count of connections sending headers, and the line waiting behind it."""

from __future__ import annotations

from hatchway.server.guards import WAITING_PER_SLOT, ConnectionGuard, Turn


def test_under_the_cap_connections_are_read_and_counted_per_address() -> None:
    guard = ConnectionGuard(10, 2)
    assert guard.begin("a") is Turn.READ
    assert guard.begin("a") is Turn.READ
    assert guard.begin("b") is Turn.READ
    assert guard.handshaking == {"a": 2, "b": 1}
    guard.end("a")
    guard.end("a")
    guard.end("b")
    assert guard.handshaking == {}


def test_at_the_cap_connections_wait_and_each_end_hands_its_count_to_the_next_in_line() -> None:
    guard = ConnectionGuard(10, 1)
    turns: list[str] = []
    assert guard.begin("a", lambda: turns.append("1")) is Turn.READ
    assert guard.begin("a", lambda: turns.append("2")) is Turn.WAIT
    assert guard.begin("a", lambda: turns.append("3")) is Turn.WAIT
    assert guard.begin("b", lambda: turns.append("b")) is Turn.READ  # another address is not held up
    guard.end("a")
    assert turns == ["2"] and guard.handshaking["a"] == 1
    guard.end("a")
    assert turns == ["2", "3"] and guard.handshaking["a"] == 1
    guard.end("a")
    assert "a" not in guard.handshaking and guard.waiting == {}


def test_a_connection_that_leaves_the_line_gets_no_turn() -> None:
    guard = ConnectionGuard(10, 1)
    turns: list[str] = []
    guard.begin("a")

    def second() -> None:
        turns.append("2")

    def third() -> None:
        turns.append("3")

    assert guard.begin("a", second) is Turn.WAIT
    assert guard.begin("a", third) is Turn.WAIT
    guard.leave("a", second)
    guard.end("a")
    assert turns == ["3"]
    guard.leave("a", third)  # already had its turn: nothing to do
    guard.end("a")
    assert guard.handshaking == {} and guard.waiting == {}


def test_beyond_the_line_and_without_a_place_in_it_connections_are_dropped() -> None:
    guard = ConnectionGuard(10, 2)
    for _ in range(2):
        assert guard.begin("a") is Turn.READ
    assert guard.begin("a") is Turn.DROP  # a keep-alive request cannot wait: dropped at the cap
    for _ in range(2 * WAITING_PER_SLOT):
        assert guard.begin("a", lambda: None) is Turn.WAIT
    assert guard.begin("a", lambda: None) is Turn.DROP
    assert guard.refused == 2
    assert guard.begin("b", lambda: None) is Turn.READ


def test_trusted_proxies_are_not_capped() -> None:
    guard = ConnectionGuard(10, 1, uncapped=frozenset({"10.0.0.1"}))
    for _ in range(50):
        assert guard.begin("10.0.0.1", lambda: None) is Turn.READ
