"""The agent's side of the control-channel protocol, as pure functions.

Kept free of I/O so the message shapes the server relies on (see
``hatchway.server.api.agent``) are tested without a network, and so the runtime reads as a
sequence of decisions rather than string handling.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from hatchway import peerjson

MANIFEST_PATH = "/api/v1/agent/manifest"
CONTROL_PATH = "/api/v1/agent/control"
STREAM_PATH = "/api/v1/agent/streams/"

#: The server keeps at most this many diagnostics (``MAX_DIAGNOSTICS`` there); we trim first so
#: that the overflow is announced instead of silently dropped.
MAX_DIAGNOSTICS = 20
MAX_DIAGNOSTIC_LEN = 500

#: Stream ids are hex tokens; anything else is refused before it is put into a URL path.
_STREAM_ID = re.compile(r"[0-9a-fA-F]{8,128}")


class URLError(ValueError):
    """The server URL given to the agent is unusable; the message says why."""


def normalize_url(url: str) -> str:
    """Check and normalise the server URL (``http(s)://host[:port][/prefix]``, no trailing /)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise URLError(f"server URL must start with http:// or https://, got {url!r}")
    if not parts.hostname:
        raise URLError(f"server URL {url!r} has no host name")
    if parts.query or parts.fragment:
        raise URLError(f"server URL {url!r} must not have a query or fragment")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def http_url(base: str, path: str) -> str:
    return base + path


def ws_url(base: str, path: str) -> str:
    """The WebSocket URL for ``path`` on the server at ``base`` (http -> ws, https -> wss)."""
    scheme, rest = base.split("://", 1)
    return ("wss" if scheme == "https" else "ws") + "://" + rest + path


def stream_url(base: str, stream_id: str) -> str:
    return ws_url(base, STREAM_PATH + stream_id)


def valid_stream_id(value: Any) -> bool:
    return isinstance(value, str) and _STREAM_ID.fullmatch(value) is not None


def parse_client(value: Any) -> tuple[str, int] | None:
    """The dial message's ``"client": "<ip> <port>"`` as an address tuple, None if malformed."""
    if not isinstance(value, str):
        return None
    host, _, port = value.strip().rpartition(" ")
    if not host or not port.isdigit() or not host.isprintable() or len(host) > 255:
        return None
    port_n = int(port)
    return (host, port_n) if 0 <= port_n <= 65535 else None


@dataclass(frozen=True)
class Status:
    """Everything the agent reports about itself (the ``hello``/``report`` fields)."""

    version: str
    os_user: str
    ssh_mode: str  # "openssh" or "built-in"
    ssh_server_version: str | None
    host_keys: tuple[str, ...]
    diagnostics: tuple[str, ...]

    def fields(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "os_user": self.os_user,
            "ssh_mode": self.ssh_mode,
            "ssh_server_version": self.ssh_server_version,
            "host_keys": list(self.host_keys),
            "diagnostics": list(self.diagnostics),
        }


def trim_diagnostics(sentences: list[str]) -> tuple[str, ...]:
    """Dedupe (first wins), shorten over-long sentences, and announce what does not fit."""
    seen: list[str] = []
    for s in sentences:
        s = s if len(s) <= MAX_DIAGNOSTIC_LEN else s[: MAX_DIAGNOSTIC_LEN - 1] + "…"
        if s not in seen:
            seen.append(s)
    if len(seen) > MAX_DIAGNOSTICS:
        extra = len(seen) - (MAX_DIAGNOSTICS - 1)
        seen = seen[: MAX_DIAGNOSTICS - 1] + [f"... and {extra} more problems; see the agent's log"]
    return tuple(seen)


def hello(status: Status) -> str:
    return json.dumps({"type": "hello", **status.fields()})


def report(status: Status) -> str:
    return json.dumps({"type": "report", **status.fields()})


def stream_header(mode: str, version: str | None = None) -> str:
    """The first (text) frame of a data stream: which server answers this connection."""
    if mode == "openssh":
        return json.dumps({"mode": "openssh", "version": version or ""})
    return json.dumps({"mode": "built-in"})


def parse_message(raw: str | bytes) -> dict[str, Any] | None:
    """A control message as a dict with a string ``type``, or None when it is not one."""
    if isinstance(raw, bytes):
        return None  # the control channel carries JSON text only
    try:
        data = peerjson.loads(raw)  # nested too deeply is malformed too
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        return None
    return data
