"""Re-owning a moved workspace's tree on a real file system (root: only root can chown): what
belonged to the old uid becomes the new user's, and nothing else changes owner, not the target of
a symlink, not what another account or root owns, not what is mounted inside."""

from __future__ import annotations

import logging
import os
import pwd
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hatchway.providers.base import WorkspaceSpec
from hatchway.providers.local import _reown_moved
from hatchway.providers.reown import MAX_DEPTH, Owner, Reowned, chown_handle, hand_commands, reown_tree
from tests.helpers.netns import unused_id
from tests.helpers.ownership import owners

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can chown")]


@pytest.fixture(scope="module")
def ids() -> tuple[Owner, Owner, int]:
    """Another machine's owner, this machine's user, and a third account: ids nobody has here."""
    old = unused_id(54321)
    new = unused_id(old + 1)
    return Owner(old, old), Owner(new, new), unused_id(new + 1)


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
    assert done == Reowned(home, old, 11, 0, ())
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


def test_the_commands_to_run_by_hand_do_what_the_walk_does(
    moved: tuple[Path, Path], ids: tuple[Owner, Owner, int], tmp_path: Path
) -> None:
    """What a refused tree's error tells the user to run, run by a real shell on the same kind of
    tree, leaves every entry (and everything outside) with the owner the walk gives it; root's
    setuid file keeps its bits."""
    home, outside = moved
    old, new, _ = ids
    twin = tmp_path / "twin"
    subprocess.run(["cp", "-a", str(home), str(twin)], check=True)
    assert owners(twin) == owners(home)
    reown_tree(home, new)
    commands = hand_commands(twin, old, new)
    assert commands == (
        f"find {twin} -xdev ! -type b ! -type c ! -uid 0 -uid {old.uid} -execdir chown -h {new.uid} {{}} + && "
        f"find {twin} -xdev ! -type b ! -type c ! -uid 0 -gid {old.gid} -execdir chgrp -h {new.gid} {{}} +"
    )
    subprocess.run(["sh", "-c", commands], check=True)
    assert owners(twin) == owners(home)
    assert stat.S_IMODE((twin / "root-in-old-group").lstat().st_mode) == 0o6755
    assert owners(outside) == {".": (0, 0), "root-file": (0, 0), "dir": (0, 0), "dir/old-file": (old.uid, old.gid)}


def test_the_hand_commands_quote_the_path_and_leave_out_what_does_not_change() -> None:
    old, new = Owner(1500, 1500), Owner(1600, 1500)
    assert hand_commands(Path("/data/w s/$(x)"), old, new) == (
        "find '/data/w s/$(x)' -xdev ! -type b ! -type c ! -uid 0 -uid 1500 -execdir chown -h 1600 {} +"
    )
    assert hand_commands(Path("/h"), Owner(1500, 1500), Owner(1500, 1700)) == (
        "find /h -xdev ! -type b ! -type c ! -uid 0 -gid 1500 -execdir chgrp -h 1700 {} +"
    )


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
    assert reown_tree(home, new) == Reowned(home, old, 7, 0, ())
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
        assert reown_tree(home, new) == Reowned(home, old, 32, 0, ())
        st = os.stat("leaf", dir_fd=fd)
        assert (st.st_uid, st.st_gid) == (new.uid, new.gid)
    finally:
        os.close(fd)


BIND_AND_REOWN = """\
import os, subprocess, sys
from pathlib import Path
from hatchway.providers.base import WorkspaceSpec
from hatchway.providers.local import _reown_moved
from hatchway.providers.reown import Owner, reown_tree
home, source, new = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for name in sys.argv[4:]:
    subprocess.run(["mount", "--bind", source, str(home / name)], check=True)
print(reown_tree(home, Owner(new, new)).entries)
"""

#: Mount point names the kernel writes unescaped in /proc/self/mountinfo (it escapes only space,
#: tab, newline and backslash): characters Python's str.split() and splitlines() split on, and
#: bytes that are not UTF-8.
ODD_NAMES = [b"mnt", b"vt\x0bff\x0cfs\x1cgs\x1drs\x1e", "nel\x85nbsp\xa0ls\u2028ps\u2029".encode(), b"latin1-\xe9t\xe9", b"sp ace\ttab"]


