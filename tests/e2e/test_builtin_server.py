"""The built-in SSH server carrying a developer's whole day (issue 4), end to end.

Everything here goes through the real relay, like a developer's laptop would: a real
``hatchway server``, a ``manual`` workspace whose agent runs as its own process with its own HOME
(no server on its port 22, so the built-in server answers), ``hatchway config-ssh`` writing the
ssh config, and the real OpenSSH tools (``ssh``, ``scp``, ``sftp``, ``rsync``, ``git``) using it.
One server and one agent serve the whole module. The agent is started with short keepalive and
login-grace settings and low per-connection limits, so those are observable in seconds.

One test (or group of tests) per numbered point of the issue, then the leak test.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import grp
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import termios
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.flood import (
    BOUND,
    HUGE_WINDOW,
    Counting,
    flood_command,
    settle,
    written_by,
)
from tests.helpers.server import HATCHWAY, RunningServer, wait_for
from tests.helpers.sshclient import ssh_connect

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("ssh", "scp", "sftp", "rsync", "git", "ssh-agent", "ssh-add")),
    reason="needs the OpenSSH client, rsync and git",
)

MOTD = "Welcome to the dev workspace.\nBe nice.\n"
KEEPALIVE_INTERVAL = 1  # the agent's server-side keepalive (s); two misses and the client is dropped
LOGIN_GRACE = 5
MAX_SESSIONS = 4
MAX_CHANNELS = 12
X11_OFFSET = 60
ACCEPTED_ENV = "HW_ACCEPTED GIT_*"
MIB = 1024 * 1024


@dataclass
class World:
    server: RunningServer
    bob: Cli
    agent: AgentProcess
    ssh_config: Path
    tmp: Path

    @property
    def home(self) -> Path:
        return self.agent.home

    def argv(self, *args: str, tool: str = "ssh") -> list[str]:
        return [tool, "-F", str(self.ssh_config), "-o", "BatchMode=yes", *args]

    def env(self, **extra: str) -> dict[str, str]:
        return {**self.bob.env(), **extra}

    def ssh(self, *args: str, stdin: bytes | None = b"", timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.argv(*args), input=stdin, capture_output=True, timeout=timeout,
                              env=env or self.env(), check=False)

    def run(self, argv: list[str], *, stdin: bytes | None = b"", timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=env or self.env(),
                              cwd=cwd, check=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("builtin")
    srv = RunningServer(tmp / "data")
    srv.start()
    alice, bob = Cli(tmp / "alice"), Cli(tmp / "bob")
    agent: AgentProcess | None = None
    try:
        alice.login(srv.url, "alice", "alice-password", first=True)
        alice.ok("users", "create", "bob", "--email", "bob@example.com", "--password-stdin", stdin="bob-password\n")
        alice.ok("providers", "create", "byo", "--kind", "manual")
        bob.login(srv.url, "bob", "bob-password")
        created = bob.ok("workspaces", "create", "dev", "--provider", "byo", "--env", "FOO=bar baz",
                         "--env", "EDITOR=vim").out
        token = created.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0]
        home = tmp / "ws-home"
        (home / ".ssh").mkdir(parents=True)
        (home / ".ssh" / "environment").write_bytes(b"MY_VAR=mine\n")
        motd = tmp / "motd"
        motd.write_text(MOTD)
        agent = AgentProcess(srv.url, token, home, extra_env={
            "HATCHWAY_SSH_ACCEPT_ENV": ACCEPTED_ENV,
            "HATCHWAY_SSH_MOTD": str(motd),
            "HATCHWAY_SSH_KEEPALIVE_INTERVAL": str(KEEPALIVE_INTERVAL),
            "HATCHWAY_SSH_KEEPALIVE_COUNT": "2",
            "HATCHWAY_SSH_LOGIN_GRACE": str(LOGIN_GRACE),
            "HATCHWAY_SSH_MAX_SESSIONS": str(MAX_SESSIONS),
            "HATCHWAY_SSH_MAX_CHANNELS": str(MAX_CHANNELS),
            "HATCHWAY_SSH_X11_DISPLAY_OFFSET": str(X11_OFFSET),
        })
        agent.start()
        w = World(srv, bob, agent, tmp / "bob" / "ssh_config", tmp)

        def ready() -> bool:
            ws = bob.ok("workspaces", "show", "dev", "--json").json()
            return bool(ws["agent_connected"] and ws["host_keys"])

        wait_for(ready, 30, what="the agent to connect")
        bob.ok("config-ssh", "--ssh-config", str(w.ssh_config), "-y")
        yield w
    finally:
        if agent is not None:
            agent.stop()
        srv.stop()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def random_file(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes (fast: one random MiB, varied per block)."""
    block = os.urandom(MIB)
    h = hashlib.sha256()
    with open(path, "wb") as fh:
        for i in range(size // MIB):
            chunk = i.to_bytes(8, "little") + block[8:]
            fh.write(chunk)
            h.update(chunk)
        rest = block[: size % MIB]
        fh.write(rest)
        h.update(rest)
    return h.hexdigest()


class PtyClient:
    """Run a client under a pseudo-terminal of ours (like a developer's terminal window)."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int = 24, cols: int = 80) -> None:
        self.master, slave = os.openpty()
        set_winsize(slave, rows, cols)
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.output = b""

    def read_until(self, pattern: bytes, timeout: float = 20) -> bytes:
        deadline = time.monotonic() + timeout
        while pattern not in self.output:
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen in {self.output[-2000:]!r}")
            if not self._read(0.1) and self.proc.poll() is not None and not self._read(0.1):
                raise AssertionError(f"client exited before {pattern!r}: {self.output[-2000:]!r}")
        return self.output

    def _read(self, wait: float) -> bool:
        import select

        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return False
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the client side of the terminal is gone
            return False
        self.output += data
        return bool(data)

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int) -> None:
        """What a terminal window does: new size, then SIGWINCH to the program in it."""
        set_winsize(self.master, rows, cols)
        os.kill(self.proc.pid, signal.SIGWINCH)

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        while self._read(0.05):
            pass
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class EchoServer:
    """A TCP or Unix-socket echo server (a program of the developer's or of the workspace)."""

    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.port = self.sock.getsockname()[1]
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(str(path))
            self.sock.listen()
            self.port = 0
        self.path = path
        self.accepted = 0
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self._conns:
            conn.close()
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self._thread.join(5)

    def __enter__(self) -> EchoServer:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_roundtrip(sock: socket.socket, payload: bytes) -> bytes:
    """Send payload, half-close, read everything back."""
    sock.settimeout(20)
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@contextlib.contextmanager
def control_master(world: World, name: str, *options: str, env: dict[str, str] | None = None) -> Iterator[Path]:
    """One SSH connection that later ssh commands multiplex over (ssh -S), like ControlMaster."""
    path = world.tmp / f"ctl-{name}"
    master = subprocess.Popen(
        world.argv("-M", "-S", str(path), "-N", *options, "hatchway.dev"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or world.env(),
    )
    try:
        wait_for(lambda: path.exists() or master.poll() is not None, 30, what="the control master")
        assert master.poll() is None, master.stderr.read() if master.stderr else b""
        yield path
    finally:
        subprocess.run(world.argv("-S", str(path), "-O", "exit", "hatchway.dev"), capture_output=True,
                       env=world.env(), timeout=30, check=False)
        try:
            master.wait(10)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        if master.stderr:
            master.stderr.close()


def pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # a zombie is gone for our purposes only once reaped: check /proc
        time.sleep(0.05)
    return False


def parse_env(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", data).replace(b"\r", b"").decode().split("\n"):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", raw)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def listening(port: int) -> set[str]:
    """The addresses something listens on at TCP ``port`` (this machine is the workspace)."""
    out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


# ---- 1. sessions -------------------------------------------------------------------------------


def test_1_login_shell_with_pty(world: World) -> None:
    script = b"echo ARGV0=$0; echo CWD=$PWD; shopt -q login_shell && echo LOGIN=yes; tty; stty size; exit 3\n"
    r = world.ssh("-tt", "hatchway.dev", stdin=script, env=world.env(TERM="xterm-256color"))
    assert r.returncode == 3, r.stderr
    lines = r.stdout.replace(b"\r\n", b"\n").decode()
    assert f"ARGV0=-bash\nCWD={world.home}\nLOGIN=yes\n" in lines
    # ssh's stdin is no terminal here, so it asks for a 0x0 one: sshd keeps that size
    assert re.search(r"^/dev/pts/\d+\n0 0\n", lines, re.MULTILINE), lines


def test_1_the_terminal_is_sized_owned_and_writable_as_under_sshd(world: World) -> None:
    """What ``ssh -tt`` without a terminal of its own asks for (0 columns, 0 rows) stays 0x0, as
    under sshd, instead of becoming 80x24; and the terminal device is the user's with group
    ``tty`` and mode 0620 (what ``write`` and ``mesg`` rely on), or 0600 and the user's group where no ``tty``
    group exists, as sshd's pty_setowner makes it, whatever devpts' own default is."""
    try:
        group, mode = "tty", "620"
        grp.getgrnam(group)
    except KeyError:
        group, mode = grp.getgrgid(os.getgid()).gr_name, "600"
    r = world.ssh("-tt", "hatchway.dev", 'stty size; stat -c "%a %U %G" "$(tty)"')
    user = world.bob.ok("workspaces", "show", "dev", "--json").json()["os_user"]
    assert (r.returncode, r.stdout) == (0, f"0 0\r\n{mode} {user} {group}\r\n".encode()), r.stderr


def test_1_exec_with_and_without_pty(world: World) -> None:
    r = world.ssh("hatchway.dev", "echo out; echo err >&2; tty; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\nnot a tty\n", b"err\n")
    r = world.ssh("-tt", "hatchway.dev", "tty; echo $TERM", env=world.env(TERM="vt220"))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().split("\r\n")
    assert re.fullmatch(r"/dev/pts/\d+", out[0]) and out[1:] == ["vt220", ""], out


def test_1_a_client_without_term_gets_no_term_variable(world: World) -> None:
    """``ssh -t`` where TERM is unset or empty (cron, an IDE's task runner) asks for a terminal
    of type "": sshd then sets no TERM, and so does the built-in server (it exported TERM="")."""
    without_term = {k: v for k, v in world.env().items() if k != "TERM"}
    for client_env in (world.env(TERM=""), without_term):
        r = world.ssh("-tt", "hatchway.dev", "printenv TERM || echo no-TERM; tty >/dev/null && echo a-tty",
                      env=client_env)
        assert (r.returncode, r.stdout) == (0, b"no-TERM\r\na-tty\r\n"), r.stderr


def test_1_stdin_round_trip_100mib(world: World) -> None:
    src = world.tmp / "stdin-100m"
    digest = random_file(src, 100 * MIB)
    with open(src, "rb") as fh:
        r = subprocess.run(world.argv("hatchway.dev", "cat"), stdin=fh, capture_output=True, timeout=120,
                           env=world.env(), check=False)
    assert r.returncode == 0, r.stderr
    assert (len(r.stdout), hashlib.sha256(r.stdout).hexdigest()) == (100 * MIB, digest)
    # EOF reaches the command: wc sees exactly what was sent, then exits.
    r = world.ssh("hatchway.dev", "wc -c", stdin=b"x" * 12345)
    assert (r.returncode, r.stdout.strip()) == (0, b"12345")
    src.unlink()


def test_1_exit_status_and_exit_signal(world: World) -> None:
    assert world.ssh("hatchway.dev", "exit 42").returncode == 42
    r = world.ssh("hatchway.dev", "echo before; kill -KILL $$")
    # exit-signal KILL: the OpenSSH client reports a remote death by signal as 255
    assert (r.returncode, r.stdout) == (255, b"before\n"), r.stderr
    r = world.ssh("hatchway.dev", "kill -TERM $$")
    assert r.returncode == 255


def test_1_output_nobody_reads_any_more_stops_the_command(world: World) -> None:
    """``ssh host yes | head -1``: once head exits, the client says so (eow@openssh.com, sent to
    servers that announce OpenSSH compatibility) and the command gets EPIPE, as under sshd.
    Before, ``yes`` ran on and the pipeline never ended."""
    marker = world.home / "yes-ended"
    marker.unlink(missing_ok=True)
    script = shlex.join([*world.argv("hatchway.dev"), f"yes; echo $? > {marker}"]) + " | head -1"
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=30, env=world.env(), check=False)
    assert (r.returncode, r.stdout) == (0, b"y\n"), r.stderr
    try:
        wait_for(lambda: marker.exists() and marker.read_text() == "141\n", 10, what="yes ended by SIGPIPE")
    finally:
        marker.unlink(missing_ok=True)  # the home is shared with the other tests (sftp lists it)


def test_1_a_command_that_is_not_utf8_runs_byte_for_byte(world: World) -> None:
    """sshd runs whatever bytes the client sends (legacy scp of a Latin-1 file name)."""
    name = b"caf\xe9.txt"
    path = os.path.join(os.fsencode(world.home), name)
    with open(path, "wb") as f:
        f.write(b"latin-1 named\n")
    try:
        r = world.run([*world.argv("hatchway.dev"), b"printf %s \xff | od -An -tx1; cat " + name])
        assert (r.returncode, r.stdout) == (0, b" ff\nlatin-1 named\n"), r.stderr
    finally:
        os.unlink(path)


def test_1_a_client_variable_that_is_not_utf8_arrives_byte_for_byte(world: World) -> None:
    """sshd passes SetEnv values as bytes (a Latin-1 locale's LC_* variables); so does the
    built-in server, where it used to drop them."""
    latin1 = b"SetEnv=LC_HW=caf\xe9"  # bytes: a str argument would go out as UTF-8
    r = world.run([*world.argv("-o"), latin1, "hatchway.dev", 'printf %s "$LC_HW" | od -An -tx1'])  # type: ignore[list-item]
    assert (r.returncode, r.stdout) == (0, b" 63 61 66 e9\n"), r.stderr


def test_1_client_signals_reach_the_process(world: World) -> None:
    """^C typed in the developer's terminal interrupts the remote foreground job."""
    client = PtyClient(world.argv("-t", "hatchway.dev", "trap 'echo got-INT; exit 3' INT; echo ready; "
                                  "while :; do sleep 0.1; done"), world.env(TERM="xterm"))
    try:
        client.read_until(b"ready")
        client.send(b"\x03")
        assert client.wait() == 3
        assert b"got-INT" in client.output
    finally:
        client.close()


def test_1_signal_requests_and_exit_signal_through_the_relay(world: World) -> None:
    """The SSH "signal" request (which IDEs send; OpenSSH's CLI cannot) reaches a command without
    a PTY, and a command killed by a signal is reported as exit-signal with its name."""
    client = RelayClient(world, 0)

    async def scenario() -> tuple[bytes, int | None, object]:
        tunnel = await ssh_connect(client.url, client.token, "dev", client.user, client.key)
        try:
            p = await tunnel.ssh.create_process("trap 'echo got-TERM; exit 9' TERM; echo ready; "
                                                "while :; do sleep 0.05; done", encoding=None)
            assert await asyncio.wait_for(p.stdout.readline(), 20) == b"ready\n"
            p.send_signal("TERM")
            out = await asyncio.wait_for(p.stdout.read(), 20)
            status = (await p.wait()).exit_status
            killed = await tunnel.ssh.run("kill -KILL $$", check=False)
            return out, status, killed.exit_signal[:2] if killed.exit_signal else None
        finally:
            await tunnel.close()

    out, status, signal_name = asyncio.run(scenario())
    assert (out, status, signal_name) == (b"got-TERM\n", 9, ("KILL", False))


def test_1_window_change_resizes_the_pty(world: World) -> None:
    client = PtyClient(world.argv("-t", "hatchway.dev", "stty size; read x; stty size"), world.env(TERM="xterm"),
                       rows=30, cols=100)
    try:
        client.read_until(b"30 100\r\n")
        client.resize(41, 132)
        time.sleep(0.5)  # the window-change request travels ahead of the next keystroke anyway
        client.send(b"\r")
        client.read_until(b"41 132\r\n")
        assert client.wait() == 0
    finally:
        client.close()


def test_1_full_screen_program(world: World) -> None:
    """``ssh -t ws top``: a curses program draws in the terminal and quits on a key."""
    client = PtyClient(world.argv("-t", "hatchway.dev", "top -d 0.5"), world.env(TERM="xterm"), rows=30, cols=120)
    try:
        client.read_until(b"load average")
        assert b"\x1b[" in client.output  # it drew with terminal escape sequences
        client.send(b"q")
        assert client.wait() == 0
    finally:
        client.close()


def test_1_no_output_lost(world: World) -> None:
    size = 50 * MIB
    r = world.ssh("hatchway.dev", f"head -c {size} /dev/urandom | tee big-out | sha256sum >&2; cat big-out; rm big-out",
                  timeout=120)
    assert r.returncode == 0
    assert len(r.stdout) == size
    assert r.stderr.decode().split()[0] == hashlib.sha256(r.stdout).hexdigest()
    for _ in range(5):  # a command that exits at once still delivers its last line
        r = world.ssh("hatchway.dev", "printf 'first\\nthe last line\\n'")
        assert (r.returncode, r.stdout) == (0, b"first\nthe last line\n")



@pytest.fixture()
def patient_workspace(world: World) -> Iterator[str]:
    """A second workspace of bob's whose agent keeps the default keepalive: the module's agent
    drops a client after two missed keepalives a second apart, and a frozen client misses them."""
    name = "bulk"
    created = world.bob.ok("workspaces", "create", name, "--provider", "byo").out
    agent = AgentProcess(world.server.url, created.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0], world.tmp / "bulk-home")
    agent.start()
    try:
        wait_for(lambda: world.bob.ok("workspaces", "show", name, "--json").json()["agent_connected"], 30,
                 what="the second agent to connect")
        yield name
    finally:
        agent.stop()
        world.bob.ok("workspaces", "delete", name, "-y")


def test_1_a_frozen_client_with_a_huge_window_stops_the_command_not_the_agent(
    world: World, patient_workspace: str
) -> None:
    """asyncssh (the built-in server) sends whatever the client's window allows into its
    transport, whether or not the other side reads. A client that grants 1 GiB windows and then
    freezes (its ``hatchway proxy`` stopped) must stop the command's output at the agent, not
    grow the agent by everything the command prints; and once it thaws, nothing is lost."""
    import asyncssh

    client = RelayClient(world, 0)
    flood, bound = 160 * MIB, BOUND  # kernel socket buffers on three hops stay well below

    ours, theirs = socket.socketpair()
    proxy = subprocess.Popen([HATCHWAY, "proxy", patient_workspace], stdin=theirs, stdout=theirs, env=world.env())
    theirs.close()

    async def scenario() -> tuple[int | None, int, object, bool]:
        conn = await asyncssh.connect(sock=ours, host=patient_workspace, username=client.user, client_keys=[client.key],
                                      known_hosts=None, agent_path=None, config=None)
        try:
            chan, session = await conn.create_session(Counting, flood_command(flood), window=HUGE_WINDOW,
                                                      encoding=None)
            pid = int(await asyncio.wait_for(session.first_line, 20))
            chan.write(b"go\n")
            written_so_far = written_by(pid)
            for _ in range(10_000):  # "go" must pass the proxy before it freezes: wait for the flood
                if (written_so_far() or 0) > 4096:
                    break
                await asyncio.sleep(0.001)
            proxy.send_signal(signal.SIGSTOP)  # what got through by now is not in between
            written = await settle(written_so_far, beyond=MIB)
            in_between = None if written is None else written - session.received
            proxy.send_signal(signal.SIGCONT)
            await asyncio.wait_for(session.done.wait(), 120)
            flooded = session.received - len(session.first_line.result()) - 1  # after the PID line
            return in_between, flooded, chan.get_exit_status(), session.eof
        finally:
            conn.close()

    try:
        in_between, received, status, eof = asyncio.run(scenario())
    finally:
        proxy.send_signal(signal.SIGCONT)
        proxy.kill()
        proxy.wait(10)
        ours.close()
    assert in_between is not None, "the command wrote all its output while the client read nothing"
    assert in_between < bound
    assert (received, status, eof) == (flood, 0, True)


# ---- 2. environment ----------------------------------------------------------------------------

DOCUMENTED = ("USER", "LOGNAME", "HOME", "SHELL", "PATH", "MAIL", "FOO", "EDITOR", "MY_VAR", "HATCHWAY_USER_NAME",
              "HATCHWAY_USER_EMAIL", "HATCHWAY_WORKSPACE_NAME", "HATCHWAY_WORKSPACE_ID", "HATCHWAY_PROVIDER_NAME",
              "HATCHWAY_URL", "LANG", "LC_TIME", "LC_PAPER", "HW_ACCEPTED", "GIT_AUTHOR_NAME")


def test_2_environment_same_in_login_and_non_login_sessions(world: World) -> None:
    set_env = "LANG=C.UTF-8 LC_TIME=C HW_ACCEPTED=yes HW_REJECTED=no LD_PRELOAD=/evil.so GIT_AUTHOR_NAME=Bob"
    sent = ["-o", f"SetEnv={set_env}", "-o", "SendEnv=LC_PAPER HW_SENT_BUT_NOT_ACCEPTED"]
    client_env = world.env(LC_PAPER="en_GB.UTF-8", HW_SENT_BUT_NOT_ACCEPTED="1", TERM="screen")
    exec_env = parse_env(world.ssh(*sent, "hatchway.dev", "env", env=client_env).stdout)
    r = world.ssh(*sent, "-tt", "hatchway.dev", stdin=b"env; exit\n", env=client_env)
    login_env = parse_env(r.stdout)
    ws = world.bob.ok("workspaces", "show", "dev", "--json").json()
    user = ws["os_user"]
    expected = {
        "USER": user, "LOGNAME": user, "HOME": str(world.home), "SHELL": "/bin/bash",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "MAIL": f"/var/mail/{user}",
        "FOO": "bar baz", "EDITOR": "vim", "MY_VAR": "mine",  # image variables, ~/.ssh/environment
        "HATCHWAY_USER_NAME": "bob", "HATCHWAY_USER_EMAIL": "bob@example.com", "HATCHWAY_WORKSPACE_NAME": "dev",
        "HATCHWAY_WORKSPACE_ID": str(ws["id"]), "HATCHWAY_PROVIDER_NAME": "byo", "HATCHWAY_URL": world.server.url,
        # from the client: LANG and LC_* always, the rest only if the server's allowlist has it
        "LANG": "C.UTF-8", "LC_TIME": "C", "LC_PAPER": "en_GB.UTF-8", "HW_ACCEPTED": "yes", "GIT_AUTHOR_NAME": "Bob",
    }
    for env in (exec_env, login_env):
        assert {k: env.get(k) for k in DOCUMENTED} == expected
        for refused in ("HW_REJECTED", "LD_PRELOAD", "HW_SENT_BUT_NOT_ACCEPTED"):
            assert refused not in env
        assert re.fullmatch(r"127\.0\.0\.1 \d+ 127\.0\.0\.1 22", env["SSH_CONNECTION"]), env["SSH_CONNECTION"]
        assert env["SSH_CLIENT"].split() == [env["SSH_CONNECTION"].split()[i] for i in (0, 1, 3)]
    # PTY only: TERM from the pty-req, SSH_TTY
    assert "TERM" not in exec_env and "SSH_TTY" not in exec_env
    assert login_env["TERM"] == "screen"
    assert re.fullmatch(r"/dev/pts/\d+", login_env["SSH_TTY"])


# ---- 3. file transfer --------------------------------------------------------------------------


@pytest.fixture()
def noisy_bashrc(world: World) -> Iterator[None]:
    """A ~/.bashrc that prints: breaks anything that goes through the user's shell by mistake."""
    path = world.home / ".bashrc"
    path.write_text("echo NOISE-FROM-BASHRC\n")
    try:
        yield
    finally:
        path.unlink()


def test_3_bare_sftp_session(world: World, noisy_bashrc: None) -> None:
    # The shell really is noisy (bash reads ~/.bashrc when started by sshd) ...
    assert world.ssh("hatchway.dev", "true").stdout == b"NOISE-FROM-BASHRC\n"
    # ... and sftp does not care: the subsystem runs without any shell, starting in the home directory.
    local = world.tmp / "sftp-local"
    local.mkdir()
    (local / "up.txt").write_bytes(b"hello over sftp\n")
    digest = random_file(local / "data.bin", 3 * MIB + 17)
    batch = textwrap.dedent(f"""\
        pwd
        put {local}/up.txt
        put {local}/data.bin
        ls -1
        rename up.txt renamed.txt
        chmod 640 renamed.txt
        symlink renamed.txt link.txt
        mkdir sub
        put {local}/up.txt sub/inner.txt
        get data.bin {local}/back.bin
        get link.txt {local}/via-link.txt
        rm data.bin
        ls -1 sub
        df
    """)
    (world.tmp / "sftp-batch").write_text(batch)
    r = world.run(world.argv("-b", str(world.tmp / "sftp-batch"), "hatchway.dev", tool="sftp"))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode().splitlines()
    df_header, df_values = out[-2:]
    assert out[:-2] == [
        "sftp> pwd", f"Remote working directory: {world.home}",
        f"sftp> put {local}/up.txt", f"sftp> put {local}/data.bin",
        "sftp> ls -1", "data.bin", "up.txt",
        "sftp> rename up.txt renamed.txt", "sftp> chmod 640 renamed.txt", "sftp> symlink renamed.txt link.txt",
        "sftp> mkdir sub", f"sftp> put {local}/up.txt sub/inner.txt",
        f"sftp> get data.bin {local}/back.bin", f"sftp> get link.txt {local}/via-link.txt",
        "sftp> rm data.bin", "sftp> ls -1 sub", "sub/inner.txt", "sftp> df",
    ]
    # df comes from statvfs@openssh.com: the numbers of the workspace's file system
    assert df_header.split() == ["Size", "Used", "Avail", "(root)", "%Capacity"]
    vfs = os.statvfs(world.home)
    assert int(df_values.split()[0]) == vfs.f_blocks * vfs.f_frsize // 1024
    # what landed on the workspace side
    assert (world.home / "renamed.txt").read_bytes() == b"hello over sftp\n"
    assert (world.home / "renamed.txt").stat().st_mode & 0o777 == 0o640
    assert os.readlink(world.home / "link.txt") == "renamed.txt"
    assert (world.home / "sub" / "inner.txt").read_bytes() == b"hello over sftp\n"
    assert not (world.home / "data.bin").exists() and not (world.home / "up.txt").exists()
    # and on the developer's side
    assert sha256_file(local / "back.bin") == digest
    assert (local / "via-link.txt").read_bytes() == b"hello over sftp\n"
    # a file that is not there is an error, not a hang
    r = world.run(world.argv("hatchway.dev:no-such-file", str(local / "x"), tool="sftp"))
    assert r.returncode == 1 and b"not found" in r.stderr
    shutil.rmtree(local)
    for name in ("renamed.txt", "link.txt"):
        (world.home / name).unlink()
    shutil.rmtree(world.home / "sub")


def test_3_scp_sftp_mode_1gib_and_legacy_mode(world: World) -> None:
    big = world.tmp / "one-gib.bin"
    digest = random_file(big, 1024 * MIB)
    r = world.run(world.argv(str(big), "hatchway.dev:one-gib.bin", tool="scp"), timeout=300)
    assert (r.returncode, r.stdout) == (0, b""), r.stderr
    big.unlink()
    assert sha256_file(world.home / "one-gib.bin") == digest
    (world.home / "one-gib.bin").unlink()
    # download (default mode) and both directions with the legacy protocol (scp -O: scp -t/-f via exec)
    src = world.home / "down.bin"
    digest = random_file(src, 48 * MIB + 5)
    r = world.run(world.argv("hatchway.dev:down.bin", str(world.tmp / "down.bin"), tool="scp"))
    assert r.returncode == 0 and sha256_file(world.tmp / "down.bin") == digest, r.stderr
    r = world.run(world.argv("-O", "-p", str(world.tmp / "down.bin"), "hatchway.dev:legacy-up.bin", tool="scp"))
    assert r.returncode == 0 and sha256_file(world.home / "legacy-up.bin") == digest, r.stderr
    r = world.run(world.argv("-O", "hatchway.dev:legacy-up.bin", str(world.tmp / "legacy-down.bin"), tool="scp"))
    assert r.returncode == 0 and sha256_file(world.tmp / "legacy-down.bin") == digest, r.stderr
    assert int((world.home / "legacy-up.bin").stat().st_mtime) == int((world.tmp / "down.bin").stat().st_mtime)
    # recursive copies in both modes
    tree = world.tmp / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f.txt").write_text("deep\n")
    (tree / "top.txt").write_text("top\n")
    for mode, dest in (([], "tree-sftp"), (["-O"], "tree-legacy")):
        r = world.run(world.argv(*mode, "-r", str(tree), f"hatchway.dev:{dest}", tool="scp"))
        assert r.returncode == 0, r.stderr
        assert (world.home / dest / "a" / "b" / "f.txt").read_text() == "deep\n"
        assert (world.home / dest / "top.txt").read_text() == "top\n"
        shutil.rmtree(world.home / dest)
    for path in (src, world.home / "legacy-up.bin", world.tmp / "down.bin", world.tmp / "legacy-down.bin"):
        path.unlink()


def test_3_tilde_paths_expand_like_sftp_server(world: World) -> None:
    """``scp f host:~user/x`` (scp speaks SFTP by default) asks the server to expand the path
    with ``expand-path@openssh.com``, which OpenSSH's sftp-server offers: the built-in server
    lacked it and scp failed with "server expand-path extension is required". The workspace
    user's own ``~user`` is the home directory; another name is refused in sftp-server's words."""
    user = world.bob.ok("workspaces", "show", "dev", "--json").json()["os_user"]
    local = world.tmp / "tilde.txt"
    local.write_bytes(b"tilde\n")
    (world.home / "tilde-dir").mkdir()
    try:
        r = world.run(world.argv(str(local), f"hatchway.dev:~{user}/tilde-dir/up.txt", tool="scp"))
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
        assert (world.home / "tilde-dir" / "up.txt").read_bytes() == b"tilde\n"
        r = world.run(world.argv(f"hatchway.dev:~{user}/tilde-dir/up.txt", str(world.tmp / "down.txt"), tool="scp"))
        assert (r.returncode, r.stderr) == (0, b"") and (world.tmp / "down.txt").read_bytes() == b"tilde\n"
        other = "nobody" if user != "nobody" else "daemon"
        r = world.run(world.argv(str(local), f"hatchway.dev:~{other}/x", tool="scp"))
        assert (r.returncode, r.stdout) == (255, b""), r.stderr
        assert r.stderr.decode().splitlines() == [f"scp: expand ~{other}/x: no such user"]
        # sftp itself sees the extension announced, as sftp-server announces it
        (world.tmp / "tilde-batch").write_text("pwd\n")
        r = world.run(world.argv("-vv", "-b", str(world.tmp / "tilde-batch"), "hatchway.dev", tool="sftp"))
        assert r.returncode == 0, r.stderr
        assert b'debug2: Server supports extension "expand-path@openssh.com" revision 1\r\n' in r.stderr
    finally:
        shutil.rmtree(world.home / "tilde-dir")
        for name in ("tilde.txt", "down.txt", "tilde-batch"):
            (world.tmp / name).unlink(missing_ok=True)


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every entry under root: (kind, mode, content or link target)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", path.stat().st_mode & 0o7777, "")
        else:
            out[rel] = ("file", path.stat().st_mode & 0o7777, hashlib.sha256(path.read_bytes()).hexdigest())
    return out


def test_3_rsync_both_directions(world: World) -> None:
    src = world.tmp / "rsync-src"
    (src / "dir" / "nested").mkdir(parents=True)
    (src / "hello.txt").write_text("hello rsync\n")
    random_file(src / "dir" / "blob.bin", 5 * MIB)
    (src / "dir" / "nested" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "dir" / "nested" / "script.sh").chmod(0o750)
    (src / "link").symlink_to("hello.txt")
    rsh = f"ssh -F {world.ssh_config} -o BatchMode=yes"
    r = world.run(["rsync", "-a", "-e", rsh, f"{src}/", "hatchway.dev:rsync-dest/"])
    assert (r.returncode, r.stderr) == (0, b"")
    assert _tree(world.home / "rsync-dest") == _tree(src)
    # change things on the workspace side, then bring them back
    (world.home / "rsync-dest" / "hello.txt").write_text("changed in the workspace\n")
    (world.home / "rsync-dest" / "new.txt").write_text("new\n")
    back = world.tmp / "rsync-back"
    r = world.run(["rsync", "-a", "--delete", "-e", rsh, "hatchway.dev:rsync-dest/", f"{back}/"])
    assert (r.returncode, r.stderr) == (0, b"")
    assert _tree(back) == _tree(world.home / "rsync-dest")
    assert (back / "hello.txt").read_text() == "changed in the workspace\n"
    # an incremental run moves only the change (checksums say so)
    (src / "hello.txt").write_text("third version\n")
    r = world.run(["rsync", "-a", "--stats", "-e", rsh, f"{src}/", "hatchway.dev:rsync-dest/"])
    assert r.returncode == 0 and re.search(rb"Number of regular files transferred: 1\b", r.stdout), r.stdout
    shutil.rmtree(src)
    shutil.rmtree(back)
    shutil.rmtree(world.home / "rsync-dest")


def test_3_git_clone_and_push_over_ssh(world: World) -> None:
    setup = ("set -e; git init -q --bare proj.git; git clone -q proj.git proj-work 2>/dev/null; cd proj-work; "
             "echo 'first line' > README; git add README; "
             "git -c user.name=Ws -c user.email=ws@example.com commit -qm 'initial commit'; "
             "git push -q origin HEAD:main; cd ..; rm -rf proj-work; git --git-dir=proj.git symbolic-ref HEAD refs/heads/main")
    r = world.ssh("hatchway.dev", setup)
    assert r.returncode == 0, r.stderr
    genv = world.env(GIT_SSH_COMMAND=f"ssh -F {world.ssh_config} -o BatchMode=yes")
    clone = world.tmp / "clone"
    r = world.run(["git", "clone", "-q", "hatchway.dev:proj.git", str(clone)], env=genv)
    assert (r.returncode, r.stderr) == (0, b"")
    assert (clone / "README").read_text() == "first line\n"
    (clone / "README").write_text("first line\nsecond line\n")
    git = ["git", "-C", str(clone), "-c", "user.name=Bob", "-c", "user.email=bob@example.com"]
    assert world.run([*git, "commit", "-qam", "from the laptop"], env=genv).returncode == 0
    r = world.run([*git, "push", "-q", "origin", "main"], env=genv)
    assert (r.returncode, r.stderr) == (0, b"")
    r = world.ssh("hatchway.dev", "git --git-dir=proj.git log --format=%s main")
    assert r.stdout == b"from the laptop\ninitial commit\n"
    shutil.rmtree(clone)
    shutil.rmtree(world.home / "proj.git")


# ---- 4. forwarding -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_4_local_and_dynamic_forwarding(world: World) -> None:
    """-L to a service in the workspace, -D (SOCKS) to the same, and a refused target reported."""
    with EchoServer() as echo:
        lport, dport = free_port(), free_port()
        client = subprocess.Popen(
            world.argv("-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{lport}:127.0.0.1:{echo.port}",
                       "-D", f"127.0.0.1:{dport}", "hatchway.dev"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=world.env(),
        )
        try:
            wait_for(lambda: listening(lport) and listening(dport), 20, what="ssh to listen")
            payload = os.urandom(3 * MIB)
            with socket.create_connection(("127.0.0.1", lport)) as s:
                assert echo_roundtrip(s, payload) == payload
            # SOCKS5 by hand: connect to 127.0.0.1:<echo> through the dynamic forward
            with socket.create_connection(("127.0.0.1", dport)) as s:
                s.settimeout(20)
                s.sendall(b"\x05\x01\x00")
                assert s.recv(2) == b"\x05\x00"
                s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", echo.port))
                assert s.recv(10)[:2] == b"\x05\x00"
                assert echo_roundtrip(s, b"through socks") == b"through socks"
            # a target nobody listens on: the client is told, the SOCKS request fails
            with socket.create_connection(("127.0.0.1", dport)) as s:
                s.settimeout(20)
                s.sendall(b"\x05\x01\x00")
                s.recv(2)
                s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", free_port()))
                assert s.recv(10)[:2] != b"\x05\x00"
            assert echo.accepted == 2
        finally:
            client.terminate()
            _, err = client.communicate(timeout=20)
        assert b"open failed: connect failed: Connection refused" in err, err


def test_4_remote_forwarding_port_0_loopback_only_and_cancel(world: World) -> None:
    with EchoServer() as echo, control_master(world, "rfwd") as ctl:
        # port 0: the server allocates; asked for every interface, it still binds loopback only
        r = world.run(world.argv("-S", str(ctl), "-O", "forward", "-R", f"0.0.0.0:0:127.0.0.1:{echo.port}",
                                 "hatchway.dev"))
        assert r.returncode == 0, r.stderr
        port = int(r.stdout)
        assert listening(port) == {"127.0.0.1", "[::1]"}
        # a program in the workspace connects to the forwarded port and reaches the developer's service
        r = world.ssh("-S", str(ctl), "hatchway.dev",
                      f"python3 -c \"import socket; s = socket.create_connection(('127.0.0.1', {port})); "
                      f"s.sendall(b'ping via -R'); s.shutdown(1); print(s.recv(100).decode())\"")
        assert (r.returncode, r.stdout) == (0, b"ping via -R\n"), r.stderr
        # a fixed port too
        fixed = free_port()
        r = world.run(world.argv("-S", str(ctl), "-O", "forward", "-R", f"{fixed}:127.0.0.1:{echo.port}",
                                 "hatchway.dev"))
        assert r.returncode == 0, r.stderr
        with socket.create_connection(("127.0.0.1", fixed)) as s:
            assert echo_roundtrip(s, b"fixed") == b"fixed"
        # cancel: the listener goes away, the other one stays
        r = world.run(world.argv("-S", str(ctl), "-O", "cancel", "-R", f"{fixed}:127.0.0.1:{echo.port}",
                                 "hatchway.dev"))
        assert r.returncode == 0, r.stderr
        wait_for(lambda: not listening(fixed), 10, what="the cancelled listener to close")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", fixed), timeout=5)
        assert listening(port)
        # a port someone already uses is refused, and the client says so
        r = world.run(world.argv("-o", "ExitOnForwardFailure=yes", "-R", f"{port}:127.0.0.1:{echo.port}",
                                 "hatchway.dev", "echo never"))
        assert r.returncode == 255 and b"remote port forwarding failed" in r.stderr
    # the connection is gone: so is its listener
    wait_for(lambda: not listening(port), 10, what="the forward to close with its connection")


def test_4_unix_socket_forwarding_both_ways(world: World) -> None:
    """-L and -R for Unix sockets (GPG agent, Docker socket, language servers)."""
    sockdir = world.tmp / "socks"
    sockdir.mkdir(mode=0o700)
    with EchoServer(world.home / "ws-service.sock") as ws_service, EchoServer(sockdir / "laptop.sock") as laptop:
        local = sockdir / "local.sock"
        lport = free_port()
        remote = world.home / "forwarded.sock"
        client = subprocess.Popen(
            world.argv("-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
                       "-L", f"{local}:{ws_service.path}", "-L", f"127.0.0.1:{lport}:{ws_service.path}",
                       "-R", f"./{remote.name}:{laptop.path}", "hatchway.dev", "echo ready; exec sleep 60"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env(),
        )
        try:
            assert client.stdout is not None and client.stdout.readline() == b"ready\n"
            # laptop -> workspace socket, from a laptop socket and from a laptop TCP port
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(local))
                assert echo_roundtrip(s, b"unix -L") == b"unix -L"
            wait_for(lambda: listening(lport), 10, what="ssh to listen")
            with socket.create_connection(("127.0.0.1", lport)) as s:
                assert echo_roundtrip(s, b"tcp to unix") == b"tcp to unix"
            # workspace socket -> laptop (a relative path is in the home directory): private (0600)
            # like OpenSSH's StreamLocalBindMask
            st = remote.lstat()
            assert (oct(st.st_mode & 0o777), st.st_uid) == ("0o600", os.getuid())
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(remote))
                assert echo_roundtrip(s, b"unix -R " * 10000) == b"unix -R " * 10000
            assert (ws_service.accepted, laptop.accepted) == (2, 1)
        finally:
            client.kill()
            client.communicate(timeout=20)
        # the connection is gone, and so is the socket it made in the workspace
        wait_for(lambda: not remote.exists(), 10, what="the forwarded socket to be removed")


@pytest.fixture()
def ssh_agent(world: World) -> Iterator[tuple[str, str]]:
    """An ssh-agent of the developer's with one key in it; yields (socket path, public key)."""
    key = world.tmp / "agent_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bob@laptop", "-f", str(key)], check=True)
    path = world.tmp / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(path)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(path.exists, 10, what="ssh-agent")
        subprocess.run(["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": str(path)}, check=True,
                       capture_output=True)
        yield str(path), " ".join(key.with_suffix(".pub").read_text().split()[:3])
    finally:
        agent.terminate()
        agent.wait(10)


