"""How values read on the page: sizes, durations, times, SSH modes. Pure functions."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup, escape

from hatchway.sshmode import port22_server_text

SSH_DISABLED = "SSH disabled by a site manager"


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return "<1s"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m {s:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h}h"


def connection_duration(started: datetime, ended: datetime | None) -> float | None:
    if ended is None:
        return None
    return max((ended - started).total_seconds(), 0.0)


def source_text(source: str | None) -> str:
    """``"HOST PORT"`` as the server records it, shown as ``HOST:PORT``."""
    if not source:
        return "—"
    host, _, port = source.rpartition(" ")
    if not host or not port.isdigit():
        return source
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def utc_text(dt: datetime | None) -> str:
    if dt is None:
        return "—"
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(dt: datetime | None) -> str:
    return dt.astimezone(UTC).isoformat() if dt else ""


def ago(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return "never"
    now = now or datetime.now(UTC)
    delta = now - dt
    if delta < timedelta(seconds=0):
        delta = timedelta(0)
    s = int(delta.total_seconds())
    if s < 10:
        return "just now"
    if s < 60:
        return f"{s} s ago"
    if s < 3600:
        return f"{s // 60} min ago"
    if s < 86400:
        return f"{s // 3600} h ago"
    if s < 86400 * 30:
        d = s // 86400
        return f"{d} day{'s' if d != 1 else ''} ago"
    return dt.astimezone(UTC).strftime("%Y-%m-%d")


def until(dt: datetime | None, now: datetime | None = None) -> str:
    """How far ahead ``dt`` is ("in 6 days"), for expiry times; a past ``dt`` has "expired"."""
    if dt is None:
        return "never"
    s = int((dt - (now or datetime.now(UTC))).total_seconds())
    if s <= 0:
        return "expired"
    if s < 60:
        return "in under a minute"
    if s < 3600:
        return f"in {s // 60} min"
    if s < 86400:
        return f"in {s // 3600} h"
    d = s // 86400
    return f"in {d} day{'s' if d != 1 else ''}"


_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
             ("Version/", "Safari"))
_SYSTEMS = (("Windows", "Windows"), ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iOS"), ("CrOS", "ChromeOS"),
            ("Mac OS X", "macOS"), ("Linux", "Linux"))


def client_text(client: str | None) -> str:
    """A session's client as people say it: "hatchway CLI 0.1.0 on laptop", "Firefox 140 on
    Linux"; anything else as it came (the full User-Agent stays in the page's title text)."""
    if not client:
        return "Unknown client"
    if client.startswith("hatchway-cli/"):
        version, _, host = client.removeprefix("hatchway-cli/").partition(" (")
        return f"hatchway CLI {version}" + (f" on {host.removesuffix(')')}" if host else "")
    for marker, browser in _BROWSERS:
        at = client.find(marker)
        if at >= 0:
            version = client[at + len(marker):].split(".", 1)[0].split(" ", 1)[0]
            system = next((name for key, name in _SYSTEMS if key in client), None)
            return f"{browser} {version}".strip() + (f" on {system}" if system else "")
    return client


def ssh_mode_text(ws: Any) -> str:
    """What serves SSH in a workspace, as the UI shows it (the CLI says the same)."""
    if not ws.external_connect:
        return SSH_DISABLED
    if ws.ssh_mode == "openssh":
        return port22_server_text(ws.ssh_server_version)
    if ws.ssh_mode:
        return ws.ssh_mode
    return "not reported yet"


def detail_text(detail: dict[str, Any] | None) -> str:
    """An audit event's detail as ``key: old → new`` pairs people can read."""
    if not detail:
        return ""
    if set(detail) == {"old", "new"}:
        return f"{_val(detail['old'])} → {_val(detail['new'])}"
    parts = []
    for k, v in detail.items():
        label = k.replace("_", " ")
        if isinstance(v, dict) and set(v) == {"old", "new"}:
            parts.append(f"{label}: {_val(v['old'])} → {_val(v['new'])}")
        else:
            parts.append(f"{label}: {_val(v)}")
    return "; ".join(parts)


def _val(v: Any) -> str:
    if v is True:
        return "on"
    if v is False:
        return "off"
    if v is None:
        return "—"
    return str(v)


#: Unicode categories of characters that act on the text around them without showing
#: themselves: controls, format characters (bidirectional overrides and isolates, zero-width
#: spaces and joiners, marks), line and paragraph separators, lone surrogates.
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def _unseen(ch: str) -> bool:
    return unicodedata.category(ch) in _UNSEEN_CATEGORIES


def revealed(value: Any, markup: bool = True) -> Markup | str:
    """``value`` with every invisible character shown as its code point (``<U+202E>``).

    Escaping keeps such characters out of the HTML but not off the screen: a right-to-left
    override in a User-Agent or an environment value still reverses what follows it, a
    zero-width space still makes two different values look the same. Values that came from
    users, agents or clients are shown through this filter; in markup each such character is
    a ``.unseen`` span, so it stands out; ``markup=False`` gives plain text, for attributes
    (``title``, ``aria-label``)."""
    text = "" if value is None else str(value)
    if not any(_unseen(ch) for ch in text):
        return text
    if not markup:
        return "".join(f"<U+{ord(ch):04X}>" if _unseen(ch) else ch for ch in text)
    span = Markup('<span class="unseen" title="invisible character U+{0:04X}">&lt;U+{0:04X}&gt;</span>')
    return Markup("").join(span.format(ord(ch)) if _unseen(ch) else escape(ch) for ch in text)
