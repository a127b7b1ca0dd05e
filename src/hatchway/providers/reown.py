"""Giving a workspace's files back to its Unix user when they belong to another uid.

A ``local`` workspace's home and agent state copied from another machine with owners kept
(``tar --numeric-owner``, ``rsync -aHAX``), restored by numeric owner, or left behind by a Unix
user that was deleted and recreated, belong to a uid that is not its user's here: the user could
not read its own files, nor the agent its host key. The server (root) re-owns such a tree once,
at the workspace's start, before anything of the workspace runs.

Only what belonged to the tree's old owner moves: files deliberately owned by someone else (root,
another account) keep their owner, and device nodes keep theirs whoever owned them (the owner of
a disk's node owns the disk). Nothing is followed: symlinks are re-owned themselves, never their
targets, and the walk stays on the tree's mount and out of anything mounted inside it.

The walk runs as root in a tree whose user may still have processes (from an earlier run of the
workspace), so every decision is taken on an open descriptor and acted on through that same
descriptor (:func:`chown_handle`): swapping a name for a hard link or a symlink to someone else's
file between the two changes nothing but the entry the walk already holds. A directory is
re-owned after its contents, so its user never holds a directory the walk is still in, and the
tree's top last, so that an interrupted run (a huge tree, a killed server) is finished by the next
start, which tells from the top's owner alone whether there is anything to do.

:func:`new_owner` and the messages are pure; :func:`reown_tree` does the I/O. Standard library
only: the ``docker`` provider runs it inside workspace containers too
(:mod:`hatchway.providers.docker_incontainer`), on a home volume of another uid.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shlex
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: What an owner that does not change is given (chown's "keep this one").
KEEP = -1
#: How many directories deep (the top counts as one) the walk goes. It holds one descriptor for
#: each directory it is in, so a tree nested thousands of levels deep would otherwise take the
#: server's descriptors; no real home comes near.
MAX_DEPTH = 1024
#: How many device nodes the walk names (it counts them all).
NAMED_DEVICES = 10
#: fchownat(2)'s flag for "the file ``dirfd`` refers to" (Linux); os.chown has no way to pass it.
AT_EMPTY_PATH = 0x1000

#: A directory the walk reads and re-owns: itself, never a symlink in its place.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A handle on any entry, symlinks themselves included, that neither reads nor blocks (a FIFO).
_HANDLE = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

_fchownat = ctypes.CDLL(None, use_errno=True).fchownat
_fchownat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
_fchownat.restype = ctypes.c_int


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid {self.uid} gid {self.gid}"


@dataclass(frozen=True)
class Reowned:
    """What :func:`reown_tree` did: whose the tree was, how many entries changed owner, and how
    many of the old owner's device nodes it left theirs (the first :data:`NAMED_DEVICES` named)."""

    root: Path
    old: Owner
    entries: int
    devices: int
    named_devices: tuple[str, ...]