def test_4_agent_forwarding(world: World, ssh_agent: tuple[str, str]) -> None:
    sock, pubkey = ssh_agent
    env = world.env(SSH_AUTH_SOCK=sock)
    script = 'echo "$SSH_AUTH_SOCK"; stat -c "%a %F" "$SSH_AUTH_SOCK" "$(dirname "$SSH_AUTH_SOCK")"; ssh-add -L'
    r = world.ssh("-A", "hatchway.dev", script, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    path = lines[0]
    assert re.fullmatch(r"/tmp/ssh-[^/]+/agent\.\d+", path), path
    assert lines[1:] == ["600 socket", "700 directory", pubkey]
    # The client has gone when ssh returns; the server removes the socket as it closes the session.
    wait_for(lambda: not Path(path).exists() and not Path(path).parent.exists(), 10, what="the agent socket removed")
    # SSH_AUTH_SOCK only for the session that asked: on one connection (the master allows agent
    # forwarding, each multiplexed session asks for it or not), a session with it and one without
    with control_master(world, "agent", "-A", env=env) as ctl:
        with_agent = world.ssh("-S", str(ctl), "-A", "hatchway.dev", "echo [$SSH_AUTH_SOCK]; ssh-add -L", env=env)
        without = world.ssh("-S", str(ctl), "-a", "hatchway.dev", "echo [$SSH_AUTH_SOCK]; ssh-add -L", env=env)
    assert with_agent.returncode == 0 and with_agent.stdout.decode().splitlines()[1] == pubkey
    assert (without.returncode, without.stdout) == (2, b"[]\n")


@contextlib.contextmanager
def users_own_key(world: World, options: str) -> Iterator[Path]:
    """A key the user added to authorized_keys below the managed block, with ``options``."""
    key = world.tmp / "own_key"
    key.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "backup@laptop", "-f", str(key)], check=True)
    authorized = world.home / ".ssh" / "authorized_keys"
    before = authorized.read_bytes()
    authorized.write_bytes(before + f"{options} {key.with_suffix('.pub').read_text()}".encode())
    try:
        yield key
    finally:
        authorized.write_bytes(before)


