"""Backpressure checks: a writer that keeps sending while the far end reads nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable

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
