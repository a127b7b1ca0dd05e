"""Running the system tools the local provider drives, without blocking the event loop.

Every child is awaited (reaped) on every path, including cancellation and time-outs, and its
output is captured so a failure can be reported in the tool's own words.
"""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from hatchway.providers.base import SetupError


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def why(self) -> str:
        text = (self.stderr.strip() or self.stdout.strip()).splitlines()
        detail = text[-1] if text else f"exit status {self.returncode}"
        return f"{Path(self.argv[0]).name} failed: {detail}"


async def run(*argv: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> Completed:
    """Run a command to completion; the child is killed and reaped if we time out or are cancelled."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise
    return Completed(tuple(argv), proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


async def check(*argv: str, timeout: float = 30.0, what: str = "") -> Completed:
    """Like :func:`run`, raising :class:`SetupError` (with the tool's message) on failure."""
    try:
        done = await run(*argv, timeout=timeout)
    except FileNotFoundError:
        raise SetupError(f"{what or argv[0]}: {argv[0]} is not installed") from None
    except TimeoutError:
        raise SetupError(f"{what or argv[0]}: {Path(argv[0]).name} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        raise SetupError(f"{what}: {done.why()}" if what else done.why())
    return done


def pids_of_uid(uid: int) -> list[int]:
    """Processes whose real uid is ``uid`` (blocking; a /proc scan)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                for line in fh:
                    if line.startswith("Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError, ValueError):
            continue
    return out


def pids_with_env(uid: int, *assignments: str) -> list[int]:
    """Processes of ``uid`` whose environment contains exactly one of ``NAME=value`` (blocking)."""
    needles = {a.encode() for a in assignments}
    out = []
    for pid in pids_of_uid(uid):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needles.intersection(fh.read().split(b"\0")):
                    out.append(pid)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def tail_meaningful_line(path: Path, max_bytes: int = 16384) -> str:
    """The last error (else warning) line the current run logged, without the timestamp.

    Used for failure reasons people read in ``workspaces show``: the agent logs a sentence that
    says what went wrong, and that sentence is more useful than "exit status 2".
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    # Only this run's lines: the launcher writes a "--- ..." header at every start.
    starts = [i for i, ln in enumerate(lines) if ln.startswith("--- ")]
    if starts:
        lines = lines[starts[-1] + 1 :]
    problems = [
        ln.strip()
        for ln in lines
        if " ERROR " in ln or " WARNING " in ln or ln.startswith(("hatchway: ", "Error: ", "tini", "unshare:", "ip:"))
    ]
    if not problems:
        return ""
    chosen = next((ln for ln in reversed(problems) if " ERROR " in ln or not ln[:4].isdigit()), problems[-1])
    # "2025-01-01 12:00:00,123 ERROR hatchway.agent: message" -> "message"
    parts = chosen.split(": ", 1)
    if len(parts) == 2 and chosen[:4].isdigit():
        chosen = parts[1]
    return chosen if len(chosen) <= 300 else chosen[:297] + "..."
