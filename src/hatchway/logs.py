"""Logging set-up shared by the server, the agent and the CLI.

Quiet by default (one line per notable event); ``--verbose`` turns on DEBUG for Hatchway's own
loggers so a single connection's whole story can be followed. Third-party loggers stay at
WARNING either way, so their chatter never buries ours.
"""

from __future__ import annotations

import logging
import sys

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


class SafeFormatter(logging.Formatter):
    """Escapes control characters (newlines above all) in the values logged, so nothing a
    client sends (a name, a header) can forge a log line. Format strings and tracebacks keep
    their own newlines."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, (str, BaseException)) for a in args):
            record.args = tuple(
                str(a).translate(_CONTROL) if isinstance(a, (str, BaseException)) else a for a in args
            )
            try:
                return super().format(record)
            finally:
                record.args = args
        return super().format(record)


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hatchway").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("asyncssh", "uvicorn", "uvicorn.error", "uvicorn.access", "websockets"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose and noisy == "asyncssh" else logging.WARNING)