def test_4_a_restricted_key_runs_its_forced_command_and_nothing_else(world: World, ssh_agent: tuple[str, str]) -> None:
    """A key added as ``restrict,command="..."`` (a backup job's, a CI deploy key) is held to its
    options as sshd holds it: its command runs, with the client's in SSH_ORIGINAL_COMMAND (what
    rrsync and gitolite read), and it gets no terminal, no tunnel and no agent. The built-in
    server left SSH_ORIGINAL_COMMAND out, and ignored ``restrict``: the key could forward ports."""
    forced = 'restrict,command="echo forced: $SSH_ORIGINAL_COMMAND; tty; echo agent=[$SSH_AUTH_SOCK]"'
    with EchoServer() as echo, users_own_key(world, forced) as key:
        use = ["-o", f"IdentityFile={key}"]  # tried before the platform key of the ssh config
        r = world.ssh(*use, "-A", "hatchway.dev", "echo hi", env=world.env(SSH_AUTH_SOCK=ssh_agent[0]))
        assert (r.returncode, r.stdout) == (0, b"forced: echo hi\nnot a tty\nagent=[]\n"), r.stderr
        r = world.ssh(*use, "-tt", "hatchway.dev", "echo hi")
        assert (r.returncode, r.stdout) == (255, b""), r.stderr
        assert b"PTY allocation request failed on channel 0" in r.stderr
        r = world.ssh(*use, "-W", f"127.0.0.1:{echo.port}", "hatchway.dev")
        assert (r.returncode, r.stdout) == (255, b""), r.stderr
        assert b"open failed: administratively prohibited: Port forwarding not permitted" in r.stderr
        r = world.ssh(*use, "-o", "ExitOnForwardFailure=yes", "-R", f"0:127.0.0.1:{echo.port}", "hatchway.dev", "echo hi")
        assert (r.returncode, r.stdout) == (255, b""), r.stderr
        assert b"remote port forwarding failed" in r.stderr
        assert echo.accepted == 0


