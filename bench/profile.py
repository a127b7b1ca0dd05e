"""``bench/run --profile``: where the Python processes of the byte path spend a bulk transfer.

For each Hatchway path, one download and one upload run while ``py-spy record`` samples the client's
``hatchway proxy``, the server and the agent. Each profile is summarised as the functions with
the most samples on top of the stack ("self"), those most often anywhere on it ("total"), and
self samples by library; the raw collapsed stacks are kept too (load them into speedscope or
flamegraph.pl).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from bench.measure import children_of, cpu_seconds, kill_group
from bench.world import BUILTIN, OSSH, PATH_LABELS, World

RATE = 200  # samples per second
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def library(path: str) -> str:
    """A short name for where a frame's code lives."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/hatchway/" in path:
        part = path.split("/hatchway/", 1)[1]
        return "hatchway." + part.split("/", 1)[0].removesuffix(".py")
    m = re.search(r"python3\.\d+/(.+?)(/|\.py)", path)
    if m:
        return "stdlib." + m.group(1)
    return path or "?"


IDLE_LEAVES = ("EpollSelector.select (selectors.py)", "select (selectors.py)")


def summarize(raw: Path, label: str, seconds: float, cpu_s: float | None = None, top: int = 15) -> str:
    """Shares are of the samples not waiting in the event loop's epoll (py-spy does not count
    that wait as idle); the process's real CPU use comes from /proc."""
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    lib_c: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        names = []
        for f in frames:
            m = FRAME.match(f.strip())
            func, file = (m.group("func"), m.group("file")) if m else (f.strip(), "")
            short = file.split("site-packages/")[-1].split("/src/")[-1]
            names.append((f"{func} ({short})", library(file)))
        leaf, leaf_lib = names[-1]
        if leaf in IDLE_LEAVES:
            continue
        self_c[leaf] += n
        lib_c[leaf_lib] += n
        for name in {nm for nm, _ in names}:
            total_c[name] += n
    work = sum(self_c.values())
    cpu = f"CPU {cpu_s / seconds:.0%} of one core (/proc); " if cpu_s is not None and seconds > 0 else ""
    out = [f"## {label}", "", f"{cpu}{samples} samples in {seconds:.1f} s at {RATE} Hz, {work} outside the "
           "epoll wait; shares below are of those", ""]
    if not work:
        return "\n".join(out + ["(no samples)", ""])
    samples = work
    out += ["Self time by library:", ""]
    out += [f"- {lib}: {n / samples:.0%}" for lib, n in lib_c.most_common(8)]
    out += ["", "Top functions by self time:", ""]
    out += [f"{n / samples:6.1%}  {name}" for name, n in self_c.most_common(top)]
    out += ["", "Top functions by total (inclusive) time:", ""]
    # Frames on (nearly) every stack - main(), click, the event loop itself - say nothing.
    telling = [(name, n) for name, n in total_c.most_common() if n / samples < 0.9 and not name.startswith(
        ("Handle._run ", "BaseEventLoop._run_once "))]
    out += [f"{n / samples:6.1%}  {name}" for name, n in telling[:top]]
    return "\n".join(out + [""])


def _record(tool: str, pid: int, out: Path) -> subprocess.Popen:
    return subprocess.Popen([tool, "record", "--pid", str(pid), "--rate", str(RATE), "--format", "raw",
                             "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _proxy_pid(ssh_pid: int, timeout: float = 10) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in children_of(ssh_pid):
            try:
                # ssh runs ProxyCommand through "sh -c exec ...": wait for the exec into Python.
                exe = os.readlink(f"/proc/{child}/exe")
                if "python" in exe and b"proxy" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
            except OSError:
                pass
        time.sleep(0.005)
    return None


def profile_paths(world: World, size: int, results: Path) -> Path | None:
    tool = py_spy()
    if tool is None:
        print("bench: --profile needs py-spy (.venv/bin/pip install py-spy); skipped", file=sys.stderr)
        return None
    results.mkdir(parents=True, exist_ok=True)
    report = [f"# Profiles of one {size >> 20} MiB download and upload (aes128-gcm) per Hatchway path", ""]
    runs = [(key, agent, way) for key, agent in ((OSSH, "agent-ossh"), (BUILTIN, "agent-builtin"))
            for way in ("download", "upload")]
    for key, agent, way in runs:
        target = world.targets[key]
        command = f"head -c {size} /dev/zero" if way == "download" else "cat > /dev/null"
        argv = world.ssh_argv(target, command, cipher="aes128-gcm@openssh.com")
        # An upload reads its bytes from a pipe, as in the throughput rows.
        feed = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE) if way == "upload" else None
        ssh = subprocess.Popen(argv, stdin=feed.stdout if feed else subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=world.env(), start_new_session=True)
        if feed is not None and feed.stdout is not None:
            feed.stdout.close()  # ssh holds the pipe now
        recorders: dict[str, tuple[subprocess.Popen, Path]] = {}
        try:
            pids = world.pids()
            proxy = _proxy_pid(ssh.pid)
            procs = {"server": pids["server"], "agent": pids[agent]}
            if proxy:
                procs = {"proxy": proxy, **procs}
            t0 = time.monotonic()
            cpu0 = {name: cpu_seconds(pid) for name, pid in procs.items()}
            for name, pid in procs.items():
                out = results / f"profile-{key}-{way}-{name}.raw"
                recorders[name] = (_record(tool, pid, out), out)
            cpu1: dict[str, float] = {}
            while ssh.poll() is None and time.monotonic() - t0 < 60 + size / 10e6:
                for name, pid in procs.items():  # the proxy is gone once ssh is: read as we go
                    try:
                        cpu1[name] = cpu_seconds(pid)
                    except OSError:
                        pass
                time.sleep(0.1)
            ssh.wait(timeout=5)
            seconds = time.monotonic() - t0
        finally:
            for proc, _ in recorders.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGINT)
            for proc, _ in recorders.values():
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    kill_group(proc)
            kill_group(ssh)
            if feed is not None:
                feed.kill()
                feed.wait()
        report.append(f"# {PATH_LABELS[key]}, {way}: {size / seconds / 1e6:.0f} MB/s while profiled "
                      f"(ssh exit {ssh.returncode})\n")
        for name, (proc, out) in recorders.items():
            if out.exists():
                used = cpu1.get(name, cpu0[name]) - cpu0[name]
                report.append(summarize(out, f"{PATH_LABELS[key]}, {way} — {name} (pid {procs[name]})", seconds, used))
            else:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                report.append(f"## {name}: no profile ({err.strip()[:300]})\n")
    path = results / "profile.md"
    path.write_text("\n".join(report))
    print(f"bench: profiles in {path}", file=sys.stderr)
    return path
