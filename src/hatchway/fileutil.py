"""Crash-safe file writes.

Every file Hatchway rewrites (authorized_keys, ~/.ssh/environment, ~/.ssh/config, keys, tokens)
belongs to a person who must never find it half-written: a full disk or a crash mid-write has to
leave the previous version intact. So we write a sibling temp file, fsync it, and rename it over.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically, the new file having exactly ``mode``.

    The temp file is created with ``mode`` from the start (never world-readable, even briefly)
    and removed again if anything fails, so a failed write leaves only the old file behind.
    """
    target = Path(path)
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
    """Create ``path`` (and parents) if needed and make sure it is 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (p.stat().st_mode & 0o777) != 0o700:
        os.chmod(p, 0o700)
    return p
