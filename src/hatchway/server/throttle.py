"""Brute-force throttling for password logins.

Failures are counted per (username, source address) and per username alone, in a sliding
window; once over the limit, further attempts are refused without checking the password, so
a guesser learns nothing and pays for nothing. Kept in memory (a restart forgetting it costs
little); with several replicas every failure is broadcast (hatchway.server.broadcast), so each
replica counts the attempts made on all of them.

The per-user cap stops a guesser spread over many addresses, and would let that guesser lock
the user out from everywhere. So an address the user has signed in from before (the last
:data:`KNOWN_SOURCES` of them) is held only to its own count: under such an attack the user
still gets in from the office or home they came from, and a stranger still cannot guess.

Failures are also counted per address across all names (:data:`PER_SOURCE`), with a larger
allowance: one address trying name after name is stopped too, and what it costs the server
(each check is about 150 ms of Argon2) is bounded. An address a user signed in from is exempt
for that user, as above. Memory is bounded: expired counts are swept once per window, and
beyond :data:`MAX_KEYS` the counts that failed least recently are forgotten first.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable

#: Addresses remembered per user as ones they signed in from.
KNOWN_SOURCES = 8
#: Users whose addresses are remembered (the least recently signed in are forgotten first).
KNOWN_USERS = 100_000
#: One address's allowance across all names, in multiples of the per-name limit.
PER_SOURCE = 4
#: Failure counts kept at most (each a name and an address, a name, or an address).
MAX_KEYS = 200_000


class LoginThrottle:
    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()  # least recent first
        self._known: OrderedDict[str, OrderedDict[str, None]] = OrderedDict()
        self._swept = clock()

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
        # larger allowance; an address the user signed in from is not (see the module's doc).
        keys = [((username, source), self._limit)]
        if source not in self._known.get(username, ()):
            keys.append(((username, "*"), self._limit * 4))
            keys.append((("*", source), self._limit * PER_SOURCE))
        for key, limit in keys:
            q = self._recent(key)
            if len(q) >= limit:
                worst = max(worst, self._window - (self._clock() - q[0]))
        return max(worst, 0.0)

    def failed(self, username: str, source: str) -> None:
        now = self._clock()
        for key in ((username, source), (username, "*"), ("*", source)):
            q = self._failures.pop(key, None) or deque()
            q.append(now)
            self._failures[key] = q
        if now - self._swept > self._window:
            self._swept = now
            for key in list(self._failures):
                self._recent(key)  # drops what has expired
        while len(self._failures) > MAX_KEYS:
            self._failures.popitem(last=False)

    def counts_held(self) -> int:
        """How many failure counts are kept (the memory this costs)."""
        return len(self._failures)

    def succeeded(self, username: str, source: str) -> None:
        self._failures.pop((username, source), None)
        known = self._known.pop(username, None) or OrderedDict()
        known.pop(source, None)
        known[source] = None
        while len(known) > KNOWN_SOURCES:
            known.popitem(last=False)
        self._known[username] = known
        while len(self._known) > KNOWN_USERS:
            self._known.popitem(last=False)
