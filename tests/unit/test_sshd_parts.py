"""Host key persistence, authorized_keys parsing and PTY mode translation of the built-in server."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import termios
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from hatchway.sshd.authkeys import load_authorized_keys, parse_authorized_keys
from hatchway.sshd.hostkey import HostKeyError, load_or_create_host_key
from hatchway.sshd.permits import PERMIT_OPEN
from hatchway.sshd.process import describe_status
from hatchway.sshd.ttymodes import apply_tty_modes

# ---- host key --------------------------------------------------------------------------------


def test_host_key_created_once_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "ssh_host_ed25519_key"
    key = load_or_create_host_key(path)
    assert key.get_algorithm() == "ssh-ed25519"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_host_key(path)
    assert again.export_public_key() == key.export_public_key()
    assert [p.name for p in path.parent.iterdir()] == [
        path.name
    ]  # no temp files left behind


def test_host_key_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / "k"
    first = load_or_create_host_key(path)
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    assert (
        load_or_create_host_key(path).export_public_key() == first.export_public_key()
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_corrupt_host_key_is_an_error_not_a_silent_new_key(tmp_path: Path) -> None:
    path = tmp_path / "k"
    path.write_bytes(b"garbage")
    with pytest.raises(HostKeyError):
        load_or_create_host_key(path)
    assert path.read_bytes() == b"garbage"


# ---- authorized_keys -------------------------------------------------------------------------


def _pub(comment: str = "") -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment or None)
    return key, key.export_public_key().decode().strip()


def test_authorized_keys_bad_lines_skipped(tmp_path: Path) -> None:
    k1, l1 = _pub("one")
    k2, l2 = _pub("two")
    k3, _ = _pub("three")
    text = (
        f'# comment\n\n{l1}\nssh-ed25519 AAAAnotbase64\nenvironment="BAD {l2}\n{l2}\n'
    )
    keys = parse_authorized_keys(text)
    assert keys is not None
    assert keys.validate(k1.convert_to_public(), "", "127.0.0.1") == {}
    assert keys.validate(k2.convert_to_public(), "", "127.0.0.1") == {}
    assert keys.validate(k3.convert_to_public(), "", "127.0.0.1") is None


def test_authorized_keys_options_kept(tmp_path: Path) -> None:
    k1, l1 = _pub()
    keys = parse_authorized_keys(f'environment="FOO=bar",no-pty {l1}\n')
    assert keys is not None
    opts = keys.validate(k1.convert_to_public(), "", "127.0.0.1")
    assert (
        opts is not None
        and opts["environment"] == {"FOO": "bar"}
        and opts["no-pty"] is True
    )


def test_restrict_turns_every_permission_off_except_those_named_again() -> None:
    """asyncssh does not know ``restrict``: the options it checks come out as OpenSSH means them."""
    k1, l1 = _pub()
    k2, l2 = _pub()
    k3, l3 = _pub()
    keys = parse_authorized_keys(f'restrict,command="rrsync -ro /b" {l1}\nrestrict,pty {l2}\nno-x11-forwarding {l3}\n')
    assert keys is not None
    no = {"no-port-forwarding": True, "no-agent-forwarding": True, "no-X11-forwarding": True, "no-pty": True}
    assert keys.validate(k1.convert_to_public(), "", "127.0.0.1") == {"restrict": True, "command": "rrsync -ro /b", **no}
    assert keys.validate(k2.convert_to_public(), "", "127.0.0.1") == {
        "restrict": True, "pty": True, "no-port-forwarding": True, "no-agent-forwarding": True, "no-X11-forwarding": True}
    # flag names are case-insensitive in OpenSSH; asyncssh checks "no-X11-forwarding" exactly
    assert keys.validate(k3.convert_to_public(), "", "127.0.0.1") == {"no-x11-forwarding": True, "no-X11-forwarding": True}


def test_option_names_are_read_in_any_case_as_sshd_reads_them() -> None:
    """sshd matches every option name case-insensitively; asyncssh only lower-case value
    options, and kept ``FROM="..."`` or ``Command="..."`` as unknown names: such a key was
    accepted from anywhere, or ran any command, where sshd holds it to its options."""
    k1, l1 = _pub()
    k2, l2 = _pub()
    text = f'FROM="10.9.9.9" {l1}\nRestrict,Command="rrsync -ro /b",PermitOpen="127.0.0.1:80" {l2}\n'
    elsewhere, there = parse_authorized_keys(text, client_ip="192.0.2.7"), parse_authorized_keys(text, client_ip="10.9.9.9")
    assert elsewhere is not None and there is not None
    assert elsewhere.validate(k1.convert_to_public(), "", "") is None
    assert list(there.validate(k1.convert_to_public(), "", "") or {}) == ["from"]
    assert elsewhere.validate(k2.convert_to_public(), "", "") == {
        "restrict": True, "command": "rrsync -ro /b", PERMIT_OPEN: (("127.0.0.1", 80),),
        "no-port-forwarding": True, "no-agent-forwarding": True, "no-X11-forwarding": True, "no-pty": True,
    }


@pytest.mark.parametrize(("options", "reason"), [
    ("no-ptty", 'unknown option "no-ptty" (sshd refuses the key too)'),
    ('restrict="yes"', 'option "restrict" takes no value (sshd refuses the key too)'),
    ("command", 'option "command" needs a value, as in command="..." (sshd refuses the key too)'),
    ("pty,,no-pty", 'unknown option "" (sshd refuses the key too)'),
    ('expiry-time="20300101"', 'option "expiry-time" cannot be checked by the built-in server, so the key is not used'),
    ("verify-required", 'option "verify-required" cannot be checked by the built-in server, so the key is not used'),
])
def test_a_line_with_an_option_sshd_would_refuse_is_not_used(
    options: str, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """sshd refuses a key whose options it cannot read (a typo such as ``no-ptty`` included);
    asyncssh kept such a key and ignored the option, so the key had every permission. Options
    the built-in server cannot hold a key to (an expiry, user verification) refuse it too."""
    k1, l1 = _pub()
    with caplog.at_level(logging.WARNING, logger="hatchway.sshd"):
        assert parse_authorized_keys(f"{options} {l1}\n", source=f"test-{options}") is None
    assert caplog.messages == [
        f"test-{options} line 1 ignored: {reason}; correct or remove the option"
    ]


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85", "\x0c", "\x0b", "\x1c", "\r"])
def test_a_restricted_keys_comment_is_never_a_key_of_its_own(separator: str) -> None:
    """Lines end at LF only, as OpenSSH reads them: what follows a Unicode line separator in a
    restricted key's comment is the comment's, not an unrestricted second entry."""
    k1, l1 = _pub()
    k2, l2 = _pub()
    keys = parse_authorized_keys(f'from="10.9.9.9",command="/bin/true" {l1} backup{separator}{l1} x\r\n{l2}\n')
    assert keys is not None  # the other lines still count
    assert keys.validate(k2.convert_to_public(), "", "192.0.2.7") == {}
    assert keys.validate(k1.convert_to_public(), "", "192.0.2.7") is None  # not unrestricted


def test_authorized_keys_empty_or_missing(tmp_path: Path) -> None:
    assert parse_authorized_keys("# only comments\n\n") is None
    assert parse_authorized_keys("garbage\n") is None
    assert load_authorized_keys(tmp_path / "missing") is None


def test_authorized_keys_that_is_not_a_regular_file_refuses_every_key_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenSSH refuses such a file too. A FIFO used to block a thread per connection for ever,
    and a link to /dev/zero ran the agent out of memory."""
    fifo = tmp_path / "authorized_keys"
    os.mkfifo(fifo)
    with caplog.at_level(logging.WARNING, logger="hatchway.sshd"):
        assert load_authorized_keys(fifo) is None
    assert caplog.messages == [
        f"cannot read {fifo}: {fifo} is a named pipe (FIFO), not a regular file; replace it with a "
        "regular file; refusing every key"
    ]
    link = tmp_path / "zero"
    link.symlink_to("/dev/zero")
    assert load_authorized_keys(link) is None


