"""Giving a workspace's files back to its Unix user when they belong to another uid.

A ``local`` workspace's home and agent state copied from another machine with owners kept
(``tar --numeric-owner``, ``rsync -aHAX``), restored by numeric owner, or left behind by a Unix
user that was deleted and recreated, belong to a uid that is not its user's here: the user could
not read its own files, nor the agent its host key. The server (root) re-owns such a tree once,
at the workspace's start, before anything of the workspace runs.

Only what belonged to the tree's old owner moves: files deliberately owned by someone else (root,
another account) keep their owner, and root's keep their group too. Nothing is followed: symlinks are re-owned themselves
(``lchown``), never their targets, and the walk stays on the tree's file system and out of
anything mounted inside it. The tree's top is re-owned last, so that an interrupted run (a huge
tree, a killed server) is finished by the next start, which tells from the top's owner alone
whether there is anything to do.

:func:`new_owner` and :func:`mount_points` are pure; :func:`reown_tree` does the I/O.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: What an owner that does not change is given (chown's "keep this one").
KEEP = -1
#: An open directory's listing (``os.scandir`` of its descriptor).
Listing = Iterator[os.DirEntry[str]]


@dataclass(frozen=True)
class Owner:
    uid: int
    gid: int

    def __str__(self) -> str:
        return f"uid {self.uid} gid {self.gid}"


@dataclass(frozen=True)
class Reowned:
    """What :func:`reown_tree` did: whose the tree was, and how many entries changed owner."""

    root: Path
    old: Owner
    entries: int


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


_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points(mountinfo: str) -> set[str]:
    """Every mount point in the text of ``/proc/self/mountinfo``, its octal escapes (``\\040``
    for a space, ...) decoded. A bind mount of the same file system has the same device number
    as its parent: only this list tells it."""
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) >= 5:
            points.add(_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[4]))
    return points


def _mounts_in(root: str) -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {p for p in mount_points(fh.read()) if p.startswith(f"{root}/")}


def reown_tree(root: Path, new: Owner) -> Reowned | None:
    """Re-own the tree at ``root`` to ``new`` when its top belongs to another uid or gid (see
    the module's docstring); None when the top is ``new``'s already or root's, or is not a
    directory.

    Every step is relative to an open directory, opened with ``O_NOFOLLOW``: a symlink swapped
    in for a directory meanwhile is not followed, and a tree deeper than ``PATH_MAX`` is walked
    as any other. Iterative, not recursive: depth costs two descriptors a level, not the stack."""
    top = os.lstat(root)
    old = Owner(top.st_uid, top.st_gid)
    last = new_owner(old.uid, old.gid, old, new)
    if last is None or not stat.S_ISDIR(top.st_mode):
        return None  # new's already, or root's: then nothing in it moves either
    real = os.path.realpath(root)  # as the mount table names it
    skip = _mounts_in(real)
    entries = 0
    # (directory's descriptor, its real path, what is left of its listing); the path only
    # tells mount points, it is never opened.
    stack: list[tuple[int, str, Listing]] = []
    try:
        _descend(stack, str(root), None, real)
        while stack:
            fd, path, listing = stack[-1]
            entry = next(listing, None)
            if entry is None:
                stack.pop()
                _close(fd, listing)
                continue
            st = entry.stat(follow_symlinks=False)
            name = f"{path}/{entry.name}"
            if st.st_dev != top.st_dev or name in skip:
                continue  # another file system, or something mounted here: not the workspace's
            change = new_owner(st.st_uid, st.st_gid, old, new)
            if change is not None:
                os.chown(entry.name, *change, dir_fd=fd, follow_symlinks=False)
                entries += 1
            if stat.S_ISDIR(st.st_mode):
                _descend(stack, entry.name, fd, name)
    finally:
        for fd, _, listing in stack:
            _close(fd, listing)
    os.lchown(root, *last)
    return Reowned(root, old, entries + 1)


def _descend(stack: list[tuple[int, str, Listing]], name: str, parent: int | None, path: str) -> None:
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        listing = os.scandir(fd)
    except BaseException:
        os.close(fd)
        raise
    stack.append((fd, path, listing))


def _close(fd: int, listing: Listing) -> None:
    listing.close()
    os.close(fd)
