"""One SSH session channel of the built-in server: a login shell or a command, PTY or not.

The session is an ``asyncssh.SSHServerSession`` (the callback API, not asyncssh's streams or
``redirect()``), because that gives us the two flow-control signals we need and nothing that
buffers without bound:

* child output -> channel: we read the child's fds only while the channel's send buffer is
  below its high-water mark (``pause_writing``/``resume_writing`` remove/re-add the readers),
  so a client that reads slowly stops the child through a full pipe, not through our memory;
* channel -> child stdin: data goes into a bounded buffer drained by an ``add_writer``
  callback; above the limit we ``pause_reading()`` the channel, so the SSH window closes and
  the client stops sending.

The child's exit status is sent only after all its output has been read and the send buffer
has drained, which is what makes "a command that exits at once still delivers its last line"
and "50 MiB of output arrives complete" hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import struct
import termios
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from hatchway.sshd.env import SessionIdentity, build_session_env
from hatchway.sshd.process import (
    Child,
    SpawnedSession,
    close_quietly,
    describe_status,
    is_eio,
    spawn,
)
from hatchway.sshd.ttymodes import apply_tty_modes

log = logging.getLogger("hatchway.sshd")

READ_CHUNK = 256 * 1024
STDIN_HIGH_WATER = 256 * 1024  # pause the channel above this much unwritten stdin
STDIN_LOW_WATER = 64 * 1024
# After a PTY session's process exits, its output may still be in flight; stop waiting once no
# output came for this long (background jobs that keep the terminal open would hang us forever).
PTY_LINGER = 0.5


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
    child_started: Callable[[Child], None] = lambda child: None
    child_exited: Callable[[Child], None] = lambda child: None
    track_task: Callable[[asyncio.Task[None]], None] = lambda task: None


def _read_session_files(home: Path) -> tuple[str | None, bool]:
    """Blocking part of session setup (run in a thread): ~/.ssh/environment and the home dir."""
    text: str | None
    try:
        text = (
            (home / ".ssh" / "environment")
            .read_bytes()
            .decode("utf-8", "surrogateescape")
        )
    except FileNotFoundError:
        text = None
    except OSError as exc:
        log.debug("cannot read %s/.ssh/environment: %s", home, exc.strerror or exc)
        text = None
    return text, home.is_dir()


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
        self._write_paused = False
        self._outputs_closed = asyncio.Event()
        self._output_bytes = 0
        self._drain_waiter: asyncio.Future[None] | None = None

    # ---- asyncssh callbacks: session setup -------------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:  # type: ignore[type-arg]
        self._chan = chan

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

    def subsystem_requested(self, subsystem: str) -> bool:
        log.debug(
            "%s: subsystem %r refused (not available in this server yet)",
            self._ctx.label,
            subsystem,
        )
        return False

    def break_received(self, msec: int) -> bool:
        return False  # not supported; the client reports it

    def session_started(self) -> None:
        self._task = self._loop.create_task(
            self._run(), name=f"hatchway-sshd-session {self._ctx.label}"
        )
        self._ctx.track_task(self._task)

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel is gone (client closed it or the connection dropped): stop the session."""
        self._closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._task is None:
            self._cleanup()

    # ---- asyncssh callbacks: running session -----------------------------------------------

    def data_received(self, data: bytes, datatype: int | None) -> None:
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

    def eof_received(self) -> bool:
        self._stdin_eof = True
        if self._stdin_fd is not None and not self._stdin_buf:
            self._finish_stdin()
        return True  # stay half-open: output and exit status still have to go out

    def pause_writing(self) -> None:
        self._write_paused = True
        for fd in self._outputs:
            self._loop.remove_reader(fd)

    def resume_writing(self) -> None:
        self._write_paused = False
        for fd, datatype in self._outputs.items():
            self._loop.add_reader(fd, self._on_output, fd, datatype)
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

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
            user_env, home_ok = await asyncio.to_thread(_read_session_files, ident.home)
            tty_path: str | None = None
            if self._term is not None:
                self._master, slave = os.openpty()
                tty_path = self._setup_pty(slave)
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
                user_environment=user_env,
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

        asyncssh pre-seeds the channel env with authorized_keys ``environment=`` options; those
        come back separately (and win) through ``ctx.key_env``.
        """
        assert self._chan is not None
        return dict(self._chan.get_environment())

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
        _set_winsize(self._master, width or 80, height or 24, pixwidth, pixheight)
        return os.ttyname(slave)

    def _start_pumps(self, spawned: SpawnedSession) -> None:
        self._stdin_fd = spawned.stdin_fd
        self._outputs[spawned.stdout_fd] = None
        if spawned.stderr_fd is not None:
            self._outputs[spawned.stderr_fd] = asyncssh.EXTENDED_DATA_STDERR
        if not self._write_paused:
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
                if self._output_bytes == seen and not self._write_paused:
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