def remote_forward(world: World, key: Path, spec: str) -> tuple[int, bytes]:
    """``ssh -R spec`` with ``key`` that must get its forward (ExitOnForwardFailure=yes):
    (exit status, the one line of ssh's own complaint, if any)."""
    r = world.ssh("-o", f"IdentityFile={key}", "-o", "ExitOnForwardFailure=yes", "-R", spec, "hatchway.dev",
                  "echo forwarded")
    assert r.stdout == (b"forwarded\n" if r.returncode == 0 else b""), r.stderr
    return r.returncode, r.stderr.strip()


def test_4_permitlisten_limits_remote_forwards_as_sshd_does(world: World) -> None:
    """``permitlisten`` on a key's line limits ``-R`` as sshd(8) describes: the listen host as the
    client sends it (a bare ``-R PORT`` asks for "localhost", not "127.0.0.1") and the port (port 0
    only with ``*``); a bare port allows any host. Refused, ``-R`` fails on the client as under
    sshd. ``restrict`` and ``no-port-forwarding`` still win; ``restrict,port-forwarding`` keeps the
    limit. The built-in server ignored permitlisten: such a key could listen on any port."""
    port, other = free_port(), free_port()
    target = f"127.0.0.1:{free_port()}"
    refused = (255, f"Error: remote port forwarding failed for listen port {port}".encode())
    with users_own_key(world, f'permitlisten="127.0.0.1:{port}"') as key:
        assert remote_forward(world, key, f"127.0.0.1:{port}:{target}") == (0, b"")
        assert remote_forward(world, key, f"{port}:{target}") == refused  # "localhost"
        assert remote_forward(world, key, f"127.0.0.1:{other}:{target}")[0] == 255
        assert remote_forward(world, key, f"127.0.0.1:0:{target}")[0] == 255
    with users_own_key(world, f'permitlisten="{port}",permitlisten="localhost:{other}"') as key:
        assert remote_forward(world, key, f"{port}:{target}") == (0, b"")
        assert remote_forward(world, key, f"127.0.0.1:{port}:{target}") == (0, b"")
        assert remote_forward(world, key, f"{other}:{target}") == (0, b"")
        assert remote_forward(world, key, f"127.0.0.1:{other}:{target}")[0] == 255
    with users_own_key(world, 'permitlisten="localhost:*"') as key:
        status, said = remote_forward(world, key, f"0:{target}")
        assert status == 0 and said.startswith(b"Allocated port "), said
        assert remote_forward(world, key, f"127.0.0.1:{port}:{target}") == refused
    with users_own_key(world, 'permitlisten="*"') as key:
        status, said = remote_forward(world, key, f"127.0.0.1:0:{target}")
        assert status == 0 and said.startswith(b"Allocated port "), said
    with users_own_key(world, f'restrict,port-forwarding,permitlisten="127.0.0.1:{port}"') as key:
        assert remote_forward(world, key, f"127.0.0.1:{port}:{target}") == (0, b"")
        assert remote_forward(world, key, f"{port}:{target}") == refused
    for options in (f'restrict,permitlisten="127.0.0.1:{port}"', f'no-port-forwarding,permitlisten="{port}"'):
        with users_own_key(world, options) as key:
            assert remote_forward(world, key, f"127.0.0.1:{port}:{target}") == refused, options
    # a value sshd rejects makes the whole line unusable: ssh falls back to the platform key
    with users_own_key(world, 'command="echo own key",permitlisten="127.0.0.1:0"') as key:
        r = world.ssh("-o", f"IdentityFile={key}", "hatchway.dev", "echo platform key")
        assert (r.returncode, r.stdout) == (0, b"platform key\n"), r.stderr


