"""``hatchway config-ssh`` against real servers, through the real CLI: what it writes, what it
must never write, and how it fails.

Two deployments on one host (two ports), as a person with two Hatchway installations (or a test
and a production one) has them. No workspace agents: the entries themselves are covered by
tests/unit/test_sshconfig.py and tests/e2e/test_ssh_manual_workspace.py; here it is about files.
"""

from __future__ import annotations

import os
import pty
import resource
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


def contents(root: Path) -> dict[str, tuple[object, ...]]:
    """:func:`snapshot` less the mtimes: a write that failed still created and removed its temp
    file in the directory (changing the directory's mtime), and must have left nothing else."""
    return {path: (kind, mode, content) for path, (kind, mode, _, content) in snapshot(root).items()}


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
# What is at ~/.ssh/config: FIFOs, devices, huge files, bytes that are not UTF-8, another owner

NOT_REGULAR = (
    "{what} is {kind}, not a regular file, so it cannot hold an ssh config; "
    "use a regular file (or give one with --ssh-config), then run config-ssh again\n"
)


def run_limited(cli: Cli, *args: str, limit: tuple[int, int]) -> Result:
    """``hatchway`` with one resource limit (``(resource.RLIMIT_…, value)``): what used to read
    /dev/zero must fail with MemoryError, not take the test machine's memory."""
    which, value = limit
    p = subprocess.run([HATCHWAY, *args], capture_output=True, text=True, env=cli.env(), timeout=60,
                       preexec_fn=lambda: resource.setrlimit(which, (value, value)), check=False)
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.mark.parametrize("args", [["-y"], ["--dry-run"], ["--remove", "-y"]])
def test_a_fifo_as_ssh_config_is_refused_without_waiting_on_it(
    deployments: Deployments, tmp_path: Path, args: list[str]
) -> None:
    """Reading a FIFO blocks until someone writes to it: config-ssh used to hang for good."""
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    config = home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    os.mkfifo(config, 0o600)
    before = snapshot(home)
    r = cli.run("config-ssh", *args, timeout=30)
    assert_clean_failure(r)
    assert r.err == "hatchway: " + NOT_REGULAR.format(what=config, kind="a named pipe (FIFO)")
    assert snapshot(home) == before


def test_a_config_linked_to_an_endless_device_is_refused_unread(deployments: Deployments, tmp_path: Path) -> None:
    """``~/.ssh/config -> /dev/zero`` used to be read until memory ran out (MemoryError)."""
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    link = home / ".ssh" / "config"
    link.parent.mkdir(mode=0o700)
    link.symlink_to("/dev/zero")
    before = snapshot(home)
    r = run_limited(cli, "config-ssh", "-y", limit=(resource.RLIMIT_AS, 2 * 1024**3))
    assert_clean_failure(r)
    what = f"{link} is a symbolic link to /dev/zero, which"
    assert r.err == "hatchway: " + NOT_REGULAR.format(what=what, kind="a character device")
    assert snapshot(home) == before
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)