def give_all(root: str | Path, new: Owner) -> None:
    """Every entry under ``root``, and ``root``, to ``new``, symlinks themselves (never what they
    point at): only for a tree wholly made for the user just now (a home filled from a skeleton,
    or an engine's fresh volume), where nobody else's file can be. A tree from elsewhere takes
    :func:`reown_tree`'s rules instead. Each directory after its contents and the top last, so
    that a top already the user's means done: a run cut short is run again at the next start
    (the callers tell by the top's owner)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.chown(os.path.join(dirpath, name), new.uid, new.gid, follow_symlinks=False)
    os.chown(root, new.uid, new.gid, follow_symlinks=False)


def new_owner(uid: int, gid: int, old: Owner, new: Owner) -> tuple[int, int] | None:
    """The ``(uid, gid)`` to give an entry owned by ``uid``/``gid`` (``KEEP`` for a part that
    stays), or None when it stays as it is. Only the old owner's uid and gid move. Whatever root
    (uid 0) owns stays entirely as it is, its group too, even when root owned the tree's top: a
    root-owned file in a home was put there by root on purpose, and a chown would also clear its
    setuid and setgid bits."""
    if uid == 0:
        return None
    to_uid = new.uid if uid == old.uid and uid != new.uid else KEEP
    to_gid = new.gid if gid == old.gid and gid not in (0, new.gid) else KEEP
    return None if to_uid == to_gid == KEEP else (to_uid, to_gid)


def chown_handle(fd: int, uid: int, gid: int, path: str) -> None:
    """Re-own the very file ``fd`` refers to (``fchownat(fd, "", ..., AT_EMPTY_PATH)``), whatever
    its type, symlinks and ``O_PATH`` handles included, not whatever is at its name by now;
    ``path`` only names it in the error."""
    if _fchownat(fd, b"", uid, gid, AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)


def mount_id(fd: int) -> int:
    """The id of the mount the file ``fd`` refers to is on (``mnt_id`` in /proc/self/fdinfo;
    Python 3.11 has no statx). A bind mount of a directory of the same file system has the same
    device number as its parent, but another mount id; comparing ids needs no mount table, whose
    paths would have to be matched (and decoded) and may change while the walk runs."""
    with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
        for line in fh:
            key, _, value = line.partition(b":")
            if key == b"mnt_id":
                return int(value)
    raise OSError(errno.ENOTSUP, "no mnt_id in /proc/self/fdinfo (Linux 3.15 or later has it)")


def reown_tree(root: Path, new: Owner) -> Reowned | None:
    """Re-own the tree at ``root`` to ``new`` when its top belongs to another uid or gid (see
    the module's docstring); None when the top is ``new``'s already or root's, or is not a
    directory.

    Every step is relative to an open directory, opened with ``O_NOFOLLOW``: a symlink swapped in
    for a directory meanwhile is not followed, and a tree deeper than ``PATH_MAX`` is walked as
    any other. Iterative, not recursive: depth costs one descriptor a level, not the stack, up to
    :data:`MAX_DEPTH` levels; deeper, an OSError says what to do (directories above that point
    are still the old owner's, the top included, so the next start walks again)."""
    try:
        fd = os.open(root, _DIRECTORY)
    except OSError as exc:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            return None  # a file, or a symlink: no tree
        raise
    try:
        top = os.fstat(fd)
        old = Owner(top.st_uid, top.st_gid)
        last = new_owner(old.uid, old.gid, old, new)
        walk = None if last is None else _Walk(root, old, new, top.st_dev, mount_id(fd))
    except BaseException:
        os.close(fd)
        raise
    if last is None or walk is None:
        os.close(fd)
        return None  # new's already, or root's: then nothing in it moves either
    walk.run(fd, last)
    return Reowned(root, old, walk.entries, walk.devices, tuple(walk.named_devices))


@dataclass
class _Level:
    """A directory the walk is in: its only descriptor, its path (for messages, never opened),
    the names in it still to look at, and what it is given once they are done."""

    fd: int
    path: str
    names: Iterator[str]
    change: tuple[int, int] | None


@dataclass
class _Walk:
    """One run of :func:`reown_tree` over a tree whose top is on device ``dev``, mount ``mnt``."""

    root: Path
    old: Owner
    new: Owner
    dev: int
    mnt: int
    levels: list[_Level] = field(default_factory=list)
    entries: int = 0
    devices: int = 0
    named_devices: list[str] = field(default_factory=list)

    def run(self, fd: int, change: tuple[int, int]) -> None:
        """Walk the tree from its top's descriptor ``fd`` (closed at the end), the top last."""
        self._enter(fd, str(self.root), change)
        try:
            while self.levels:
                level = self.levels[-1]
                name = next(level.names, None)
                if name is None:
                    self._leave(self.levels.pop())
                else:
                    self._visit(level, name)
        finally:
            for level in self.levels:
                os.close(level.fd)

    def _enter(self, fd: int, path: str, change: tuple[int, int] | None) -> None:
        """Read the directory ``fd`` (taken over: closed on failure) in full, so that its one
        descriptor is all the walk holds for it, and walk it next."""
        try:
            if len(self.levels) == MAX_DEPTH:
                raise self._too_deep()
            names = iter(os.listdir(fd))
        except BaseException:
            os.close(fd)
            raise
        self.levels.append(_Level(fd, path, names, change))

    def _leave(self, level: _Level) -> None:
        """A directory whose contents are done: re-own it now, through its descriptor."""
        try:
            if level.change is not None:
                os.fchown(level.fd, *level.change)
                self.entries += 1
        finally:
            os.close(level.fd)

    def _visit(self, level: _Level, name: str) -> None:
        """Look at ``name`` in ``level`` through a handle on it, and act on that handle."""
        fd = os.open(name, _HANDLE, dir_fd=level.fd)
        try:
            st = os.fstat(fd)
            path = f"{level.path}/{name}"
            if st.st_dev != self.dev or mount_id(fd) != self.mnt:
                return  # another file system, or something mounted here: not the workspace's
            change = new_owner(st.st_uid, st.st_gid, self.old, self.new)
            if stat.S_ISDIR(st.st_mode):
                self._enter(os.open(".", _DIRECTORY, dir_fd=fd), path, change)  # the same directory
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                if change is not None:
                    self._device(path)
            elif change is not None:
                chown_handle(fd, *change, path)
                self.entries += 1
        finally:
            os.close(fd)

    def _device(self, path: str) -> None:
        """A device node of the old owner's: left as it is, counted and (the first few) named."""
        self.devices += 1
        if len(self.named_devices) < NAMED_DEVICES:
            self.named_devices.append(path)

    def _too_deep(self) -> OSError:
        """The error for a tree nested past :data:`MAX_DEPTH`: where, and the commands that re-own
        it instead, its top included, so that the next start finds nothing left to do."""
        return OSError(
            f"{self.root} nests directories more than {MAX_DEPTH} levels deep (under {self.levels[1].path}), "
            "deeper than the server walks; re-own it by hand with the workspace stopped, top included: "
            + hand_commands(self.root, self.old, self.new),
        )


def hand_commands(root: Path, old: Owner, new: Owner) -> str:
    """Shell commands doing what :func:`new_owner` decides, for a tree the walk refuses: the old
    uid's entries and the old group's entries each move on their own (``chown --from=U:G`` would
    move only entries with both), root's stay as they are, device nodes and symlinks' targets are
    left alone, and nothing on another file system is entered. ``-execdir``: the tree is deeper
    than the walk goes, and a full path that deep is longer than chown may be given. Run with the
    workspace stopped, nothing of its own is mounted inside (its mounts die with it), which is
    all the walk's mount checks add to ``-xdev``."""
    find = f"find {shlex.quote(str(root))} -xdev ! -type b ! -type c ! -uid 0"
    commands = []
    if old.uid not in (0, new.uid):
        commands.append(f"{find} -uid {old.uid} -execdir chown -h {new.uid} {{}} +")
    if old.gid not in (0, new.gid):
        commands.append(f"{find} -gid {old.gid} -execdir chgrp -h {new.gid} {{}} +")
    return " && ".join(commands)


def reowned_note(done: Sequence[Reowned], user: str, new: Owner, why: str) -> str:
    """The line a start logs after re-owning ``done`` to the Unix user ``user`` (``new``): how many
    entries of which trees, from which owner, and ``why`` such trees come about (each provider
    knows its own ways)."""
    return (
        f"re-owned {sum(r.entries for r in done)} entries of {' and '.join(str(r.root) for r in done)} from "
        f"{' and '.join(sorted({str(r.old) for r in done}))} to its Unix user {user} ({new}): they belonged to "
        f"another uid, as {why}"
    )


def devices_note(done: Sequence[Reowned], user: str) -> str | None:
    """The warning naming the device nodes the re-own left to their old owner, None when it left
    none. The workspace still starts: they are as they were before, and nothing else in it waits
    for them; but giving a device node away gives the device (a disk, a terminal), which only the
    administrator can decide."""
    count = sum(r.devices for r in done)
    if count == 0:
        return None
    named = [name for r in done for name in r.named_devices]
    return (
        f"left {count} device nodes of another uid as they were, not given to its Unix user {user}: the owner of a "
        "device node can read and write the device (a disk, a terminal); remove them, or chown one by hand if the "
        f"user is to have it: {', '.join(named)}{', ...' if count > len(named) else ''}"
    )
