"""Brute-force throttling for password logins.

Failures are counted per (username, source address) and per username alone, in a sliding
window; once over the limit, further attempts are refused without checking the password, so
a guesser learns nothing and pays for nothing. Kept in memory (a restart forgetting it costs
little); with several replicas every failure is broadcast (hatchway.server.broadcast), so each
replica counts the attempts made on all of them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def _recent(self, key: tuple[str, str]) -> deque[float]:
        now = self._clock()
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and now - q[0] > self._window:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def retry_after(self, username: str, source: str) -> float:
        """Seconds until another attempt is allowed, or 0 when allowed now."""
        worst = 0.0
        # Per source and per user: a distributed guesser is capped by the second key, with a
        # larger allowance so one attacker cannot lock a user out from everywhere cheaply.
        for key, limit in (((username, source), self._limit), ((username, "*"), self._limit * 4)):
            q = self._recent(key)
            if len(q) >= limit:
                worst = max(worst, self._window - (self._clock() - q[0]))
        return max(worst, 0.0)

    def failed(self, username: str, source: str) -> None:
        now = self._clock()
        for key in ((username, source), (username, "*")):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str, source: str) -> None:
        self._failures.pop((username, source), None)
