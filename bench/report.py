"""Result rows and how they are shown: one Rich table, Markdown and JSON."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NOT_SUPPORTED = "not supported"


@dataclass
class Row:
    key: str  # stable identifier, e.g. "throughput.download.aes128-gcm.hatchway-openssh"
    group: str
    test: str
    path: str
    unit: str
    median: float | None = None
    p95: float | None = None
    ratio: float | None = None  # against direct OpenSSH in this run
    status: str = "ok"  # "ok", "not supported", or "failed: why"
    samples: list[float] = field(default_factory=list)
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def numeric(self) -> bool:
        return self.status == "ok" and self.median is not None


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "–"
    if unit == "%":
        return f"{value:.1f} %"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


def cells(row: Row) -> list[str]:
    if row.status != "ok":
        shown = row.status if len(row.status) < 60 else row.status[:57] + "…"
        return [row.group, row.test, row.path, shown, "", "", row.notes]
    ratio = f"{row.ratio:.2f}×" if row.ratio is not None else ""
    return [row.group, row.test, row.path, fmt(row.median, row.unit), fmt(row.p95, row.unit) if row.p95 is not None else "",
            ratio, row.notes]


HEADERS = ["Group", "Test", "Path", "Median", "p95", "vs direct", "Notes"]


def rich_table(rows: list[Row], title: str):
    from rich.table import Table

    table = Table(title=title, show_lines=False, title_justify="left")
    for h in HEADERS:
        table.add_column(h, justify="right" if h in ("Median", "p95", "vs direct") else "left",
                         no_wrap=h in ("Median", "p95", "vs direct"))
    previous = None
    for row in rows:
        c = cells(row)
        if row.group == previous:
            c[0] = ""
        elif previous is not None:
            table.add_section()
        previous = row.group
        table.add_row(*c)
    return table


def markdown(rows: list[Row], machine: dict[str, Any], config: dict[str, Any], title: str) -> str:
    lines = [f"# {title}", "", f"Run {config['finished_at']} with `{config['command']}` "
             f"({config['duration_s']:.0f} s).", ""]
    if "load_average_before" in config:
        lines += [f"Load average (1/5/15 min) before: {', '.join(map(str, config['load_average_before']))}; "
                  f"after: {', '.join(map(str, config['load_average_after']))} (other work on the machine skews "
                  "every figure).", ""]
    lines += ["| Machine | |", "|---|---|"]
    for k, v in machine.items():
        lines.append(f"| {k} | {v} |")
    lines += ["", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(row)) + " |")
    lines += ["", "Medians over repeats; \"vs direct\" divides by the same test on direct OpenSSH in this run "
              "(throughput: higher is better; times: lower is better). MB/s = 10^6 bytes/s.", ""]
    return "\n".join(lines)


def write_results(directory: Path, rows: list[Row], machine: dict[str, Any], config: dict[str, Any], title: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "latest.md").write_text(markdown(rows, machine, config, title))
    body = {"title": title, "machine": machine, "config": config, "rows": [asdict(r) for r in rows]}
    (directory / "latest.json").write_text(json.dumps(body, indent=2) + "\n")


def _first(cmd: list[str], stream: str = "stdout") -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (getattr(p, stream) or "").strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))  # type: ignore[union-attr]
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, AttributeError):
        pass
    import asyncssh
    import uvicorn
    import websockets

    try:
        import websockets.speedups  # noqa: F401
        speedups = "loaded"
    except ImportError:
        speedups = "NOT loaded"
    try:
        import uvloop
        uvloop_v = uvloop.__version__
    except ImportError:
        uvloop_v = "not installed"
    try:
        import cryptography
        crypto_v = cryptography.__version__
    except ImportError:
        crypto_v = "unknown"
    root = Path(__file__).resolve().parent.parent
    return {
        "CPU": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "OS": _os_name(),
        "Python": platform.python_version(),
        "OpenSSH": _first(["ssh", "-V"], "stderr"),
        "asyncssh": asyncssh.__version__,
        "cryptography": crypto_v,
        "websockets": f"{websockets.__version__} (C speedups {speedups})",
        "uvicorn": uvicorn.__version__,
        "uvloop": uvloop_v,
        "hatchway commit": _first(["git", "-C", str(root), "describe", "--always", "--dirty"]),
    }


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()
