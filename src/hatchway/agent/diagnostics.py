"""Settings of the image's own OpenSSH that break the documented experience (SPEC 3.5).

When connections are forwarded to port 22, Hatchway no longer controls the session: the
image's sshd decides whether ``~/.ssh/environment`` is applied, whether PAM's
``/etc/environment`` clobbers the image's variables, and whether ``ssh -X`` can work. Users
only see the symptom ("my variables are missing", ``X11 forwarding request failed on channel
0``), so the agent reads the same config sshd reads and says what to change, in plain
sentences that reach the CLI and UI through the control channel.

:func:`effective_settings` and :func:`diagnose` are pure; :func:`collect` is the I/O edge
(blocking: run it with ``asyncio.to_thread``).
"""

from __future__ import annotations

import glob
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SSHD_CONFIG = "/etc/ssh/sshd_config"
ETC_ENVIRONMENT = "/etc/environment"
#: Where sshd looks for xauth when the config does not say (OpenSSH's usual XAUTH_PATH).
DEFAULT_XAUTH = "/usr/bin/xauth"
#: Include nesting sshd allows (READCONF_MAX_DEPTH); deeper means a loop.
MAX_INCLUDE_DEPTH = 16

#: Loads an ``Include`` argument: the (path, text) of each file it names, in the order sshd reads
#: them. Raises OSError when a file exists but cannot be read.
IncludeLoader = Callable[[str], list[tuple[str, str]]]

PERMIT_USER_ENVIRONMENT = (
    "sshd on port 22 has PermitUserEnvironment {value}: ~/.ssh/environment (image variables and "
    "Hatchway defaults) is not applied; set PermitUserEnvironment yes"
)
ETC_ENVIRONMENT_PRESENT = (
    "/etc/environment exists: sshd on port 22 (through PAM) applies it at login and it overrides "
    "the image's ENV variables; remove it from the image"
)
X11_WITHOUT_XAUTH = (
    "sshd on port 22 has X11Forwarding yes but xauth is not installed: clients see "
    "\"X11 forwarding request failed on channel 0\"; install xauth"
)
UNREADABLE = (
    "could not read the configuration of sshd on port 22 ({error}); its PermitUserEnvironment "
    "and X11Forwarding settings were not checked"
)


class ConfigError(Exception):
    """The config could not be read; the message is the part shown to users."""


def _tokens(line: str) -> list[str]:
    """Split one config line like sshd: ``Keyword value`` or ``Keyword=value``, quotes allowed."""
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    m = re.match(r"([^\s=]+)\s*(?:=\s*|\s+|$)(.*)$", line)
    if not m:
        return []
    keyword, rest = m.group(1), m.group(2)
    try:
        args = shlex.split(rest, comments=True)
    except ValueError:  # unbalanced quote: sshd refuses the file; take the words as they are
        args = rest.split()
    return [keyword, *args]


def effective_settings(text: str, load_include: IncludeLoader, *, path: str = SSHD_CONFIG) -> dict[str, str]:
    """The value sshd uses for each keyword set outside ``Match`` blocks (keywords lowercased).

    Like sshd: keywords are case-insensitive, the first value obtained wins, ``Include`` is read
    in place (its files in the loader's order), and ``Match`` blocks are skipped (they apply to
    some connections only; we report the defaults every connection gets). A ``Match`` inside an
    included file ends with that file, as in current OpenSSH. Raises :class:`ConfigError` when an
    included file cannot be read.
    """
    settings: dict[str, str] = {}
    for keyword, args in walk_config(text, load_include, path=path):
        if args and keyword not in settings:
            settings[keyword] = " ".join(args)
    return settings


def walk_config(text: str, load_include: IncludeLoader, *, path: str = SSHD_CONFIG) -> list[tuple[str, list[str]]]:
    """Every ``(keyword, arguments)`` of the global section, in the order sshd reads them
    (keywords lowercased; ``Include`` read in place, ``Match`` blocks skipped, as above)."""
    out: list[tuple[str, list[str]]] = []
    _parse(text, path, load_include, out, depth=0)
    return out