def test_4_permitopen_limits_local_dynamic_and_stdio_forwards(world: World) -> None:
    """``permitopen`` limits ``-L``, ``-D`` and ``-W`` to the named destinations, the host taken
    literally ("localhost" is not "127.0.0.1"), ``*`` as the port for any port and, as sshd
    takes it, ``*`` as the host for any host (asyncssh refused every destination then)."""
    with EchoServer() as echo, EchoServer() as other:
        def stdio(key: Path, dest: str) -> subprocess.CompletedProcess[bytes]:
            return world.ssh("-o", f"IdentityFile={key}", "-W", dest, "hatchway.dev", stdin=b"ping")

        with users_own_key(world, f'permitopen="127.0.0.1:{echo.port}"') as key:
            assert stdio(key, f"127.0.0.1:{echo.port}").stdout == b"ping"
            for dest in (f"127.0.0.1:{other.port}", f"localhost:{echo.port}"):
                r = stdio(key, dest)
                host, _, port_text = dest.rpartition(":")
                assert (r.returncode, r.stdout) == (255, b""), r.stderr
                assert (b"open failed: administratively prohibited: Port forwarding not permitted to "
                        + f"{host} port {port_text}".encode()) in r.stderr
            # -L and -D: the listener is there, a connection to a destination not permitted fails
            lport, dport = free_port(), free_port()
            client = subprocess.Popen(
                world.argv("-N", "-o", f"IdentityFile={key}", "-L", f"127.0.0.1:{lport}:127.0.0.1:{other.port}",
                           "-D", f"127.0.0.1:{dport}", "hatchway.dev"),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=world.env(),
            )
            try:
                wait_for(lambda: listening(lport) and listening(dport), 20, what="ssh to listen")
                with socket.create_connection(("127.0.0.1", lport)) as s:
                    with contextlib.suppress(ConnectionResetError):  # ssh closes it, maybe unread
                        assert echo_roundtrip(s, b"not permitted") == b""
                with socket.create_connection(("127.0.0.1", dport)) as s:
                    s.settimeout(20)
                    s.sendall(b"\x05\x01\x00")
                    assert s.recv(2) == b"\x05\x00"
                    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack(">H", other.port))
                    assert s.recv(10)[:2] != b"\x05\x00"
            finally:
                client.terminate()
                client.communicate(timeout=20)
        with users_own_key(world, f'permitopen="*:{other.port}"') as key:
            assert stdio(key, f"localhost:{other.port}").stdout == b"ping"
            assert stdio(key, f"127.0.0.1:{echo.port}").returncode == 255
        with users_own_key(world, 'permitopen="127.0.0.1:*"') as key:
            assert stdio(key, f"127.0.0.1:{other.port}").stdout == b"ping"
        assert (echo.accepted, other.accepted) == (1, 2)


