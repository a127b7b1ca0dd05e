"""Session child processes: spawning them (with or without a PTY) and noticing their exit.

Why not ``asyncio.create_subprocess_*``: its stream API plus asyncssh's ``redirect()`` lost data
for large outputs on this machine (two coroutines reading one StreamReader), and it cannot hand
the child a controlling terminal. So we spawn with ``subprocess.Popen`` on fds we own, and the
session pumps those fds with ``add_reader``/``add_writer`` and real backpressure.

Exit is noticed through a pidfd (Linux 5.3+) registered with the event loop, falling back to a
short ``WNOHANG`` poll: both are plain loop callbacks, so a child outliving its session (the
client hung up) is still reaped without any task having to stay alive for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import subprocess
import termios
from collections.abc import Callable, Mapping

from hatchway.fdlimit import give_back_started_limit, started_with

log = logging.getLogger("hatchway.sshd")

PIPE_SIZE = (
    1 << 20
)  # fewer wakeups per MiB of output; best effort (pipe-max-size may be lower)
_POLL_START, _POLL_MAX = 0.005, 0.25


#: Every signal a process can ignore or block.
_RESETTABLE = tuple(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
#: Ignored by Python itself; ``subprocess`` restores them in the child already.
_RESTORED_BY_SUBPROCESS = {signal.SIGPIPE, signal.SIGXFSZ}


def _passes_on_signals() -> bool:
    """Whether a child spawned from this thread would inherit an ignored or blocked signal.

    exec keeps what the agent ignores and blocks. An agent started under ``nohup``, from a
    script with ``&`` (SIGINT and SIGQUIT ignored) or by a supervisor that masks signals would
    pass that on: commands would outlive the client's hang-up (SIGHUP) and ^C would not
    interrupt them. Only then does the child reset them itself (:func:`_default_signals`):
    code run between fork and exec costs the fast spawn (vfork), 4 ms with an agent's heap.
    """
    if signal.pthread_sigmask(signal.SIG_BLOCK, ()):
        return True
    return any(signal.getsignal(s) is signal.SIG_IGN for s in _RESETTABLE if s not in _RESTORED_BY_SUBPROCESS)


def _default_signals() -> None:  # pragma: no cover - runs in the child
    """Give the session's program the signal state a login has: every signal at its default
    action and none blocked (see :func:`_passes_on_signals`)."""
    for sig in _RESETTABLE:
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _login_state() -> None:  # pragma: no cover - runs in the child
    """What a login starts with that the agent does not have: default signals (see
    :func:`_passes_on_signals`) and the open-files limit the agent was started with (see
    :func:`hatchway.fdlimit.started_with`)."""
    _default_signals()
    give_back_started_limit()


def _setup_pty_child() -> None:  # pragma: no cover - runs in the child
    """A login's state, and stdin (the PTY slave) as the controlling terminal of the new session.

    Runs in the child between fork and exec, after ``start_new_session`` made it a session
    leader. Without a controlling terminal, job control and ^C do not work and the shell
    complains "no job control in this shell".
    """
    _login_state()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def close_quietly(fd: int | None) -> None:
    """Close an fd we own, ignoring "already closed" on cleanup paths."""
    if fd is not None and fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)


class Child:
    """A spawned session child: its pid (also its process group id) and its exit status."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        on_exit: Callable[[Child], None] | None = None,
    ):
        self.popen = popen
        self.pid = popen.pid
        self.status: int | None = None  # raw wait status once reaped
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._on_exit = on_exit
        self._pidfd: int | None = None
        self._poll_handle: asyncio.TimerHandle | None = None
        self._poll_delay = _POLL_START
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # old kernel or seccomp: poll instead
            self._poll_handle = self._loop.call_later(self._poll_delay, self._poll)
        else:
            self._loop.add_reader(self._pidfd, self._check)

    @property
    def running(self) -> bool:
        return self.status is None

    async def wait(self) -> int:
        """Wait for the child to exit; return its raw wait status. Safe to cancel."""
        return await asyncio.shield(self._exited)

    def signal_group(self, sig: int, pgid: int | None = None) -> None:
        """Signal the child's process group (or ``pgid``), ignoring already-gone processes."""
        if self.status is not None and pgid is None:
            return  # the group leader is reaped; its pid may be reused, so stay away
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid if pgid is not None else self.pid, sig)

    def _poll(self) -> None:
        self._poll_handle = None
        self._check()
        if self.status is None:
            self._poll_delay = min(self._poll_delay * 2, _POLL_MAX)
            self._poll_handle = self._loop.call_later(self._poll_delay, self._poll)

    def _check(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            # Someone else reaped it (a foreign SIGCHLD handler): report a generic failure.
            pid, status = self.pid, 255 << 8
        if pid == 0:
            return
        self._finish(status)

    def _finish(self, status: int) -> None:
        self.status = status
        self.popen.returncode = os.waitstatus_to_exitcode(
            status
        )  # keeps Popen.__del__ quiet
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            close_quietly(self._pidfd)
            self._pidfd = None
        if self._poll_handle is not None:
            self._poll_handle.cancel()
            self._poll_handle = None
        if not self._exited.done():
            self._exited.set_result(status)
        if self._on_exit is not None:
            try:
                self._on_exit(self)
            except Exception:  # a bookkeeping callback must not break reaping
                log.exception("child exit callback failed")


class SpawnedSession:
    """The parent's ends of a child's stdio: three pipes, or two dups of the PTY master."""

    def __init__(
        self, child: Child, stdin_fd: int, stdout_fd: int, stderr_fd: int | None
    ) -> None:
        self.child = child
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.stderr_fd = stderr_fd


def spawn(
    *,
    executable: str,
    argv: list[str],
    cwd: str,
    env: Mapping[str, str],
    pty_master: int | None = None,
    pty_slave: int | None = None,
    on_exit: Callable[[Child], None] | None = None,
) -> SpawnedSession:
    """Start a session child in its own session/process group.

    With a PTY, the slave becomes stdin/stdout/stderr and the controlling terminal; the caller
    keeps ownership of ``pty_master`` (we dup it for the stdin and stdout pumps) and the slave
    is closed here in the parent once the child has it, so the master sees EIO when the child
    side is gone. Without a PTY, stdout and stderr are separate pipes as with OpenSSH.
    Every fd this creates is closed again if spawning fails.
    """
    created: list[int] = []
    try:
        if pty_slave is not None:
            assert pty_master is not None
            child_in = child_out = child_err = pty_slave
            preexec: Callable[[], None] | None = _setup_pty_child
            parent_in = os.dup(pty_master)
            created.append(parent_in)
            parent_out = os.dup(pty_master)
            created.append(parent_out)
            parent_err = None
        else:
            # Code between fork and exec costs the fast spawn (vfork): only when there is state to give back.
            preexec = _login_state if _passes_on_signals() or started_with() is not None else None
            child_in, parent_in = os.pipe2(os.O_CLOEXEC)
            created += [child_in, parent_in]
            parent_out, child_out = os.pipe2(os.O_CLOEXEC)
            created += [parent_out, child_out]
            parent_err, child_err = os.pipe2(os.O_CLOEXEC)
            created += [parent_err, child_err]
            for fd in (parent_out, parent_err):
                with contextlib.suppress(OSError, AttributeError):
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

        popen = subprocess.Popen(
            argv,
            executable=executable,
            stdin=child_in,
            stdout=child_out,
            stderr=child_err,
            cwd=cwd,
            env=dict(env),
            close_fds=True,
            start_new_session=True,
            preexec_fn=preexec,  # noqa: PLW1509 - sigaction, sigprocmask, an ioctl: nothing that locks
        )
    except BaseException:
        for fd in created:
            close_quietly(fd)
        raise
    finally:
        if pty_slave is not None:
            close_quietly(pty_slave)

    # From here on the child exists: watch it first, so it is reaped whatever happens next.
    child = Child(popen, on_exit)
    if pty_slave is None:
        for fd in (child_in, child_out, child_err):
            close_quietly(fd)
    for fd in (parent_in, parent_out, parent_err):
        if fd is not None:
            os.set_blocking(fd, False)
    return SpawnedSession(child, parent_in, parent_out, parent_err)


def describe_status(status: int) -> tuple[int | None, str | None, bool]:
    """Split a raw wait status into (exit code, signal name without "SIG", core dumped)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name.removeprefix("SIG")
        except ValueError:
            name = None
        if name is None:
            return 128 + sig, None, False
        return None, name, os.WCOREDUMP(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), None, False
    return 255, None, False


def is_eio(exc: OSError) -> bool:
    """A PTY master reports "the slave side is gone" as EIO; that is EOF, not an error."""
    return exc.errno == errno.EIO