@pytest.mark.parametrize("name", ODD_NAMES, ids=repr)
def test_what_is_mounted_inside_is_not_walked(tmp_path: Path, ids: tuple[Owner, Owner, int], name: bytes) -> None:
    """A bind mount of a directory of the same file system (same device number: only its mount
    id tells it), in a mount namespace of the test's own, gone with its process; and one outside
    the tree at the same odd name, which must not stop the walk either."""
    old, new, _ = ids
    home, source, elsewhere = tmp_path / "home", tmp_path / "source", tmp_path / "elsewhere"
    home.mkdir()
    os.mkdir(os.fsencode(home) + b"/" + name)
    os.makedirs(os.fsencode(elsewhere) + b"/" + name)
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file").write_text("x\n")
    chown_all(home, old)
    chown_all(source, old)
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", BIND_AND_REOWN,
         str(home), str(source), str(new.uid), os.fsdecode(name), os.fsdecode(b"../elsewhere/" + name)],
        capture_output=True, text=True, timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "1\n", "")
    assert owners(home)["."] == (new.uid, new.gid)
    assert owners(source) == {p: (old.uid, old.gid) for p in owners(source)}


def test_device_nodes_stay_their_old_owners(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> None:
    """A home from a machine where its user was root may hold device nodes: whoever owns one owns
    the device (a disk's: the disk), so they stay as they are, counted and named."""
    old, new, _ = ids
    home = tmp_path / "home"
    (home / "dev").mkdir(parents=True)
    os.mknod(home / "dev" / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(home / "dev" / "loop0", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(home / "roots", 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # root's: not named
    chown_all(home, old)
    os.lchown(home / "roots", 0, 0)
    done = reown_tree(home, new)
    assert done is not None
    assert (done.entries, done.devices, sorted(done.named_devices)) == (
        2, 2, [f"{home}/dev/loop0", f"{home}/dev/null"],
    )
    assert owners(home) == {
        ".": (new.uid, new.gid), "dev": (new.uid, new.gid), "dev/null": (old.uid, old.gid),
        "dev/loop0": (old.uid, old.gid), "roots": (0, 0),
    }


def test_fifos_and_sockets_are_reowned_without_being_opened(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> None:
    """A FIFO nobody writes to would block an open for reading forever; a socket cannot be opened
    at all: the walk holds them by O_PATH handles, and re-owns them through those."""
    old, new, _ = ids
    home = tmp_path / "home"
    home.mkdir()
    os.mkfifo(home / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(home / "sock"))
    chown_all(home, old)
    assert reown_tree(home, new) == Reowned(home, old, 3, 0, ())
    assert owners(home) == {p: (new.uid, new.gid) for p in (".", "fifo", "sock")}


@pytest.fixture()
def deep(tmp_path: Path) -> Iterator[Path]:
    """Where a test nests directories deeper than Python's recursive walks (os.walk, shutil.rmtree)
    go; removed by rm, which is not recursive."""
    yield tmp_path / "home"
    subprocess.run(["rm", "-rf", "--", str(tmp_path / "home")], check=True)


def nest(top: Path, levels: int, owner: Owner, name: str = "d") -> None:
    """``levels`` directories ``name`` each in the one before, under ``top``, a file ``f`` beside each."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            os.chown("f", owner.uid, owner.gid, dir_fd=fd)
            os.mkdir(name, dir_fd=fd)
            os.chown(name, owner.uid, owner.gid, dir_fd=fd)
            fd, parent = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd), fd
            os.close(parent)
    finally:
        os.close(fd)


def test_a_tree_as_deep_as_the_walk_goes_is_reowned(deep: Path, ids: tuple[Owner, Owner, int]) -> None:
    old, new, _ = ids
    home = deep
    nest(home, MAX_DEPTH - 1, old)  # with the top: MAX_DEPTH levels
    os.lchown(home, old.uid, old.gid)
    assert reown_tree(home, new) == Reowned(home, old, 2 * (MAX_DEPTH - 1) + 1, 0, ())


def test_a_deeper_tree_is_refused_saying_what_to_do_and_keeps_the_old_owner_above(
    deep: Path, ids: tuple[Owner, Owner, int]
) -> None:
    """One level more is refused before the walk takes another descriptor. Directories are
    re-owned after their contents: every one the walk was in is still the old uid's, the top too,
    so the user never held a directory the walk was in, and the next start walks again."""
    old, new, _ = ids
    home = deep
    nest(home, MAX_DEPTH, old)
    os.lchown(home, old.uid, old.gid)
    with pytest.raises(OSError) as raised:
        reown_tree(home, new)
    assert str(raised.value) == (
        f"{home} nests directories more than {MAX_DEPTH} levels deep (under {home}/d), deeper than the server "
        f"walks; re-own it by hand with the workspace stopped, top included: {hand_commands(home, old, new)}"
    )
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in (home, home / "d", home / "d" / "d")} == {(old.uid, old.gid)}


def test_the_hand_commands_reown_a_refused_tree_whose_paths_are_longer_than_a_path_may_be(
    deep: Path, ids: tuple[Owner, Owner, int]
) -> None:
    """The commands are for exactly the trees the walk refuses: deeper than it goes, so their full
    paths can be longer than PATH_MAX (here about 9 KiB), which chown cannot be given."""
    old, new, _ = ids
    home = deep
    nest(home, MAX_DEPTH + 1, old, name="d" * 8)
    os.lchown(home, old.uid, old.gid)
    with pytest.raises(OSError):
        reown_tree(home, new)
    done = subprocess.run(["sh", "-c", hand_commands(home, old, new)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (0, "")
    entries = subprocess.run(["find", str(home), "-printf", "%U:%G\\n"], capture_output=True, text=True, check=True)
    assert entries.stdout.splitlines() == [f"{new.uid}:{new.gid}"] * (2 * (MAX_DEPTH + 1) + 1)


FEW_DESCRIPTORS = """\
import resource, sys
from pathlib import Path
from hatchway.providers.base import WorkspaceSpec
from hatchway.providers.local import _reown_moved
from hatchway.providers.reown import Owner, reown_tree
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
print(reown_tree(Path(sys.argv[1]), Owner(int(sys.argv[2]), int(sys.argv[2]))).entries)
"""


def test_the_walk_holds_one_descriptor_a_level(deep: Path, ids: tuple[Owner, Owner, int]) -> None:
    """120 levels with room for 160 descriptors: enough for one a level, not for two."""
    old, new, _ = ids
    home = deep
    nest(home, 120, old)
    os.lchown(home, old.uid, old.gid)
    done = subprocess.run(
        [sys.executable, "-c", FEW_DESCRIPTORS, str(home), str(new.uid), "160"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "241\n", "")


def test_a_handle_is_reowned_not_what_is_at_its_name_by_then(tmp_path: Path, ids: tuple[Owner, Owner, int]) -> None:
    """The walk decides on a handle and re-owns through it: a name swapped meanwhile for a hard
    link or a symlink to root's file (what a process of the user could do between the two) leaves
    root's file root's; the entry the handle holds is the one re-owned."""
    old, new, _ = ids
    home, secret = tmp_path / "home", tmp_path / "secret"
    home.mkdir()
    secret.write_text("root's\n")
    for name, swap in (("hard", os.link), ("soft", os.symlink)):
        (home / name).write_text("the user's\n")
        os.lchown(home / name, old.uid, old.gid)
        fd = os.open(home / name, os.O_PATH | os.O_NOFOLLOW)
        try:
            os.unlink(home / name)
            swap(secret, home / name)
            chown_handle(fd, new.uid, new.gid, str(home / name))
            held = os.fstat(fd)
        finally:
            os.close(fd)
        assert (held.st_uid, held.st_gid) == (new.uid, new.gid)
    assert (secret.stat().st_uid, secret.stat().st_gid) == (0, 0)
    assert (os.lstat(home / "soft").st_uid, os.lstat(home / "soft").st_gid) == (0, 0)


def test_the_start_names_the_device_nodes_it_left(
    tmp_path: Path, ids: tuple[Owner, Owner, int], caplog: pytest.LogCaptureFixture
) -> None:
    """The workspace still starts; the log says which device nodes kept another uid, and why."""
    old, new, _ = ids
    home = tmp_path / "home"
    home.mkdir()
    os.mknod(home / "sda", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    chown_all(home, old)
    pw = pwd.struct_passwd(("hw-alice-dev", "x", new.uid, new.gid, "", str(home), "/bin/sh"))
    with caplog.at_level(logging.INFO, logger="hatchway.providers.local"):
        _reown_moved(WorkspaceSpec(id="w1", name="dev", owner="alice"), pw, [home])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"workspace alice/dev: re-owned 1 entries of {home} from uid {old.uid} gid {old.gid} to its Unix "
                 f"user hw-alice-dev (uid {new.uid} gid {new.gid}): they belonged to another uid, as after a move from "
                 "another machine, a restore by numeric owner or a recreated Unix user"),
        ("WARNING", "workspace alice/dev: left 1 device nodes of another uid as they were, not given to its Unix user "
                    "hw-alice-dev: the owner of a device node can read and write the device (a disk, a terminal); "
                    f"remove them, or chown one by hand if the user is to have it: {home}/sda"),
    ]
    assert (os.lstat(home / "sda").st_uid, os.lstat(home / "sda").st_gid) == (old.uid, old.gid)
