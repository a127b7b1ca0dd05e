"""Reading ``~/.ssh/authorized_keys`` for the built-in server.

The file is re-read for every connection (off the event loop): when the platform key is
regenerated the agent rewrites it, and the old key must stop working for the next connection,
not after an agent restart. Parsing is per line and tolerant like OpenSSH's: one line the user
mistyped outside the managed block must not lock everybody out, so it is skipped and reported.

A line's options mean what they mean to OpenSSH (see :func:`effective_options`): a key the user
added as ``restrict,command="rrsync -ro /backup"`` must not open a terminal or a tunnel here
either. asyncssh enforces ``no-pty`` and ``no-port-forwarding`` itself (the server checks the
agent and X11 permissions, which it handles per session), but does not know ``restrict``;
``permitopen`` and ``permitlisten`` are the server's (:mod:`hatchway.sshd.permits`). ``from=`` is
matched against the client's address as the relay reported it (what SSH_CLIENT shows), and a
line with it is not used when there is no such address. Nor does asyncssh read option names in
any case as sshd does (``FROM="..."`` is sshd's ``from``), and it keeps a key whose options sshd
would refuse (``no-ptty``) with the option ignored: so each line's options are first read as
sshd reads them (see :func:`as_sshd_reads`).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import asyncssh

from hatchway.fileutil import read_regular
from hatchway.sshd.env import ipv4_of_mapped
from hatchway.sshd.permits import check_permits, take_permits

log = logging.getLogger("hatchway.sshd")

#: What ``restrict`` turns off that this server offers; an option of the same name turns each back on.
RESTRICTABLE = ("port-forwarding", "agent-forwarding", "X11-forwarding", "pty")


#: sshd(8)'s key options (AUTHORIZED_KEYS FILE FORMAT) by lower-case name: True for a flag,
#: False for one that takes a value. sshd refuses a key whose line has any other.
SSHD_OPTIONS = {
    **dict.fromkeys((
        "agent-forwarding", "cert-authority", "no-agent-forwarding", "no-port-forwarding", "no-pty", "no-touch-required",
        "no-user-rc", "no-x11-forwarding", "port-forwarding", "pty", "restrict", "user-rc", "verify-required",
        "x11-forwarding",
    ), True),
    **dict.fromkeys(
        ("command", "environment", "expiry-time", "from", "permitlisten", "permitopen", "principals", "tunnel"), False
    ),
}
#: Options that, under sshd, refuse the key at times this server cannot tell (past an expiry,
#: without the security key's user verification): a key with one is not used rather than let in then.
UNCHECKED = ("expiry-time", "verify-required")


def _split_options(line: str) -> list[str]:
    """The comma-separated options that start ``line``, as asyncssh splits them: a blank or a
    comma outside double quotes ends one, and a backslash escapes the character after it."""
    options: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in line:
        if not (quoted or escaped) and ch in " \t,":
            options.append("".join(current))
            current = []
            if ch != ",":
                return options
            continue
        current.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
    return [*options, "".join(current)]


def _is_bare_key(line: str) -> bool:
    """Whether ``line`` is a key or certificate with no options before it (as sshd, and
    asyncssh, try it first)."""
    for read in (asyncssh.import_public_key, asyncssh.import_certificate):
        try:
            read(line)
            return True
        except (asyncssh.KeyImportError, ValueError):
            pass
    return False


def as_sshd_reads(line: str) -> str:
    """``line`` (an authorized_keys line) with its option names in lower case, the only case
    asyncssh knows; ValueError, saying why and what to do, for a line sshd would refuse for its
    options or whose options this server cannot check (:data:`UNCHECKED`)."""
    if _is_bare_key(line):
        return line  # no options: the line starts with the key's type
    options = _split_options(line)
    written = []
    for option in options:
        name, eq, value = option.partition("=")
        name = name.lower()
        flag = SSHD_OPTIONS.get(name)
        if flag is None:
            problem = f'unknown option "{name}" (sshd refuses the key too)'
        elif flag and eq:
            problem = f'option "{name}" takes no value (sshd refuses the key too)'
        elif not flag and not eq:
            problem = f'option "{name}" needs a value, as in {name}="..." (sshd refuses the key too)'
        elif name in UNCHECKED:
            problem = f'option "{name}" cannot be checked by the built-in server, so the key is not used'
        else:
            written.append(name + eq + value)
            continue
        raise ValueError(f"{problem}; correct or remove the option")
    return ",".join(written) + line[len(",".join(options)):]


def effective_options(options: Mapping[str, object]) -> dict[str, object]:
    """A key line's options as OpenSSH applies them, in the ``no-<permission>`` form asyncssh
    checks (``check_key_permission``): ``restrict`` turns every permission off except those
    the line turns back on (``restrict,pty``); flag names are case-insensitive, as in OpenSSH
    (``no-x11-forwarding``); ``permitopen``/``permitlisten`` become what the server enforces
    (:mod:`hatchway.sshd.permits`)."""
    out = dict(options)
    take_permits(out)
    flags = {name.lower() for name, value in options.items() if value is True}
    for permission in RESTRICTABLE:
        name = permission.lower()
        if f"no-{name}" in flags or ("restrict" in flags and name not in flags):
            out[f"no-{permission}"] = True
    return out


class _OpenSSHKeys(asyncssh.SSHAuthorizedKeys):
    """asyncssh's authorized keys, answering a match with the options OpenSSH would apply, and
    checking ``from=`` against the client's address as the relay reported it (what
    SSH_CLIENT names: asyncssh would compare the relayed stream's own, meaningless, peer)."""

    def __init__(self, text: str, client_ip: str | None) -> None:
        super().__init__(text)
        self._client_ip = client_ip

    def validate(self, key: asyncssh.SSHKey, client_host: str, client_addr: str,
                 cert_principals: Any = None, ca: bool = False) -> dict[str, object] | None:
        host, addr = self._address(client_host, client_addr)
        options = super().validate(key, host, addr, cert_principals, ca)
        return None if options is None else effective_options(options)

    def validate_x509(self, cert: Any, client_host: str, client_addr: str) -> tuple[dict[str, object] | None, Any]:
        options, found = super().validate_x509(cert, *self._address(client_host, client_addr))
        return (None if options is None else effective_options(options)), found

    def _address(self, client_host: str, client_addr: str) -> tuple[str, str]:
        # sshd's default (UseDNS no): host name patterns are matched against the address too.
        # Without an address no line with from= was kept (parse_authorized_keys).
        ip = self._client_ip
        return (ip, ip) if ip is not None else (client_host, client_addr)


