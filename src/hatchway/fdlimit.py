"""The open-files limit of the processes on the byte path (server and agent).

Every relayed SSH connection holds two sockets in the server (the client's and the agent's)
and two or more descriptors in the agent (its stream to the server, and port 22's socket or
the built-in server's session), and service managers (and recent container runtimes) start
processes with a soft limit of 1,024 open files (systemd's default, kept low for programs that
still use select()), which would cap a deployment, or one workspace, at about 500 concurrent
connections. The hard limit is usually far higher, and any process may raise its soft limit up
to it, as Go programs do on their own. What the process starts for users gets the limit it was
started with back (:func:`started_with`); the target stays moderate for the children that do not
(the server's tools), since some programs walk every possible descriptor at start.
"""

from __future__ import annotations

import logging
import resource

#: Where the soft limit is raised to (or the hard limit, if lower).
TARGET = 65536
#: Below this many open files, say what it means for concurrent connections.
WARN_BELOW = 4096


#: The (soft, hard) limit this process was started with, once it has raised its soft limit.
_started_with: tuple[int, int] | None = None


def raise_open_files_limit(target: int = TARGET) -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE toward ``target`` (never above the hard limit, never
    lower); returns the soft limit before and after."""
    global _started_with
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = target if hard == resource.RLIM_INFINITY else min(target, hard)
    if want <= soft:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return soft, soft
    if _started_with is None:
        _started_with = (soft, hard)
    return soft, want


def started_with() -> tuple[int, int] | None:
    """The limit this process was started with if it raised its soft limit since, else None.

    The raised limit is for this process's sockets. What it starts on a user's behalf (a
    session of the built-in SSH server, a local workspace's sshd and agent) gets this back,
    as Go's runtime does for its children: a login gets the limit its service manager or
    container gives (usually 1,024, kept low for programs that still use select()), not ours.
    """
    return _started_with


def give_back_started_limit() -> None:  # pragma: no cover - runs in a child between fork and exec
    """Set the limit this process was started with (see :func:`started_with`), if it changed."""
    if _started_with is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, _started_with)


def ensure_open_files(log: logging.Logger) -> None:
    """Raise the limit at start (quietly: a debug line); warn on ``log``, the process's own,
    only when what is left caps concurrent connections, and say what to raise."""
    before, after = raise_open_files_limit()
    if after != before:
        log.debug("open files: soft limit raised from %d to %d", before, after)
    if after < WARN_BELOW:
        log.warning(
            "the open-files limit is %d (hard limit included): at most about %d SSH connections can be "
            "relayed at once; raise it (LimitNOFILE= in a systemd unit, --ulimit nofile= for a container, "
            "or ulimit -n)", after, after // 2 - 50,
        )
