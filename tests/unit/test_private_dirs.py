"""make_private_dir: a person's directories are created 0700 and otherwise left as they are.

OpenSSH creates a missing ~/.ssh 0700 and never changes an existing one; the XDG Base Directory
spec asks the same of config directories. ensure_private_dir, which tightens an existing
directory, is for Hatchway's own state directories only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from hatchway.fileutil import NotOursError, ensure_private_dir, make_private_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_directory_is_created_0700(tmp_path: Path) -> None:
    assert make_private_dir(tmp_path / ".ssh") == tmp_path / ".ssh"
    assert _mode(tmp_path / ".ssh") == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o1777, 0o2770])
def test_an_existing_directory_keeps_its_mode(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    make_private_dir(shared)
    make_private_dir(shared, parents=True)
    assert _mode(shared) == mode


def test_parents_only_when_asked(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        make_private_dir(tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
    make_private_dir(tmp_path / "a" / "b", parents=True)
    assert _mode(tmp_path / "a" / "b") == 0o700


def test_a_file_in_the_way_is_an_error_and_stays(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        make_private_dir(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_ensure_private_dir_still_tightens_hatchways_own_directories(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    ensure_private_dir(state)
    assert _mode(state) == 0o700


def test_ensure_private_dir_never_tightens_a_shared_directory(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    with pytest.raises(NotOursError, match=r"tmp is a shared directory \(mode 1777\); give Hatchway a directory of its own"):
        ensure_private_dir(shared)
    assert _mode(shared) == 0o1777


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a file as another user")
def test_ensure_private_dir_never_tightens_a_directory_of_other_users_files(tmp_path: Path) -> None:
    homes = tmp_path / "home"
    homes.mkdir()
    homes.chmod(0o755)
    (homes / "bob").mkdir()
    os.chown(homes / "bob", 12345, 12345)
    with pytest.raises(NotOursError, match="holds files of other users \\('bob' among them\\)"):
        ensure_private_dir(homes)
    assert _mode(homes) == 0o755
