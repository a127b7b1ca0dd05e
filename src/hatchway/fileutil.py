"""Crash-safe file writes.

Every file Hatchway rewrites (authorized_keys, ~/.ssh/environment, ~/.ssh/config, keys, tokens)
belongs to a person who must never find it half-written: a full disk or a crash mid-write has to
leave the previous version intact. So we write a sibling temp file, fsync it, and rename it over.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
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
    path: str | os.PathLike[str], data: bytes, mode: int = 0o600, *, follow_symlinks: bool = False
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
    """
    target = write_target(path) if follow_symlinks else Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
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
