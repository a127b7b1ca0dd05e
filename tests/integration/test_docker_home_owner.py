"""How the docker provider's in-container set-up gives a workspace user its home volume, on a real
file system as root (only root can chown): what the set-up or the engine made is wholly the
user's; a volume of another uid is re-owned by the ``local`` provider's rules (only that uid's
entries move, root's stay root's, device nodes are left and named, symlinks are not followed),
and the server logs what the set-up says about it."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hatchway.providers.base import WorkspaceSpec
from hatchway.providers.docker import _log_reown
from hatchway.providers.docker_incontainer import MOVED_WHY, own_home
from hatchway.providers.reown import Owner
from tests.helpers.netns import unused_id
from tests.helpers.ownership import owners

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="needs root: only root can chown")]


@pytest.fixture(scope="module")
def ids() -> tuple[Owner, Owner]:
    """The uid the volume's files have (another machine's, an older image's) and the workspace
    user's in the container: ids nobody has here."""
    old = unused_id(54321)
    new = unused_id(old + 1)
    return Owner(old, old), Owner(new, new)


def fill(home: Path, outside: Path) -> None:
    """What a home volume may hold: the user's files, a root-owned file, a device node, and a
    symlink to a root-owned file outside it. Every entry root's for now."""
    (home / "src").mkdir(parents=True)
    (home / "src" / "main.py").write_text("print(1)\n")
    (home / ".profile").write_text("# the user's\n")
    (home / "root-owned").write_text("root's, inside\n")
    os.mknod(home / "disk", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    outside.write_text("root's, outside\n")
    os.symlink(outside, home / "to-outside")


def test_a_volume_of_another_uid_moves_only_that_uids_entries_and_names_its_device_nodes(
    tmp_path: Path, ids: tuple[Owner, Owner], caplog: pytest.LogCaptureFixture
) -> None:
    old, new = ids
    home, outside = tmp_path / "home", tmp_path / "outside"
    fill(home, outside)
    for path in owners(home):
        if path != "root-owned":
            os.lchown(home / path, old.uid, old.gid)

    notes = own_home(str(home), "alice", new, skel=str(tmp_path / "no-skel"))

    assert notes == {
        "reowned": f"re-owned 5 entries of {home} from uid {old.uid} gid {old.gid} to its Unix user alice (uid "
                   f"{new.uid} gid {new.gid}): they belonged to another uid, as {MOVED_WHY}",
        "left_devices": "left 1 device nodes of another uid as they were, not given to its Unix user alice: the owner "
                        "of a device node can read and write the device (a disk, a terminal); remove them, or chown one "
                        f"by hand if the user is to have it: {home}/disk",
    }
    assert owners(home) == {
        ".": (new.uid, new.gid), "src": (new.uid, new.gid), "src/main.py": (new.uid, new.gid),
        ".profile": (new.uid, new.gid), "to-outside": (new.uid, new.gid),
        "root-owned": (0, 0), "disk": (old.uid, old.gid),
    }
    assert (outside.stat().st_uid, outside.stat().st_gid) == (0, 0)  # the symlink's target: not followed
    with caplog.at_level(logging.INFO, logger="hatchway.providers.docker"):
        _log_reown(WorkspaceSpec(id="w1", name="dev", owner="alice"), notes["reowned"], notes["left_devices"])
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", f"workspace alice/dev: {notes['reowned']}"),
        ("WARNING", f"workspace alice/dev: {notes['left_devices']}"),
    ]
    # The next start finds the top the user's: nothing to do, nothing to say.
    assert own_home(str(home), "alice", new, skel=str(tmp_path / "no-skel")) == {"reowned": None, "left_devices": None}
    assert owners(home)["disk"] == (old.uid, old.gid)


