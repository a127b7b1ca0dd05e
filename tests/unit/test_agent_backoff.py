"""The agent's reconnect schedule: short enough to be back within 5 s, jittered, capped."""

from __future__ import annotations

import random

import pytest

from hatchway.agent.backoff import Backoff, backoff_delay


def test_nominal_schedule_doubles_from_200ms_and_caps_at_2s() -> None:
    # rand() == 0.5 means "no jitter": the nominal schedule.
    delays = [backoff_delay(n, rand=lambda: 0.5) for n in range(8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0])


def test_jitter_spans_plus_minus_25_percent() -> None:
    assert backoff_delay(0, rand=lambda: 0.0) == pytest.approx(0.15)
    assert backoff_delay(10, rand=lambda: 0.0) == pytest.approx(1.5)
    assert backoff_delay(10, rand=lambda: 0.999999) == pytest.approx(2.5, abs=1e-5)


def test_every_delay_stays_under_the_5s_promise_even_after_a_long_outage() -> None:
    rng = random.Random(1234)
    for attempt in (0, 1, 5, 50, 10_000, 10**9):
        d = backoff_delay(attempt, rand=rng.random)
        assert 0.15 <= d <= 2.5


def test_agents_do_not_reconnect_in_lock_step() -> None:
    rng = random.Random(7)
    delays = {round(backoff_delay(6, rand=rng.random), 6) for _ in range(50)}
    assert len(delays) > 40


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError):
        backoff_delay(-1)


def test_backoff_counter_advances_and_resets() -> None:
    b = Backoff(rand=lambda: 0.5)
    assert [b.next_delay() for _ in range(4)] == pytest.approx([0.2, 0.4, 0.8, 1.6])
    b.reset()
    assert b.next_delay() == pytest.approx(0.2)
