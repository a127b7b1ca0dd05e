"""Backpressure checks: a writer that keeps sending while the far end reads nothing; and an SSH
client that grants huge windows, then stops reading, while a program on the other side floods."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncssh

CHUNK = 256 * 1024
#: What socket buffers and the hops' write buffers may hold together before the writer stalls.
BOUND = 48 * 1024 * 1024


async def flood_until_stalled(send: Callable[[bytes], Awaitable[None]]) -> tuple[bytes, int]:
    """Send one random chunk over and over until sending stalls; returns the chunk and how many
    bytes went out. Fails unless the writer is held back: nothing more goes out in the last
    half second of two, and what went out is bounded."""
    chunk = os.urandom(CHUNK)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while True:
            await send(chunk)
            sent += len(chunk)

    flooding = asyncio.create_task(flood())
    try:
        await asyncio.sleep(1.5)  # the far end reads nothing meanwhile
        stalled_at = sent
        await asyncio.sleep(0.5)
        assert sent == stalled_at and sent < BOUND, sent
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
    return chunk, sent


#: What a client may grant (OpenSSH grants 2 MiB per channel; the protocol allows 4 GiB).
HUGE_WINDOW = 1 << 30


class Counting(asyncssh.SSHClientSession, asyncssh.SSHTCPSession):  # type: ignore[type-arg]
    """A client session or forwarded connection that counts what it receives (and keeps the
    first line, where a command can say its process ID)."""

    def __init__(self) -> None:
        self.received = 0
        self.eof = False
        self.done = asyncio.Event()
        self.first_line: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._head = b""

    def data_received(self, data: bytes, datatype: object) -> None:
        self.received += len(data)
        if not self.first_line.done():
            self._head += data[:4096]
            if b"\n" in self._head:
                self.first_line.set_result(self._head.split(b"\n", 1)[0])

    def eof_received(self) -> bool:
        self.eof = True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.done.set()


async def settle(read: Callable[[], int | None], beyond: int = 0, quiet: float = 1.0, timeout: float = 30) -> int | None:
    """``read()`` once it is past ``beyond`` and has stopped changing for ``quiet`` seconds; None
    as soon as it is None (the producer is gone: nothing held it back)."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while last is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = read()
        if now != last or (now is not None and now <= beyond):
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    if last is None:
        return None
    raise AssertionError(f"not settled beyond {beyond} within {timeout} s: {last}")


def written_by(pid: int) -> Callable[[], int | None]:
    """Bytes process ``pid`` has written so far; None once it is gone. (Reading its ``/proc``
    files can fail for a moment while it execs: that is retried, not taken for its end.)"""

    def read() -> int | None:
        for _ in range(100):
            try:
                fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, ValueError):
                if not Path(f"/proc/{pid}").exists():
                    return None
                time.sleep(0.01)
                continue
            return None if state in ("Z", "X") else int(fields["wchar"])
        raise AssertionError(f"/proc/{pid}/io stayed unreadable")

    return read


#: A command that says its process ID, waits for a line on stdin, then floods stdout.
def flood_command(size: int) -> str:
    return f"echo $$; read go && exec head -c {size} /dev/zero"
