"""Which unidentified SSH attempts get a row of their own, and what the rest are counted in."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hatchway.server.unidentified import UnidentifiedAttempts

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kw: int) -> UnidentifiedAttempts:
    return UnidentifiedAttempts(**{"per_key": 3, "overall": 100, "window_s": 60, "max_keys": 1000, **kw}, clock=clock)


def test_an_address_gets_a_few_rows_then_one_tally_per_window() -> None:
    clock = Clock()
    u = limiter(clock)
    assert [u.admit("10.0.0.1", "dev", T0) for _ in range(3)] == [None] * 3
    tallies = [u.admit("10.0.0.1", "dev" if i < 5 else "other", T0 + timedelta(seconds=i)) for i in range(10)]
    assert all(t is tallies[0] for t in tallies)
    t = tallies[0]
    assert t is not None and (t.key, t.count, t.asked, t.asked_other) == ("10.0.0.1", 10, "dev", True)
    assert (t.first_at, t.last_at) == (T0, T0 + timedelta(seconds=9))
    assert t.reason() == (
        '10 more unauthenticated attempts from this address to "dev" and other workspaces, from this row\'s start '
        "to its end, all refused; counted in this one row: one address gets at most 3 rows of their own per 60 s"
    )
    assert u.admit("10.0.0.2", "dev", T0) is None  # another address has its own allowance
    clock.now += 60  # a new window: rows of its own again, then a new tally
    assert [u.admit("10.0.0.1", "dev", T0) for _ in range(3)] == [None] * 3
    later = u.admit("10.0.0.1", "dev", T0)
    assert later is not None and later is not t and later.count == 1
    assert later.reason().startswith('1 more unauthenticated attempt from this address to "dev", from')


def test_past_the_overall_cap_every_address_shares_one_tally() -> None:
    clock = Clock()
    u = limiter(clock, per_key=2, overall=5)
    assert [u.admit(a, "dev", T0) for a in ("a", "a", "b", "b", "c")] == [None] * 5
    shared = u.admit("c", "dev", T0)
    assert shared is not None and shared.key is None and shared.first_key == "c"
    assert u.admit("d", "dev", T0) is shared and u.admit("d", "dev", T0) is shared
    assert (shared.count, shared.keys) == (3, 2)
    assert shared.reason() == (
        '3 more unauthenticated attempts from 2 addresses to "dev", from this row\'s start to its end, all refused; '
        "counted in this one row: all addresses together get at most 5 rows of their own per 60 s"
    )
    own = u.admit("a", "dev", T0)  # an address over its own cap is counted in its own tally
    assert own is not None and own.key == "a"
    clock.now += 60
    assert u.admit("e", "dev", T0) is None  # the overall allowance is back too


def test_memory_holds_at_most_max_keys_and_forgets_windows_that_are_over() -> None:
    clock = Clock()
    u = limiter(clock, max_keys=50, overall=10**9)
    for i in range(10_000):
        assert u.admit(f"10.0.{i // 256}.{i % 256}", "dev", T0) is None
        assert u.remembered() <= 50
    clock.now += 60
    u.admit("10.9.9.9", "dev", T0)
    assert u.remembered() == 1


def test_tallies_are_handed_out_once_per_count_since() -> None:
    clock = Clock()
    u = limiter(clock, per_key=0)
    a, b = u.admit("a", "dev", T0), u.admit("b", "dev", T0)
    u.admit("a", "dev", T0)
    assert u.take_unwritten() == [a, b]
    assert u.take_unwritten() == []
    u.admit("b", "dev", T0)
    assert u.take_unwritten() == [b]
