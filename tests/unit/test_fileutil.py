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

    monkeypatch.setattr(tempfile, "mkstemp", recording_mkstemp)
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


# ---- files that are not regular files -----------------------------------------------------------


def test_read_regular_returns_status_and_content(tmp_path: Path) -> None:
    path = tmp_path / "environment"
    path.write_bytes(b"A=1\r\nB=2")
    st, data = fileutil.read_regular(path)
    assert data == b"A=1\r\nB=2"
    assert st.st_size == len(data) and stat.S_ISREG(st.st_mode)


def test_read_regular_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    """Nobody writes to this FIFO: a plain open() would wait for a writer for ever."""
    fifo = tmp_path / "environment"
    os.mkfifo(fifo)
    with pytest.raises(fileutil.NotRegularFileError) as caught:
        fileutil.read_regular(fifo)
    assert str(caught.value) == f"{fifo} is a named pipe (FIFO), not a regular file; replace it with a regular file"


def test_read_regular_refuses_a_link_to_an_endless_device(tmp_path: Path) -> None:
    link = tmp_path / "authorized_keys"
    link.symlink_to("/dev/zero")
    with pytest.raises(fileutil.NotRegularFileError, match=r"is a character device, not a regular file"):
        fileutil.read_regular(link)


def test_read_regular_refuses_a_directory(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    with pytest.raises(fileutil.NotRegularFileError, match=r"config is a directory, not a regular file"):
        fileutil.read_regular(tmp_path / "config")


def test_read_regular_refuses_a_file_over_the_limit_and_reads_one_at_it(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_bytes(b"k" * (3 * 1024 * 1024))
    with pytest.raises(fileutil.FileTooLargeError) as caught:
        fileutil.read_regular(path, limit=2 * 1024 * 1024)
    assert str(caught.value) == f"{path} is larger than 2 MiB; trim it to what is needed"
    assert fileutil.read_regular(path, limit=3 * 1024 * 1024)[1] == b"k" * (3 * 1024 * 1024)


def test_read_regular_stops_at_the_limit_when_the_file_grows_while_read(tmp_path: Path) -> None:
    """/proc files report size 0 and then produce bytes: the limit holds on what is read."""
    path = tmp_path / "growing"
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    def shrunk_fstat(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, 0, 0, 0, 0))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fileutil.os, "fstat", shrunk_fstat)
        with pytest.raises(fileutil.FileTooLargeError):
            fileutil.read_regular(path, limit=99)
        assert fileutil.read_regular(path, limit=100)[1] == b"x" * 100


def test_a_fifo_behind_a_followed_link_is_refused_and_kept(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "config"
    link.symlink_to(fifo)
    with pytest.raises(fileutil.NotRegularFileError, match=r"pipe is a named pipe \(FIFO\), not a regular file"):
        atomic_write(link, b"Host x\n", follow_symlinks=True)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "pipe"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_root_never_replaces_a_device_a_config_links_to(tmp_path: Path) -> None:
    """The danger case: as root, ~/.ssh/config -> /dev/null. A private copy of /dev/null's device
    number stands in for it, so a regression cannot break the machine's real /dev/null."""
    device = tmp_path / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    link = tmp_path / "config"
    link.symlink_to(device)
    with pytest.raises(fileutil.NotRegularFileError, match=r"null is a character device, not a regular file"):
        atomic_write(link, b"Host x\n", follow_symlinks=True)
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    with pytest.raises(fileutil.NotRegularFileError):
        atomic_write(device, b"Host x\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_root_keeps_the_owner_of_a_persons_file_it_replaces(dotfiles: tuple[Path, Path]) -> None:
    """``sudo -E hatchway config-ssh``: the person must still own (and be able to read) their config."""
    link, target = dotfiles
    os.chown(target, 65534, 65533)
    atomic_write(link, b"Host new\n", 0o640, follow_symlinks=True, keep_owner=True)
    st = target.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65533, 0o640)
    assert target.read_bytes() == b"Host new\n"
    # without keep_owner (Hatchway's own files, the agent's) the writer owns what it writes
    atomic_write(link, b"Host newer\n", 0o640, follow_symlinks=True)
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another user")
def test_keep_owner_leaves_a_new_file_to_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "config"
    atomic_write(path, b"Host new\n", 0o600, keep_owner=True)
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 0)


def test_keep_owner_changes_nothing_for_a_file_the_writer_owns(dotfiles: tuple[Path, Path]) -> None:
    link, target = dotfiles
    atomic_write(link, b"Host new\n", 0o640, follow_symlinks=True, keep_owner=True)
    assert (target.stat().st_uid, target.read_bytes()) == (os.geteuid(), b"Host new\n")


def test_a_link_is_still_replaced_when_not_followed(tmp_path: Path) -> None:
    """Refusing special files must not stop the agent replacing a link planted at its path."""
    link = tmp_path / "authorized_keys"
    link.symlink_to("/dev/null")
    atomic_write(link, b"k\n")
    assert not link.is_symlink() and link.read_bytes() == b"k\n"
