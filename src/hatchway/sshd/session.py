"""One SSH session channel of the built-in server: a login shell or a command, PTY or not.

The session is an ``asyncssh.SSHServerSession`` (the callback API, not asyncssh's streams or
``redirect()``), because that gives us the two flow-control signals we need and nothing that
buffers without bound:

* child output -> channel: we read the child's fds only while the channel's send buffer is
  below its high-water mark (``pause_writing``/``resume_writing`` remove/re-add the readers)
  and the connection's transport is not full (:mod:`hatchway.sshd.flow`), so a client that
  reads slowly stops the child through a full pipe, not through our memory, whatever window
  it granted;
* channel -> child stdin: data goes into a bounded buffer drained by an ``add_writer``
  callback; above the limit we ``pause_reading()`` the channel, so the SSH window closes and
  the client stops sending.

The child's exit status is sent only after all its output has been read and the send buffer
has drained, which is what makes "a command that exits at once still delivers its last line"
and "50 MiB of output arrives complete" hold.

Besides shells and commands a session can be the ``sftp`` subsystem (run in-process by
:mod:`hatchway.sshd.sftp`, no shell involved), and can ask for agent forwarding (``ssh -A``) and
X11 forwarding (``ssh -X``): both are per session, so ``SSH_AUTH_SOCK`` and ``DISPLAY`` exist only
in the session that asked. Interactive login sessions (shell + PTY) show ``/etc/motd`` unless
``~/.hushlogin`` exists; nothing is ever added to the output of a command.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from hatchway.fileutil import read_regular
from hatchway.sshd.agentfwd import AgentForward
from hatchway.sshd.config import BuiltinSSHConfig
from hatchway.sshd.env import SessionIdentity, build_session_env
from hatchway.sshd.flow import WINDOW, Hold, OutputGate
from hatchway.sshd.forward import Bridge
from hatchway.sshd.process import (
    Child,
    SpawnedSession,
    close_quietly,
    describe_status,
    is_eio,
    spawn,
)
from hatchway.sshd.ptyowner import set_pty_owner
from hatchway.sshd.sftp import HatchwaySFTPServer, run_sftp
from hatchway.sshd.ttymodes import apply_tty_modes
from hatchway.sshd.x11 import X11Forward, find_xauth, valid_auth

log = logging.getLogger("hatchway.sshd")

READ_CHUNK = 256 * 1024
STDIN_HIGH_WATER = 256 * 1024  # pause the channel above this much unwritten stdin
STDIN_LOW_WATER = 64 * 1024
# After a PTY session's process exits, its output may still be in flight; stop waiting once no
# output came for this long (background jobs that keep the terminal open would hang us forever).
PTY_LINGER = 0.5
MOTD_MAX = 64 * 1024  # a runaway /etc/motd is cut, not streamed into every login
#: SSH_ORIGINAL_COMMAND of an sftp session under a forced command: sshd's, with its sftp built in.
INTERNAL_SFTP = "internal-sftp"


class ConnectionServices:
    """What a session may ask of its connection (the server's per-connection state implements
    it; these defaults refuse everything, which keeps a bare session testable)."""

    def inbound(self, label: str, open_channel: Callable[[Bridge], Awaitable[object]]) -> Bridge | None:
        """A local program connected to one of our listeners: the bridge to serve it, or None."""
        return None

    def open_agent_channel(self, bridge: Bridge) -> Awaitable[object]:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not available")

    def open_x11_channel(self, bridge: Bridge, orig_host: str, orig_port: int) -> Awaitable[object]:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "not available")


@dataclass
class SessionContext:
    """What a session needs from its connection and server (kept explicit to stay testable)."""

    identity: SessionIdentity
    base_env: Mapping[str, str]
    accepted_client_env: tuple[str, ...]
    client_addr: tuple[str, int] | None
    server_addr: tuple[str, int] | None
    label: str
    key_env: Callable[[], Mapping[str, str]] = dict
    # Whether the authenticating key's authorized_keys line (or certificate) allows a permission
    # such as "agent-forwarding" (see hatchway.sshd.authkeys).
    key_permits: Callable[[str], bool] = lambda permission: True
    child_started: Callable[[Child], None] = lambda child: None
    child_exited: Callable[[Child], None] = lambda child: None
    track_task: Callable[[asyncio.Task[None]], None] = lambda task: None
    config: BuiltinSSHConfig = field(default_factory=BuiltinSSHConfig)
    services: ConnectionServices = field(default_factory=ConnectionServices)
    # The pool SFTP file I/O runs on; None: no sftp subsystem.
    io_executor: concurrent.futures.Executor | None = None
    # Called once when the session channel is gone (frees its slot in the connection's limits).
    on_closed: Callable[[], None] = lambda: None
    # The connection's transport, full or not: output holds while it is (see hatchway.sshd.flow).
    output_gate: OutputGate = field(default_factory=OutputGate)


@dataclass
class SessionFiles:
    """What session setup reads from disk (in a thread, never on the event loop)."""

    environment: str | None  # text of ~/.ssh/environment, None when absent
    home_ok: bool
    motd: bytes | None = None  # None: show nothing


def _read_session_files(home: Path, motd_path: Path | None = None) -> SessionFiles:
    """Blocking part of session setup (run in a thread).

    ``motd_path`` is given only for interactive login sessions; ``~/.hushlogin`` silences it.
    """
    text: str | None
    try:
        text = read_regular(home / ".ssh" / "environment")[1].decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        text = None
    except OSError as exc:
        log.warning("%s; the session starts without it", exc.strerror or exc)
        text = None
    motd: bytes | None = None
    if motd_path is not None and not (home / ".hushlogin").exists():
        try:
            with open(motd_path, "rb") as fh:
                motd = fh.read(MOTD_MAX) or None
        except OSError:
            motd = None
    return SessionFiles(text, home.is_dir(), motd)


def terminal_text(data: bytes) -> bytes:
    """Text written straight to a terminal (not through the PTY's ONLCR): LF becomes CRLF."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class _ExitingWriter(asyncssh.SSHWriter):  # type: ignore[type-arg]
    """The SFTP handler's output; its close() at the end of the session reports exit status 0
    first, as sshd does when sftp-server exits, so ``ssh -s host sftp`` exits 0 too."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.channel.exit(0)


class SessionChannel(asyncssh.SSHServerChannel):  # type: ignore[type-arg]
    """asyncssh's session channel with agent and X11 forwarding requests routed to our session.

    asyncssh handles ``auth-agent-req@openssh.com`` and ``x11-req`` per connection (one agent
    socket for all sessions, its own X11 display and xauth file writer); we want them per
    session, bound off the event loop and written with the real ``xauth``. Request handlers are
    looked up by name (``_process_<request>_request``); returning None defers the reply, which
    ``_report_response`` sends once our coroutine has finished. Requests are answered in order,
    so the shell or command that follows starts only after the forwarding is set up.
    """

    owner: HatchwaySession | None = None

    def _process_auth_agent_req_at_openssh_dot_com_request(self, packet: Any) -> bool | None:
        packet.check_end()
        return self._defer(lambda session: session.agent_requested())

    def _process_exec_request(self, packet: Any) -> bool:
        """asyncssh refuses a command that is not UTF-8; sshd runs any bytes (``scp -O`` of a
        Latin-1 file name, say). Decoded with surrogateescape, the command's bytes reach the
        shell's argv unchanged (os.fsencode restores them)."""
        command = packet.get_string().decode("utf-8", "surrogateescape")
        packet.check_end()
        if self.owner is not None and self._command_forced():
            self.owner.original_command = command  # SSH_ORIGINAL_COMMAND, as sshd sets it
        return bool(self._start_session(command=command))

    def _process_subsystem_request(self, packet: Any) -> bool:
        """Under a forced command, sshd runs it for a subsystem it serves, with the subsystem's
        program in SSH_ORIGINAL_COMMAND (``internal-sftp`` for a built-in sftp, as ours is: what
        a wrapper checks before it lets sftp through), and refuses any other subsystem; asyncssh
        would run the forced command for any name, with no SSH_ORIGINAL_COMMAND."""
        if self.owner is None or not self._command_forced():
            return bool(super()._process_subsystem_request(packet))
        subsystem = packet.get_string().decode("utf-8", "replace")
        packet.check_end()
        if not self.owner.serves(subsystem):
            return False
        self.owner.original_command = INTERNAL_SFTP
        return bool(self._start_session(subsystem=subsystem))

    def _command_forced(self) -> bool:
        """Whether a ``command="..."`` key option (or a certificate's force-command) replaces
        the client's command: the rule asyncssh's ``_start_session`` applies."""
        conn = self._conn
        return conn.get_certificate_option("force-command") is not None or conn.get_key_option("command") is not None

    def _process_eow_at_openssh_dot_com_request(self, packet: Any) -> bool:
        """The client can no longer write what it receives (``ssh host cmd | head -1``, once
        ``head`` exits): stop reading the command's output, so it gets EPIPE, as under sshd."""
        packet.check_end()
        if self.owner is not None:
            self.owner.output_unwanted()
        return True

    def _process_x11_req_request(self, packet: Any) -> bool | None:
        single = packet.get_boolean()
        proto = packet.get_string()
        cookie = packet.get_string()
        screen = packet.get_uint32()
        packet.check_end()
        return self._defer(lambda session: session.x11_requested(single, proto, cookie, screen))

    def _defer(self, start: Callable[[HatchwaySession], Coroutine[Any, Any, bool]]) -> bool | None:
        session = self.owner
        if session is None:
            return False
        session.answer_later(self, start(session))
        return None


def _set_winsize(
    fd: int, width: int, height: int, pixwidth: int, pixheight: int
) -> None:
    """TIOCSWINSZ; the kernel then sends SIGWINCH to the terminal's foreground process group."""

    def clamp(v: int) -> int:
        return max(0, min(int(v), 0xFFFF))

    packed = struct.pack(
        "HHHH", clamp(height), clamp(width), clamp(pixwidth), clamp(pixheight)
    )
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


class HatchwaySession(asyncssh.SSHServerSession):  # type: ignore[type-arg]
    """Runs the user's shell for one session channel and pumps bytes both ways."""

    def __init__(self, ctx: SessionContext) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self._chan: asyncssh.SSHServerChannel | None = None  # type: ignore[type-arg]
        self._term: str | None = None
        self._term_size: tuple[int, int, int, int] = (80, 24, 0, 0)
        self._term_modes: dict[int, int] = {}
        self._command: str | None = None
        self.original_command: str | None = None  # the client's, when a key forces another
        self._task: asyncio.Task[None] | None = None
        self._spawned: SpawnedSession | None = None
        self._master: int | None = None
        self._closed = False
        # stdin (channel -> child)
        self._stdin_fd: int | None = None
        self._stdin_buf = bytearray()
        self._stdin_eof = False
        self._stdin_done = False  # closed or abandoned: drop further input
        self._stdin_writer = False
        self._chan_reading_paused = False
        # output (child -> channel)
        self._outputs: dict[int, int | None] = {}  # fd -> datatype (None = stdout)
        self._hold = Hold(self._pause_output, self._resume_output)  # by the window or the connection
        self._outputs_closed = asyncio.Event()
        self._output_bytes = 0
        self._drain_waiter: asyncio.Future[None] | None = None
        # subsystem / forwarding
        self._subsystem: str | None = None
        self._sftp_stream: Any = None  # asyncssh stream session feeding the SFTP handler
        self._sftp_server: HatchwaySFTPServer | None = None
        self._agent: AgentForward | None = None
        self._x11: X11Forward | None = None
        self._xauth: str | None = None
        self._requests: set[asyncio.Task[None]] = set()
        self._released = False

    # ---- asyncssh callbacks: session setup -------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[type-arg]
        self._chan = chan
        if isinstance(chan, SessionChannel):
            chan.owner = self
        self._ctx.output_gate.join(self._hold)

    def pty_requested(
        self,
        term_type: str,
        term_size: tuple[int, int, int, int],
        term_modes: Mapping[int, int],
    ) -> bool:
        self._term = term_type
        self._term_size = tuple(term_size)  # type: ignore[assignment]
        self._term_modes = dict(term_modes)
        return True

    def shell_requested(self) -> bool:
        self._command = None
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def serves(self, subsystem: str) -> bool:
        """Whether this server has ``subsystem``: only sftp, when it has a pool for its file I/O."""
        return subsystem == "sftp" and self._ctx.io_executor is not None

    def subsystem_requested(self, subsystem: str) -> bool:
        if self.serves(subsystem):
            self._subsystem = subsystem
            return True
        log.debug("%s: subsystem %r refused (only sftp exists)", self._ctx.label, subsystem)
        return False

    def break_received(self, msec: int) -> bool:
        return False  # not supported; the client reports it

    def session_started(self) -> None:
        if self._subsystem == "sftp":
            # Set up synchronously: asyncssh delivers queued data right after this returns.
            from asyncssh.stream import SSHServerStreamSession

            assert self._chan is not None and self._ctx.io_executor is not None
            self._sftp_stream = SSHServerStreamSession(None)
            self._sftp_stream.connection_made(self._chan)
            if self._hold.held:
                self._sftp_stream.pause_writing()
            self._sftp_server = HatchwaySFTPServer(
                self._chan, user=self._ctx.identity.user, home=self._ctx.identity.home,
                executor=self._ctx.io_executor,
            )
            self._task = self._loop.create_task(
                self._run_sftp(), name=f"hatchway-sshd-sftp {self._ctx.label}"
            )
        else:
            self._task = self._loop.create_task(
                self._run(), name=f"hatchway-sshd-session {self._ctx.label}"
            )
        self._ctx.track_task(self._task)

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone (client closed it or the connection dropped): stop the session."""
        self._closed = True
        self._ctx.output_gate.leave(self._hold)
        if self._sftp_stream is not None:
            self._sftp_stream.connection_lost(exc)
        for task in list(self._requests):
            task.cancel()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._task is None:
            self._cleanup()
        self._release()

    # ---- forwarding requests (deferred replies, see SessionChannel) ------------------------

    def answer_later(self, chan: SessionChannel, coro: Coroutine[Any, Any, bool]) -> None:
        async def answer() -> None:
            try:
                ok = await coro
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: forwarding request failed", self._ctx.label)
                ok = False
            if not self._closed:
                chan._report_response(ok)

        task = self._loop.create_task(answer(), name=f"hatchway-sshd-request {self._ctx.label}")
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)
        self._ctx.track_task(task)

    async def agent_requested(self) -> bool:
        ctx = self._ctx
        if not ctx.config.allow_agent_forwarding:
            log.info("%s: agent forwarding refused (disabled)", ctx.label)
            return False
        if not ctx.key_permits("agent-forwarding"):
            log.info("%s: agent forwarding refused by the key's authorized_keys options", ctx.label)
            return False
        if self._agent is not None:
            return True
        agent = AgentForward(
            label=ctx.label,
            inbound=ctx.services.inbound,
            open_channel=ctx.services.open_agent_channel,
            track_task=ctx.track_task,
        )
        if not await agent.start():
            return False
        if self._closed:  # the session ended while the socket was being made
            agent.close()
            return False
        self._agent = agent
        return True

    async def x11_requested(self, single: bool, proto_raw: bytes, cookie_raw: bytes, screen: int) -> bool:
        ctx = self._ctx
        if not ctx.config.allow_x11_forwarding:
            log.info("%s: X11 forwarding refused (disabled)", ctx.label)
            return False
        if not ctx.key_permits("X11-forwarding"):
            log.info("%s: X11 forwarding refused by the key's authorized_keys options", ctx.label)
            return False
        if self._x11 is not None:
            return False  # OpenSSH: "X11 forwarding already active"
        try:
            proto, cookie = proto_raw.decode("ascii"), cookie_raw.decode("ascii")
        except UnicodeDecodeError:
            return False
        if not valid_auth(proto, cookie) or screen > 0xFFFF:
            log.info("%s: X11 forwarding refused: invalid authentication data", ctx.label)
            return False
        xauth = await asyncio.to_thread(find_xauth, ctx.base_env.get("PATH"))
        if xauth is None:
            log.info("%s: X11 forwarding refused: no xauth program", ctx.label)
            return False
        x11 = X11Forward(
            label=ctx.label,
            inbound=ctx.services.inbound,
            open_channel=ctx.services.open_x11_channel,
            single_connection=single,
            proto=proto,
            cookie=cookie,
            screen=screen,
        )
        if not await x11.start(ctx.config.x11_display_offset, ctx.config.x11_max_displays):
            return False
        if self._closed:
            x11.close()
            return False
        self._x11, self._xauth = x11, xauth
        return True

    # ---- asyncssh callbacks: running session -----------------------------------------------

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self._sftp_stream is not None:
            self._sftp_stream.data_received(data, datatype)
            return
        if self._stdin_done:
            return  # the child no longer reads stdin: discard, keep the window flowing
        self._stdin_buf += data
        if self._stdin_fd is not None:
            self._flush_stdin()
        if (
            not self._stdin_done
            and len(self._stdin_buf) > STDIN_HIGH_WATER
            and not self._chan_reading_paused
        ):
            self._chan_reading_paused = True
            assert self._chan is not None
            self._chan.pause_reading()

    def output_unwanted(self) -> None:
        """Close our end of the command's stdout (not of a terminal, which is its stdin too;
        nor stderr, which the client still shows)."""
        if self._master is not None:
            return
        for fd, datatype in list(self._outputs.items()):
            if datatype is None:
                log.debug("%s: the client stopped reading; closing the command's stdout", self._ctx.label)
                self._close_output(fd)

    def eof_received(self) -> bool:
        if self._sftp_stream is not None:
            return bool(self._sftp_stream.eof_received())
        self._stdin_eof = True
        if self._stdin_fd is not None and not self._stdin_buf:
            self._finish_stdin()
        return True  # stay half-open: output and exit status still have to go out

    def pause_writing(self) -> None:
        self._hold.set(WINDOW, True)

    def resume_writing(self) -> None:
        self._hold.set(WINDOW, False)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)  # the channel's send buffer is empty

    def _pause_output(self) -> None:
        if self._sftp_stream is not None:
            self._sftp_stream.pause_writing()
            return
        for fd in self._outputs:
            self._loop.remove_reader(fd)

    def _resume_output(self) -> None:
        if self._sftp_stream is not None:
            self._sftp_stream.resume_writing()
            return
        for fd, datatype in self._outputs.items():
            self._loop.add_reader(fd, self._on_output, fd, datatype)

    def signal_received(self, signal_name: str) -> None:
        sig = getattr(signal, f"SIG{signal_name}", None)
        spawned = self._spawned
        if (
            not isinstance(sig, signal.Signals)
            or spawned is None
            or not spawned.child.running
        ):
            log.debug("%s: signal %s ignored", self._ctx.label, signal_name)
            return
        pgid = spawned.child.pid
        if self._master is not None:
            # With a terminal, the job in the foreground is what ^C-like signals are meant for.
            with contextlib.suppress(OSError):
                pgid = os.tcgetpgrp(self._master)
        log.debug(
            "%s: delivering SIG%s to process group %d",
            self._ctx.label,
            signal_name,
            pgid,
        )
        spawned.child.signal_group(sig, pgid)

    def terminal_size_changed(
        self, width: int, height: int, pixwidth: int, pixheight: int
    ) -> None:
        self._term_size = (width, height, pixwidth, pixheight)
        if self._master is not None:
            _set_winsize(self._master, width, height, pixwidth, pixheight)

    # ---- the session task ------------------------------------------------------------------

    async def _run(self) -> None:
        ctx = self._ctx
        ident = ctx.identity
        slave: int | None = None
        try:
            interactive_login = self._command is None and self._term is not None
            files = await asyncio.to_thread(
                _read_session_files, ident.home, ctx.config.motd_path if interactive_login else None
            )
            home_ok = files.home_ok
            forwarded: dict[str, str] = {}
            if self._agent is not None and self._agent.path is not None:
                forwarded["SSH_AUTH_SOCK"] = self._agent.path
            if self._x11 is not None:
                forwarded["DISPLAY"] = self._x11.display
            tty_path: str | None = None
            if self._term is not None:
                self._master, slave = os.openpty()
                tty_path = self._setup_pty(slave)
                await asyncio.to_thread(set_pty_owner, tty_path)
            env = build_session_env(
                base_env=ctx.base_env,
                identity=ident,
                client_addr=ctx.client_addr,
                server_addr=ctx.server_addr,
                client_env=self._client_env(),
                accepted_client_env=ctx.accepted_client_env,
                term=self._term,
                tty_path=tty_path,
                key_env=ctx.key_env(),
                original_command=self.original_command,
                user_environment=files.environment,
                forwarded_env=forwarded,
            )
            shell_name = os.path.basename(ident.shell) or "sh"
            argv = (
                [f"-{shell_name}"]
                if self._command is None
                else [shell_name, "-c", self._command]
            )
            if not home_ok:
                self._write_stderr(
                    f"Could not chdir to home directory {ident.home}: No such file or directory\r\n"
                )
            if self._x11 is not None and self._xauth is not None:
                problem = await self._x11.write_xauth(
                    self._xauth, env, str(ident.home) if home_ok else "/"
                )
                if problem is not None:
                    self._write_stderr(problem + ("\r\n" if self._term else "\n"))
            if files.motd is not None and self._chan is not None and not self._chan.is_closing():
                # Before the shell runs, so it comes first; straight to the channel (a PTY
                # buffer could fill up before anyone reads it).
                with contextlib.suppress(OSError):
                    self._chan.write(terminal_text(files.motd))
            log.debug(
                "%s: starting %s (%s)",
                ctx.label,
                "login shell" if self._command is None else "command",
                "pty" if self._term is not None else "no pty",
            )
            try:
                pty_slave, slave = slave, None  # spawn() takes ownership of the slave
                self._spawned = spawn(
                    executable=ident.shell,
                    argv=argv,
                    cwd=str(ident.home) if home_ok else "/",
                    env=env,
                    pty_master=self._master,
                    pty_slave=pty_slave,
                    on_exit=ctx.child_exited,
                )
            except OSError as exc:
                self._write_stderr(
                    f"hatchway: cannot run {ident.shell}: {exc.strerror or exc}\r\n"
                )
                await self._send_exit(1 << 8)
                return
            spawned = self._spawned
            ctx.child_started(spawned.child)
            self._start_pumps(spawned)

            status = await spawned.child.wait()
            await self._wait_outputs()
            await self._send_exit(status)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: session failed", ctx.label)
            if self._chan is not None and not self._chan.is_closing():
                self._chan.exit(255)
        finally:
            close_quietly(slave)
            self._cleanup()

    def _client_env(self) -> dict[str, str]:
        """What the client sent with SendEnv/SetEnv (filtered later by build_session_env).

        Any bytes, as sshd passes them (a Latin-1 ``LC_*`` value, say): decoded with
        surrogateescape, they reach the process's environment unchanged, where asyncssh's
        ``get_environment()`` drops what is not UTF-8. asyncssh pre-seeds the channel env with
        authorized_keys ``environment=`` options; those come back separately (and win) through
        ``ctx.key_env``.
        """
        assert self._chan is not None
        return {
            k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in self._chan.get_environment_bytes().items()
        }

    def _setup_pty(self, slave: int) -> str:
        """Apply the client's terminal modes and size to the new PTY; return the slave's path."""
        try:
            attrs = termios.tcgetattr(slave)
            termios.tcsetattr(
                slave, termios.TCSANOW, apply_tty_modes(attrs, self._term_modes)
            )
        except termios.error as exc:
            log.debug("%s: cannot apply terminal modes: %s", self._ctx.label, exc)
        width, height, pixwidth, pixheight = self._term_size
        assert self._master is not None
        # As given, 0x0 too (what `ssh -tt` sends without a terminal of its own), as sshd does.
        _set_winsize(self._master, width, height, pixwidth, pixheight)
        return os.ttyname(slave)

    def _start_pumps(self, spawned: SpawnedSession) -> None:
        self._stdin_fd = spawned.stdin_fd
        self._outputs[spawned.stdout_fd] = None
        if spawned.stderr_fd is not None:
            self._outputs[spawned.stderr_fd] = asyncssh.EXTENDED_DATA_STDERR
        if not self._hold.held:
            for fd, datatype in self._outputs.items():
                self._loop.add_reader(fd, self._on_output, fd, datatype)
        if self._stdin_done:
            self._finish_stdin()
        elif self._stdin_buf:
            self._flush_stdin()
        elif self._stdin_eof:
            self._finish_stdin()

    async def _wait_outputs(self) -> None:
        """Wait until the child's output fds hit EOF (PTY: or stay silent for PTY_LINGER)."""
        if not self._outputs:
            return
        if self._master is None:
            await self._outputs_closed.wait()
            return
        while self._outputs:
            seen = self._output_bytes
            try:
                await asyncio.wait_for(self._outputs_closed.wait(), PTY_LINGER)
            except TimeoutError:
                if self._output_bytes == seen and not self._hold.held:
                    log.debug(
                        "%s: terminal still held open after exit; closing it",
                        self._ctx.label,
                    )
                    return

    async def _send_exit(self, status: int) -> None:
        """EOF, wait for the send buffer to drain, then exit-status/exit-signal and close."""
        chan = self._chan
        if chan is None or chan.is_closing():
            return
        chan.write_eof()
        if chan.get_write_buffer_size() > 0:
            self._drain_waiter = self._loop.create_future()
            chan.set_write_buffer_limits(high=0, low=0)  # resume_writing fires at empty
            if chan.get_write_buffer_size() > 0:
                await self._drain_waiter
        if (
            self._closed
        ):  # is_closing() is already true after our own EOF; this is the client
            return
        code, signame, core = describe_status(status)
        if signame is not None:
            log.debug("%s: process killed by SIG%s", self._ctx.label, signame)
            chan.exit_with_signal(signame, core)
        else:
            log.debug("%s: process exited with status %s", self._ctx.label, code)
            chan.exit(code if code is not None else 255)

    # ---- pumps -----------------------------------------------------------------------------

    def _on_output(self, fd: int, datatype: int | None) -> None:
        """Move what the child wrote to the channel, as one write of up to READ_CHUNK.

        A PTY hands out at most 4 KiB per read; gathering several reads per wakeup (until
        EAGAIN) means far fewer, larger SSH packets for terminal-heavy output.
        """
        chunks: list[bytes] = []
        size = 0
        eof = False
        while size < READ_CHUNK:
            try:
                data = os.read(fd, READ_CHUNK - size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if not is_eio(exc):
                    log.debug("%s: reading output failed: %s", self._ctx.label, exc)
                data = b""
            if not data:
                eof = True
                break
            chunks.append(data)
            size += len(data)
        if chunks:
            self._output_bytes += size
            chan = self._chan
            try:
                assert chan is not None
                chan.write(b"".join(chunks) if len(chunks) > 1 else chunks[0], datatype)
            except (
                OSError
            ):  # channel closed for sending: stop reading; the child gets EPIPE
                eof = True
        if eof:
            self._close_output(fd)

    def _close_output(self, fd: int) -> None:
        if self._outputs.pop(fd, "absent") == "absent":
            return
        self._loop.remove_reader(fd)
        close_quietly(fd)
        if not self._outputs:
            self._outputs_closed.set()

    def _flush_stdin(self) -> None:
        fd = self._stdin_fd
        assert fd is not None
        while self._stdin_buf:
            try:
                n = os.write(fd, self._stdin_buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # EPIPE (child closed stdin / exited) or EIO (pty gone)
                self._abandon_stdin()
                return
            del self._stdin_buf[:n]
        if self._stdin_buf:
            if not self._stdin_writer:
                self._stdin_writer = True
                self._loop.add_writer(fd, self._flush_stdin)
        else:
            if self._stdin_writer:
                self._stdin_writer = False
                self._loop.remove_writer(fd)
            if self._stdin_eof:
                self._finish_stdin()
        self._maybe_resume_channel()

    def _finish_stdin(self) -> None:
        """Client sent EOF and everything before it was written: pass the EOF on.

        For pipes that means closing our end. A PTY has no half-close (closing would hang up
        the terminal), so like OpenSSH we only stop writing to it.
        """
        if self._master is None:
            self._abandon_stdin()
        else:
            self._stdin_done = True

    def _abandon_stdin(self) -> None:
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None:
            if self._stdin_writer:
                self._stdin_writer = False
                self._loop.remove_writer(fd)
            close_quietly(fd)
        self._stdin_done = True
        self._stdin_buf.clear()
        self._maybe_resume_channel()

    def _maybe_resume_channel(self) -> None:
        if self._chan_reading_paused and (
            self._stdin_done or len(self._stdin_buf) <= STDIN_LOW_WATER
        ):
            self._chan_reading_paused = False
            if self._chan is not None and not self._closed:
                self._chan.resume_reading()

    def _write_stderr(self, text: str) -> None:
        chan = self._chan
        if chan is not None and not chan.is_closing():
            with contextlib.suppress(OSError):
                chan.write(
                    text.encode("utf-8", "replace"), asyncssh.EXTENDED_DATA_STDERR
                )

    # ---- teardown --------------------------------------------------------------------------

    def _cleanup(self) -> None:
        """Release every fd; hang up a child that is still running (the client is gone)."""
        for fd in list(self._outputs):
            self._loop.remove_reader(fd)
            close_quietly(fd)
        self._outputs.clear()
        self._outputs_closed.set()
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None:
            if self._stdin_writer:
                self._loop.remove_writer(fd)
            close_quietly(fd)
        self._stdin_writer = False
        self._stdin_done = True
        self._stdin_buf.clear()
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.cancel()
        if self._spawned is not None and self._spawned.child.running:
            log.debug(
                "%s: hanging up process group %d",
                self._ctx.label,
                self._spawned.child.pid,
            )
            self._spawned.child.signal_group(signal.SIGHUP)
            self._spawned.child.signal_group(
                signal.SIGCONT
            )  # a stopped job must see the HUP
        master, self._master = self._master, None
        close_quietly(master)
        # Forwarding belongs to the session: its agent socket and X11 display go with it
        # (connections already made through them live on as their own channels).
        agent, self._agent = self._agent, None
        if agent is not None:
            agent.close()
        x11, self._x11 = self._x11, None
        if x11 is not None:
            x11.close()
        sftp, self._sftp_server = self._sftp_server, None
        if sftp is not None:
            sftp.release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            try:
                self._ctx.on_closed()
            except Exception:
                log.exception("%s: session bookkeeping failed", self._ctx.label)

    # ---- sftp subsystem --------------------------------------------------------------------

    async def _run_sftp(self) -> None:
        """Serve SFTP on this channel until the client closes it (asyncssh speaks the protocol)."""
        ctx = self._ctx
        chan, stream, server = self._chan, self._sftp_stream, self._sftp_server
        assert chan is not None and stream is not None and server is not None
        try:
            log.debug("%s: sftp session", ctx.label)
            await run_sftp(server, asyncssh.SSHReader(stream, chan), _ExitingWriter(stream, chan))
        except asyncio.CancelledError:
            raise
        except (asyncio.IncompleteReadError, EOFError):
            log.debug("%s: sftp client went away before starting", ctx.label)
            with contextlib.suppress(OSError):
                chan.exit(0)
        except Exception:
            log.exception("%s: sftp session failed", ctx.label)
        finally:
            self._cleanup()
            if not self._closed:
                chan.close()
