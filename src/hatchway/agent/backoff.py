"""How long the agent waits before trying the server again.

Two pressures pull in opposite directions. A user whose control plane was restarted expects
``ssh`` to work again a few seconds later, so the wait may never grow past a couple of seconds
(SPEC: back within 5 s of the server returning). But a fleet of agents that all lost the same
server must not come back in lock step, so every delay is jittered. The schedule is a pure
function so it can be tested exactly; :class:`Backoff` only keeps the attempt counter.
"""

from __future__ import annotations

import random
from collections.abc import Callable

#: First delay after a failure, in seconds.
BASE_DELAY = 0.2
#: Longest delay before jitter: with jitter the worst case stays well under the 5 s promise.
MAX_DELAY = 2.0
#: Each delay is scaled by a factor drawn from [1 - JITTER, 1 + JITTER].
JITTER = 0.25


def backoff_delay(
    attempt: int,
    *,
    base: float = BASE_DELAY,
    cap: float = MAX_DELAY,
    jitter: float = JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before retry number ``attempt`` (0 for the first retry after a failure).

    ``base * 2**attempt``, capped at ``cap``, then scaled by ``1 + jitter * (2 * rand() - 1)``,
    i.e. uniformly within ±``jitter`` of the nominal value. ``rand`` must return a float in
    [0, 1) like :func:`random.random`; tests pass a constant to pin the schedule.
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    # Cap the exponent first: 2**attempt for a day-long outage would be an enormous int.
    nominal = min(cap, base * (2 ** min(attempt, 32)))
    return max(0.0, nominal * (1.0 + jitter * (2.0 * rand() - 1.0)))


class Backoff:
    """The retry counter of one loop (manifest fetch, control channel)."""

    def __init__(self, rand: Callable[[], float] = random.random) -> None:
        self._rand = rand
        self.attempt = 0

    def next_delay(self) -> float:
        """The delay to wait now; each call moves one step along the schedule."""
        delay = backoff_delay(self.attempt, rand=self._rand)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Call after a success, so the next outage starts again with a short wait."""
        self.attempt = 0