def option_pairs(line: str) -> list[tuple[str, str]]:
    """The ``name=value`` options at the start of an authorized_keys line, unquoted, read as
    asyncssh reads them (up to the first blank outside quotes; a backslash escapes a character).
    A line starting with its key type has none (a key type holds no "=")."""
    pairs: list[tuple[str, str]] = []
    option, quoted, escaped = "", False, False
    for ch in line + " ":
        if escaped:
            option, escaped = option + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted or ch not in " \t,":
            option += ch
        else:
            name, sep, value = option.partition("=")
            if sep:
                pairs.append((name, value))
            if ch != ",":
                break
            option = ""
    return pairs


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def parse_authorized_keys(
    text: str, source: str = "authorized_keys", client_ip: str | None = None
) -> asyncssh.SSHAuthorizedKeys | None:
    """Parse authorized_keys text for a connection from ``client_ip``; None when it holds no
    usable entry.

    asyncssh's own loader rejects the whole file on one bad option, hence the per-line check
    (a key is a few hundred bytes; parsing it twice costs microseconds). ``from=`` needs the
    client's address: when it is not known (None, or not an IP address, which asyncssh's
    matching would fail the connection on), a line with one is not used, and says so.
    """
    if client_ip is not None:  # an IPv4 client of a dual-stack server is matched as IPv4, as by sshd
        client_ip = ipv4_of_mapped(client_ip) or client_ip
    client_ip = client_ip if client_ip is not None and _is_ip(client_ip) else None
    good: list[str] = []
    # Lines end at LF only, as OpenSSH reads them. str.splitlines() (asyncssh's too) also ends
    # one at U+2028, a form feed or a lone CR, and would make an option-restricted key's comment
    # a key of its own: a line holding one is not used (changing it could change its options).
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line.splitlines()) > 1:
            _warn_once(source, lineno, "a line separator other than a newline inside the line")
            continue
        try:
            line = as_sshd_reads(line)
            asyncssh.import_authorized_keys(line)  # raises for an unusable line
            options = option_pairs(line)
            check_permits(options)
        except (ValueError, asyncssh.KeyImportError) as exc:
            reason = (
                "unrecognized key" if str(exc) == "No valid entries found" else str(exc)
            )
            _warn_once(source, lineno, reason)
            continue
        if client_ip is None and any(name == "from" for name, _ in options):
            log.warning("%s line %d not used for this connection: it limits the key with from=, and the "
                        "client's address is unknown (the control plane did not send it)", source, lineno)
            continue
        good.append(line)
    return _OpenSSHKeys("\n".join(good), client_ip) if good else None


def load_authorized_keys(path: Path, client_ip: str | None = None) -> asyncssh.SSHAuthorizedKeys | None:
    """Read and parse ``path`` for a connection from ``client_ip`` (None: unknown). Blocking:
    call it through ``asyncio.to_thread``."""
    try:
        text = read_regular(path)[1].decode("utf-8", errors="replace")
    except FileNotFoundError:
        log.debug("no authorized_keys at %s: refusing every key", path)
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s; refusing every key", path, exc.strerror or exc)
        return None
    return parse_authorized_keys(text, str(path), client_ip)


@functools.lru_cache(maxsize=256)
def _warn_once(source: str, lineno: int, reason: str) -> None:
    """Report a bad line once, not on every connection (the file is re-read each time)."""
    log.warning("%s line %d ignored: %s", source, lineno, reason)
