"""The built-in SSH server driven by the real OpenSSH client (/usr/bin/ssh).

The server runs on its own event loop in a thread; a loopback listener hands every accepted
socket to ``BuiltinSSHServer.handle`` exactly like the agent hands it relayed streams. Host
keys are pinned (StrictHostKeyChecking=yes) so a changing host key fails loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hatchway.sshd.server import BuiltinSSHServer, SessionIdentity
from tests.helpers.flood import HUGE_WINDOW, Counting, flood_command, settle, written_by
from tests.helpers.server import wait_for

SSH = "/usr/bin/ssh"
pytestmark = pytest.mark.skipif(
    not (os.path.exists(SSH) and shutil.which("ssh-keygen")),
    reason="needs the OpenSSH client",
)
USER = pwd.getpwuid(os.getuid()).pw_name
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


class ServerThread:
    """A BuiltinSSHServer behind a 127.0.0.1:0 listener, on an event loop in a thread."""

    def __init__(self, **server_kwargs: object) -> None:
        self.kwargs = server_kwargs
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="sshd-test-loop", daemon=True
        )
        self.server: BuiltinSSHServer
        self.port = 0
        self._handlers: set[asyncio.Task[None]] = set()

    def call(self, coro, timeout: float = 20):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> ServerThread:
        self.thread.start()
        self.call(self._start())
        return self

    async def _start(self) -> None:
        self.server = BuiltinSSHServer(**self.kwargs)  # type: ignore[arg-type]
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.accept_task = asyncio.create_task(self._accept_loop())

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sock, addr = await loop.sock_accept(self.listener)
            task = asyncio.create_task(
                self.server.handle(sock, addr, sock.getsockname())
            )
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def close_server(self) -> None:
        self.call(self.server.close())

    def stop(self) -> None:
        async def _stop() -> None:
            self.accept_task.cancel()
            await asyncio.gather(self.accept_task, return_exceptions=True)
            self.listener.close()
            await self.server.close()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        try:
            self.call(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Env:
    """Paths and helpers shared by the tests of this module."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.home = root / "home"
        (self.home / ".ssh").mkdir(parents=True, mode=0o700)
        self.authorized_keys = self.home / ".ssh" / "authorized_keys"
        self.host_key = root / "agent" / "ssh_host_ed25519_key"
        self.known_hosts = root / "known_hosts"
        self.key_a = self._keygen("a")
        self.key_b = self._keygen("b")
        self.authorized_keys.write_text(self.pub(self.key_a))
        self.authorized_keys.chmod(0o600)
        (self.home / ".ssh" / "environment").write_text(
            "# user file\n\nFROM_SSH_ENVIRONMENT=from file = kept\n  INDENTED=yes\n"
        )

    def _keygen(self, name: str) -> Path:
        path = self.root / f"id_{name}"
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"test-{name}",
                "-f",
                str(path),
            ],
            check=True,
        )
        return path

    @staticmethod
    def pub(key: Path) -> str:
        return key.with_suffix(".pub").read_text()

    def server_kwargs(self) -> dict[str, object]:
        return {
            "host_key_path": self.host_key,
            "authorized_keys_path": self.authorized_keys,
            "base_env": {"IMAGE_VAR": "from image", "HATCHWAY_WORKSPACE_NAME": "dev"},
            "identity": SessionIdentity(user=USER, home=self.home, shell="/bin/bash"),
        }

    def pin(self, srv: ServerThread) -> None:
        self.known_hosts.write_text(
            "".join(
                f"[127.0.0.1]:{srv.port} {line}\n"
                for line in srv.server.host_public_keys()
            )
        )

    def ssh_argv(
        self, srv: ServerThread, *args: str, key: Path | None = None, user: str = USER
    ) -> list[str]:
        return [
            SSH, "-F", "/dev/null",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-i", str(key or self.key_a),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-p", str(srv.port),
            *args[:-1], f"{user}@127.0.0.1", *args[-1:],
        ]  # fmt: skip

    def ssh(
        self,
        srv: ServerThread,
        *args: str,
        key: Path | None = None,
        user: str = USER,
        input: bytes | None = None,
        timeout: float = 30,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ssh; the last element of ``args`` is the remote command ('' for none)."""
        argv = self.ssh_argv(srv, *args, key=key, user=user)
        if argv[-1] == "":
            argv.pop()
        return subprocess.run(
            argv,
            check=False,
            input=input if input is not None else b"",
            capture_output=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return Env(tmp_path_factory.mktemp("sshd"))


@pytest.fixture(scope="module")
def srv(env: Env) -> Iterator[ServerThread]:
    s = ServerThread(**env.server_kwargs()).start()
    env.pin(s)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture()
def restore_authorized_keys(env: Env) -> Iterator[None]:
    before = env.authorized_keys.read_text()
    yield
    env.authorized_keys.write_text(before)


def parse_env(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in ANSI.sub(b"", data).replace(b"\r", b"").decode().split("\n"):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", raw)
        if m:
            out[m.group(1)] = m.group(2)
    return out


# ---- exec ------------------------------------------------------------------------------------


def test_exec_stdout_stderr_and_exit_status(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "echo hello; echo oops >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"hello\n", b"oops\n")


def test_exec_success_is_zero(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "pwd")
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{env.home}\n".encode(), b"")


def test_killed_command_reports_signal(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "echo before; kill -9 $$")
    # exit-signal KILL: OpenSSH's client exits 255 for a remote command killed by a signal
    assert (r.returncode, r.stdout) == (255, b"before\n")


def test_last_line_of_immediately_exiting_command(env: Env, srv: ServerThread) -> None:
    for _ in range(5):  # races between exit and output show up as flakes; repeat
        r = env.ssh(srv, "printf 'first\\nthe last line\\n'")
        assert (r.returncode, r.stdout) == (0, b"first\nthe last line\n")
        r = env.ssh(srv, "printf 'no newline at end'; exit 4")
        assert (r.returncode, r.stdout) == (4, b"no newline at end")


def test_stdin_round_trip_10mib(env: Env, srv: ServerThread) -> None:
    payload = os.urandom(10 * 1024 * 1024)
    r = env.ssh(srv, "cat", input=payload, timeout=60)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == len(payload)
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(payload).hexdigest()


def test_stdin_eof_reaches_command(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "wc -c", input=b"12345")
    assert (r.returncode, r.stdout.strip()) == (0, b"5")


def test_large_output_50mib_delivered(env: Env, srv: ServerThread) -> None:
    size = 50 * 1024 * 1024
    r = env.ssh(srv, f"yes 0123456789abcdef | head -c {size}", timeout=60)
    expected = (b"0123456789abcdef\n" * (size // 17 + 1))[:size]
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == size
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(expected).digest()


def test_large_stderr_and_stdout_together(env: Env, srv: ServerThread) -> None:
    r = env.ssh(
        srv,
        "head -c 8000000 /dev/zero >&2 & head -c 9000000 /dev/zero; wait",
        timeout=60,
    )
    assert (r.returncode, len(r.stdout), len(r.stderr)) == (0, 9_000_000, 8_000_000)


# ---- environment -------------------------------------------------------------------------------


def _assert_session_env(env: Env, srv: ServerThread, got: dict[str, str]) -> None:
    m = re.fullmatch(
        rf"127\.0\.0\.1 (\d+) 127\.0\.0\.1 {srv.port}", got.get("SSH_CONNECTION", "")
    )
    assert m, got.get("SSH_CONNECTION")
    assert got["SSH_CLIENT"] == f"127.0.0.1 {m.group(1)} {srv.port}"
    assert got["USER"] == USER
    assert got["LOGNAME"] == USER
    assert got["HOME"] == str(env.home)
    assert got["SHELL"] == "/bin/bash"
    assert got["MAIL"] == f"/var/mail/{USER}"
    assert got["IMAGE_VAR"] == "from image"
    assert got["HATCHWAY_WORKSPACE_NAME"] == "dev"
    assert got["FROM_SSH_ENVIRONMENT"] == "from file = kept"
    assert got["INDENTED"] == "yes"


def test_exec_environment(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "-o", "SetEnv=LC_TESTING=c-env BAD_VAR=nope", "env")
    assert r.returncode == 0, r.stderr
    got = parse_env(r.stdout)
    _assert_session_env(env, srv, got)
    assert got["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert got["LC_TESTING"] == "c-env"
    assert "BAD_VAR" not in got
    assert "SSH_TTY" not in got
    assert "TERM" not in got


def test_login_shell_with_pty(env: Env, srv: ServerThread) -> None:
    script = b"echo ARGV0=$0; echo CWD=$PWD; shopt -q login_shell && echo LOGIN=yes; env; exit\n"
    r = env.ssh(srv, "-tt", "", input=script, env={"TERM": "vt220"})
    assert r.returncode == 0, r.stderr
    got = parse_env(r.stdout)
    _assert_session_env(env, srv, got)
    assert got["ARGV0"] == "-bash"
    assert got["CWD"] == str(env.home)
    assert got["LOGIN"] == "yes"
    assert got["TERM"] == "vt220"
    assert re.fullmatch(r"/dev/pts/\d+", got["SSH_TTY"]), got["SSH_TTY"]


def test_exec_with_pty(env: Env, srv: ServerThread) -> None:
    r = env.ssh(
        srv,
        "-tt",
        "tty; stty size; echo $TERM; echo $SSH_TTY",
        env={"TERM": "xterm-256color"},
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().split("\r\n")
    assert re.fullmatch(r"/dev/pts/\d+", lines[0]), lines
    # ssh's stdin is no terminal: it asks for 0x0, which stays 0x0 as under sshd
    assert lines[1:] == ["0 0", "xterm-256color", lines[0], ""]


def test_exec_without_pty_has_no_tty(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "tty; echo rc=$?")
    assert r.stdout == b"not a tty\nrc=1\n"


# ---- authentication ------------------------------------------------------------------------


def test_unknown_key_refused(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "echo should not run", key=env.key_b)
    assert (r.returncode, r.stdout) == (255, b"")
    assert b"Permission denied (publickey)" in r.stderr  # only publickey is offered


def test_other_user_name_refused(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "echo should not run", user="nobody-else")
    assert (r.returncode, r.stdout) == (255, b"")
    assert b"Permission denied (publickey)" in r.stderr


def test_removed_key_refused_on_next_connection(
    env: Env, srv: ServerThread, restore_authorized_keys: None
) -> None:
    assert env.ssh(srv, "echo one").stdout == b"one\n"
    env.authorized_keys.write_text("# rotated\nnot a key line\n" + env.pub(env.key_b))
    r = env.ssh(srv, "echo two")
    assert (r.returncode, r.stdout) == (255, b"")
    r = env.ssh(srv, "echo three", key=env.key_b)
    assert (r.returncode, r.stdout) == (0, b"three\n")


def test_missing_authorized_keys_refuses_everything(
    env: Env, srv: ServerThread, restore_authorized_keys: None
) -> None:
    env.authorized_keys.unlink()
    r = env.ssh(srv, "echo no")
    assert (r.returncode, r.stdout) == (255, b"")


# ---- host key ------------------------------------------------------------------------------


def test_host_key_stable_across_restart(env: Env, srv: ServerThread) -> None:
    first = srv.server.host_public_keys()
    assert len(first) == 1 and first[0].startswith("ssh-ed25519 ")
    assert env.host_key.stat().st_mode & 0o777 == 0o600
    assert env.host_key.parent.stat().st_mode & 0o777 == 0o700
    again = ServerThread(**env.server_kwargs()).start()
    try:
        assert again.server.host_public_keys() == first
        # known_hosts pinned for the first server, rewritten for the new port with the SAME key
        env.known_hosts.write_text(f"[127.0.0.1]:{again.port} {first[0]}\n")
        r = env.ssh(again, "echo restarted")
        assert (r.returncode, r.stdout) == (0, b"restarted\n"), r.stderr
    finally:
        again.stop()
        env.pin(srv)


# ---- sessions end, nothing leaks -------------------------------------------------------------


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_hangs_up_command(env: Env, srv: ServerThread) -> None:
    with subprocess.Popen(
        env.ssh_argv(srv, "echo $$; exec sleep 60"),
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        proc.kill()
    assert _wait_gone(pid), "remote command survived the client going away"


def test_keepalives_answered(env: Env, srv: ServerThread) -> None:
    r = env.ssh(
        srv,
        "-o",
        "ServerAliveInterval=1",
        "-o",
        "ServerAliveCountMax=1",
        "sleep 2.5; echo alive",
    )
    assert (r.returncode, r.stdout) == (0, b"alive\n"), r.stderr


def test_unknown_subsystem_refused_and_sftp_exits_zero(env: Env, srv: ServerThread) -> None:
    r = env.ssh(srv, "-s", "no-such-subsystem")
    assert r.returncode == 255
    assert b"subsystem request failed" in r.stderr
    # the sftp subsystem with a client that sends nothing and leaves: a clean end, status 0
    r = env.ssh(srv, "-s", "sftp")
    assert (r.returncode, r.stdout) == (0, b"")


def test_a_forced_command_runs_for_sftp_with_its_program_in_ssh_original_command(
    env: Env, srv: ServerThread, restore_authorized_keys: None
) -> None:
    """sshd runs a key's forced command for a subsystem it serves, with the subsystem's program
    in SSH_ORIGINAL_COMMAND (``internal-sftp`` for a built-in sftp, as this one is): what a
    wrapper checks before it lets sftp through. Any other subsystem stays refused. The forced
    command ran for any subsystem name, with no SSH_ORIGINAL_COMMAND."""
    env.authorized_keys.write_text(f'command="echo forced: [$SSH_ORIGINAL_COMMAND]" {env.pub(env.key_b)}')
    r = env.ssh(srv, "-s", "sftp", key=env.key_b)
    assert (r.returncode, r.stdout) == (0, b"forced: [internal-sftp]\n"), r.stderr
    r = env.ssh(srv, "-s", "no-such-subsystem", key=env.key_b)
    assert (r.returncode, r.stdout) == (255, b""), r.stderr
    assert b"subsystem request failed" in r.stderr


def test_the_connection_line_tells_a_refused_key_from_a_client_gone_before_authenticating(
    env: Env, srv: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hatchway.sshd")
    client = "127.0.0.2"  # this test's connections, told apart from any other's still ending

    def outcomes(n: int) -> list[str] | None:
        found = re.findall(rf"{re.escape(client)}:\d+: connection (.*?) \(user ", caplog.text)
        return found if len(found) >= n else None

    with socket.create_connection(("127.0.0.1", srv.port), timeout=10, source_address=(client, 0)) as c:
        assert c.recv(100).startswith(b"SSH-2.0-")  # then gone, as a stream the relay ended
    wait_for(lambda: outcomes(1), 10, what="the first connection's line")
    r = env.ssh(srv, "-o", f"BindAddress={client}", "true", key=env.key_b)  # a key not in authorized_keys
    assert r.returncode == 255, r.stderr
    lines = wait_for(lambda: outcomes(2), 10, what="the second connection's line")
    assert lines == ["ended before authentication: Connection lost", "refused: key not in authorized_keys"]


def test_disabled_features_refused_cleanly(env: Env, srv: ServerThread, caplog: pytest.LogCaptureFixture) -> None:
    from hatchway.sshd.config import BuiltinSSHConfig

    caplog.set_level(logging.INFO, logger="hatchway.sshd")

    config = BuiltinSSHConfig(allow_forwarding=False, allow_agent_forwarding=False, allow_x11_forwarding=False)
    s = ServerThread(**env.server_kwargs(), config=config).start()
    saved = env.known_hosts.read_text()
    env.pin(s)
    try:
        r = env.ssh(s, "-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9", "echo never")
        assert r.returncode == 255
        assert b"remote port forwarding failed" in r.stderr
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            lport = probe.getsockname()[1]
        with subprocess.Popen(env.ssh_argv(s, "-L", f"127.0.0.1:{lport}:127.0.0.1:9", "echo ready; sleep 30"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            with socket.create_connection(("127.0.0.1", lport), timeout=10) as c:
                assert c.recv(10) == b""  # ssh closes it: the server refused the channel
            proc.kill()
            proc.communicate(timeout=10)
        assert "direct-tcpip refused: forwarding is disabled" in caplog.text
        r = env.ssh(s, "-A", "-Y", "echo [$SSH_AUTH_SOCK] [$DISPLAY]", env={"DISPLAY": ":99", "LOGLEVEL": "x"})
        assert (r.returncode, r.stdout) == (0, b"[] []\n")
    finally:
        s.stop()
        env.known_hosts.write_text(saved)


def test_login_grace_session_limit_and_dead_client(env: Env, srv: ServerThread) -> None:
    import asyncssh

    from hatchway.sshd.config import BuiltinSSHConfig

    config = BuiltinSSHConfig(login_grace=1.0, keepalive_interval=0.3, keepalive_count_max=2, max_sessions=2)
    s = ServerThread(**env.server_kwargs(), config=config).start()
    saved = env.known_hosts.read_text()
    env.pin(s)
    try:
        # login grace: a client that never authenticates is cut off
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", s.port), timeout=10) as raw:
            raw.sendall(b"SSH-2.0-OpenSSH_9.2 silent\r\n")
            data = b""
            while chunk := raw.recv(4096):
                data += chunk
        assert data.startswith(b"SSH-2.0-OpenSSH_compatible Hatchway_")
        assert 0.8 < time.monotonic() - started < 5

        # sessions per connection
        async def sessions() -> tuple[int, str]:
            async with asyncssh.connect("127.0.0.1", s.port, username=USER, client_keys=[str(env.key_a)],
                                        known_hosts=str(env.known_hosts), config=None, agent_path=None) as conn:
                first = await conn.create_process("sleep 5")
                second = await conn.create_process("sleep 5")
                with pytest.raises(asyncssh.ChannelOpenError) as refused:
                    await conn.create_process("true")
                first.terminate()
                await first.wait()
                for _ in range(50):  # a slot is free again once the server has seen the close
                    try:
                        third = await conn.run("echo third", check=True)
                        break
                    except asyncssh.ChannelOpenError:
                        await asyncio.sleep(0.05)
                second.terminate()
                return refused.value.code, str(third.stdout)

        code, third = asyncio.run(sessions())
        assert (code, third) == (asyncssh.OPEN_RESOURCE_SHORTAGE, "third\n")

        # a client that stops answering is dropped by the server's keepalive
        with subprocess.Popen(env.ssh_argv(s, "-o", "ServerAliveInterval=0", "echo $$; exec sleep 60"),
                              stdout=subprocess.PIPE, stdin=subprocess.PIPE) as proc:
            assert proc.stdout is not None
            pid = int(proc.stdout.readline())
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                assert _wait_gone(pid, 5), "a silent client's session survived the keepalive"
            finally:
                proc.kill()
    finally:
        s.stop()
        env.known_hosts.write_text(saved)


def test_no_blocking_file_io_on_the_event_loop(env: Env, srv: ServerThread, tmp_path: Path) -> None:
    """SFTP, agent forwarding and Unix-socket forwarding touch the file system only from threads.

    A Python audit hook sees every open/listdir/rename/... and which thread does it.
    """
    import sys

    watched = {"open", "os.listdir", "os.scandir", "os.remove", "os.rename", "os.mkdir", "os.rmdir",
               "os.symlink", "os.link", "os.chmod", "os.chown", "os.utime", "os.truncate", "shutil.rmtree"}
    seen: list[tuple[str, object]] = []
    active = threading.Event()
    loop_thread = srv.thread.ident

    def hook(event: str, args: tuple[object, ...]) -> None:
        if not active.is_set() or threading.get_ident() != loop_thread:
            return
        if event in watched or (event == "socket.bind" and len(args) > 1 and isinstance(args[1], (str, bytes))):
            seen.append((event, args[:2]))

    sys.addaudithook(hook)  # cannot be removed; inactive outside this test
    local = tmp_path / "up.bin"
    local.write_bytes(os.urandom(300_000))
    batch = tmp_path / "batch"
    batch.write_text(f"put {local} up.bin\nget up.bin {tmp_path}/down.bin\nls -l\nrename up.bin moved.bin\n"
                     "chmod 600 moved.bin\nsymlink moved.bin ln.bin\nmkdir d\nrmdir d\ndf\nrm ln.bin\n"
                     "rm moved.bin\n")
    sftp = ["sftp", *env.ssh_argv(srv, "x")[1:-2]]
    sftp[sftp.index("-p")] = "-P"
    active.set()
    try:
        r = subprocess.run([*sftp, "-b", str(batch), f"{USER}@127.0.0.1"], capture_output=True, timeout=60,
                           check=False)
        assert r.returncode == 0, r.stderr
        agent_sock = tmp_path / "agent.sock"
        agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(agent_sock)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not agent_sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            remote_sock = env.home / "fwd.sock"
            r = env.ssh(srv, "-A", "-R", f"{remote_sock}:127.0.0.1:9",
                        "test -S \"$SSH_AUTH_SOCK\" && test -S fwd.sock && echo both",
                        env={"SSH_AUTH_SOCK": str(agent_sock)})
            assert r.stdout == b"both\n", r.stderr
        finally:
            agent.terminate()
            agent.wait(10)
        deadline = time.monotonic() + 5
        while remote_sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not remote_sock.exists()
    finally:
        active.clear()
    assert (tmp_path / "down.bin").read_bytes() == local.read_bytes()
    assert seen == []


def test_close_ends_live_sessions(env: Env) -> None:
    s = ServerThread(**env.server_kwargs()).start()
    saved = env.known_hosts.read_text()
    env.pin(s)
    try:
        with subprocess.Popen(
            env.ssh_argv(s, "echo $$; exec sleep 60"),
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
        ) as proc:
            try:
                assert proc.stdout is not None
                pid = int(proc.stdout.readline())
                started = time.monotonic()
                s.close_server()
                assert proc.wait(10) == 255
                assert time.monotonic() - started < 8
                assert _wait_gone(pid)
            finally:
                proc.kill()
    finally:
        s.stop()
        env.known_hosts.write_text(saved)


# ---- signals and window changes (OpenSSH's client cannot send these on demand) --------------


def test_signal_and_window_change_via_asyncssh_client(
    env: Env, srv: ServerThread
) -> None:
    import asyncssh

    async def scenario() -> tuple[bytes, int | None, bytes, object]:
        async with asyncssh.connect(
            "127.0.0.1",
            srv.port,
            username=USER,
            client_keys=[str(env.key_a)],
            known_hosts=str(env.known_hosts),
            config=None,
            agent_path=None,
        ) as conn:
            script = 'trap "echo got-INT; exit 7" INT; echo ready; while :; do sleep 0.05; done'
            p = await conn.create_process(script, encoding=None)
            assert await asyncio.wait_for(p.stdout.readline(), 10) == b"ready\n"
            p.send_signal("INT")
            out1 = await asyncio.wait_for(p.stdout.read(), 10)
            st1 = (await p.wait()).exit_status

            script = "trap 'stty size' WINCH; echo ready; while :; do sleep 0.05; done"
            p = await conn.create_process(
                script, term_type="xterm", term_size=(80, 24), encoding=None
            )
            assert await asyncio.wait_for(p.stdout.readline(), 10) == b"ready\r\n"
            p.change_terminal_size(132, 43)
            line = await asyncio.wait_for(p.stdout.readline(), 10)
            p.send_signal("TERM")
            await asyncio.wait_for(p.wait(), 10)

            # exit-signal is reported by name, as RFC 4254 wants it
            r = await conn.run("kill -TERM $$", check=False)
            return out1, st1, line, (r.exit_status, r.exit_signal and r.exit_signal[:2])

    out1, st1, line, killed = asyncio.run(scenario())
    assert (out1, st1) == (b"got-INT\n", 7)
    assert line == b"43 132\r\n"
    assert killed == (-1, ("TERM", False))


def test_a_session_after_no_more_sessions_drops_the_connection(env: Env, srv: ServerThread) -> None:
    """OpenSSH's client says no-more-sessions@openssh.com once its one session is open (when it
    is not a connection-sharing master): a session opened after that did not come from it, and
    the connection is dropped, as sshd does. Sessions before it are unaffected."""
    import asyncssh
    from asyncssh.constants import MSG_REQUEST_SUCCESS

    async def scenario() -> tuple[int, bytes, type[BaseException] | None]:
        async with asyncssh.connect(
            "127.0.0.1", srv.port, username=USER, client_keys=[str(env.key_a)],
            known_hosts=str(env.known_hosts), config=None, agent_path=None,
        ) as conn:
            first = await conn.create_process("read line; echo got $line", encoding=None)
            # what OpenSSH's client sends (asyncssh's client has no call for it)
            reply, _ = await asyncio.wait_for(conn._make_global_request(b"no-more-sessions@openssh.com"), 10)
            first.stdin.write(b"x\n")
            out = await asyncio.wait_for(first.stdout.read(), 10)  # the open session goes on
            try:
                await asyncio.wait_for(conn.run("echo second", check=False), 10)
            except (asyncssh.Error, OSError) as exc:
                return reply, out, type(exc)
            return reply, out, None

    reply, out, refused = asyncio.run(scenario())
    assert reply == MSG_REQUEST_SUCCESS and out == b"got x\n"
    assert refused is not None and issubclass(refused, (asyncssh.Error, OSError)), refused


def test_password_auth_not_offered(env: Env, srv: ServerThread) -> None:
    import asyncssh

    async def attempt() -> None:
        async with asyncssh.connect(
            "127.0.0.1",
            srv.port,
            username=USER,
            password="anything",
            client_keys=None,
            known_hosts=str(env.known_hosts),
            config=None,
            agent_path=None,
        ):
            pass

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())


# ---- no leaks ---------------------------------------------------------------------------------


def _open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


def _children_of_us() -> list[str]:
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if fields[1] == me:  # ppid
            found.append(f"{entry} {fields[0]}")
    return found


def test_no_fd_or_process_leaks(env: Env, srv: ServerThread) -> None:
    env.ssh(srv, "true")  # warm up lazily created loop resources (thread pool, ...)
    before = _open_fds()
    env.ssh(srv, "echo x; echo y >&2")
    env.ssh(srv, "-tt", "echo pty")
    env.ssh(srv, "-tt", "", input=b"exit\n")
    env.ssh(srv, "kill -9 $$")
    env.ssh(srv, "cat", input=b"z" * 1_000_000)
    env.ssh(srv, "echo no", key=env.key_b)
    # a detached background job is reparented away from us; the session still ends at once
    assert (
        env.ssh(srv, "(sleep 1 </dev/null >/dev/null 2>&1 &); echo bg").stdout
        == b"bg\n"
    )
    with subprocess.Popen(
        env.ssh_argv(srv, "echo $$; exec sleep 60"),
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        proc.kill()
    assert _wait_gone(pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_open_fds() - before or _children_of_us()):
        time.sleep(0.05)
    assert _open_fds() - before == set()
    assert _children_of_us() == []


# ---- the agent's way: a socketpair end and relayed addresses -----------------------------------


def test_socketpair_with_relayed_addresses(env: Env, srv: ServerThread) -> None:
    import asyncssh

    async def scenario() -> tuple[str, str, int | None]:
        ours, theirs = socket.socketpair()
        handler = asyncio.create_task(
            srv.server.handle(theirs, ("203.0.113.9", 40001), ("10.1.2.3", 22))
        )
        try:
            async with asyncssh.connect(
                sock=ours,
                host="workspace",
                username=USER,
                client_keys=[str(env.key_a)],
                known_hosts=None,
                config=None,
                agent_path=None,
            ) as conn:
                r = await conn.run(
                    'echo "$SSH_CONNECTION"; echo "$SSH_CLIENT"', check=False
                )
                out = str(r.stdout).splitlines()
                return out[0], out[1], r.exit_status
        finally:
            await asyncio.wait_for(
                handler, 10
            )  # handle() returns once the connection ends
            assert theirs.fileno() == -1  # and has closed the socket it was given

    # the server's loop runs in its thread; drive the client there too
    conn_line, client_line, status = srv.call(scenario())
    assert (conn_line, client_line, status) == (
        "203.0.113.9 40001 10.1.2.3 22",
        "203.0.113.9 40001 22",
        0,
    )


def test_from_is_matched_against_the_relayed_address_or_not_used_without_one(
    env: Env, srv: ServerThread, restore_authorized_keys: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The agent's stream is a socketpair (or no socket at all); the client's address is what the
    relay reported, and ``from=`` is matched against it (asyncssh compared the socket's peer).
    Without a reported address, a line with ``from=`` cannot be checked: it is not used, and the
    agent's log says why; the same key on a plain line still works."""
    import asyncssh

    async def login(client: tuple[str, int] | None) -> str:
        ours, theirs = socket.socketpair()
        handler = asyncio.create_task(srv.server.handle(theirs, client, ("10.1.2.3", 22)))
        try:
            async with asyncssh.connect(sock=ours, host="workspace", username=USER, client_keys=[str(env.key_b)],
                                        known_hosts=None, config=None, agent_path=None) as conn:
                return str((await conn.run("echo plain", check=True)).stdout)
        except asyncssh.PermissionDenied:
            return "denied"
        finally:
            await asyncio.wait_for(handler, 10)

    forced = 'command="echo from=${SSH_CLIENT%% *}"'
    relayed = ("203.0.113.9", 40001)
    for pattern, expected in (("203.0.113.0/24", "from=203.0.113.9\n"), ("203.0.113.9", "from=203.0.113.9\n"),
                              ("127.0.0.1", "denied"), ("*,!203.0.113.9", "denied")):
        env.authorized_keys.write_text(env.pub(env.key_a) + f'{forced},from="{pattern}" ' + env.pub(env.key_b))
        assert srv.call(login(relayed)) == expected, pattern
    caplog.set_level(logging.WARNING, logger="hatchway.sshd")
    env.authorized_keys.write_text(env.pub(env.key_a) + f'{forced},from="*" ' + env.pub(env.key_b))
    assert srv.call(login(None)) == "denied"
    assert [r.getMessage() for r in caplog.records if "from=" in r.getMessage()] == [
        f"{env.authorized_keys} line 2 not used for this connection: it limits the key with from=, and the "
        "client's address is unknown (the control plane did not send it)"
    ]
    env.authorized_keys.write_text(f'{forced},from="*" ' + env.pub(env.key_b) + env.pub(env.key_b))
    assert srv.call(login(None)) == "plain\n"


