"""Names people type, put into API URL paths so that the server receives exactly them.

Pasted into a path as they are, names were read as URL syntax: ``workspaces delete "dev#x"``
deleted dev (``#`` starts a fragment), ``users set-role carol/../bob`` promoted bob (httpx
removes ``..`` segments), ``de%76`` addressed dev, ``?x`` listed every workspace, and a line
break or tab made httpx raise InvalidURL with a traceback.

Kept free of heavy imports: ``hatchway proxy`` builds its stream URL with it on every SSH
connection.
"""

from __future__ import annotations

from urllib.parse import quote

# URL clients remove "." and ".." segments (RFC 3986 5.2.4) unless they are percent-encoded.
_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}


def segment(value: str) -> str:
    """``value`` as one percent-encoded URL path segment, which the server decodes back to it.

    Everything but letters, digits and ``-._~`` is encoded (``/``, ``%``, ``#``, ``?``, line
    breaks and non-ASCII too), and so is a segment of only dots. Bytes of a command-line
    argument that are not UTF-8 (Python's surrogate escapes) are sent as the bytes they were.
    """
    return _DOT_SEGMENTS.get(value) or quote(value, safe="", errors="surrogateescape")


def routable(name: str) -> bool:
    """Whether ``name`` can reach the server as one path segment at all.

    The server decodes ``%2F`` back into ``/`` before routing, so a name with ``/`` (or an
    empty one) would address another URL, or none, never the resource it names. No user,
    workspace or provider name can be empty or hold a ``/`` (:mod:`hatchway.names`).
    """
    return bool(name) and "/" not in name