def test_4_from_is_checked_against_the_clients_address_as_ssh_client_names_it(world: World) -> None:
    """``from="…"`` on a key's line is matched against the address SSH_CLIENT reports (the
    developer's, as the control plane saw it; here 127.0.0.1), not the relayed stream's own, and,
    as under sshd without UseDNS, host names are matched against the address only. A line that
    does not match is skipped, so ssh goes on to the platform key. ``FROM=`` means ``from=`` to
    sshd, and here: it limits the key as well."""
    own = 'command="echo own key from ${SSH_CLIENT%% *}"'
    for pattern, used in (("127.0.0.1", True), ("127.0.0.0/8,!10.0.0.1", True), ("127.0.0.?", True),
                          ("10.0.0.0/8,192.0.2.*", False), ("*,!127.0.0.1", False), ("localhost", False)):
        with users_own_key(world, f'{own},from="{pattern}"') as key:
            r = world.ssh("-o", f"IdentityFile={key}", "hatchway.dev", "echo platform key")
            assert (r.returncode, r.stdout) == (0, b"own key from 127.0.0.1\n" if used else b"platform key\n"), pattern
    with users_own_key(world, f'{own},FROM="10.0.0.0/8"') as key:
        r = world.ssh("-o", f"IdentityFile={key}", "hatchway.dev", "echo platform key")
        assert (r.returncode, r.stdout) == (0, b"platform key\n"), r.stderr