def test_a_top_in_roots_group_moves_the_old_uid_only_and_the_top_wholly(tmp_path: Path, ids: tuple[Owner, Owner]) -> None:
    """The old owner is the top's uid and root's group: inside, only the uid moves (root's group is
    never taken, as by the local provider); the home's own top becomes the user's, group too."""
    old, new = ids
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes").write_text("x\n")
    os.lchown(home / "notes", old.uid, old.gid)
    os.lchown(home, old.uid, 0)
    notes = own_home(str(home), "alice", new, skel=str(tmp_path / "no-skel"))
    assert notes == {
        "reowned": f"re-owned 2 entries of {home} from uid {old.uid} gid 0 to its Unix user alice (uid {new.uid} gid "
                   f"{new.gid}): they belonged to another uid, as {MOVED_WHY}",
        "left_devices": None,
    }
    assert owners(home) == {".": (new.uid, new.gid), "notes": (new.uid, old.gid)}


def test_a_home_the_engine_made_is_wholly_the_users(tmp_path: Path, ids: tuple[Owner, Owner]) -> None:
    """A new volume is root's, and the engine copies the image's directory into it as it is there:
    root's files included, all of it becomes the user's (the image made it for the user)."""
    _, new = ids
    home = tmp_path / "home"
    fill(home, tmp_path / "outside")
    os.unlink(home / "disk")
    assert own_home(str(home), "alice", new, skel=str(tmp_path / "no-skel")) == {"reowned": None, "left_devices": None}
    assert owners(home) == {p: (new.uid, new.gid) for p in (".", "src", "src/main.py", ".profile", "root-owned", "to-outside")}
    assert (tmp_path / "outside").stat().st_uid == 0


@pytest.mark.parametrize("top", ["root", "old"])
def test_an_empty_home_is_filled_from_skel_and_wholly_the_users(tmp_path: Path, ids: tuple[Owner, Owner], top: str) -> None:
    """/etc/skel is root's: its copy is the set-up's own making, so all of it is the user's, in an
    empty home of the engine's (root's) or of another uid's alike."""
    old, new = ids
    skel, home = tmp_path / "skel", tmp_path / "home"
    (skel / ".config").mkdir(parents=True)
    (skel / ".bashrc").write_text("# skel\n")
    (skel / ".config" / "x").write_text("y\n")
    home.mkdir()
    if top == "old":
        os.lchown(home, old.uid, old.gid)
    assert own_home(str(home), "alice", new, skel=str(skel)) == {"reowned": None, "left_devices": None}
    assert owners(home) == {p: (new.uid, new.gid) for p in (".", ".bashrc", ".config", ".config/x")}
    assert (home / ".bashrc").read_text() == "# skel\n"


CUT_SHORT = """\
import os, sys
from hatchway.providers.docker_incontainer import own_home
from hatchway.providers.reown import Owner
chown, calls = os.chown, [0]
def chown_until_killed(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(sys.argv[4]):
        os._exit(9)  # the set-up killed here (its time limit, a stopped container)
    return chown(*args, **kwargs)
os.chown = chown_until_killed
own_home(sys.argv[1], "dev", Owner(int(sys.argv[2]), int(sys.argv[3])))
"""


@pytest.mark.parametrize("after", [2, 4, 6])
def test_a_home_the_engine_made_given_to_the_user_only_in_part_is_finished_at_the_next_start(
    tmp_path: Path, ids: tuple[Owner, Owner], after: int
) -> None:
    """Its top moves last: a set-up cut short leaves it root's, so the next start gives the whole
    home again, and nothing stays root's."""
    _, new = ids
    home = tmp_path / "home"
    home.mkdir()
    (home / "a" / "b").mkdir(parents=True)
    for name in ("a/one", "a/b/two", "three"):
        (home / name).write_text(name)
    cut = subprocess.run([sys.executable, "-c", CUT_SHORT, str(home), str(new.uid), str(new.gid), str(after)],
                         capture_output=True, text=True, timeout=60)
    assert cut.returncode == 9, cut.stderr
    assert owners(home)["."] == (0, 0)
    assert set(owners(home).values()) == {(0, 0), (new.uid, new.gid)}  # some moved, not all
    assert own_home(str(home), "dev", new) == {"reowned": None, "left_devices": None}
    assert set(owners(home).values()) == {(new.uid, new.gid)}
