"""The server's listening addresses, checked before it starts anything.

An address in use (another server, an old one still running) or a host name that does not
resolve would otherwise stop the server only once uvicorn binds, after the data dir, the
database's migrations and the workspaces it supervises were all set up, and in uvicorn's words.
Here it stops at once, in one line that says what to do.
"""

from __future__ import annotations

import errno
import socket


class AddressError(Exception):
    """The address cannot be listened on; the message says why and what to do."""


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _error(what: str, host: str, port: int, option: str, exc: OSError) -> AddressError:
    if exc.errno == errno.EADDRINUSE:
        advice = f"stop what uses that address or choose another one with {option}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        advice = f"no network interface here has that address; choose one that does (e.g. 127.0.0.1) with {option}"
    elif exc.errno == errno.EACCES:
        advice = f"ports below 1024 need root (or CAP_NET_BIND_SERVICE); choose a higher one with {option}"
    else:
        advice = f"choose another address with {option}"
    return AddressError(f"cannot {what} {_shown(host, port)} ({option}): {exc.strerror or exc}; {advice}")


def _listening(family: int, address: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:  # as asyncio binds it: the IPv4 address is bound on its own
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def bind(host: str, port: int, option: str, what: str = "listen on") -> socket.socket:
    """A listening, non-blocking socket on ``host:port`` that the caller serves on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = _listening(family, (host, port))
    except OSError as exc:
        raise _error(what, host, port, option, exc) from None
    sock.setblocking(False)
    return sock


def check_free(host: str, port: int, option: str) -> None:
    """Whether every address ``host`` names can be listened on at ``port``, as uvicorn will
    (asyncio binds each address a name resolves to, ``localhost``'s two included); the sockets
    are let go again at once, for uvicorn to bind."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, _, _, _, address in found:
            _listening(family, address).close()
    except OSError as exc:
        raise _error("listen on", host, port, option, exc) from None