# ---- 5. X11 forwarding -------------------------------------------------------------------------


@pytest.fixture()
def maybe_x_server(world: World) -> Iterator[dict[str, str] | None]:
    """The developer's X server (Xvfb, with a cookie): the client environment for it, or None
    when this machine has no Xvfb."""
    if not (shutil.which("Xvfb") and shutil.which("xauth") and shutil.which("xdpyinfo")):
        yield None
        return
    cookie = os.urandom(16).hex()
    server_auth, client_auth = world.tmp / "xvfb.auth", world.tmp / "laptop.Xauthority"
    subprocess.run(["xauth", "-f", str(server_auth), "add", ":0", ".", cookie], check=True, capture_output=True)
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(
        ["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-auth", str(server_auth),
         "-screen", "0", "1234x567x24"],
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    os.close(write_fd)
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            number = pipe.readline().strip().decode()
        assert number.isdigit(), "Xvfb did not start"
        subprocess.run(["xauth", "-f", str(client_auth), "add", f":{number}", ".", cookie], check=True,
                       capture_output=True)
        yield world.env(DISPLAY=f":{number}", XAUTHORITY=str(client_auth))
    finally:
        xvfb.terminate()
        xvfb.wait(10)


@pytest.fixture()
def x_server(maybe_x_server: dict[str, str] | None) -> dict[str, str]:
    if maybe_x_server is None:
        pytest.skip("needs Xvfb, xauth and xdpyinfo (scripts/setup installs xvfb, xauth, x11-utils)")
    return maybe_x_server


def test_5_x11_forwarding(world: World, x_server: dict[str, str]) -> None:
    # an X client on the laptop works (the cookie is right), so we compare like with like
    local = subprocess.run(["xdpyinfo"], capture_output=True, env=x_server, timeout=30, check=False)
    dimensions = next(line for line in local.stdout.decode().splitlines() if "dimensions:" in line)
    assert "1234x567 pixels" in dimensions
    script = ('echo "DISPLAY=$DISPLAY"; xauth list "$DISPLAY"; '
              'xdpyinfo | grep -E "^name of display|dimensions"')
    for mode in ("-X", "-Y"):  # untrusted (the client makes a restricted cookie) and trusted
        r = world.ssh(mode, "hatchway.dev", script, env=x_server)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.decode().splitlines()
        display = f"localhost:{X11_OFFSET}.0"
        assert lines[0] == f"DISPLAY={display}"
        # the cookie xauth stored is the client's fake one: the real one never leaves the laptop
        assert re.fullmatch(rf"\S+/unix:{X11_OFFSET}\s+MIT-MAGIC-COOKIE-1\s+[0-9a-f]{{32}}", lines[1]), lines[1]
        real = (world.tmp / "xvfb.auth").read_bytes()
        assert bytes.fromhex(lines[1].split()[-1]) not in real
        assert lines[2:] == [f"name of display:    {display}", dimensions]
    # no DISPLAY for a session that did not ask, and the display is gone with the session
    r = world.ssh("-x", "hatchway.dev", "echo [$DISPLAY]", env=x_server)
    assert r.stdout == b"[]\n"
    assert not listening(6000 + X11_OFFSET)


# ---- 6. keepalive and limits -------------------------------------------------------------------


def test_6_keepalives_answered(world: World) -> None:
    """The client's keepalive@openssh.com requests get answers; the server's own are answered."""
    r = world.ssh("-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1", "hatchway.dev",
                  f"sleep {3 * KEEPALIVE_INTERVAL + 1}; echo alive")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"alive\n", b"")


