"""Doing things inside a named network namespace from the server process itself.

The server reaches each isolated workspace through a listening socket it opens *inside* the
workspace's network namespace (on that namespace's own 127.0.0.1): a socket keeps the namespace
it was created in, so the server's event loop can serve it like any other listener while the
workspace sees an ordinary ``http://127.0.0.1:PORT``. No veth, no addresses, no routes, no
firewall rules, nothing reachable from any other namespace.

``setns(2)`` changes the namespace of the calling *thread* only, so the work is done in a
dedicated thread that exits afterwards; it must never run in a pooled thread (the pool would
later reuse a thread that lives in a workspace's network).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _in_netns_thread(netns: str, fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that has joined network namespace ``netns``."""
    box: dict[str, object] = {}

    def work() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    t = threading.Thread(target=work, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


async def run_in_netns(netns: str, fn: Callable[[], T]) -> T:
    """Async wrapper: the fresh thread is started and joined off the event loop."""
    return await asyncio.to_thread(_in_netns_thread, netns, fn)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def listen_in_netns(netns: str, host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening TCP socket bound to ``host:port`` inside ``netns``."""
    return await run_in_netns(netns, lambda: _listen(host, port, backlog))


def _write_sysctl(name: str, value: str) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as fh:
        fh.write(value)


async def set_sysctl(netns: str, name: str, value: str) -> None:
    """Set a per-network-namespace sysctl (``/proc/sys/net/...`` follows the opening thread)."""
    await run_in_netns(netns, lambda: _write_sysctl(name, value))


def netns_exists(netns: str) -> bool:
    return (NETNS_DIR / netns).exists()


def is_missing(exc: OSError) -> bool:
    return exc.errno in (errno.ENOENT,)
