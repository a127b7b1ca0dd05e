"""Which SSH attempts by nobody in particular get a row of their own in the connection log.

Anyone who can reach the server can open the SSH stream endpoint without a token (or with a
made-up or expired one), and each such attempt used to add a row: a flood of them grew the
database without bound and buried real events in the site managers' audit. Now, in each window
of :data:`WINDOW_S` seconds, one address gets :data:`PER_SOURCE` rows of its own and all
addresses together get :data:`OVERALL`; each attempt past that is refused all the same and
counted in a :class:`Tally`: one row per address (and one for all the others, past the overall
cap) per window, rewritten with its count now and then. So the log still says who kept trying,
when and how often, in a bounded number of rows; and at most :data:`MAX_SOURCES` addresses are
remembered here. Attempts by an identified user (a suspended one, say) are not limited: each is
theirs to answer for.

Pure bookkeeping: ``hatchway.server.api.ssh`` writes the rows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

#: Rows of its own one address gets per window.
PER_SOURCE = 5
#: Rows of their own all addresses together get per window (those many addresses' tallies add at
#: most OVERALL / PER_SOURCE + 1 rows).
OVERALL = 100
WINDOW_S = 60.0
#: Addresses remembered at once; past it the oldest window is forgotten early (that address gets
#: a fresh allowance; the overall cap still holds).
MAX_SOURCES = 10_000


@dataclass(eq=False)
class Tally:
    """Attempts of one window with no row of their own, from ``source`` (None: from any address,
    past the overall cap); written as one row, ``row_id`` once it is."""

    source: str | None
    workspace: str  # what the first of them asked for
    first_at: datetime
    last_at: datetime
    limit: int  # rows of their own the attempts before them got
    window_s: float
    count: int = 0
    sources: int = 0  # addresses counted (the overall tally)
    other_workspaces: bool = False
    row_id: str | None = None

    def add(self, workspace: str, at: datetime) -> None:
        self.count += 1
        self.last_at = at
        self.other_workspaces = self.other_workspaces or workspace != self.workspace

    def reason(self) -> str:
        """The row's reason: what these attempts were and why they share one row."""
        where = f'"{self.workspace}"' + (" and other workspaces" if self.other_workspaces else "")
        attempts = f"{self.count} more unauthenticated attempt{'s' if self.count != 1 else ''}"
        who, whose = ("this address", "one address gets") if self.source else (
            f"{self.sources} address{'es' if self.sources != 1 else ''}", "all addresses together get")
        return (
            f"{attempts} from {who} to {where}, from this row's start to its end, all refused; counted in this "
            f"one row: {whose} at most {self.limit} rows of their own per {self.window_s:.0f} s"
        )


class _Window:
    __slots__ = ("start", "recorded", "tally", "in_overall")

    def __init__(self, start: float) -> None:
        self.start = start
        self.recorded = 0
        self.tally: Tally | None = None
        self.in_overall: Tally | None = None  # the overall tally this address is counted in


class UnidentifiedAttempts:
    def __init__(
        self, per_source: int = PER_SOURCE, overall: int = OVERALL, window_s: float = WINDOW_S,
        max_sources: int = MAX_SOURCES, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._per_source, self._overall_limit, self._window_s = per_source, overall, window_s
        self._max_sources, self._clock = max_sources, clock
        # Windows in the order they started (one ends, it is dropped: none is restarted in place).
        self._sources: OrderedDict[str, _Window] = OrderedDict()
        self._overall = _Window(-math.inf)
        self._unwritten: dict[Tally, None] = {}  # counted in since taken (an ordered set)
        #: The task writing the tallies' rows (``hatchway.server.api.ssh``), while there are any.
        self.writer: asyncio.Task[None] | None = None

    def admit(self, source: str, workspace: str, at: datetime) -> Tally | None:
        """None when this attempt from ``source`` (an address) gets a row of its own; else the
        tally it has been counted in. ``at`` is when it was made, as the log records times."""
        now = self._clock()
        mine = self._window(source, now)
        if now - self._overall.start >= self._window_s:
            self._overall = _Window(now)
        overall = self._overall
        if mine.recorded >= self._per_source:
            return self._count(mine, source, workspace, at, self._per_source)
        if overall.recorded >= self._overall_limit:
            tally = self._count(overall, None, workspace, at, self._overall_limit)
            if mine.in_overall is not tally:
                mine.in_overall = tally
                tally.sources += 1
            return tally
        mine.recorded += 1
        overall.recorded += 1
        return None

    def take_unwritten(self) -> list[Tally]:
        """The tallies counted in since the last call: their rows are due to be (re)written."""
        taken = list(self._unwritten)
        self._unwritten.clear()
        return taken

    def remembered(self) -> int:
        """How many addresses' windows are held (the memory this costs)."""
        return len(self._sources)

    def _window(self, source: str, now: float) -> _Window:
        while self._sources and now - next(iter(self._sources.values())).start >= self._window_s:
            self._sources.popitem(last=False)  # over: whatever it counted is in _unwritten
        window = self._sources.get(source)
        if window is None:
            if len(self._sources) >= self._max_sources:
                self._sources.popitem(last=False)
            window = self._sources[source] = _Window(now)
        return window

    def _count(self, window: _Window, source: str | None, workspace: str, at: datetime, limit: int) -> Tally:
        if window.tally is None:
            window.tally = Tally(source, workspace, at, at, limit, self._window_s)
        window.tally.add(workspace, at)
        self._unwritten[window.tally] = None
        return window.tally