def test_6_dead_client_is_dropped(world: World) -> None:
    """A client that stops answering (laptop lid closed, network gone) is dropped by the server's
    keepalive, and its session's processes are hung up."""
    client = subprocess.Popen(world.argv("-o", "ServerAliveInterval=0", "hatchway.dev", "echo $$; exec sleep 120"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env())
    try:
        assert client.stdout is not None
        pid = int(client.stdout.readline())
        os.kill(client.pid, signal.SIGSTOP)  # still connected (its ProxyCommand runs), but silent
        started = time.monotonic()
        assert pid_gone(pid, 15), "the session of a dead client survived"
        # interval 1 s, 2 unanswered: about 3 s
        assert time.monotonic() - started < 3 * KEEPALIVE_INTERVAL + 5
    finally:
        client.kill()
        client.communicate(timeout=20)


def test_6_login_grace_timeout(world: World) -> None:
    """A client that connects and never authenticates is disconnected after the grace time."""
    proxy = subprocess.Popen([HATCHWAY, "proxy", "dev"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=world.env())
    try:
        assert proxy.stdin is not None and proxy.stdout is not None
        started = time.monotonic()
        proxy.stdin.write(b"SSH-2.0-OpenSSH_9.2 silent\r\n")
        proxy.stdin.flush()
        data = proxy.stdout.read()  # until the server hangs up
        elapsed = time.monotonic() - started
        assert data.startswith(b"SSH-2.0-OpenSSH_compatible Hatchway_")
        assert LOGIN_GRACE - 0.5 < elapsed < LOGIN_GRACE + 5, elapsed
    finally:
        proxy.kill()
        proxy.communicate(timeout=20)


def test_6_session_and_channel_limits(world: World) -> None:
    with EchoServer() as echo, control_master(world, "limits") as ctl:
        # MAX_SESSIONS sessions on one connection are fine, one more is refused ...
        running = [subprocess.Popen(world.argv("-S", str(ctl), "hatchway.dev", "echo up; sleep 30"),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    env=world.env()) for _ in range(MAX_SESSIONS)]
        try:
            for p in running:
                assert p.stdout is not None and p.stdout.readline() == b"up\n"
            r = world.ssh("-S", str(ctl), "hatchway.dev", "echo over the limit")
            # refused on this connection (the limit is per connection: ssh then opens a new one)
            assert b"session request failed: Session open refused by peer" in r.stderr, r.stderr
        finally:
            for p in running:
                p.kill()
                p.communicate(timeout=20)
        # ... and fine again once they ended
        r = world.ssh("-S", str(ctl), "hatchway.dev", "echo again")
        assert (r.returncode, r.stdout) == (0, b"again\n"), r.stderr
        # channels of any kind: MAX_CHANNELS forwarded connections at once, not one more
        lport = free_port()
        r = world.run(world.argv("-S", str(ctl), "-O", "forward", "-L", f"127.0.0.1:{lport}:127.0.0.1:{echo.port}",
                                 "hatchway.dev"))
        assert r.returncode == 0, r.stderr
        conns = []
        try:
            for i in range(MAX_CHANNELS):
                s = socket.create_connection(("127.0.0.1", lport), timeout=20)
                conns.append(s)
                s.sendall(b"x")
                assert s.recv(1) == b"x", i
            extra = socket.create_connection(("127.0.0.1", lport), timeout=20)
            with extra:
                extra.sendall(b"x")
                try:
                    got = extra.recv(1)
                except ConnectionResetError:  # ssh closed it with our byte unread
                    got = b""
                assert got == b"", "the channel over the limit was not refused"
            conns.pop().close()
            time.sleep(0.5)  # the channel close travels to the server
            with socket.create_connection(("127.0.0.1", lport), timeout=20) as again:
                again.sendall(b"y")
                assert again.recv(1) == b"y"
        finally:
            for s in conns:
                s.close()


# ---- 7. MOTD -----------------------------------------------------------------------------------


def test_7_motd_for_interactive_logins_only(world: World) -> None:
    motd = MOTD.replace("\n", "\r\n").encode()
    r = world.ssh("-tt", "hatchway.dev", stdin=b"echo marker-$((6*7)); exit\n")
    assert r.returncode == 0 and r.stdout.startswith(motd), r.stdout
    assert r.stdout.count(b"Welcome") == 1 and b"marker-42" in r.stdout
    # nothing extra, ever, for commands (VS Code's installer parses this output) ...
    assert world.ssh("hatchway.dev", "echo hi").stdout == b"hi\n"
    assert world.ssh("-tt", "hatchway.dev", "echo hi").stdout == b"hi\r\n"
    # ... nor for a shell without a terminal (ssh -T host, script on stdin)
    assert world.ssh("-T", "hatchway.dev", stdin=b"echo hi\n").stdout == b"hi\n"
    # ~/.hushlogin silences it
    (world.home / ".hushlogin").touch()
    try:
        r = world.ssh("-tt", "hatchway.dev", stdin=b"exit\n")
        assert r.returncode == 0 and b"Welcome" not in r.stdout, r.stdout
    finally:
        (world.home / ".hushlogin").unlink()


# ---- 8. VS Code Remote-SSH ---------------------------------------------------------------------

VSCODE_INSTALL = r"""
# what VS Code Remote-SSH pipes into "bash" over "ssh -T -D <port>": markers it parses, a server
# it starts in the background on 127.0.0.1, the port it listens on, then the shell stays open
set -e
echo "a1b2c3: start"
SERVER_DIR="$HOME/.vscode-server-test"
mkdir -p "$SERVER_DIR"
cat > "$SERVER_DIR/server.py" <<'PY'
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("hello from the workspace, path=" + self.path).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
with open(sys.argv[1] + ".tmp", "w") as f: f.write(str(srv.server_address[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
srv.serve_forever()
PY
rm -f "$SERVER_DIR/port"
python3 "$SERVER_DIR/server.py" "$SERVER_DIR/port" </dev/null >"$SERVER_DIR/log" 2>&1 &
SERVER_PID=$!
trap 'kill $SERVER_PID' EXIT
for i in $(seq 100); do [ -s "$SERVER_DIR/port" ] && break; sleep 0.05; done
echo "listeningOn==$(cat "$SERVER_DIR/port")=="
echo "osReleaseId==debian=="
echo "a1b2c3: end"
"""


def test_8_vscode_remote_ssh_flow(world: World) -> None:
    socks_port = free_port()
    client = subprocess.Popen(world.argv("-T", "-D", str(socks_port), "hatchway.dev", "bash"),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=world.env())
    try:
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(VSCODE_INSTALL.encode())
        client.stdin.flush()  # and keep stdin open, as VS Code does
        lines = [client.stdout.readline() for _ in range(4)]
        # exactly the script's output: no banner, no MOTD, nothing else (VS Code would choke)
        assert lines[0] == b"a1b2c3: start\n" and lines[2:] == [b"osReleaseId==debian==\n", b"a1b2c3: end\n"]
        port = int(re.fullmatch(rb"listeningOn==(\d+)==\n", lines[1]).group(1))  # type: ignore[union-attr]
        wait_for(lambda: listening(socks_port), 10, what="the SOCKS port")
        for path in ("/version", "/extensions?x=1"):
            r = subprocess.run(["curl", "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{socks_port}",
                                f"http://127.0.0.1:{port}{path}"], capture_output=True, timeout=30, check=False)
            assert (r.returncode, r.stdout) == (0, f"hello from the workspace, path={path}".encode()), r.stderr
        client.stdin.close()  # VS Code disconnects: bash ends, its server with it
        assert client.wait(20) == 0
        assert client.stdout.read() == b""
    finally:
        client.kill()
        client.wait(20)
        for pipe in (client.stdin, client.stdout, client.stderr):
            if pipe is not None:
                pipe.close()
    shutil.rmtree(world.home / ".vscode-server-test")


# ---- leaks -------------------------------------------------------------------------------------


def agent_fds(pid: int) -> dict[str, int]:
    """The agent's open file descriptors by kind (socket, pipe, file path, ...)."""
    kinds: dict[str, int] = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = re.sub(r"\[\d+\]$", "", target)  # socket:[1234] -> socket:
        kinds[kind] = kinds.get(kind, 0) + 1
    return kinds


def agent_children(pid: int) -> list[str]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat_line.rsplit(")", 1)[1].split()
            if fields[1] == str(pid):
                out.append(f"{entry} {stat_line.split('(', 1)[1].rsplit(')', 1)[0]} {fields[0]}")
    return out


class RelayClient:
    """Many SSH connections through the real relay without an ssh process per connection
    (tests.helpers.sshclient: the WebSocket ``hatchway proxy`` opens, spliced to asyncssh)."""

    def __init__(self, world: World, echo_port: int) -> None:
        import asyncssh

        self.url = world.server.url
        self.token = json.loads((world.bob.config_dir / "session.json").read_text())["token"]
        config = world.ssh_config.read_text()
        key_path = re.search(r"IdentityFile (\S+)", config).group(1).strip('"')  # type: ignore[union-attr]
        self.key = asyncssh.read_private_key(key_path)
        self.user = re.search(r"User (\S+)", config).group(1)  # type: ignore[union-attr]
        self.home = str(world.home)
        self.echo_port = echo_port

    async def run(self, index: int) -> None:
        """One connection, one of four kinds of use; the last leaves a forwarded stream open."""
        tunnel = await ssh_connect(self.url, self.token, "dev", self.user, self.key)
        try:
            conn = tunnel.ssh
            kind = index % 4
            if kind == 0:
                r = await conn.run("echo $((6*7))", check=True)
                assert r.stdout == "42\n"
            elif kind == 1:
                r = await conn.run("tty", term_type="xterm", check=True)
                assert str(r.stdout).startswith("/dev/pts/")
            elif kind == 2:
                async with conn.start_sftp_client() as sftp:
                    assert await sftp.realpath(".") == self.home
                    assert ".ssh" in await sftp.listdir(".")
            else:
                reader, writer = await conn.open_connection("127.0.0.1", self.echo_port)
                writer.write(b"hi")
                assert await reader.readexactly(2) == b"hi"
        finally:
            await tunnel.close()

    async def many(self, count: int, concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                await asyncio.wait_for(self.run(i), 60)  # a stalled relay fails, never hangs

        await asyncio.gather(*(one(i) for i in range(count)))


def _openssh_workload(world: World, echo: EchoServer, agent_sock: str, x_env: dict[str, str] | None) -> None:
    """One of every kind of connection a developer makes with the real ssh, some ended rudely."""
    env = {**(x_env or world.env()), "SSH_AUTH_SOCK": agent_sock}
    x11 = ["-X"] if x_env else []
    use_x = "xdpyinfo >/dev/null" if x_env else "true"
    assert world.ssh("hatchway.dev", "echo ok", env=env).stdout == b"ok\n"
    assert world.ssh("-tt", "hatchway.dev", stdin=b"exit 0\n", env=env).returncode == 0
    assert world.ssh("-A", *x11, "hatchway.dev", f"ssh-add -l >/dev/null && {use_x} && echo fwd",
                     env=env).stdout == b"fwd\n"
    assert world.run(world.argv("-b", "-", "hatchway.dev", tool="sftp"), stdin=b"ls\n").returncode == 0
    port = free_port()
    r = world.ssh("-L", f"127.0.0.1:{port}:127.0.0.1:{echo.port}", "-R", f"0:127.0.0.1:{echo.port}",
                  "-R", f"{world.home}/leak.sock:127.0.0.1:{echo.port}", "hatchway.dev", "echo fwd-up")
    assert r.stdout == b"fwd-up\n", r.stderr
    # clients killed in the middle: a running command, an open forwarded connection, an X11 client
    lport = free_port()
    rude = subprocess.Popen(
        world.argv("-A", *x11, "-L", f"127.0.0.1:{lport}:127.0.0.1:{echo.port}", "-R",
                   f"{world.home}/rude.sock:127.0.0.1:{echo.port}", "hatchway.dev",
                   f"{use_x}; echo started; sleep 60"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert rude.stdout is not None and rude.stdout.readline() == b"started\n"
    wait_for(lambda: listening(lport), 10, what="the -L port")
    held = socket.create_connection(("127.0.0.1", lport))
    held.sendall(b"x")
    assert held.recv(1) == b"x"
    rude.kill()
    rude.communicate(timeout=20)
    held.close()


def test_9_no_leaks_after_many_connections(world: World, ssh_agent: tuple[str, str],
                                           maybe_x_server: dict[str, str] | None) -> None:
    """Every child reaped, every socket and file closed, after 1,000+ connections of all kinds."""
    pid = world.agent.proc.pid  # type: ignore[union-attr]
    with EchoServer() as echo:
        relay = RelayClient(world, echo.port)
        # warm up what is created once and kept (thread pools, lazily opened files)
        _openssh_workload(world, echo, ssh_agent[0], maybe_x_server)
        asyncio.run(relay.many(8, 4))

        def quiet() -> tuple[dict[str, int], list[str]]:
            return agent_fds(pid), agent_children(pid)

        def settled(reference: dict[str, int]) -> bool:
            fds, children = quiet()
            return fds == reference and not children

        def steady() -> tuple[dict[str, int], list[str]]:
            """A reading that holds still for a moment, once the warm-up's sessions are gone (a
            killed client's connection ends when its proxy gives up, a few seconds later)."""
            last = quiet()
            for _ in range(100):
                time.sleep(0.3)
                now = quiet()
                if now == last and not now[1]:
                    return now
                last = now
            return last

        before, children = steady()
        assert children == []
        for _ in range(3):
            _openssh_workload(world, echo, ssh_agent[0], maybe_x_server)
        asyncio.run(relay.many(1000, 4))
        deadline = time.monotonic() + 20
        while not settled(before) and time.monotonic() < deadline:
            time.sleep(0.2)
        after, children = quiet()
        assert children == [], children
        assert after == before
    assert not list(world.home.glob("*.sock")), "forwarded sockets left behind"
    assert not list(Path("/tmp").glob(f"ssh-*/agent.{pid}")), "agent sockets left behind"

