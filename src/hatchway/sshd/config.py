"""Settings of the built-in SSH server (pure: parsing only, no I/O).

The built-in server reads no sshd_config (it is not sshd, and the image's may not exist). What an operator may still want to tune
comes from the agent: constructor arguments, or ``HATCHWAY_SSH_*`` variables in the agent's own
environment (the workspace image sets them; sessions never see the agent's environment). Bad
values are reported and replaced by the default instead of stopping the agent.

=====================================  =============================================  ==========
variable                               meaning (OpenSSH equivalent)                   default
=====================================  =============================================  ==========
``HATCHWAY_SSH_ACCEPT_ENV``            names/patterns a client may send besides        (none)
                                       ``LANG`` and ``LC_*``, blank or comma separated
                                       (``AcceptEnv``)
``HATCHWAY_SSH_LOGIN_GRACE``           seconds to finish authenticating                60
                                       (``LoginGraceTime``)
``HATCHWAY_SSH_KEEPALIVE_INTERVAL``    seconds of client silence before the server     15
                                       asks; 0 turns it off (``ClientAliveInterval``)
``HATCHWAY_SSH_KEEPALIVE_COUNT``       unanswered asks before the client is dropped    3
                                       (``ClientAliveCountMax``)
``HATCHWAY_SSH_MAX_SESSIONS``          open session channels per connection            10
                                       (``MaxSessions``)
``HATCHWAY_SSH_MAX_CHANNELS``          open channels of any kind per connection        256
``HATCHWAY_SSH_MOTD``                  file shown to interactive login sessions        /etc/motd
                                       (empty: none) (``PrintMotd``)
``HATCHWAY_SSH_X11_DISPLAY_OFFSET``    first X11 display number (``X11DisplayOffset``) 10
``HATCHWAY_SSH_FORWARDING``            ``yes``/``no``: TCP and Unix-socket forwarding  yes
                                       (``AllowTcpForwarding``,
                                       ``AllowStreamLocalForwarding``)
``HATCHWAY_SSH_AGENT_FORWARDING``      ``yes``/``no`` (``AllowAgentForwarding``)       yes
``HATCHWAY_SSH_X11_FORWARDING``        ``yes``/``no`` (``X11Forwarding``)              yes
``HATCHWAY_SSH_GATEWAY_PORTS``         ``yes``: ``-R`` may listen on other addresses   no
                                       than loopback (``GatewayPorts``)
=====================================  =============================================  ==========
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger("hatchway.sshd")

ENV_PREFIX = "HATCHWAY_SSH_"
_PATTERN = re.compile(r"^[A-Za-z0-9_*?\[\]!-]+$")


@dataclass(frozen=True)
class BuiltinSSHConfig:
    """Everything tunable about the built-in server; the defaults are what users get."""

    accept_env: tuple[str, ...] = ()
    login_grace: float = 60.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    max_sessions: int = 10
    max_channels: int = 256
    motd_path: Path | None = Path("/etc/motd")
    x11_display_offset: int = 10
    x11_max_displays: int = 1000
    allow_forwarding: bool = True
    allow_agent_forwarding: bool = True
    allow_x11_forwarding: bool = True
    gateway_ports: bool = False
    problems: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> BuiltinSSHConfig:
        """Read the ``HATCHWAY_SSH_*`` variables; unusable values keep the default (reported)."""
        problems: list[str] = []
        defaults = cls()
        values: dict[str, object] = {}

        def raw(name: str) -> str | None:
            value = environ.get(ENV_PREFIX + name)
            return None if value is None else value.strip()

        if (text := raw("ACCEPT_ENV")) is not None:
            patterns, bad = parse_accept_env(text)
            values["accept_env"] = patterns
            problems += [f"{ENV_PREFIX}ACCEPT_ENV: ignored {b!r} (not a variable name or pattern)" for b in bad]

        def number(name: str, attr: str, kind: type, minimum: float) -> None:
            text = raw(name)
            if text is None or text == "":
                return
            try:
                value = kind(text)
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError
            except ValueError:
                problems.append(f"{ENV_PREFIX}{name}={text!r} is not a number; using {getattr(defaults, attr)}")
                return
            if value < minimum:
                problems.append(f"{ENV_PREFIX}{name}={text!r} is below {minimum}; using {getattr(defaults, attr)}")
                return
            values[attr] = value

        number("LOGIN_GRACE", "login_grace", float, 1)
        number("KEEPALIVE_INTERVAL", "keepalive_interval", float, 0)
        number("KEEPALIVE_COUNT", "keepalive_count_max", int, 1)
        number("MAX_SESSIONS", "max_sessions", int, 1)
        number("MAX_CHANNELS", "max_channels", int, 1)
        number("X11_DISPLAY_OFFSET", "x11_display_offset", int, 0)

        def flag(name: str, attr: str) -> None:
            text = raw(name)
            if text is None or text == "":
                return
            parsed = parse_flag(text)
            if parsed is None:
                problems.append(f"{ENV_PREFIX}{name}={text!r} is not yes/no; using {'yes' if getattr(defaults, attr) else 'no'}")
            else:
                values[attr] = parsed

        flag("FORWARDING", "allow_forwarding")
        flag("AGENT_FORWARDING", "allow_agent_forwarding")
        flag("X11_FORWARDING", "allow_x11_forwarding")
        flag("GATEWAY_PORTS", "gateway_ports")

        motd = environ.get(ENV_PREFIX + "MOTD")
        if motd is not None:
            values["motd_path"] = Path(motd) if motd.strip() else None

        config = replace(defaults, **values, problems=tuple(problems))  # type: ignore[arg-type]
        if config.max_channels < config.max_sessions:
            config = replace(config, max_channels=config.max_sessions)
        return config

    def with_accept_env(self, extra: Iterable[str]) -> BuiltinSSHConfig:
        """This config with more accepted client variable patterns (kept in order, no repeats)."""
        merged = list(self.accept_env)
        for pattern in extra:
            if pattern not in merged:
                merged.append(pattern)
        return replace(self, accept_env=tuple(merged))


def parse_accept_env(text: str) -> tuple[tuple[str, ...], list[str]]:
    """Split an AcceptEnv-like list (blanks or commas); return (patterns, rejected words)."""
    good: list[str] = []
    bad: list[str] = []
    for word in re.split(r"[\s,]+", text):
        if not word:
            continue
        if _PATTERN.match(word):
            if word not in good:
                good.append(word)
        else:
            bad.append(word)
    return tuple(good), bad


def parse_flag(text: str) -> bool | None:
    lowered = text.strip().lower()
    if lowered in ("yes", "y", "true", "on", "1"):
        return True
    if lowered in ("no", "n", "false", "off", "0"):
        return False
    return None
