"""Server settings resolved from flags and environment, in one immutable object."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hatchway.server.limits import MAX_BODY_BYTES


def default_data_dir() -> Path:
    env = os.environ.get("HATCHWAY_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "hatchway"


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    db_url: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 7080
    access_url: str = ""
    internal_url: str = ""  # how other replicas reach this one; default: the listen address
    max_body_bytes: int = MAX_BODY_BYTES
    login_failures_allowed: int = 5
    login_failure_window_s: float = 300.0
    session_ttl_s: int = 30 * 24 * 3600
    dial_timeout_s: float = 10.0
    # Slow and abusive clients (see hatchway.server.guards and Relay.dial).
    handshake_timeout_s: float = 10.0  # request headers / WebSocket accept must complete within
    keep_alive_timeout_s: int = 5  # idle keep-alive HTTP connections are closed after
    max_handshaking_per_ip: int = 64  # connections of one address still sending headers
    # Load balancers: their X-Forwarded-For is believed, their connections are not capped per
    # address. Empty: no client's X-Forwarded-For is believed, not even from 127.0.0.1.
    trusted_proxies: tuple[str, ...] = ()
    max_pending_streams_per_user: int = 32  # SSH streams waiting for their agent, per user
    max_pending_streams_per_workspace: int = 32  # ... and per workspace
    max_queued_streams: int = 1024  # more wait their turn, per user and per workspace, up to this
    # Where GET /metrics is served without credentials (hatchway.server.metrics_listener); None: off.
    metrics_listen: tuple[str, int] | None = None
    # Days the connection log and the audit log keep their records (hatchway.server.pruning);
    # None: every record is kept.
    keep_connections_days: int | None = None
    keep_audit_days: int | None = None

    @property
    def agent_url(self) -> str:
        """How an agent on this machine reaches the server directly (not through access_url,
        which may name a proxy or a host that only outside clients resolve)."""
        host = self.listen_host
        if host in ("0.0.0.0", "", "localhost"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.listen_port}"

    @property
    def relay_url(self) -> str:
        """Where other replicas hand streams over to this one."""
        return self.internal_url.rstrip("/") if self.internal_url else self.agent_url

    @property
    def url(self) -> str:
        if self.access_url:
            return self.access_url.rstrip("/")
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.listen_port}"


def parse_listen(value: str, option: str = "--listen", example: str = "127.0.0.1:7080") -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:7080`` for IPv6) with a message people can act on; ``option``
    and ``example`` are what the message names."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"invalid {option} {value!r}: expected HOST:PORT, e.g. {example}")
    p = int(port)
    if not 0 <= p <= 65535:
        raise ValueError(f"invalid {option} port {p}: must be 0-65535")
    return host.strip("[]"), p
