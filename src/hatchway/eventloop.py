"""The event loop of the processes on the byte path (server and agent).

uvloop (installed with uvicorn[standard]) runs the loop itself, transports and callbacks in C.
On a relayed bulk transfer that is 15-25 % of the server's CPU per GiB and about a tenth of the
agent's when it forwards to port 22 (benchmark runs of 2026-11-28: 0.63-0.74 CPU-seconds per GiB
against 0.70-0.81 on asyncio's own loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - a minimal install without uvicorn[standard]
        return None
    return uvloop.new_event_loop
