"""``bench/run``: Hatchway against direct OpenSSH on this machine, over loopback.

Starts everything itself (see bench/world.py), measures throughput, connection setup,
concurrency and SFTP, and prints one table of medians with ratios to direct OpenSSH measured in
the same run; writes the same as Markdown and JSON into bench/results/.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import loadgen
from bench.measure import (ProxyWatch, become_subreaper, Timed, children_cpu_seconds, children_of, cpu_seconds, human_size, kill_group, median, p95, parse_size, rss_bytes,
                           run_timed)
from bench.report import NOT_SUPPORTED, Row, machine_info, rich_table, write_results
from bench.world import BUILTIN, DIRECT, OSSH, OSSH_TLS, PATH_LABELS, Target, World, settle, why_cannot_run
from tests.helpers.server import HATCHWAY

GIB = 1 << 30
MB = 1_000_000
PATHS = (OSSH, BUILTIN, DIRECT)
AGENT_OF = {OSSH: "agent-ossh", BUILTIN: "agent-builtin", OSSH_TLS: "agent-ossh"}
#: Handshakes in flight at once in the ramped concurrency run (below the server's DB pool size).
RAMP_IN_FLIGHT = 10
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class Options:
    quick: bool
    size: int
    repeat: int
    concurrency: list[int]
    setup_runs: int
    proxy_runs: int
    import_runs: int
    ciphers: list[str]
    results_dir: Path
    profile: bool
    keep: bool
    sections: set[str]
    load_modes: list[str]


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (8 MiB, 3 repeats, N=10): under a minute")
    p.add_argument("--size", help="bytes per transfer, e.g. 1G, 256M [1G; quick 8M]")
    p.add_argument("--repeat", type=int, help="repeats of each transfer [3]")
    p.add_argument("--concurrency", help="comma-separated N [100,500,1000; quick 10]")
    p.add_argument("--setup-runs", type=int, help="runs of `ssh H true` per path [20; quick 5]")
    p.add_argument("--ciphers", default="aes128-gcm@openssh.com,default",
                   help="cipher sets for throughput; 'default' passes no -c [%(default)s]")
    p.add_argument("--only", default="throughput,setup,concurrency,sftp",
                   help="sections to run [%(default)s]")
    p.add_argument("--load-modes", default="burst,ramped",
                   help="concurrency modes: burst (all at once), ramped (10 opening at a time) [%(default)s]")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where latest.md/json go [bench/results]")
    p.add_argument("--profile", action="store_true",
                   help="also record py-spy profiles of proxy, server and agent during one download and one upload per path")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) afterwards")
    a = p.parse_args(argv)
    quick = a.quick
    conc = a.concurrency or ("10" if quick else "100,500,1000")
    return Options(
        quick=quick,
        size=parse_size(a.size or ("8M" if quick else "1G")),
        repeat=a.repeat or 3,
        concurrency=[int(x) for x in conc.split(",") if x.strip()],
        setup_runs=a.setup_runs or (5 if quick else 20),
        proxy_runs=5 if quick else 20,
        import_runs=3 if quick else 5,
        ciphers=[c.strip() for c in a.ciphers.split(",") if c.strip()],
        results_dir=a.results_dir,
        profile=a.profile,
        keep=a.keep,
        sections={s.strip() for s in a.only.split(",")},
        load_modes=[m.strip() for m in a.load_modes.split(",") if m.strip()],
    )


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def short_cipher(c: str | None) -> str:
    return "default cipher" if not c else c.split("@")[0]


def error_text(t: Timed) -> str:
    lines = [line for line in t.stderr.decode(errors="replace").splitlines() if line.strip()]
    return f"exit {t.code}: {' / '.join(lines[-2:])[:200]}"


class Bench:
    def __init__(self, world: World, opts: Options) -> None:
        self.w, self.o = world, opts
        self.rows: list[Row] = []
        self.failures: list[str] = []
        self.transfer_timeout = 60 + opts.size / (10 * MB)
        # (path, cipher, direction) -> list of (seconds, {proc: cpu seconds})
        self.cpu: dict[tuple[str, str], list[dict[str, float]]] = {}
        self.rss_base: dict[str, int] = {}
        #: Time for the previous load's teardown (log rows, closing sockets) before the next.
        self.pause = 0.5 if opts.quick else 3.0

    # ---- helpers ----------------------------------------------------------------------------

    def check_alive(self) -> None:
        dead = self.w.alive()
        if dead:
            raise RuntimeError(f"{', '.join(dead)} stopped during the benchmark:\n{self.w.logs()}")

    def add(self, row: Row) -> Row:
        if row.status.startswith("failed"):
            self.failures.append(f"{row.key}: {row.status}")
        self.rows.append(row)
        return row

    def ratio_rows(self, rows: dict[str, Row], higher_is_better: bool) -> None:
        base = rows.get(DIRECT)
        if base is None or not base.numeric or not base.median:
            return
        for key, row in rows.items():
            if key != DIRECT and row.numeric:
                row.ratio = row.median / base.median  # type: ignore[operator]
                row.extra["direct_median"] = base.median

    def cpu_now(self) -> dict[str, float]:
        """CPU seconds so far of every process on the byte path, by role. "client" is ssh plus
        its ProxyCommand (and, for uploads, the bash and head feeding it); "sshd" is the sshd
        listener's reaped per-connection processes, with the commands they ran; the agents
        include their reaped children (the built-in server's commands)."""
        out = {"client": children_cpu_seconds()}
        for name, pid in self.w.pids().items():
            out[name] = cpu_seconds(pid, reaped_children=name.startswith("agent"))
        if self.w.sshd is not None:
            out["sshd"] = cpu_seconds(self.w.sshd.pid, reaped_children=True)
        if self.w.nginx is not None and self.w.nginx.proc is not None:  # its master and workers
            master = self.w.nginx.proc.pid
            out["nginx"] = sum(cpu_seconds(pid) for pid in [master, *children_of(master)])
        return out

    def with_cpu(self, fn: Callable[[], Timed]) -> tuple[Timed, dict[str, float]]:
        before = self.cpu_now()
        with ProxyWatch() as proxies:
            t = fn()
        proxies.reap()
        settle(0.3)  # sshd reaps its session process just after the client has gone
        after = self.cpu_now()
        used = {n: after[n] - before[n] for n in before}
        used["proxy"] = proxies.cpu  # already in "client", whoever reaped it
        return t, used

    # ---- 1. throughput ----------------------------------------------------------------------

    def transfer(self, target: Target, direction: str, cipher: str | None) -> Timed:
        env = self.w.env(target.key)
        size = self.o.size
        if direction == "download":
            argv = self.w.ssh_argv(target, f"head -c {size} /dev/zero", cipher=cipher)
            return run_timed(argv, env=env, timeout=self.transfer_timeout)
        # Upload: the pipeline runs in one process group, timed as a whole.
        ssh = shlex.join(self.w.ssh_argv(target, "cat > /dev/null", cipher=cipher))
        script = f"set -o pipefail; head -c {size} /dev/zero | {ssh}"
        return run_timed(["bash", "-c", script], env=env, timeout=self.transfer_timeout)

    def negotiated_cipher(self, target: Target, cipher: str | None) -> str:
        argv = self.w.ssh_argv(target, "true", cipher=cipher)
        argv[argv.index("LogLevel=ERROR")] = "LogLevel=DEBUG"
        t = run_timed(argv, env=self.w.env(target.key), timeout=60)
        m = re.search(rb"kex: server->client cipher: (\S+)", t.stderr)
        return m.group(1).decode() if m else "?"

    def throughput(self) -> None:
        paths = [*PATHS, OSSH_TLS] if OSSH_TLS in self.w.targets else list(PATHS)
        for cipher_opt in self.o.ciphers:
            cipher = None if cipher_opt == "default" else cipher_opt
            negotiated = {k: self.negotiated_cipher(self.w.targets[k], cipher) for k in paths}
            for direction in ("download", "upload"):
                samples: dict[str, list[float]] = {k: [] for k in paths}
                cpu: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
                errors: dict[str, str] = {}
                for rep in range(self.o.repeat):
                    for k in paths:  # interleaved, so drift hits every path alike
                        if k in errors:
                            continue
                        say(f"{direction} {human_size(self.o.size)} {short_cipher(cipher)} {k} ({rep + 1}/{self.o.repeat})")
                        t, used = self.with_cpu(lambda: self.transfer(self.w.targets[k], direction, cipher))
                        if t.code != 0:
                            errors[k] = error_text(t)
                            self.check_alive()
                            continue
                        samples[k].append(self.o.size / t.seconds / MB)
                        cpu[k].append({n: s / (self.o.size / GIB) for n, s in used.items()})
                rows = {}
                for k in paths:
                    test = f"{direction} {human_size(self.o.size)}, {short_cipher(cipher)}"
                    row = Row(f"throughput.{direction}.{short_cipher(cipher)}.{k}", "Throughput", test, PATH_LABELS[k], "MB/s")
                    row.extra["cipher"] = negotiated[k]
                    if k in errors:
                        row.status = f"failed: {errors[k]}"
                    else:
                        row.samples = samples[k]
                        row.median = median(samples[k])
                        for c in cpu[k]:
                            c["ssh"] = c["client"] - c["proxy"]
                        roles = {"ssh": "ssh", "proxy": "proxy", "nginx": "nginx" if k == OSSH_TLS else None,
                                 "server": "server", "agent": AGENT_OF.get(k), "sshd": "sshd"}
                        per = {role: median([c[name] for c in cpu[k]]) for role, name in roles.items()
                               if name and (k != DIRECT or role in ("ssh", "sshd")) and
                               (k != BUILTIN or role != "sshd")}
                        row.extra.update({f"{role}_cpu_s_per_gib": v for role, v in per.items()})
                        row.extra["total_cpu_s_per_gib"] = sum(per.values())
                        row.notes = "CPU s/GiB: " + ", ".join(f"{r} {v:.2f}" for r, v in per.items()) + \
                            f" = {sum(per.values()):.2f}"
                        if k in (OSSH, BUILTIN):
                            self.cpu.setdefault((k, short_cipher(cipher)), []).extend(cpu[k])
                        if cipher is None:
                            row.notes = (f"{negotiated[k].split('@')[0]}; " + row.notes).rstrip("; ")
                    rows[k] = self.add(row)
                self.ratio_rows(rows, higher_is_better=True)

    def cpu_rows(self) -> None:
        for cipher_key in sorted({c for _, c in self.cpu}):
            for proc in ("server", "agent"):
                for k in (OSSH, BUILTIN):
                    runs = self.cpu.get((k, cipher_key), [])
                    name = "server" if proc == "server" else AGENT_OF[k]
                    values = [r[name] for r in runs]
                    row = Row(f"resources.cpu.{proc}.{cipher_key}.{k}", "Resources",
                              f"{proc} CPU per GiB relayed ({cipher_key})", PATH_LABELS[k], "s/GiB",
                              median(values), samples=values, notes="download and upload runs")
                    if not values:
                        row.status = "failed: no successful transfer to measure"
                    self.add(row)

    # ---- 2. connection setup ----------------------------------------------------------------

    def setup(self) -> None:
        # Production reaches the server over TLS: that path too, where nginx is installed.
        paths = [*PATHS, OSSH_TLS] if OSSH_TLS in self.w.targets else list(PATHS)
        samples: dict[str, list[float]] = {k: [] for k in paths}
        errors: dict[str, str] = {}
        for i in range(self.o.setup_runs):
            for k in paths:
                if k in errors:
                    continue
                t = run_timed(self.w.ssh_argv(self.w.targets[k], "true"), env=self.w.env(k), timeout=60)
                if t.code != 0:
                    errors[k] = error_text(t)
                    continue
                samples[k].append(t.seconds * 1000)
            settle(0.05)
        say(f"ssh H true: {self.o.setup_runs} runs per path done")
        rows = {}
        for k in paths:
            row = Row(f"setup.ssh_true.{k}", "Connection setup", f"`ssh H true` ({self.o.setup_runs} runs)",
                      PATH_LABELS[k], "ms", median(samples[k]), p95(samples[k]), samples=samples[k])
            if k in errors:
                row.status = f"failed: {errors[k]}"
            rows[k] = self.add(row)
        self.ratio_rows(rows, higher_is_better=False)
        for name, k in (("ossh", OSSH), ("builtin", BUILTIN), ("ossh", OSSH_TLS)):
            if k in paths:
                self.proxy_ready(name, k)
        if self.w.tls_missing:
            say(f"no TLS rows: {self.w.tls_missing}")
        self.import_times()

    def proxy_ready_once(self, workspace: str, k: str) -> float:
        t0 = time.perf_counter()
        proc = subprocess.Popen([HATCHWAY, "proxy", workspace], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.w.env(k), start_new_session=True)
        try:
            assert proc.stdout is not None
            buf = b""
            deadline = t0 + 30
            while b"SSH-2.0-" not in buf:
                left = deadline - time.perf_counter()
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
                if not ready:
                    raise RuntimeError("no SSH banner within 30 s")
                chunk = os.read(proc.stdout.fileno(), 4096)
                if not chunk:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise RuntimeError(f"proxy ended before the banner: {err.strip()[:200]}")
                buf += chunk
            return (time.perf_counter() - t0) * 1000
        finally:
            kill_group(proc, grace=2)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()

    def proxy_ready(self, workspace: str, k: str) -> None:
        samples: list[float] = []
        row = Row(f"setup.proxy_ready.{k}", "Connection setup",
                  f"`hatchway proxy` start → SSH banner ({self.o.proxy_runs} runs)", PATH_LABELS[k], "ms")
        try:
            for _ in range(self.o.proxy_runs):
                samples.append(self.proxy_ready_once(workspace, k))
                settle(0.1)
        except RuntimeError as exc:
            row.status = f"failed: {exc}"
        row.samples, row.median, row.p95 = samples, median(samples), p95(samples)
        row.notes = "process start, imports, " + ("TLS, " if k == OSSH_TLS else "") + "WebSocket, dial-back, banner"
        self.add(row)
        say(f"proxy time-to-ready {workspace}: {row.median}")

    def import_times(self) -> None:
        cases = [
            ("setup.import.proxy", "`python -X importtime -c 'import hatchway.cli.proxy'`", "hatchway.cli.proxy",
             "import hatchway.cli.proxy"),
            ("setup.import.proxy_all", "imports `hatchway proxy` needs before relaying (ws://)", "hatchway.cli.main",
             "import hatchway.cli.main, hatchway.cli.proxy; hatchway.bytepath.frames._load_apply_mask()"),
        ]
        for key, test, module, code in cases:
            totals, own = [], []
            row = Row(key, "Connection setup", test, "client", "ms")
            for _ in range(self.o.import_runs):
                p = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                                   timeout=60, env=self.w.env())
                if p.returncode != 0:
                    row.status = f"failed: {p.stderr.strip().splitlines()[-1][:200] if p.stderr.strip() else p.returncode}"
                    break
                total, mods = parse_importtime(p.stderr)
                totals.append(total / 1000)
                own.append(mods.get(module, 0) / 1000)
            row.samples, row.median = totals, median(totals)
            if own:
                row.notes = f"sum of top-level cumulative; {module} itself {median(own):.0f} ms"
                row.extra[f"{module}_ms"] = median(own)
            self.add(row)

    # ---- 3. concurrency ---------------------------------------------------------------------

    def concurrency(self) -> None:
        limit = loadgen.raise_fd_limit(max(4096, 8 * max(self.o.concurrency) + 512))
        # Warm up (lazy imports, first-use caches), then take the baseline every RSS figure is
        # measured against. Python keeps freed memory for reuse, so a baseline taken after an
        # earlier, smaller run would hide the memory that run left behind: the ramped runs go
        # first and in ascending N, each compared with this one baseline (growth / N).
        self.load(5, RAMP_IN_FLIGHT, limit, record=False)
        settle(self.pause)
        pids = self.w.pids()
        self.rss_base = {"server": rss_bytes(pids["server"]), "agent": rss_bytes(pids["agent-builtin"])}
        if "ramped" in self.o.load_modes:
            # The same N opened RAMP_IN_FLIGHT at a time and all held open together: steady
            # state, and memory per idle connection.
            for n in sorted(self.o.concurrency):
                self.load(n, RAMP_IN_FLIGHT, limit)
        if "burst" in self.o.load_modes:
            # All N start at once: what a CI fan-out or a reconnect storm does.
            for n in sorted(self.o.concurrency):
                self.load(n, None, limit)

    def load(self, n: int, in_flight: int | None, limit: int, record: bool = True) -> None:
        ws = self.w.workspaces["builtin"]
        server_pid, agent_pid = self.w.pids()["server"], self.w.pids()["agent-builtin"]
        self.check_alive()
        settle(self.pause)
        held: dict[str, int] = {}

        async def while_open(res: loadgen.LoadResult) -> None:
            held["server"] = rss_bytes(server_pid)
            held["agent"] = rss_bytes(agent_pid)
            held["open"] = res.succeeded

        mode = "burst" if in_flight is None else "ramped"
        timeout = 60 + (0.06 * n if in_flight is None else 0.5 * n / in_flight * 4)
        say(f"concurrency N={n} {mode}: opening {n} connections "
            f"({'all at once' if in_flight is None else f'{in_flight} in flight'}; bounded by {timeout:.0f} s, "
            f"fd limit {limit})")
        t0 = time.perf_counter()
        res = loadgen.run_load_sync(base_url=self.w.server.url, token=self.w.token, workspace="builtin",
                                    user=ws.get("os_user") or "root", key_path=str(self.w.key_path),
                                    host_key=ws["host_keys"][0], n=n, timeout=timeout, while_open=while_open,
                                    in_flight=in_flight)
        wall = time.perf_counter() - t0
        ok = res.succeeded
        errs = res.errors()
        say(f"concurrency N={n} {mode}: {ok}/{n} succeeded in {wall:.1f} s; errors {errs}")
        if not record:
            return
        setup = [r.setup_s * 1000 for r in res.results if r.ok and r.setup_s is not None]
        execs = [r.exec_s * 1000 for r in res.results if r.ok and r.exec_s is not None]
        err_note = "; ".join(f"{c}× {e}" for e, c in sorted(errs.items(), key=lambda x: -x[1])[:2])
        path = PATH_LABELS[BUILTIN]
        label = "all at once" if in_flight is None else f"{in_flight} opening at a time, all held open"
        self.add(Row(f"concurrency.{n}.{mode}.success", "Concurrency", f"N={n} {mode}: success rate", path, "%",
                     100.0 * ok / n, extra={"succeeded": ok, "n": n, "in_flight": in_flight, "errors": errs,
                                            "wall_s": wall},
                     notes=(err_note[:160] if err_note else f"{label}; `{loadgen.EXEC}` on each")))
        row = Row(f"concurrency.{n}.{mode}.setup", "Concurrency", f"N={n} {mode}: setup (WebSocket + SSH auth)",
                  path, "ms", median(setup), p95(setup), samples=[],
                  extra={"exec_p50_ms": median(execs), "exec_p95_ms": p95(execs)})
        if execs:
            row.notes = f"of the successful; with exec p50 {median(execs):.0f} ms, p95 {p95(execs):.0f} ms"
        if not setup:
            row.status = "failed: no connection succeeded"
        self.add(row)
        if in_flight is None:
            return
        for proc in ("server", "agent"):
            r = Row(f"concurrency.{n}.rss.{proc}", "Concurrency", f"N={n}: {proc} RSS per idle connection", path, "KiB")
            base = self.rss_base
            if held.get("open"):
                r.median = (held[proc] - base[proc]) / held["open"] / 1024
                r.extra = {"baseline_bytes": base[proc], "held_bytes": held[proc], "open": held["open"]}
                r.notes = f"{base[proc] / 2**20:.0f} → {held[proc] / 2**20:.0f} MiB with {held['open']} open"
            else:
                r.status = "failed: no connection was open to measure"
            self.add(r)

    # ---- 4. SFTP ----------------------------------------------------------------------------

    def sftp(self) -> None:
        files = self.w.files
        src = files / "source"
        with open(src, "wb") as f:
            f.truncate(self.o.size)  # sparse: reading it costs no disk
        cipher = "aes128-gcm@openssh.com"
        for direction in ("get", "put"):
            samples: dict[str, list[float]] = {k: [] for k in PATHS}
            status: dict[str, str] = {}
            for rep in range(self.o.repeat):
                for k in PATHS:
                    if k in status:
                        continue
                    dest = files / f"{direction}-{k}-{rep}"
                    batch = files / "batch"
                    batch.write_text(f"{direction} {src} {dest}\n")
                    say(f"sftp {direction} {human_size(self.o.size)} {k} ({rep + 1}/{self.o.repeat})")
                    argv = self.w.ssh_argv(self.w.targets[k], "-b", str(batch), self.w.targets[k].host,
                                           program="sftp", cipher=cipher)
                    t = run_timed(argv, env=self.w.env(), timeout=self.transfer_timeout)
                    size = dest.stat().st_size if dest.exists() else -1
                    dest.unlink(missing_ok=True)
                    if t.code != 0:
                        err = t.stderr.decode(errors="replace")
                        if k == BUILTIN and "subsystem request failed" in err:
                            status[k] = NOT_SUPPORTED
                        else:
                            status[k] = f"failed: {error_text(t)}"
                        continue
                    if size != self.o.size:
                        status[k] = f"failed: {dest.name} has {size} bytes, expected {self.o.size}"
                        continue
                    samples[k].append(self.o.size / t.seconds / MB)
            rows = {}
            for k in PATHS:
                row = Row(f"sftp.{direction}.{k}", "SFTP", f"`sftp -b` {direction} {human_size(self.o.size)}, aes128-gcm",
                          PATH_LABELS[k], "MB/s", median(samples[k]), samples=samples[k])
                if k in status:
                    row.status, row.median = status[k], None
                    if status[k] == NOT_SUPPORTED:
                        row.notes = "the built-in server offers no sftp subsystem yet"
                rows[k] = self.add(row)
            self.ratio_rows(rows, higher_is_better=True)
        src.unlink(missing_ok=True)

    # ---- all --------------------------------------------------------------------------------

    def run(self) -> None:
        # Concurrency before the bulk transfers, whose buffers would otherwise be reused by the
        # idle connections and hide part of their memory.
        sections = [("setup", self.setup), ("concurrency", self.concurrency), ("throughput", self.throughput),
                    ("sftp", self.sftp)]
        for name, fn in sections:
            if name in self.o.sections:
                fn()
                self.check_alive()
        if "throughput" in self.o.sections:
            self.cpu_rows()
        order = ["Throughput", "SFTP", "Connection setup", "Concurrency", "Resources"]
        self.rows.sort(key=lambda r: order.index(r.group))


