"""One server process per data dir.

A server owns what its data dir describes: the SQLite database, the workspaces' homes, and the
users, namespaces and processes of the workspaces it runs. A second server on the same data dir
would take all of that for its own leftovers: it restarts every workspace, kills the processes
it finds in their namespaces, and replaces their agent tokens, before failing on the port or,
on another port, fighting the first one forever. So a server takes an exclusive ``flock`` on a
file in its data dir before it touches anything, and holds it for its whole life.

The kernel drops the lock when the process dies however it dies, so a crashed server never
blocks the next start: only a running process can hold it. The descriptor is not inherited by
what the server starts (Python opens files close-on-exec), so an agent outliving a killed
server does not hold it either. The file names the holder's pid for the refusal message; the
lock, not the file, is what counts.

Replicas on one PostgreSQL database each have their own data dir, so they never meet here.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from hatchway.fileutil import ensure_private_dir, read_regular
from hatchway.names import shown

LOCK_FILE = "server.lock"


class DataDirInUse(Exception):
    """Another live process holds the data dir; the message says which and what to do."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        who = f"another Hatchway server (pid {pid})" if pid else "another Hatchway server"
        super().__init__(
            f"{who} is using the data dir {data_dir}; stop it first, or give this server "
            "a data dir of its own with --data-dir"
        )
        self.data_dir = data_dir
        self.pid = pid


def _holder(fd: int) -> int | None:
    """The pid the holder wrote, if it got that far (it writes right after locking)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def take(data_dir: Path) -> int:
    """Take ``data_dir`` for this process; returns the descriptor holding it.

    The server never closes it: the lock goes when the process ends. Raises
    :class:`DataDirInUse` when another process holds it, and OSError when the lock file cannot
    be opened (the data dir belongs to someone else, or the file is a symlink)."""
    ensure_private_dir(data_dir)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = _holder(fd)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DataDirInUse(data_dir, holder) from None
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


#: Written by ``hatchway server restore`` before it moves a file and removed once both new files
#: are in place: while it exists the data dir may hold a database without its secret (or none).
RESTORE_MARKER = "restore.incomplete"


def unfinished_restore(data_dir: Path) -> str | None:
    """Why a server must not start on ``data_dir`` after an interrupted restore, or None.

    Started there, it would make a fresh secret beside the restored database (and refuse to run)
    or, with no database left, start as a new empty deployment whose first user is anyone's. The
    marker holds the dir the restore moved the replaced files into (see hatchway.server.restore)."""
    marker = data_dir / RESTORE_MARKER
    if not os.path.lexists(marker):
        return None
    try:
        aside = read_regular(marker, 4096)[1].decode("utf-8", "replace").strip()
    except OSError:
        aside = ""
    where = f"the files it replaced are in {shown(aside)}" if aside else "it had replaced no files"
    return (
        f"{marker} exists: a hatchway server restore into {data_dir} was interrupted ({where}); finish it by running "
        f"the same hatchway server restore again with --force, or move the files it replaced back into {data_dir} "
        f"and remove {marker}; then start the server"
    )
