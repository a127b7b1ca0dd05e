"""Output toward the client paced by the connection's transport as well as by SSH windows.

asyncssh stops a channel's writer when the client's window is used up, and ignores its
transport's ``pause_writing``. With OpenSSH's 2 MiB windows that bounds what waits in our
memory; but a client may grant windows of up to 4 GiB (HPN-SSH grants hundreds of MiB), and if
it then stops reading, or its network stalls, everything a command prints would pile up in the
transport's buffer until the server ran out of memory.

So every producer of output (a session's child, a forwarded socket, an SFTP server) holds while
either says so: its channel (the window) or its connection (the transport above its high-water
mark). :class:`Hold` is one producer's combined state; :class:`OutputGate` is the connection's,
and tells every producer on the connection when its transport fills up and drains.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: Why a producer holds: its channel's send buffer is full (the window) ...
WINDOW = "window"
#: ... or its connection's transport is.
CONNECTION = "connection"


class Hold:
    """One producer's pause state: it pauses when the first reason appears and resumes when
    the last one is gone, so two signals that come and go independently never resume it early."""

    __slots__ = ("_pause", "_reasons", "_resume")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause = pause
        self._resume = resume
        self._reasons: set[str] = set()

    @property
    def held(self) -> bool:
        return bool(self._reasons)

    def set(self, reason: str, held: bool) -> None:
        was = bool(self._reasons)
        if held:
            self._reasons.add(reason)
        else:
            self._reasons.discard(reason)
        if was != bool(self._reasons):
            (self._pause if self._reasons else self._resume)()


class OutputGate:
    """Whether the connection's transport can take more, for every producer on the connection."""

    def __init__(self) -> None:
        self.congested = False
        self._holds: set[Hold] = set()

    def attach(self, conn: Any) -> None:
        """Receive the flow-control calls the transport makes on asyncssh's connection object.

        asyncssh's ``SSHConnection.pause_writing``/``resume_writing`` do nothing; transports call
        them as attributes of their protocol, so instance attributes set here take their place."""
        conn.pause_writing = self.pause
        conn.resume_writing = self.resume

    def join(self, hold: Hold) -> None:
        self._holds.add(hold)
        if self.congested:
            hold.set(CONNECTION, True)

    def leave(self, hold: Hold) -> None:
        self._holds.discard(hold)

    def pause(self) -> None:
        if not self.congested:
            self.congested = True
            for hold in list(self._holds):
                hold.set(CONNECTION, True)

    def resume(self) -> None:
        if self.congested:
            self.congested = False
            for hold in list(self._holds):
                hold.set(CONNECTION, False)