def parse_importtime(stderr: str) -> tuple[float, dict[str, float]]:
    """(sum of top-level cumulative µs, cumulative µs by module) from ``-X importtime`` output.

    Lines look like ``import time:  self | cumulative | <2 spaces per level>name``."""
    total, mods = 0.0, {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        cum_us = float(parts[1])
        name = parts[2][1:]  # one space after the bar, then the indentation
        mods[name.strip()] = cum_us
        if not name.startswith(" "):
            total += cum_us
    return total, mods


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    reason = why_cannot_run()
    if reason:
        print(f"bench: {reason}", file=sys.stderr)
        return 2
    # SIGTERM must unwind through the finally blocks that stop every child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    loadgen.raise_fd_limit(max(4096, 8 * max(opts.concurrency or [1]) + 512))  # children inherit it
    started = time.monotonic()
    started_at = datetime.now(timezone.utc)
    say(f"starting server, sshd and two agents (size {human_size(opts.size)}, {opts.repeat} repeats)")
    load_before = os.getloadavg()
    become_subreaper()  # so every ProxyCommand's CPU time is counted, and counted once
    world = World(keep=opts.keep)
    with world:
        say(f"ready: server {world.server.url}, sshd 127.0.0.1:{world.sshd_port}, work dir {world.tmp}")
        bench = Bench(world, opts)
        bench.run()
        if opts.profile:
            from bench.profile import profile_paths
            profile_paths(world, opts.size, opts.results_dir)
        if opts.keep:
            say(f"keeping {world.tmp}")
    title = "Hatchway vs direct OpenSSH" + (" (quick)" if opts.quick else "")
    config = {
        "command": "bench/run " + " ".join(sys.argv[1:] if argv is None else argv),
        "size_bytes": opts.size,
        "repeat": opts.repeat,
        "concurrency": opts.concurrency,
        "setup_runs": opts.setup_runs,
        "proxy_runs": opts.proxy_runs,
        "ciphers": opts.ciphers,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "duration_s": time.monotonic() - started,
        # Other work on the machine skews every figure: say how busy it was.
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }
    machine = machine_info()
    write_results(opts.results_dir, bench.rows, machine, config, title)
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(rich_table(bench.rows, f"{title} — {machine['CPU']}, {machine['cores']} cores, "
                                         f"{human_size(opts.size)} transfers, medians of {opts.repeat}"))
    say(f"wrote {opts.results_dir / 'latest.md'} and latest.json in {config['duration_s']:.0f} s")
    if bench.failures:
        for f in bench.failures:
            print(f"bench: FAILED {f}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