def test_authorized_keys_reread_from_disk(tmp_path: Path) -> None:
    k1, l1 = _pub()
    k2, l2 = _pub()
    path = tmp_path / "authorized_keys"
    path.write_text(l1 + "\n")
    keys = load_authorized_keys(path)
    assert (
        keys is not None and keys.validate(k1.convert_to_public(), "", "") is not None
    )
    path.write_text(l2 + "\n")
    keys = load_authorized_keys(path)
    assert keys is not None
    assert keys.validate(k1.convert_to_public(), "", "") is None
    assert keys.validate(k2.convert_to_public(), "", "") is not None


# ---- tty modes -------------------------------------------------------------------------------


def _attrs() -> list:
    cc = [0] * termios.NCCS
    cc[termios.VERASE] = 0x08
    return [
        termios.ICRNL,
        termios.OPOST,
        termios.CS7,
        termios.ECHO,
        termios.B9600,
        termios.B9600,
        cc,
    ]


def test_tty_modes_applied() -> None:
    modes = {
        3: 0x7F,
        1: 3,
        36: 0,
        38: 1,
        53: 0,
        51: 1,
        72: 1,
        91: 1,
        128: 38400,
        129: 38400,
        200: 1,
    }
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = apply_tty_modes(_attrs(), modes)
    assert cc[termios.VERASE] == 0x7F
    assert cc[termios.VINTR] == 3
    assert iflag & termios.ICRNL == 0 and iflag & termios.IXON
    assert lflag & termios.ECHO == 0 and lflag & termios.ICANON
    assert oflag & termios.ONLCR and oflag & termios.OPOST
    assert cflag & termios.CSIZE == termios.CS8
    assert (ispeed, ospeed) == (termios.B38400, termios.B38400)


def test_tty_mode_255_disables_control_char_and_input_untouched() -> None:
    attrs = _attrs()
    new = apply_tty_modes(attrs, {3: 255})
    assert new[6][termios.VERASE] == 0
    assert attrs[6][termios.VERASE] == 0x08


