"""``permitopen`` and ``permitlisten`` on an authorized_keys line, as sshd applies them.

sshd(8): ``permitlisten="[host:]port"`` limits what ``ssh -R`` may listen on (a bare port means
any host; ``*`` as the port means any port; the host is a pattern with ``*`` and ``?``, matched
against the listen address exactly as the client sent it, so ``-R 8080:…`` asks for
"localhost", which is not "127.0.0.1"), and ``permitopen="host:port"`` limits where ``-L``,
``-D`` and ``-W`` may connect (the host literal, or ``*`` for any; ``*`` as the port for any).
Several of either may be given; a request is allowed when one matches, and with none of a kind
that kind is not limited. A line with an unusable value is not used at all, as by sshd. Whether
forwarding is allowed at all (``restrict``, ``no-port-forwarding``) is checked before these.

asyncssh knows ``permitopen`` but not ``*`` as its host, and ignores ``permitlisten``; so both are
taken out of its sight (:func:`take_permits`) and enforced by the server. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, MutableMapping

#: Where :func:`take_permits` leaves the parsed permissions among a key's options.
PERMIT_OPEN = "hatchway-permitopen"
PERMIT_LISTEN = "hatchway-permitlisten"

Permit = tuple[str, int | None]  # (host or host pattern, port; None: any port)
ANY_HOST = "*"


def parse_listen(value: str) -> Permit:
    """One ``permitlisten`` value; ValueError (saying what is wrong) when sshd would reject it."""
    given = value
    if ":" not in value:
        value = f"*:{value}"  # a bare port: any listen host
    # sshd's hpdelim: "[v6 address]:port", else up to the first ":" (or "/")
    match = re.fullmatch(r"\[([^\]]*)\][:/](.*)|([^\[:/][^:/]*|)[:/](.*)", value, re.DOTALL)
    if match is None:
        raise ValueError(f"invalid permitlisten {given!r}: expected [host:]port")
    host, port = (match.group(1), match.group(2)) if match.group(1) is not None else (match.group(3), match.group(4))
    return host, _port(port, f"permitlisten {given!r}")


def _port(text: str, what: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not 0 < int(text) <= 65535:
        raise ValueError(f"invalid {what}: the port must be 1-65535 or *")
    return int(text)


def check_permits(options: Iterable[tuple[str, str]]) -> None:
    """ValueError, saying which, when a line's ``permitopen``/``permitlisten`` value is one
    sshd would reject (it then does not use the line); ``options`` are its ``name=value`` ones."""
    for name, value in options:
        if name == "permitlisten":
            parse_listen(value)
        elif name == "permitopen":
            _port(value.rpartition(":")[2], f"permitopen {value!r}")


def take_permits(options: MutableMapping[str, object]) -> None:
    """Replace a matched key's ``permitopen``/``permitlisten`` (as asyncssh parsed them, checked
    by :func:`check_permits`) with their sshd meaning under :data:`PERMIT_OPEN`/:data:`PERMIT_LISTEN`."""
    opens = options.pop("permitopen", None)
    if opens is not None:
        options[PERMIT_OPEN] = tuple(opens)  # type: ignore[call-overload]  # asyncssh's set of (host, port)
    listens = options.pop("permitlisten", None)
    if listens is not None:
        options[PERMIT_LISTEN] = tuple(parse_listen(v) for v in listens)  # type: ignore[attr-defined]


def open_permitted(permits: Iterable[Permit] | None, host: str, port: int) -> bool:
    """May ``-L``/``-D``/``-W`` connect to ``host``:``port``? (sshd's open_match)"""
    if permits is None:
        return True
    return any((p is None or p == port) and h in (ANY_HOST, host) for h, p in permits)


def listen_permitted(permits: Iterable[Permit] | None, host: str, port: int) -> bool:
    """May ``-R`` listen on ``host``:``port`` as the client asked? (sshd's remote_open_match;
    port 0, "any free port", is matched by ``*`` only)"""
    if permits is None:
        return True
    host = host.lower()
    return any((p is None or p == port) and _match_pattern(host, h) for h, p in permits)


def _match_pattern(text: str, pattern: str) -> bool:
    """OpenSSH's match_pattern: ``*`` and ``?`` are the only wildcards."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, text, re.DOTALL) is not None
