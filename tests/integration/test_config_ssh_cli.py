"""``hatchway config-ssh`` against real servers, through the real CLI: what it writes, what it
must never write, and how it fails.

Two deployments on one host (two ports), as a person with two Hatchway installations (or a test
and a production one) has them. No workspace agents: the entries themselves are covered by
tests/unit/test_sshconfig.py and tests/e2e/test_ssh_manual_workspace.py; here it is about files.
"""

from __future__ import annotations

import os
import pty
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.cli import Cli, Result
from tests.helpers.server import HATCHWAY, RunningServer

PASSWORD = "alice-password-1"


@dataclass
class Deployments:
    a: RunningServer
    b: RunningServer


@pytest.fixture(scope="module")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployments]:
    tmp = tmp_path_factory.mktemp("config-ssh")
    a, b = RunningServer(tmp / "a"), RunningServer(tmp / "b")
    a.start()
    b.start()
    try:
        Cli(tmp / "first-a").login(a.url, "alice", PASSWORD, first=True)
        Cli(tmp / "first-b").login(b.url, "alice", PASSWORD, first=True)
        yield Deployments(a, b)
    finally:
        a.stop()
        b.stop()


def signed_in(home: Path, server: RunningServer, config_dir: str = "hatchway") -> Cli:
    """alice on ``server``, with her own HOME and config dir (two dirs: two deployments)."""
    cli = Cli(home)
    cli.config_dir = home / ".config" / config_dir
    cli.login(server.url, "alice", PASSWORD)
    return cli


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every path under ``root`` with its type, mode, content and mtime: "wrote nothing" exactly."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            content: object = os.readlink(path)
        elif path.is_file():
            content = path.read_bytes()
        else:
            content = None
        out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, content)
    return out


