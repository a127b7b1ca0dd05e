"""Re-owning a moved workspace's tree on a real file system (root: only root can chown): what
belonged to the old uid becomes the new user's, and nothing else changes owner, not the target of
a symlink, not what another account or root owns, not what is mounted inside."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway.providers.reown import Owner, Reowned, reown_tree
from tests.helpers.netns import unused_id

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can chown")]


@pytest.fixture(scope="module")
def ids() -> tuple[Owner, Owner, int]:
    """Another machine's owner, this machine's user, and a third account: ids nobody has here."""
    old = unused_id(54321)
    new = unused_id(old + 1)
    return Owner(old, old), Owner(new, new), unused_id(new + 1)


def owners(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry's (uid, gid), by path relative to ``root`` ("." for ``root`` itself)."""
    out = {".": (os.lstat(root).st_uid, os.lstat(root).st_gid)}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), root)] = (st.st_uid, st.st_gid)
    return out


def chown_all(root: Path, owner: Owner) -> None:
    for path in owners(root):
        os.lchown(root / path, owner.uid, owner.gid)


@pytest.fixture()
def moved(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> Iterator[tuple[Path, Path]]:
    """A home copied from another machine (every entry the old uid's), with what a home may hold
    besides: a root-owned file, root's setuid file in the old group, another account's file, a file
    of the old uid in root's group, and symlinks to a root-owned file and to a directory outside it."""
    old, _, other = ids
    home, outside = tmp_path / "home", tmp_path / "outside"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA\n")
    (home / "src" / "deep").mkdir(parents=True)
    (home / "src" / "deep" / "main.py").write_text("print(1)\n")
    os.symlink("main.py", home / "src" / "deep" / "link-inside")
    os.symlink(home / "no-such-file", home / "dangling")
    outside.mkdir()
    (outside / "root-file").write_text("root's\n")
    (outside / "dir").mkdir()
    (outside / "dir" / "old-file").write_text("the old uid's, outside\n")
    chown_all(outside, Owner(0, 0))
    os.lchown(outside / "dir" / "old-file", old.uid, old.gid)
    os.symlink(outside / "root-file", home / "to-root-file")
    os.symlink(outside / "dir", home / "to-dir")
    chown_all(home, old)
    (home / "root-owned").write_text("root's, inside\n")  # root's: made by root, kept by root
    (home / "root-in-old-group").write_text("root's, the old group's\n")
    os.lchown(home / "root-in-old-group", 0, old.gid)
    os.chmod(home / "root-in-old-group", 0o6755)
    (home / "others").write_text("another account's\n")
    os.lchown(home / "others", other, other)
    (home / "old-uid-root-group").write_text("x\n")
    os.lchown(home / "old-uid-root-group", old.uid, 0)
    yield home, outside


def test_the_old_uids_entries_become_the_users_and_nothing_else_moves(
    moved: tuple[Path, Path], ids: tuple[Owner, Owner, int]
) -> None:
    home, outside = moved
    old, new, other = ids
    before = owners(home)
    done = reown_tree(home, new)
    assert done == Reowned(home, old, 11)
    after = owners(home)
    changed = {path for path in before if before[path] != after[path]}
    assert changed == {
        ".", ".ssh", ".ssh/authorized_keys", "src", "src/deep", "src/deep/main.py", "src/deep/link-inside",
        "dangling", "to-root-file", "to-dir", "old-uid-root-group",
    }
    assert {after[p] for p in changed - {"old-uid-root-group"}} == {(new.uid, new.gid)}
    assert after["old-uid-root-group"] == (new.uid, 0)
    assert after["root-owned"] == (0, 0)
    assert after["root-in-old-group"] == (0, old.gid)  # root's: its group and setuid bits stay
    assert stat.S_IMODE((home / "root-in-old-group").lstat().st_mode) == 0o6755
    assert after["others"] == (other, other)
    # Nothing outside was touched through the symlinks.
    assert owners(outside) == {".": (0, 0), "root-file": (0, 0), "dir": (0, 0), "dir/old-file": (old.uid, old.gid)}


def test_the_next_start_finds_nothing_to_do(moved: tuple[Path, Path], ids: tuple[Owner, Owner, int]) -> None:
    home, _ = moved
    _, new, _ = ids
    assert reown_tree(home, new) is not None
    after = owners(home)
    assert reown_tree(home, new) is None
    assert owners(home) == after


def test_an_interrupted_run_is_finished_by_the_next(moved: tuple[Path, Path], ids: tuple[Owner, Owner, int]) -> None:
    """The top moves last: a run killed half way left it the old uid's, so the next one walks again
    and re-owns what is left (and counts only that)."""
    home, _ = moved
    old, new, _ = ids
    chown_all(home / "src", new)  # what the killed run had done
    assert reown_tree(home, new) == Reowned(home, old, 7)
    assert owners(home / "src") == {p: (new.uid, new.gid) for p in owners(home / "src")}
    assert owners(home)["."] == (new.uid, new.gid)


@pytest.mark.parametrize("top", [(0, 0), "new"])
def test_a_top_of_root_or_of_the_user_moves_nothing(tmp_path: Path, ids: tuple[Owner, Owner, int], top: object) -> None:
    old, new, _ = ids
    home = tmp_path / "home"
    (home / "sub").mkdir(parents=True)
    chown_all(home, old)
    os.lchown(home, *((new.uid, new.gid) if top == "new" else (0, 0)))
    before = owners(home)
    assert reown_tree(home, new) is None
    assert owners(home) == before


def test_a_tree_deeper_than_path_max(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> None:
    """Thirty levels of 200-character names: 6000 characters, past PATH_MAX (4096), where no
    path-based walk can go."""
    old, new, _ = ids
    home = tmp_path / "home"
    home.mkdir()
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(30):
            os.mkdir("d" * 200, dir_fd=fd)
            os.chown("d" * 200, old.uid, old.gid, dir_fd=fd)
            fd, parent = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.close(leaf)
        os.chown("leaf", old.uid, old.gid, dir_fd=fd)
        os.lchown(home, old.uid, old.gid)
        assert reown_tree(home, new) == Reowned(home, old, 32)
        st = os.stat("leaf", dir_fd=fd)
        assert (st.st_uid, st.st_gid) == (new.uid, new.gid)
    finally:
        os.close(fd)


BIND_AND_REOWN = """\
import os, subprocess, sys
from pathlib import Path
from hatchway.providers.reown import Owner, reown_tree
home, source, new = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
subprocess.run(["mount", "--bind", source, str(home / "mnt")], check=True)
print(reown_tree(home, Owner(new, new)).entries)
"""


def test_what_is_mounted_inside_is_not_walked(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> None:
    """A bind mount of a directory of the same file system (same device number: only the mount
    table tells it), in a mount namespace of the test's own, gone with its process."""
    old, new, _ = ids
    home, source = tmp_path / "home", tmp_path / "source"
    (home / "mnt").mkdir(parents=True)
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("x\n")
    chown_all(home, old)
    chown_all(source, old)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", BIND_AND_REOWN,
         str(home), str(source), str(new.uid)],
        capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "1\n", "")
    assert owners(home)["."] == (new.uid, new.gid)
    assert owners(source) == {p: (old.uid, old.gid) for p in owners(source)}
