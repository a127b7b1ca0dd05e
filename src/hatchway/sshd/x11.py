"""X11 forwarding for one session (``ssh -X`` / ``ssh -Y``), as OpenSSH's sshd does it.

The client sends ``x11-req`` with an authentication protocol and a *fake* cookie. We listen on
the first free display (TCP port 6000 + N, N from the display offset, loopback only, like
``X11UseLocalhost yes``), set ``DISPLAY=localhost:N.S`` in that session only, and store the fake
cookie for ``unix:N.S`` with the real ``xauth`` program before the session's command starts
(the entry X clients look up for a ``localhost`` display). Every connection to the display becomes
an ``x11`` channel to the client, which checks the fake cookie, replaces it with the real one and
connects to its own X server. We never see the real cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import socket
from collections.abc import Awaitable, Callable, Mapping

from hatchway.sshd.forward import Bridge, Listener, bind_tcp, peer_of, serve_bound

log = logging.getLogger("hatchway.sshd")

X11_BASE_PORT = 6000
XAUTH_TIMEOUT = 10.0
_PROTO = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_COOKIE = re.compile(r"^(?:[0-9a-fA-F]{2}){1,256}$")

Inbound = Callable[[str, Callable[[Bridge], Awaitable[object]]], "Bridge | None"]


def valid_auth(proto: str, cookie: str) -> bool:
    """Only plain protocol names and hex cookies reach xauth's command stream (no injection)."""
    return bool(_PROTO.match(proto) and _COOKIE.match(cookie))


def xauth_commands(display_number: int, screen: int, proto: str, cookie: str) -> bytes:
    """What ``xauth -q -`` reads: replace the entry for our display with the fake cookie."""
    name = f"unix:{display_number}.{screen}"
    return f"remove {name}\nadd {name} {proto} {cookie.lower()}\n".encode("ascii")


def find_xauth(path_env: str | None) -> str | None:
    """The xauth program on the session's PATH (blocking: stats files; run in a thread)."""
    found = shutil.which("xauth", path=path_env or None)
    if found is None and os.access("/usr/bin/xauth", os.X_OK):
        found = "/usr/bin/xauth"
    return found


class X11Forward:
    """The display listener of one session."""

    def __init__(self, *, label: str, inbound: Inbound,
                 open_channel: Callable[[Bridge, str, int], Awaitable[object]],
                 single_connection: bool, proto: str, cookie: str, screen: int) -> None:
        self.label = label
        self._inbound = inbound
        self._open_channel = open_channel
        self.single_connection = single_connection
        self.proto = proto
        self.cookie = cookie
        self.screen = screen
        self.display_number: int | None = None
        self.listener: Listener | None = None

    @property
    def display(self) -> str:
        assert self.display_number is not None
        return f"localhost:{self.display_number}.{self.screen}"

    async def start(self, offset: int, count: int) -> bool:
        """Listen on the first display number whose port is free on every loopback address."""
        for number in range(offset, offset + count):
            port = X11_BASE_PORT + number
            try:
                socks, _ = bind_tcp([(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")], port,
                                    strict=True)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    continue
                log.warning("%s: X11 forwarding: cannot listen on port %d: %s", self.label, port, exc)
                return False
            self.listener = await serve_bound(socks, port, self._accepted)
            self.display_number = number
            log.debug("%s: X11 display %s", self.label, self.display)
            return True
        log.warning("%s: X11 forwarding: no free display in %d..%d", self.label, offset, offset + count - 1)
        return False

    def _accepted(self, peer: object) -> Bridge | None:
        host, port = peer_of(peer)
        bridge = self._inbound(f"{self.label} x11 from {host}:{port}",
                               lambda b: self._open_channel(b, host, port))
        if bridge is not None and self.single_connection and self.listener is not None:
            self.listener.close()  # the client asked for exactly one X connection
        return bridge

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

    async def write_xauth(self, xauth: str, env: Mapping[str, str], cwd: str) -> str | None:
        """Store the fake cookie with ``xauth``; returns an error text (for stderr) or None."""
        assert self.display_number is not None
        data = xauth_commands(self.display_number, self.screen, self.proto, self.cookie)
        try:
            proc = await asyncio.create_subprocess_exec(
                xauth, "-q", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, env=dict(env), cwd=cwd, start_new_session=True,
            )
        except OSError as exc:
            return f"xauth: cannot run {xauth}: {exc.strerror or exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(data), XAUTH_TIMEOUT)
        except BaseException:  # timeout or cancelled: never leave xauth behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(BaseException):
                await asyncio.shield(proc.wait())
            raise
        if proc.returncode != 0:
            text = err.decode("utf-8", "replace").strip()
            return f"xauth failed ({proc.returncode}): {text}" if text else f"xauth failed ({proc.returncode})"
        return None
