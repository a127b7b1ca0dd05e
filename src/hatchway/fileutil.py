"""Crash-safe file writes.

Every file Hatchway rewrites (authorized_keys, ~/.ssh/environment, ~/.ssh/config, keys, tokens)
belongs to a person who must never find it half-written: a full disk or a crash mid-write has to
leave the previous version intact. So we write a sibling temp file, fsync it, and rename it over.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class DanglingSymlinkError(FileNotFoundError):
    """``path`` is a symbolic link whose target does not exist.

    Raised instead of creating the target: a dangling link to a dotfiles checkout usually means
    the checkout is missing or moved, and a file quietly created there would be lost or clash
    with it later. The person can create the target (or drop the link) in one step.
    """

    def __init__(self, link: Path, target: str) -> None:
        super().__init__(
            errno.ENOENT,
            f"{link} is a symbolic link to {target}, which does not exist; create that file "
            "(or replace the link with a regular file)",
            str(link),
        )
        self.link = link
        self.target = target

    def __str__(self) -> str:
        return str(self.strerror)


#: How much of a person's file (authorized_keys, ~/.ssh/environment, ~/.ssh/config) Hatchway
#: reads. Far beyond any real one (ten thousand keys is about 4 MiB), and small enough that a link
#: to /dev/zero or a runaway generator cannot exhaust the agent's memory.
READ_LIMIT = 16 * 1024 * 1024


class NotRegularFileError(OSError):
    """``path`` is a FIFO, a device, a socket or a directory, where a regular file was expected.

    Reading a FIFO blocks until someone writes to it, and a device such as /dev/zero never ends:
    either would hang or exhaust whoever reads it. OpenSSH refuses such an authorized_keys for the
    same reason ("is not a regular file").
    """

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"{path} is {kind}, not a regular file; replace it with a regular file", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


class FileTooLargeError(OSError):
    """``path`` is larger than the reader's limit; it was not read."""

    def __init__(self, path: Path, limit: int) -> None:
        size = f"{limit // (1024 * 1024)} MiB" if limit % (1024 * 1024) == 0 else f"{limit // 1024} KiB"
        super().__init__(errno.EFBIG, f"{path} is larger than {size}; trim it to what is needed", str(path))

    def __str__(self) -> str:
        return str(self.strerror)


def file_kind(mode: int) -> str:
    """A file type in words, for messages about files that are not regular."""
    for test, words in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return words
    return "a special file"


def read_regular(path: str | os.PathLike[str], limit: int = READ_LIMIT) -> tuple[os.stat_result, bytes]:
    """The status and content of the regular file at ``path`` (symlinks followed), read safely.

    Opened non-blocking so that a FIFO cannot hang the caller before it is recognised, and then
    refused unless it is a regular file (:class:`NotRegularFileError`); a file over ``limit``
    bytes, or one that grows past it while being read, raises :class:`FileTooLargeError`.
    FileNotFoundError and other OSErrors pass through.
    """
    p = Path(path)
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(p, file_kind(st.st_mode))
        if st.st_size > limit:
            raise FileTooLargeError(p, limit)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1024 * 1024))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left <= 0:
            raise FileTooLargeError(p, limit)
        return st, b"".join(chunks)
    finally:
        os.close(fd)


