"""Small measuring tools: timed child processes in their own process group, statistics, and
per-process CPU and memory read from /proc."""

from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Timed:
    code: int
    seconds: float
    stdout: bytes
    stderr: bytes


def kill_group(proc: subprocess.Popen, grace: float = 3.0) -> None:
    """End a child started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # The leader may be gone while its children (a ProxyCommand, a shell) are not.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait()


def run_timed(argv: list[str], *, env: dict[str, str], timeout: float, stdin: int | None = subprocess.DEVNULL,
              stdout: int | None = subprocess.DEVNULL, capture_stdout: bool = False) -> Timed:
    """Run ``argv`` in a new process group and time it from spawn to exit.

    On timeout the whole group is killed (so an ssh's ProxyCommand does not linger) and the
    result has code -9. stderr is always captured (it is small: error messages only)."""
    out = subprocess.PIPE if capture_stdout else stdout
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        o, e = proc.communicate(timeout=timeout)
        return Timed(proc.returncode, time.perf_counter() - t0, o or b"", e or b"")
    except subprocess.TimeoutExpired:
        kill_group(proc, grace=1.0)
        o, e = proc.communicate()
        return Timed(-9, time.perf_counter() - t0, o or b"", (e or b"") + b"\n(bench: timed out)")
    finally:
        kill_group(proc, grace=1.0)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def p95(values: list[float]) -> float | None:
    """Nearest-rank 95th percentile (with 20 samples: the 19th smallest)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """User + system CPU time of ``pid`` so far (all its threads), from /proc/PID/stat; with
    ``reaped_children`` also that of its children it has already waited for (cutime, cstime):
    for sshd's listener, the per-connection processes and the commands they ran."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2:].split()
    # After "pid (comm) ": state is field 3; utime, stime, cutime, cstime are fields 14-17.
    used = int(fields[11]) + int(fields[12])
    if reaped_children:
        used += int(fields[13]) + int(fields[14])
    return used / CLK_TCK


def become_subreaper() -> None:
    """Have orphaned descendants reparented to this process instead of init.

    ssh reaps its ProxyCommand when the proxy exits first (its SIGCHLD handler waits for any
    child), which puts the proxy's CPU time into ssh's and so into our RUSAGE_CHILDREN; when ssh
    exits first, the proxy is orphaned and its time would be lost. As the subreaper we reap those
    orphans ourselves (:meth:`ProxyWatch.reap`), so a proxy's time is counted once either way."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


class ProxyWatch:
    """The CPU time of the ``hatchway proxy`` processes descended from this process while a
    transfer runs. It is sampled from /proc while they live (to within one interval) and made
    exact by :meth:`reap` for those orphaned to us (see :func:`become_subreaper`); one reaped by
    ssh keeps its last sample, its exact time being in ssh's children's time."""

    def __init__(self, interval: float = 0.05) -> None:
        import threading
        self.interval = interval
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def reap(self, timeout: float = 5.0) -> None:
        """Wait for the proxies that were orphaned to us (the transfer's process group has been
        killed, so they are exiting) and take their exact CPU time."""
        deadline = time.monotonic() + timeout
        for pid in self.seen:
            while True:
                try:
                    done, _, usage = os.wait4(pid, os.WNOHANG)
                except ChildProcessError:  # not ours: ssh reaped it
                    break
                if done:
                    self.seen[pid] = usage.ru_utime + usage.ru_stime
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)

    def __enter__(self) -> "ProxyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def is_proxy(argv: list[bytes]) -> bool:
        return b"proxy" in argv and any(a.endswith(b"hatchway") for a in argv)

    @property
    def cpu(self) -> float:
        return sum(self.seen.values())

    def _ours(self, pid: int) -> bool:
        me = os.getpid()
        for _ in range(4):
            raw = Path(f"/proc/{pid}/stat").read_text()
            pid = int(raw[raw.rindex(")") + 2:].split()[1])
            if pid == me:
                return True
            if pid <= 1:
                return False
        return False

    def _run(self) -> None:
        ignored: set[int] = set()
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                pid = int(entry.name)
                if pid in ignored:
                    continue
                try:
                    if pid not in self.seen:
                        argv = (entry / "cmdline").read_bytes().split(b"\0")
                        if not (self.is_proxy(argv) and "python" in os.readlink(entry / "exe") and self._ours(pid)):
                            ignored.add(pid)
                            continue
                    self.seen[pid] = cpu_seconds(pid)
                except (OSError, ValueError):
                    ignored.add(pid)
            self._stop.wait(self.interval)


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have been waited for, and of their reaped
    children: ssh, the shell and ``head`` of an upload, and each ProxyCommand (reaped by ssh or,
    orphaned, by us)."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def parse_size(text: str) -> int:
    """``1G``, ``256M``, ``8MiB``, ``4096``: binary multiples, as ``head -c`` reads them."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


def human_size(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"