def derived_public_key(private_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-y", "-f", str(private_key)], capture_output=True, text=True, check=True)
    return " ".join(out.stdout.split()[:2])


def account_key(cli: Cli) -> str:
    return " ".join(cli.ok("keys", "show", "--json").json()["public_key"].split()[:2])


def assert_clean_failure(r: Result) -> None:
    assert r.code == 1, r
    assert "Traceback" not in r.err, r.err
    assert r.out == ""


# ------------------------------------------------------------------------------------------
# --dry-run


def test_dry_run_writes_nothing_at_all_and_says_what_it_would_write(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    before = snapshot(home)
    r = cli.ok("config-ssh", "--dry-run")
    assert snapshot(home) == before, "--dry-run wrote or touched files"
    config = home / ".ssh" / "config"
    assert r.out.startswith(f"--- {config}\n+++ {config}\n")
    assert "+# ------------START-HATCHWAY-----------\n" in r.out
    key = home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}"
    assert r.err.splitlines() == [
        f"hatchway: --dry-run: would download your Hatchway SSH key to {key} (and .pub)",
        f"hatchway: --dry-run: would write {cli.config_dir / 'known_hosts'}",
        f"hatchway: --dry-run: would write {cli.config_dir / 'ssh_config'}",
    ]
    # After a real run there is nothing left to do, and the dry run says exactly that.
    cli.ok("config-ssh", "-y")
    after_run = snapshot(home)
    r = cli.ok("config-ssh", "--dry-run")
    assert (r.out, r.err) == (f"{config} is up to date\n", "")
    assert snapshot(home) == after_run


def test_declining_the_confirmation_writes_nothing(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    before = snapshot(home)
    controller, terminal = pty.openpty()  # config-ssh asks only when stdin is a terminal
    try:
        os.write(controller, b"n\n")
        r = subprocess.run([HATCHWAY, "config-ssh"], stdin=terminal, capture_output=True, text=True,
                           env=cli.env(), timeout=60, check=False)
    finally:
        os.close(controller)
        os.close(terminal)
    assert r.returncode == 1 and "Write these changes to" in r.stdout and "Aborted!" in r.stderr, r
    assert snapshot(home) == before


def test_dry_run_remove_writes_nothing(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    cli.ok("config-ssh", "-y")
    before = snapshot(home)
    r = cli.ok("config-ssh", "--dry-run", "--remove")
    assert "-# ------------START-HATCHWAY-----------\n" in r.out
    assert snapshot(home) == before


# ------------------------------------------------------------------------------------------
# The ssh config file: links, directories, damaged blocks


def dotfiles_link(home: Path, content: str, mode: int = 0o640) -> tuple[Path, Path]:
    """``~/.ssh/config`` as a link into a dotfiles checkout (stow, chezmoi, yadm)."""
    target = home / "dotfiles" / "ssh" / "config"
    target.parent.mkdir(parents=True)
    target.write_text(content)
    target.chmod(mode)
    link = home / ".ssh" / "config"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(Path("..") / "dotfiles" / "ssh" / "config")
    return link, target


def test_a_symlinked_config_is_written_through_the_link(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    mine = "Host build\n  HostName 10.0.0.5\n"
    link, target = dotfiles_link(home, mine)
    cli.ok("config-ssh", "-y")
    assert link.is_symlink() and os.readlink(link) == "../dotfiles/ssh/config"
    written = target.read_text()
    assert written.startswith("# ------------START-HATCHWAY-----------\n") and written.endswith("\n" + mine)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "the target keeps its mode"
    assert sorted(p.name for p in target.parent.iterdir()) == ["config"], "no temp file left behind"
    cli.ok("config-ssh", "--remove", "-y")
    assert link.is_symlink() and target.read_text() == mine


def test_a_dangling_link_is_a_clear_error_and_nothing_is_written(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    link = home / ".ssh" / "config"
    link.parent.mkdir(mode=0o700)
    link.symlink_to(home / "dotfiles" / "ssh_config")
    before = snapshot(home)
    r = cli.run("config-ssh", "-y")
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: {link} is a symbolic link to {home / 'dotfiles' / 'ssh_config'}, which does not exist; "
        "create that file (or replace the link with a regular file), then run config-ssh again\n"
    )
    assert snapshot(home) == before, "not even the key is downloaded"


def test_a_directory_as_ssh_config_is_a_clear_error(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    directory = home / "some dir"
    directory.mkdir()
    before = snapshot(home)
    r = cli.run("config-ssh", "--ssh-config", str(directory), "-y")
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: {directory} is a directory, not an ssh config file; give the file itself, "
        f"for example: hatchway config-ssh --ssh-config {directory / 'config'}\n"
    )
    assert snapshot(home) == before


def test_damaged_markers_give_their_advice_once_and_nothing_is_written(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    config = home / "ssh_config"
    config.write_text("Host a\n# ------------START-HATCHWAY-----------\nHost hatchway.old\n")
    before = snapshot(home)
    for args in (["-y"], ["--remove", "-y"], ["--dry-run"]):
        r = cli.run("config-ssh", "--ssh-config", str(config), *args)
        assert_clean_failure(r)
        assert r.err == (
            f"hatchway: cannot update {config}: line 2: Hatchway START marker without an END marker; "
            "remove the partial block by hand and retry\n"
        ), args
        assert snapshot(home) == before, args


# ------------------------------------------------------------------------------------------
# Two deployments on one host


def test_two_deployments_on_one_host_keep_their_own_keys(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = signed_in(home, deployments.a)
    b = signed_in(home, deployments.b, "hatchway-b")
    key_a = home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}"
    key_b = home / ".ssh" / f"hatchway_127.0.0.1_{deployments.b.port}"
    a.ok("config-ssh", "--ssh-config", str(home / "config-a"), "-y")
    first_a = key_a.read_bytes()
    b.ok("config-ssh", "--ssh-config", str(home / "config-b"), "-y")
    a.ok("config-ssh", "--ssh-config", str(home / "config-a"), "-y")
    assert key_a.read_bytes() == first_a, "deployment B's run did not touch A's key"
    assert derived_public_key(key_a) == account_key(a)
    assert derived_public_key(key_b) == account_key(b)
    assert account_key(a) != account_key(b)
    assert not (home / ".ssh" / "hatchway_127.0.0.1").exists()


def test_upgrade_keeps_using_a_key_downloaded_under_the_old_name(deployments: Deployments, tmp_path: Path) -> None:
    """A key an older release put at ~/.ssh/hatchway_<host> stays in use (our old block and the
    person's own IdentityFile lines point at it) while it is this account's current key; the
    other deployment on the host gets a file of its own and leaves the old one alone."""
    home = tmp_path / "home"
    a = signed_in(home, deployments.a)
    b = signed_in(home, deployments.b, "hatchway-b")
    legacy = home / ".ssh" / "hatchway_127.0.0.1"
    a.ok("keys", "download", "--output", str(legacy))  # what the old default path held
    old = legacy.read_bytes()
    a.ok("config-ssh", "--ssh-config", str(home / "config-a"), "-y")
    assert legacy.read_bytes() == old
    assert not (home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}").exists(), "no second copy of A's key"
    b.ok("config-ssh", "--ssh-config", str(home / "config-b"), "-y")
    assert legacy.read_bytes() == old, "B no longer overwrites the shared file"
    assert derived_public_key(home / ".ssh" / f"hatchway_127.0.0.1_{deployments.b.port}") == account_key(b)
    # ...and `keys regenerate` keeps refreshing the file in use
    a.ok("keys", "regenerate", "--yes")
    assert derived_public_key(legacy) == account_key(a)
    assert not (home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}").exists()


def test_keys_download_defaults_to_the_port_qualified_name(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    a = signed_in(home, deployments.a)
    r = a.ok("keys", "download")
    key = home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}"
    assert r.out.startswith(f"Wrote {key} (mode 0600)")
    assert derived_public_key(key) == account_key(a)


# ------------------------------------------------------------------------------------------
# Folders are the person's: only Hatchway's files are written, no directory's mode changes


def test_a_key_downloaded_into_a_shared_folder_leaves_the_folder_as_it_is(
    deployments: Deployments, tmp_path: Path
) -> None:
    cli = signed_in(tmp_path / "home", deployments.a)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp is: making it 0700 would lock every other user out
    key = shared / "mykey"
    r = cli.ok("keys", "download", "--output", str(key))
    assert r.out == f"Wrote {key} (mode 0600), {cli.ok('keys', 'show', '--json').json()['fingerprint']}\n"
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.with_name("mykey.pub").stat().st_mode) == 0o644
    assert derived_public_key(key) == account_key(cli)


def test_a_key_output_that_is_a_directory_is_refused_untouched(deployments: Deployments, tmp_path: Path) -> None:
    cli = signed_in(tmp_path / "home", deployments.a)
    directory = tmp_path / "somedir"
    directory.mkdir()
    directory.chmod(0o755)
    before = snapshot(tmp_path)
    r = cli.run("keys", "download", "--output", str(directory))
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: {directory} is a directory; give the key file's path, for example: "
        f"hatchway keys download --output {directory / f'hatchway_127.0.0.1_{deployments.a.port}'}\n"
    )
    assert snapshot(tmp_path) == before, "neither the folder nor its parent changed"


def test_a_key_output_in_a_missing_directory_creates_nothing(deployments: Deployments, tmp_path: Path) -> None:
    cli = signed_in(tmp_path / "home", deployments.a)
    (tmp_path / "a-file").write_text("x")
    before = snapshot(tmp_path)
    missing = tmp_path / "nonexistent" / "dir"
    r = cli.run("keys", "download", "--output", str(missing / "k"))
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: cannot write {missing / 'k'}: the directory {missing} does not exist; "
        "create it first, or choose another --output\n"
    )
    r = cli.run("keys", "download", "--output", str(tmp_path / "a-file" / "k"))
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: cannot write {tmp_path / 'a-file' / 'k'}: {tmp_path / 'a-file'} is not a directory; "
        "choose another --output\n"
    )
    assert snapshot(tmp_path) == before


def test_ssh_dir_is_created_0700_when_missing_and_otherwise_left_alone(deployments: Deployments, tmp_path: Path) -> None:
    """As ssh-keygen does: a missing ~/.ssh is created 0700, an existing one keeps its mode."""
    fresh = signed_in(tmp_path / "fresh", deployments.a)
    fresh.ok("keys", "download")
    assert stat.S_IMODE((fresh.home / ".ssh").stat().st_mode) == 0o700
    home = tmp_path / "home"
    home.mkdir()
    (home / ".ssh").mkdir()
    (home / ".ssh").chmod(0o755)
    cli = signed_in(home, deployments.a)
    cli.ok("keys", "download")
    cli.ok("config-ssh", "-y")
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o755
    for name in (f"hatchway_127.0.0.1_{deployments.a.port}", "config"):
        assert stat.S_IMODE((home / ".ssh" / name).stat().st_mode) == 0o600, name


def test_an_existing_config_dir_keeps_its_mode(deployments: Deployments, tmp_path: Path) -> None:
    """HATCHWAY_CONFIG_DIR may name any folder; what Hatchway writes there is 0600 by itself."""
    home = tmp_path / "home"
    config_dir = home / ".config" / "hatchway"
    config_dir.mkdir(parents=True)
    config_dir.chmod(0o750)
    cli = signed_in(home, deployments.a)  # login writes session.json
    cli.ok("config-ssh", "--ssh-config", str(home / "ssh_config"), "-y")  # known_hosts, ssh_config
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o750
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in config_dir.iterdir()} == {
        "session.json": 0o600, "known_hosts": 0o600, "ssh_config": 0o600,
    }


def test_a_new_config_dir_is_created_0700(deployments: Deployments, tmp_path: Path) -> None:
    cli = signed_in(tmp_path / "home", deployments.a)
    assert stat.S_IMODE(cli.config_dir.stat().st_mode) == 0o700


def test_an_ssh_config_in_a_missing_directory_is_refused_before_anything_is_written(
    deployments: Deployments, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    before = snapshot(tmp_path)
    missing = tmp_path / "nonexistent" / "dir"
    for args in (["-y"], ["--dry-run"]):
        r = cli.run("config-ssh", "--ssh-config", str(missing / "config"), *args)
        assert_clean_failure(r)
        assert r.err == (
            f"hatchway: cannot write {missing / 'config'}: the directory {missing} does not exist; "
            "create it first, or choose another --ssh-config\n"
        ), args
        assert snapshot(tmp_path) == before, "not even the key is downloaded"
    r = cli.ok("config-ssh", "--ssh-config", str(missing / "config"), "--remove", "-y")
    assert r.out == f"{missing / 'config'} is up to date\n", "nothing to remove from a file that does not exist"
    assert snapshot(tmp_path) == before
