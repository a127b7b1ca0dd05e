"""Who owns each entry of a tree, for the re-own tests (the local provider's walk, the docker
provider's in-container set-up)."""

from __future__ import annotations

import os
from pathlib import Path


def owners(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry's (uid, gid), by path relative to ``root`` ("." for ``root`` itself)."""
    out = {".": (os.lstat(root).st_uid, os.lstat(root).st_gid)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_uid, st.st_gid)
    return out