def test_an_ssh_config_over_the_read_limit_is_refused_unread(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    config = home / "ssh_config"
    with config.open("wb") as fh:
        fh.truncate(16 * 1024 * 1024 + 1)  # sparse: costs no disk
    before = snapshot(home)
    r = cli.run("config-ssh", "--ssh-config", str(config), "-y")
    assert_clean_failure(r)
    assert r.err == f"hatchway: {config} is larger than 16 MiB; trim it to what is needed, then run config-ssh again\n"
    assert snapshot(home) == before


def test_a_fifo_in_place_of_the_public_key_is_refused_without_waiting_on_it(
    deployments: Deployments, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    cli.ok("keys", "download")
    pub = home / ".ssh" / f"hatchway_127.0.0.1_{deployments.a.port}.pub"
    pub.unlink()
    os.mkfifo(pub, 0o644)
    r = cli.run("config-ssh", "--ssh-config", str(home / "ssh_config"), "-y", timeout=30)
    assert_clean_failure(r)
    assert r.err == (
        f"hatchway: {pub} is a named pipe (FIFO), not a regular file; replace it with a regular file "
        "(it was left unchanged), then try again\n"
    )
    assert stat.S_ISFIFO(pub.lstat().st_mode) and not (home / "ssh_config").exists()


def test_an_ssh_config_that_is_not_utf8_keeps_its_bytes(deployments: Deployments, tmp_path: Path) -> None:
    """OpenSSH reads bytes: a Latin-1 comment is fine for ssh, and config-ssh used to refuse the file."""
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    config = home / ".ssh" / "config"
    config.parent.mkdir(mode=0o700)
    mine = b"# Caf\xe9 du coin (Latin-1)\nHost caf\xe9\n  HostName 10.0.0.5\n"
    config.write_bytes(mine)
    dry = subprocess.run([HATCHWAY, "config-ssh", "--dry-run"], capture_output=True, env=cli.env(), timeout=60,
                         check=False)
    assert dry.returncode == 0, dry
    assert b"\n # Caf\xe9 du coin (Latin-1)\n" in dry.stdout and b"\n Host caf\xe9\n" in dry.stdout, "diff -u's bytes"
    cli.ok("config-ssh", "-y")
    block = (cli.config_dir / "ssh_config").read_bytes()  # the same block, in a file of its own
    assert config.read_bytes() == b"# Caf\xe9 du coin (Latin-1)\n\n" + block + b"\nHost caf\xe9\n  HostName 10.0.0.5\n"
    assert cli.ok("config-ssh", "-y").out.startswith(f"{config} is up to date\n")
    cli.ok("config-ssh", "--remove", "-y")
    assert config.read_bytes() == mine


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can edit another user's file and give it back")
def test_root_editing_a_persons_config_leaves_it_theirs(deployments: Deployments, tmp_path: Path) -> None:
    """``sudo -E hatchway config-ssh``: the config used to become root:root 0600, unreadable to its owner."""
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    config = home / ".ssh" / "config"
    config.parent.mkdir(mode=0o755)
    config.write_text("Host mine\n")
    os.chown(config, 65534, 65533)
    config.chmod(0o644)
    cli.ok("config-ssh", "-y")
    st = config.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65533, 0o644)
    assert config.read_text().endswith("\nHost mine\n") and "Host hatchway." not in config.read_text()[:10]
    cli.ok("config-ssh", "--remove", "-y")
    st = config.stat()
    assert (st.st_uid, st.st_gid, config.read_text()) == (65534, 65533, "Host mine\n")


# ------------------------------------------------------------------------------------------
# Hatchway's own files: known_hosts and the standalone ssh_config


def test_a_second_run_with_nothing_to_change_writes_nothing(deployments: Deployments, tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    cli.ok("config-ssh", "-y")
    before = snapshot(home)
    r = cli.ok("config-ssh", "-y")
    assert r.out.startswith(f"{home / '.ssh' / 'config'} is up to date\n")
    assert snapshot(home) == before, "known_hosts and ssh_config were rewritten although unchanged"


OWN_FILE_FAILURES = {
    "a directory": (lambda p: p.mkdir(), "hatchway: cannot write {p}: Is a directory (it was left unchanged); "
                    "fix that, then try again\n"),
    "a FIFO": (lambda p: os.mkfifo(p), "hatchway: {p} is a named pipe (FIFO), not a regular file; replace it with a "
               "regular file (it was left unchanged), then try again\n"),
}


@pytest.mark.parametrize("name", ["known_hosts", "ssh_config"])
@pytest.mark.parametrize("case", list(OWN_FILE_FAILURES))
def test_an_own_file_that_cannot_be_written_is_one_line_and_the_ssh_config_stays(
    deployments: Deployments, tmp_path: Path, name: str, case: str
) -> None:
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    cli.ok("config-ssh", "-y")
    cli.ok("config-ssh", "--remove", "-y")  # so that the next run has the ssh config to change too
    own = cli.config_dir / name
    own.unlink()
    make, said = OWN_FILE_FAILURES[case]
    make(own)
    before = contents(home)
    for args in (["config-ssh", "-y"], ["ssh", "dev"]):  # hatchway ssh writes them too
        r = cli.run(*args)
        assert_clean_failure(r)
        assert r.err == said.format(p=own), args
        assert contents(home) == before, "the ssh config changed or a temp file was left behind"


def test_a_write_that_fails_midway_is_one_line_and_leaves_the_old_file(deployments: Deployments, tmp_path: Path) -> None:
    """As on a full disk: the write itself fails (here at a file size limit, EFBIG)."""
    home = tmp_path / "home"
    cli = signed_in(home, deployments.a)
    cli.ok("config-ssh", "-y")
    cli.ok("config-ssh", "--remove", "-y")  # so that the next run has the ssh config to change too
    known = cli.config_dir / "known_hosts"
    known.write_text("# an older version\n")
    before = contents(home)
    r = run_limited(cli, "config-ssh", "-y", limit=(resource.RLIMIT_FSIZE, 64))
    assert_clean_failure(r)
    assert r.err == f"hatchway: cannot write {known}: File too large (it was left unchanged); fix that, then try again\n"
    assert contents(home) == before


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
