"""JSON from the other end of a connection: nested too deeply, it is malformed like any other.

``json.loads`` descends one level of the interpreter's stack per level of nesting and raises
``RecursionError``, not ``ValueError``, past its limit: a message of ``"[" * 200000`` from an
agent escaped the handlers that expected malformed JSON, dropped the connection and logged a
traceback per message. :func:`loads` raises :class:`TooDeep`, a ``ValueError``, instead, so
every ``except ValueError`` holds, and a handler that wants to treat it apart can.
"""

from __future__ import annotations

import json
from typing import Any


class TooDeep(ValueError):
    """JSON nested deeper than the parser can follow; no peer of ours sends that."""


def loads(text: str | bytes) -> Any:
    """``json.loads`` for text a peer sent: :class:`TooDeep` (a ``ValueError``) when it is
    nested too deeply, ``ValueError`` when it is otherwise malformed."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TooDeep("JSON nested too deeply to parse") from None