def _parse(text: str, path: str, load_include: IncludeLoader, out: list[tuple[str, list[str]]], depth: int) -> None:
    if depth > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"{path}: Include nested too deeply")
    in_match = False
    for line in text.splitlines():
        tokens = _tokens(line)
        if not tokens:
            continue
        keyword = tokens[0].lower()
        if keyword == "match":
            # "Match all" returns to the global section.
            in_match = not (len(tokens) == 2 and tokens[1].lower() == "all")
            continue
        if in_match:
            continue
        if keyword == "include":
            for pattern in tokens[1:]:
                try:
                    files = load_include(pattern)
                except OSError as exc:
                    raise ConfigError(f"{pattern}: {exc.strerror or exc}") from None
                for inc_path, inc_text in files:
                    _parse(inc_text, inc_path, load_include, out, depth + 1)
            continue
        out.append((keyword, tokens[1:]))


@dataclass(frozen=True)
class Facts:
    """What the agent found on the filesystem, beside the config."""

    etc_environment_exists: bool  # and sets at least one variable (Debian ships it empty)
    xauth_available: bool


def diagnose(settings: dict[str, str] | None, facts: Facts, *, config_error: str | None = None) -> list[str]:
    """Sentences describing what would break for users of the port-22 OpenSSH server.

    ``settings`` is :func:`effective_settings`' result, or None when the config could not be
    read (then ``config_error`` says why and only the filesystem facts are checked).
    """
    out: list[str] = []
    if settings is None:
        out.append(UNREADABLE.format(error=config_error or "unknown error"))
    else:
        pue = settings.get("permituserenvironment", "no")
        if pue.lower() != "yes":
            out.append(PERMIT_USER_ENVIRONMENT.format(value=pue))
    # pam_env is what reads /etc/environment: with UsePAM no (sshd's compiled default) it is inert.
    uses_pam = settings is None or settings.get("usepam", "no").lower() == "yes"
    if facts.etc_environment_exists and uses_pam:
        out.append(ETC_ENVIRONMENT_PRESENT)
    if settings is not None and settings.get("x11forwarding", "no").lower() == "yes" and not facts.xauth_available:
        out.append(X11_WITHOUT_XAUTH)
    return out


# ---- I/O edge -------------------------------------------------------------------------------


def filesystem_loader(base: str) -> IncludeLoader:
    """Resolve an Include argument like sshd: relative to /etc/ssh, glob, sorted, missing = none."""

    def load(pattern: str) -> list[tuple[str, str]]:
        full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
        out = []
        for name in sorted(glob.glob(full)):
            if os.path.isdir(name):
                continue
            out.append((name, Path(name).read_text(encoding="utf-8", errors="replace")))
        return out

    return load


def _xauth_available(settings: dict[str, str] | None) -> bool:
    """Whether sshd will find xauth: at XAuthLocation, else at its built-in path. Not on PATH:
    sshd runs the path it has, so an xauth only in /usr/local/bin does not help it."""
    return os.access((settings or {}).get("xauthlocation") or DEFAULT_XAUTH, os.X_OK)


def _sets_variables(path: str) -> bool:
    """Whether the file assigns anything (blank lines and comments do nothing)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # present but unreadable to us: sshd (as root) still reads it
    return any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines())


def collect(config_path: str = SSHD_CONFIG, etc_environment: str = ETC_ENVIRONMENT) -> list[str]:
    """Read sshd's config and the facts, and diagnose. Blocking; never raises for I/O errors."""
    settings: dict[str, str] | None
    error: str | None = None
    try:
        text = Path(config_path).read_text(encoding="utf-8", errors="replace")
        settings = effective_settings(text, filesystem_loader(os.path.dirname(config_path)), path=config_path)
    except OSError as exc:
        settings, error = None, f"{config_path}: {exc.strerror or exc}"
    except ConfigError as exc:
        settings, error = None, str(exc)
    facts = Facts(etc_environment_exists=_sets_variables(etc_environment), xauth_available=_xauth_available(settings))
    return diagnose(settings, facts, config_error=error)