def write_target(path: str | os.PathLike[str]) -> Path:
    """The file that writing "to ``path``" should replace, so a symlink stays a symlink.

    Dotfiles managers (stow, chezmoi, home-manager, yadm) make ``~/.ssh/config`` a link into a
    repository; renaming a new file over the link would silently fork the user's config from
    their repository. So a link (or a chain of them) is resolved to the real file; anything else
    is returned as it is. Raises :class:`DanglingSymlinkError` for a dangling link and OSError
    (ELOOP) for a loop.
    """
    link = Path(path)
    if not link.is_symlink():
        return link
    try:
        return Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:
        raise DanglingSymlinkError(link, os.path.realpath(link)) from None


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int = 0o600,
    *,
    follow_symlinks: bool = False,
    keep_owner: bool = False,
) -> None:
    """Replace ``path`` with ``data`` atomically, the new file having exactly ``mode``.

    The temp file is created with ``mode`` from the start (never world-readable, even briefly)
    and removed again if anything fails, so a failed write leaves only the old file behind.

    By default a symlink at ``path`` is replaced by the new file, never followed: the agent's
    authorized_keys and the server's secrets must end up at exactly that path, and following a
    link planted there would write wherever the link points. ``follow_symlinks=True`` is for a
    person's own files (their ``~/.ssh/config``): the link is kept and its target (see
    :func:`write_target`) is replaced, with the temp file in the target's directory so the final
    rename stays on one filesystem.

    A device, FIFO or socket at the target is refused (:class:`NotRegularFileError`), never
    replaced: a ``~/.ssh/config`` linked to /dev/null, written by root, would otherwise take
    /dev/null away from the whole machine.

    ``keep_owner`` is for a person's file that root may be editing for them (``sudo -E hatchway
    config-ssh`` with their HOME): run as root, the new file gets the owner and group of the file
    it replaces, which would otherwise become root's and unreadable to its owner. Only root can
    give a file away, so for anyone else (and for a new file) the writer owns it, as always.
    """
    import tempfile  # here, not at the top: hatchway proxy reads its session with read_regular

    target = write_target(path) if follow_symlinks else Path(path)
    _refuse_special(target)
    owner = _owner_to_keep(target) if keep_owner else None
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        if owner is not None:
            os.fchown(fd, *owner)  # before fchmod: a change of owner may clear mode bits
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def os_error_text(exc: OSError) -> str:
    """An OSError in words for a message, naming the file it is about ("the disk is full" for
    ENOSPC, which is what the reader has to act on)."""
    what = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
    return f"{what} ({exc.filename})" if exc.filename else what


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make renames into (and out of) directory ``path`` durable: a rename is only as safe as
    the directory entry that records it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _owner_to_keep(target: Path) -> tuple[int, int] | None:
    """(uid, gid) of the existing ``target`` when we run as root and it is someone else's; else None."""
    if os.geteuid() != 0:
        return None
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return None
    owner = (st.st_uid, st.st_gid)
    return None if owner == (os.geteuid(), os.getegid()) else owner


def _refuse_special(target: Path) -> None:
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode)):
        raise NotRegularFileError(target, file_kind(mode))


def ensure_private_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) if needed and make sure it is 0700.

    Only for directories that are Hatchway's alone (the server's data dir, the agent's state
    dir), where a loosened mode is a mistake to repair. Never for a folder a person chose or
    shares: tightening ``/tmp`` or a team folder locks everyone else out. Those get
    :func:`make_private_dir`.
    """
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = p.stat()
    if (st.st_mode & 0o777) != 0o700:
        shared = _shared_dir(p, st)
        if shared:
            raise NotOursError(errno.EPERM, f"{shared}; give Hatchway a directory of its own", str(p))
        os.chmod(p, 0o700)
    return p


class NotOursError(PermissionError):
    """A directory that should be Hatchway's alone is someone else's too (``/tmp``, ``/home``)."""

    def __str__(self) -> str:
        return str(self.strerror)


def _shared_dir(p: Path, st: os.stat_result) -> str | None:
    """Why tightening ``p`` would lock others out, or None: a sticky directory (``/tmp``) is
    everyone's, and one holding entries of other owners (``/home``) is theirs too."""
    if st.st_mode & stat.S_ISVTX:
        return f"{p} is a shared directory (mode {stat.S_IMODE(st.st_mode):04o})"
    with os.scandir(p) as entries:
        for entry in entries:
            if entry.stat(follow_symlinks=False).st_uid != st.st_uid:
                return f"{p} holds files of other users ({entry.name!r} among them)"
    return None


def make_private_dir(path: str | os.PathLike[str], *, parents: bool = False) -> Path:
    """Create directory ``path`` with mode 0700 if it does not exist; an existing one is left alone.

    For a person's own directories (``~/.ssh``, the CLI's config dir): OpenSSH creates a missing
    ``~/.ssh`` 0700 and never changes an existing one, and the XDG Base Directory spec asks the
    same of config directories. An existing directory's mode is its owner's choice (a sticky
    shared folder, a group-readable dotfiles setup), and the files Hatchway writes into it are
    0600 by themselves (:func:`atomic_write`). With ``parents``, missing parents are created as
    ``mkdir -p`` would (with the umask's mode); raises FileExistsError if ``path`` is a file.
    """
    p = Path(path)
    p.mkdir(mode=0o700, parents=parents, exist_ok=True)
    return p