def test_tty_modes_on_a_real_pty() -> None:
    master, slave = os.openpty()
    try:
        termios.tcsetattr(
            slave,
            termios.TCSANOW,
            apply_tty_modes(termios.tcgetattr(slave), {3: 0x08, 53: 0}),
        )
        attrs = termios.tcgetattr(slave)
        assert attrs[6][termios.VERASE] == b"\x08"
        assert attrs[3] & termios.ECHO == 0
    finally:
        os.close(master)
        os.close(slave)


# ---- exit statuses ---------------------------------------------------------------------------


def test_describe_status() -> None:
    assert describe_status(3 << 8) == (3, None, False)
    assert describe_status(9) == (None, "KILL", False)
    assert describe_status(11 | 0x80) == (None, "SEGV", True)


# ---- child exit notification -------------------------------------------------------------------


async def _spawn_and_wait(script: str) -> tuple[int, bytes]:
    from hatchway.sshd.process import close_quietly, spawn

    s = spawn(
        executable="/bin/sh",
        argv=["sh", "-c", script],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        status = await asyncio.wait_for(s.child.wait(), 10)
        os.set_blocking(s.stdout_fd, True)
        out = os.read(s.stdout_fd, 100)
        assert not s.child.running and s.child.popen.returncode == 5
        return status, out
    finally:
        for fd in (s.stdin_fd, s.stdout_fd, s.stderr_fd):
            close_quietly(fd)


async def test_child_exit_via_pidfd() -> None:
    assert await _spawn_and_wait("echo out; exit 5") == (5 << 8, b"out\n")


async def test_child_exit_via_polling_when_pidfd_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_pidfd(pid: int) -> int:
        raise PermissionError(1, "blocked by seccomp")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    assert await _spawn_and_wait("sleep 0.2; echo out; exit 5") == (5 << 8, b"out\n")


@pytest.fixture
def agent_started_under_nohup_from_a_script() -> Iterator[None]:
    """The signal state this process gives children: SIGHUP ignored (nohup), SIGINT and SIGQUIT
    ignored (a script's ``&``), SIGUSR1 and SIGTERM blocked (a supervisor's mask)."""
    ignored = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
    before = {sig: signal.getsignal(sig) for sig in ignored}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGUSR1, signal.SIGTERM))
    for sig in ignored:
        signal.signal(sig, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in before.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("pty", [False, True], ids=["exec", "pty"])
async def test_session_programs_start_with_default_signals(pty: bool, agent_started_under_nohup_from_a_script: None) -> None:
    """Otherwise a command outlives the client's hang-up and ^C does not interrupt it."""
    from hatchway.sshd.process import _passes_on_signals

    assert _passes_on_signals()
    out = await _session_output(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"], pty)
    assert out == b"SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"


async def _session_output(argv: list[str], pty: bool) -> bytes:
    """What a session program spawned as the built-in server does it (with a terminal or
    not) writes, once it has exited 0."""
    from hatchway.sshd.process import close_quietly, spawn

    master, slave = os.openpty() if pty else (None, None)
    s = spawn(
        executable=f"/bin/{argv[0]}",
        argv=argv,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        pty_master=master,
        pty_slave=slave,
    )
    try:
        assert await asyncio.wait_for(s.child.wait(), 10) == 0
        os.set_blocking(s.stdout_fd, True)
        return os.read(s.stdout_fd, 1000).replace(b"\r\n", b"\n")
    finally:
        for fd in (s.stdin_fd, s.stdout_fd, s.stderr_fd, master):
            close_quietly(fd)


async def test_spawn_failure_closes_everything() -> None:
    from hatchway.sshd.process import spawn

    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(FileNotFoundError):
        spawn(executable="/nonexistent/shell", argv=["x"], cwd="/", env={})
    master, slave = os.openpty()
    try:
        with pytest.raises(FileNotFoundError):
            spawn(
                executable="/nonexistent/shell",
                argv=["x"],
                cwd="/",
                env={},
                pty_master=master,
                pty_slave=slave,
            )
    finally:
        os.close(master)
    assert set(os.listdir("/proc/self/fd")) == before  # slave closed by spawn


@pytest.mark.parametrize("pty", [False, True], ids=["exec", "pty"])
@pytest.mark.parametrize("raised", [True, False], ids=["agent raised its limit", "agent kept its limit"])
async def test_session_programs_start_with_the_open_files_limit_the_agent_was_started_with(
    pty: bool, raised: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent raises its soft limit for its sockets (hatchway.fdlimit); a login gets the one
    its service manager or container gave, as under OpenSSH."""
    import resource

    from hatchway import fdlimit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    started = (soft - 7, hard)  # as if this process had raised its soft limit from there
    monkeypatch.setattr(fdlimit, "_started_with", started if raised else None)
    out = await _session_output(["sh", "-c", "ulimit -Sn; ulimit -Hn"], pty)
    assert out.decode().split() == [str(soft - 7 if raised else soft), str(hard)]
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)  # the agent's own is untouched
