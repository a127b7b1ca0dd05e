"""Password hashing and checking away from the event loop, a few at a time.

Argon2 is slow on purpose (about 150 ms of CPU per hash or check, by design), and the event
loop also carries every relayed SSH byte and every API request. Run on the loop, sixteen sign-in
attempts with made-up names stalled every live session and request for seconds. So each one runs
in a small pool of threads: argon2-cffi releases the GIL while it works. What waits beyond
:data:`MAX_WAITING` is refused at once with 503 and Retry-After. Memory stays bounded, and a
flood gets an answer instead of a queue.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from hatchway.server import crypto
from hatchway.server.errors import APIError

T = TypeVar("T")

#: Hashes computed at once: half the cores, so the event loop keeps one to itself.
WORKERS = max(1, (os.cpu_count() or 2) // 2)
#: Requests that may wait for a worker (about five seconds of work); beyond it they are refused.
MAX_WAITING = 32 * WORKERS
RETRY_AFTER_S = 2

_pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="password-hash")
_pending = 0  # submitted and not finished; only changed on event loops' threads


async def _in_pool(work: Callable[..., T], *args: str) -> T:
    global _pending
    if _pending >= WORKERS + MAX_WAITING:
        raise APIError(
            503,
            "too many sign-ins at once",
            f"the server is checking {_pending} passwords; try again in {RETRY_AFTER_S} seconds",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    _pending += 1
    try:
        return await asyncio.get_running_loop().run_in_executor(_pool, work, *args)
    finally:
        _pending -= 1


async def hash_password(password: str) -> str:
    """:func:`hatchway.server.crypto.hash_password`, off the event loop."""
    return await _in_pool(crypto.hash_password, password)


async def verify_password(password_hash: str, password: str) -> bool:
    """:func:`hatchway.server.crypto.verify_password`, off the event loop."""
    return await _in_pool(crypto.verify_password, password_hash, password)
