"""atomic_write and symbolic links.

A person's ``~/.ssh/config`` is often a link into a dotfiles repository: writing it must go
through the link (``follow_symlinks=True``). Everything else Hatchway writes (authorized_keys,
server secrets, tokens) keeps replacing whatever is at the path, never writing where a link
points.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

import pytest

from hatchway import fileutil
from hatchway.fileutil import DanglingSymlinkError, atomic_write, write_target


@pytest.fixture
def dotfiles(tmp_path: Path) -> tuple[Path, Path]:
    """``home/.ssh/config`` -> ``repo/ssh/config`` (mode 0640), as stow or chezmoi leave it."""
    target = tmp_path / "repo" / "ssh" / "config"
    target.parent.mkdir(parents=True)
    target.write_text("Host mine\n")
    target.chmod(0o640)
    link = tmp_path / "home" / ".ssh" / "config"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    return link, target


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_following_writes_the_target_and_keeps_the_link(dotfiles: tuple[Path, Path]) -> None:
    link, target = dotfiles
    atomic_write(link, b"Host new\n", 0o640, follow_symlinks=True)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"Host new\n"
    assert _mode(target) == 0o640
    assert sorted(p.name for p in link.parent.iterdir()) == ["config"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["config"]


def test_the_temp_file_lives_next_to_the_target(
    dotfiles: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    # rename(2) only works within one filesystem, and dotfiles repositories are often elsewhere
    link, target = dotfiles
    dirs: list[str] = []
    real_mkstemp = tempfile.mkstemp

    def recording_mkstemp(**kw: str) -> tuple[int, str]:
        dirs.append(kw["dir"])
        return real_mkstemp(**kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(fileutil.tempfile, "mkstemp", recording_mkstemp)
    atomic_write(link, b"x\n", 0o600, follow_symlinks=True)
    assert [Path(d) for d in dirs] == [target.parent]


def test_relative_links_and_chains_are_followed_to_the_end(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "config"
    real.write_text("old\n")
    (tmp_path / "middle").symlink_to("real/config")  # relative
    first = tmp_path / "first"
    first.symlink_to(tmp_path / "middle")
    assert write_target(first) == real
    atomic_write(first, b"new\n", 0o600, follow_symlinks=True)
    assert real.read_text() == "new\n"
    assert first.is_symlink() and (tmp_path / "middle").is_symlink()


def test_a_dangling_link_is_an_error_naming_both_ends_and_creates_nothing(tmp_path: Path) -> None:
    link = tmp_path / "config"
    link.symlink_to("missing-repo/ssh_config")
    with pytest.raises(DanglingSymlinkError) as info:
        atomic_write(link, b"x\n", 0o600, follow_symlinks=True)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert message.startswith(f"{link} is a symbolic link to {tmp_path / 'missing-repo' / 'ssh_config'}")
    assert "which does not exist; create that file" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config"]
    assert link.is_symlink()


def test_a_link_loop_is_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "a", b"x\n", 0o600, follow_symlinks=True)
    assert info.value.errno == errno.ELOOP


def test_a_regular_file_is_its_own_target(tmp_path: Path) -> None:
    assert write_target(tmp_path / "config") == tmp_path / "config"  # missing is fine too
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert write_target(plain) == plain


def test_by_default_a_link_is_replaced_never_followed(dotfiles: tuple[Path, Path]) -> None:
    """What the agent (authorized_keys) and the server (secrets) rely on: a link planted at the
    path cannot make them write anywhere else."""
    link, target = dotfiles
    atomic_write(link, b"replaced\n", 0o600)
    assert not link.is_symlink() and link.read_bytes() == b"replaced\n"
    assert target.read_text() == "Host mine\n"


def test_a_failed_write_through_a_link_leaves_the_target_and_no_temp_file(
    dotfiles: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    link, target = dotfiles

    def full_disk(src: str, dst: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileutil.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(link, b"new\n", 0o600, follow_symlinks=True)
    assert target.read_text() == "Host mine\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["config"]
    assert link.is_symlink()
