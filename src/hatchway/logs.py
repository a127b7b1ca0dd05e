"""Logging set-up shared by the server, the agent and the CLI.

Quiet by default (one line per notable event); ``--verbose`` turns on DEBUG for Hatchway's own
loggers so a single connection's whole story can be followed. Third-party loggers stay at
WARNING either way, so their chatter never buries ours.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hatchway").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("asyncssh", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose and noisy == "asyncssh" else logging.WARNING)
