"""Waiting for a condition with a deadline, not a fixed sleep: a test waits only as long as the
condition takes, and says what never became true when it gives up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout} s: {what}")
        await asyncio.sleep(0.05)
