"""Which attempts by nobody in particular get a row of their own in a record.

Anyone who can reach the server can open the SSH stream endpoint without a token (or with a
made-up or expired one), or try to sign in with any name and password, and each such attempt
used to add a row or went unrecorded: a flood of them grew the database without bound and
buried real events in the site managers' audit. Now, in each window of :data:`WINDOW_S`
seconds, one key (an address, or for sign-ins an account too: see
``hatchway.server.failed_signins``) gets :data:`PER_KEY` rows of its own and all keys together
get :data:`OVERALL`; each attempt past that is refused all the same and counted in a
:class:`Tally`: one row per key (and one for all the others, past the overall cap) per window,
rewritten with its count now and then. So the record still says who kept trying, when and how
often, in a bounded number of rows; and at most :data:`MAX_KEYS` keys are remembered here.
SSH attempts by an identified user (a suspended one, say) are not limited: each is theirs to
answer for.

The bookkeeping, and the task that has the tallies' rows written while they are counted in;
the callers (``hatchway.server.api.ssh``, ``hatchway.server.failed_signins``) say what a row is.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

#: Rows of its own one key (an address, an account) gets per window.
PER_KEY = 5
#: Rows of their own all keys together get per window (those many keys' tallies add at most
#: OVERALL / PER_KEY + 1 rows).
OVERALL = 100
WINDOW_S = 60.0
#: Keys remembered at once; past it the oldest window is forgotten early (that key gets a fresh
#: allowance; the overall cap still holds).
MAX_KEYS = 10_000
#: How often the rows of attempts counted together are rewritten with their counts: a flood of
#: them costs a write per row this often, not one per attempt.
WRITE_EVERY_S = 5.0


@dataclass(frozen=True)
class Wording:
    """How a tally's row says what it counted, in words that fit the record it is in:
    ``N more {attempt}s {by_key} this {key} {before_asked} "FIRST" and {others}``."""

    attempt: str  # "unauthenticated attempt"
    key: str  # "address"
    keys: str  # "addresses"
    by_key: str  # "from": how an attempt relates to its key
    before_asked: str  # "to": how it relates to what it asked for
    others: str  # "other workspaces"


#: SSH streams opened without a valid token, counted per address.
SSH_WORDING = Wording("unauthenticated attempt", "address", "addresses", "from", "to", "other workspaces")


@dataclass(eq=False)
class Tally:
    """Attempts of one window with no row of their own under ``key`` (None: under any key,
    past the overall cap); written as one row, ``row_id`` once it is."""

    key: str | None
    first_key: str  # the key of the first of them (``key``, unless that is None)
    asked: str  # what the first of them asked for
    first_at: datetime
    last_at: datetime
    limit: int  # rows of their own the attempts before them got
    window_s: float
    wording: Wording
    count: int = 0
    keys: int = 0  # keys counted (the overall tally)
    asked_other: bool = False
    row_id: str | int | None = None  # the id of whichever record its row is in

    def add(self, asked: str, at: datetime) -> None:
        self.count += 1
        self.last_at = at
        self.asked_other = self.asked_other or asked != self.asked

    def reason(self) -> str:
        """The row's reason: what these attempts were and why they share one row."""
        w = self.wording
        where = f'"{self.asked}"' + (f" and {w.others}" if self.asked_other else "")
        attempts = f"{self.count} more {w.attempt}{'s' if self.count != 1 else ''}"
        who, whose = (f"this {w.key}", f"one {w.key} gets") if self.key is not None else (
            f"{self.keys} {w.key if self.keys == 1 else w.keys}", f"all {w.keys} together get")
        return (
            f"{attempts} {w.by_key} {who} {w.before_asked} {where}, from this row's start to its end, all refused; "
            f"counted in this one row: {whose} at most {self.limit} rows of their own per {self.window_s:.0f} s"
        )


class _Window:
    __slots__ = ("start", "recorded", "tally", "in_overall")

    def __init__(self, start: float) -> None:
        self.start = start
        self.recorded = 0
        self.tally: Tally | None = None
        self.in_overall: Tally | None = None  # the overall tally this key is counted in


#: Writes (or rewrites) a tally's row; it says what went wrong rather than raising.
WriteTally = Callable[[Tally], Awaitable[None]]


class UnidentifiedAttempts:
    def __init__(
        self, wording: Wording = SSH_WORDING, per_key: int = PER_KEY, overall: int = OVERALL,
        window_s: float = WINDOW_S, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wording, self._per_key, self._overall_limit, self._window_s = wording, per_key, overall, window_s
        self._max_keys, self._clock = max_keys, clock
        # Windows in the order they started (one ends, it is dropped: none is restarted in place).
        self._keys: OrderedDict[str, _Window] = OrderedDict()
        self._overall = _Window(-math.inf)
        self._unwritten: dict[Tally, None] = {}  # counted in since taken (an ordered set)
        self._writer: asyncio.Task[None] | None = None  # see keep_writing

    def admit(self, key: str, asked: str, at: datetime) -> Tally | None:
        """None when this attempt under ``key`` (its address, say) gets a row of its own; else
        the tally it has been counted in. ``asked`` is what it asked for (a workspace, say),
        ``at`` when it was made, as the record gives times."""
        now = self._clock()
        mine = self._window(key, now)
        if now - self._overall.start >= self._window_s:
            self._overall = _Window(now)
        overall = self._overall
        if mine.recorded >= self._per_key:
            return self._count(mine, key, key, asked, at, self._per_key)
        if overall.recorded >= self._overall_limit:
            tally = self._count(overall, None, key, asked, at, self._overall_limit)
            if mine.in_overall is not tally:
                mine.in_overall = tally
                tally.keys += 1
            return tally
        mine.recorded += 1
        overall.recorded += 1
        return None

    def take_unwritten(self) -> list[Tally]:
        """The tallies counted in since the last call: their rows are due to be (re)written."""
        taken = list(self._unwritten)
        self._unwritten.clear()
        return taken

    def keep_writing(self, write: WriteTally, name: str) -> None:
        """Have the counted tallies' rows written every :data:`WRITE_EVERY_S` by a task (called
        ``name``) that runs while attempts are counted and ends when none was: a flood costs a
        write per tally this often, not one per attempt, and no task runs while nobody floods."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_while_counting(write), name=name)

    async def write_now(self, write: WriteTally) -> None:
        """At shutdown: the counts not written yet are written now, not lost with the process."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        for tally in self.take_unwritten():
            await write(tally)

    async def _write_while_counting(self, write: WriteTally) -> None:
        while True:
            await asyncio.sleep(WRITE_EVERY_S)
            tallies = self.take_unwritten()
            if not tallies:
                return  # the flood is over; the next counted attempt starts another task
            for tally in tallies:
                await write(tally)

    def remembered(self) -> int:
        """How many keys' windows are held (the memory this costs)."""
        return len(self._keys)

    def _window(self, key: str, now: float) -> _Window:
        while self._keys and now - next(iter(self._keys.values())).start >= self._window_s:
            self._keys.popitem(last=False)  # over: whatever it counted is in _unwritten
        window = self._keys.get(key)
        if window is None:
            if len(self._keys) >= self._max_keys:
                self._keys.popitem(last=False)
            window = self._keys[key] = _Window(now)
        return window

    def _count(
        self, window: _Window, key: str | None, first_key: str, asked: str, at: datetime, limit: int
    ) -> Tally:
        if window.tally is None:
            window.tally = Tally(key, first_key, asked, at, at, limit, self._window_s, self._wording)
        window.tally.add(asked, at)
        self._unwritten[window.tally] = None
        return window.tally