def test_garbage_instead_of_ssh_is_dropped(env: Env, srv: ServerThread) -> None:
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        banner = s.recv(256)
        assert banner.startswith(b"SSH-2.0-OpenSSH_compatible Hatchway_")
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert env.ssh(srv, "echo fine").stdout == b"fine\n"


def test_handle_after_close_closes_socket(env: Env) -> None:
    s = ServerThread(**env.server_kwargs()).start()
    try:
        s.close_server()
        ours, theirs = socket.socketpair()
        with ours:
            s.call(s.server.handle(theirs, None))
            assert theirs.fileno() == -1
            assert ours.recv(10) == b""
    finally:
        s.stop()


# ---- a client that grants huge windows and then stops reading --------------------------------

MIB = 1024 * 1024
FLOOD = 128 * MIB
BOUND = 16 * MIB  # kernel socket buffers and a few reads; without pacing: all of FLOOD


class FreezingLink:
    """The client's network path: passes bytes between asyncssh's socket and the server, and can
    stop passing on what the server sends, as a client whose host froze or whose link died."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.tasks: list[asyncio.Task[None]] = []
        self.socks: list[socket.socket] = []

    async def open(self) -> socket.socket:
        client_end, inner = socket.socketpair()
        upstream = socket.socket()
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # small, set before connect
        upstream.setblocking(False)
        await asyncio.get_running_loop().sock_connect(upstream, ("127.0.0.1", self.port))
        inner.setblocking(False)
        self.socks += [inner, upstream]
        self.tasks = [
            asyncio.create_task(self._copy(inner, upstream, None)),
            asyncio.create_task(self._copy(upstream, inner, self.flowing)),
        ]
        return client_end

    @staticmethod
    async def _copy(src: socket.socket, dst: socket.socket, gate: asyncio.Event | None) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError):
            while True:
                if gate is not None:
                    await gate.wait()
                data = await loop.sock_recv(src, 65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                await loop.sock_sendall(dst, data)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for sock in self.socks:
            sock.close()


async def _connect_through(link: FreezingLink, env: Env) -> Any:
    return await asyncssh.connect(
        sock=await link.open(), host="127.0.0.1", username=USER, client_keys=[str(env.key_a)],
        known_hosts=None, config=None, agent_path=None,
    )


def test_a_frozen_client_with_a_huge_window_stops_the_command_not_the_servers_memory(
    env: Env, srv: ServerThread
) -> None:
    """asyncssh would send a command's whole output into its transport's buffer: the window
    allows it. The session stops reading the command instead, and loses nothing."""

    async def scenario() -> tuple[int | None, int, object, bool]:
        link = FreezingLink(srv.port)
        conn = await _connect_through(link, env)
        try:
            chan, session = await conn.create_session(Counting, flood_command(FLOOD), window=HUGE_WINDOW, encoding=None)
            pid = int(await asyncio.wait_for(session.first_line, 10))
            link.flowing.clear()
            chan.write(b"go\n")
            written = await settle(written_by(pid), beyond=MIB)
            link.flowing.set()
            await asyncio.wait_for(session.done.wait(), 60)
            flooded = session.received - len(session.first_line.result()) - 1  # after the PID line
            return written, flooded, chan.get_exit_status(), session.eof
        finally:
            conn.close()
            await link.close()

    written, received, status, eof = asyncio.run(scenario())
    assert written is not None, "the command wrote all its output while the client read nothing"
    assert written < BOUND
    assert (received, status, eof) == (FLOOD, 0, True)


def test_a_frozen_client_with_a_huge_window_stops_a_forwarded_socket(env: Env, srv: ServerThread) -> None:
    """The same for ``ssh -L``: the forwarded program's writes block, nothing is lost."""
    listener = socket.create_server(("127.0.0.1", 0))
    sent = 0

    def serve() -> None:
        nonlocal sent
        conn, _ = listener.accept()
        with conn:
            conn.recv(1)  # floods once the link is frozen
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
            block = b"\0" * (1024 * 1024)
            with contextlib.suppress(OSError):
                while sent < FLOOD:
                    conn.sendall(block)
                    sent += len(block)

    server = threading.Thread(target=serve, daemon=True)
    server.start()

    async def scenario() -> tuple[int | None, int, bool]:
        link = FreezingLink(srv.port)
        conn = await _connect_through(link, env)
        try:
            chan, forwarded = await conn.create_connection(
                Counting, "127.0.0.1", listener.getsockname()[1], window=HUGE_WINDOW
            )
            link.flowing.clear()
            chan.write(b"!")
            progress = await settle(lambda: sent if server.is_alive() else None, beyond=MIB)
            link.flowing.set()
            await asyncio.wait_for(forwarded.done.wait(), 60)
            return progress, forwarded.received, forwarded.eof
        finally:
            conn.close()
            await link.close()

    try:
        progress, received, eof = asyncio.run(scenario())
    finally:
        listener.close()
        server.join(10)
    assert progress is not None, "the forwarded program sent everything while the client read nothing"
    assert progress < BOUND
    assert (received, eof) == (FLOOD, True)
