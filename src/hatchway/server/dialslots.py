"""Turns for SSH connections being set up: a few per user and per workspace at once, the rest in line.

A connection being set up holds a slot from the moment its agent is asked to dial back until the
agent's socket arrives (normally milliseconds; at most the dial timeout when the agent does not
answer). The caps keep one client from parking an unbounded number of streams on an agent that
never answers. A burst (``ansible`` or ``pssh`` fanning out, an IDE reconnecting all its windows)
is legitimate, though: connections over the cap wait in arrival order for a slot instead of being
refused, up to ``max_queued`` per user and per workspace, each for at most its caller's timeout.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass


class NoSlot(Exception):
    """No slot was given: ``which`` cap was full ("user" or "workspace"); ``waited`` says whether
    the connection waited in line (and for how long) or the line itself was full."""

    def __init__(self, which: str, waited: float | None) -> None:
        super().__init__(which)
        self.which = which
        self.waited = waited


@dataclass(slots=True)
class _Waiter:
    user: str
    workspace: str
    turn: asyncio.Future[None]


class DialSlots:
    """Slot counts per user and per workspace, and the line of connections waiting for one.

    An empty ``user`` (a connection not made by a signed-in user) is capped per workspace only."""

    def __init__(self, per_user: int, per_workspace: int, max_queued: int) -> None:
        self.per_user = per_user
        self.per_workspace = per_workspace
        self.max_queued = max_queued
        self.by_user: dict[str, int] = {}
        self.by_workspace: dict[str, int] = {}
        self.queued_by_user: dict[str, int] = {}
        self.queued_by_workspace: dict[str, int] = {}
        # Each waiter is in its user's line and its workspace's line: a slot given back can
        # only help those two lines, so a release never scans anyone else's waiters. A waiter
        # that got its slot or left stays in the other line until it reaches the front.
        self._user_lines: dict[str, collections.deque[_Waiter]] = {}
        self._workspace_lines: dict[str, collections.deque[_Waiter]] = {}

    def full(self, user: str, workspace: str) -> str | None:
        """Which cap keeps a new connection of ``user`` to ``workspace`` from a slot now, if any."""
        if user and self.by_user.get(user, 0) >= self.per_user:
            return "user"
        if self.by_workspace.get(workspace, 0) >= self.per_workspace:
            return "workspace"
        return None

    async def acquire(self, user: str, workspace: str, timeout: float, interrupted: asyncio.Future[None]) -> bool:
        """Take a slot, waiting in line for at most ``timeout`` seconds.

        Returns False when ``interrupted`` completed first (the caller knows why); raises
        :class:`NoSlot` when the line is full or the wait timed out. A caller cancelled while
        waiting leaves the line (or gives back the slot it was just handed)."""
        which = self.full(user, workspace)
        if which is None:
            self._take(user, workspace)
            return True
        if (user and self.queued_by_user.get(user, 0) >= self.max_queued) or (
            self.queued_by_workspace.get(workspace, 0) >= self.max_queued
        ):
            raise NoSlot(which, None)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(user, workspace, loop.create_future())
        if user:
            self._user_lines.setdefault(user, collections.deque()).append(waiter)
        self._workspace_lines.setdefault(workspace, collections.deque()).append(waiter)
        _bump(self.queued_by_user, user, 1)
        _bump(self.queued_by_workspace, workspace, 1)
        started = loop.time()
        try:
            await asyncio.wait((waiter.turn, interrupted), timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            self._leave(waiter)
            raise
        if waiter.turn.done():
            return True
        self._leave(waiter)
        if interrupted.done():
            return False
        raise NoSlot(self.full(user, workspace) or which, loop.time() - started)

    def release(self, user: str, workspace: str) -> None:
        """Give a slot back; the first waiters of that user and of that workspace that now fit
        under both caps get one, in arrival order."""
        _bump(self.by_user, user, -1)
        _bump(self.by_workspace, workspace, -1)
        if user:
            self._admit(self._user_lines, user)
        self._admit(self._workspace_lines, workspace)

    def _admit(self, lines: dict[str, collections.deque[_Waiter]], key: str) -> None:
        line = lines.get(key)
        if line is None:
            return
        counts, cap = (self.by_user, self.per_user) if lines is self._user_lines else (self.by_workspace, self.per_workspace)
        kept: list[_Waiter] = []
        while line:
            if line[0].turn.done():  # given a slot through its other line, or gone
                line.popleft()
                continue
            if counts.get(key, 0) >= cap:  # this line's own cap is full: nobody further back fits
                break
            waiter = line.popleft()
            if self.full(waiter.user, waiter.workspace) is None:
                self._dequeue(waiter)
                self._take(waiter.user, waiter.workspace)
                waiter.turn.set_result(None)
                if lines is self._user_lines:
                    self._prune(self._workspace_lines, waiter.workspace)
                else:
                    self._prune(self._user_lines, waiter.user)
            else:
                kept.append(waiter)  # held up by its other cap: keeps its place in this line
        line.extendleft(reversed(kept))
        if not line:
            del lines[key]

    def _take(self, user: str, workspace: str) -> None:
        _bump(self.by_user, user, 1)
        _bump(self.by_workspace, workspace, 1)

    def _dequeue(self, waiter: _Waiter) -> None:
        _bump(self.queued_by_user, waiter.user, -1)
        _bump(self.queued_by_workspace, waiter.workspace, -1)

    def _leave(self, waiter: _Waiter) -> None:
        if waiter.turn.done():  # handed a slot in the meantime: give it back
            self.release(waiter.user, waiter.workspace)
            return
        waiter.turn.cancel()  # its lines drop it when it reaches their front
        self._dequeue(waiter)
        self._prune(self._user_lines, waiter.user)
        self._prune(self._workspace_lines, waiter.workspace)

    @staticmethod
    def _prune(lines: dict[str, collections.deque[_Waiter]], key: str) -> None:
        """Drop the waiters at the front of a line that are settled (served or gone)."""
        line = lines.get(key)
        while line and line[0].turn.done():
            line.popleft()
        if line is not None and not line:
            del lines[key]


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    if not key:
        return
    n = counts.get(key, 0) + delta
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
