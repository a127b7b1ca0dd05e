"""Network namespaces, veth pairs and throwaway Unix users for root-only tests.

Addresses are link-local (169.254.0.0/16) and never in 169.254.169.0/24; everything created is
removed again by ``close()``, even after a failed test.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterable
from pathlib import Path


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


def needs_root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and users (scripts/test runs as root in CI)"
    for tool in ("/usr/sbin/sshd", "/usr/sbin/useradd"):
        if not os.path.exists(tool):
            return f"{tool} missing: scripts/setup installs it"
    return None


#: What isolated ``local`` workspaces need on this machine, and the tests' ssh client.
LOCAL_WORKSPACE_TOOLS = ("/usr/sbin/sshd", "/usr/sbin/useradd", "/usr/bin/unshare", "/usr/bin/tini", "/usr/sbin/ip",
                         "/usr/bin/ssh")


def local_workspaces_reason(
    why_root: str = "local workspaces get Unix users and namespaces only when the server runs as root",
) -> str | None:
    """Why tests of isolated ``local`` workspaces cannot run here (they skip, saying it), or None."""
    if os.geteuid() != 0:
        return f"needs root: {why_root}"
    for tool in LOCAL_WORKSPACE_TOOLS:
        if not os.path.exists(tool):
            return f"{tool} missing: scripts/setup installs it"
    return None


class Namespace:
    """A netns joined to the host by a veth pair: host side .host_ip, namespace side .ns_ip."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"hwt{tag}"
        octet = 100 + secrets.randbelow(60)  # 169.254.100-159.x: far from 169.254.169.0/24
        self.host_ip, self.ns_ip = f"169.254.{octet}.1", f"169.254.{octet}.2"
        self.host_if, self.ns_if = f"hwt{tag}h", f"hwt{tag}n"
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def exec(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(*self.prefix(), *args, check=check)

    def close(self) -> None:
        run("ip", "link", "del", self.host_if, check=False)
        run("ip", "netns", "del", self.name, check=False)


class TempUser:
    def __init__(self) -> None:
        self.name = f"hwt-{secrets.token_hex(3)}"
        self.home = Path("/home") / self.name
        run("useradd", "--create-home", "--home-dir", str(self.home), "--shell", "/bin/bash", self.name)
        # No password, but not "locked" either: sshd refuses key logins to locked accounts.
        run("usermod", "--password", "*", self.name)
        self.uid = int(run("id", "-u", self.name).stdout)

    def prefix(self) -> list[str]:
        return ["setpriv", f"--reuid={self.name}", f"--regid={self.name}", "--init-groups", "--"]

    def close(self) -> None:
        run("pkill", "-KILL", "-u", self.name, check=False)
        run("userdel", "--remove", self.name, check=False)


def pids_of_uid(uid: int) -> list[int]:
    """Every process owned by ``uid`` (by /proc ownership), to prove nothing was left running."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    out.append(int(entry))
            except FileNotFoundError:
                pass
    return out


def unused_id(start: int = 54321) -> int:
    """The first number from ``start`` that no account, group or process has here: how a user of
    another machine looks on this one (files copied with their numeric owners)."""
    import grp
    import pwd

    taken = {p.pw_uid for p in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    n = start
    while n in taken or pids_of_uid(n):
        n += 1
    return n


def sweep_local_workspaces(data_dir: Path, known_ids: Iterable[str] = ()) -> list[str]:
    """Remove what the ``local`` provider left of its workspaces (a failed run): processes in
    their network namespaces, the namespaces, their Unix users and those users' processes.

    The workspaces are those in ``known_ids`` and every one with a directory under the data dir,
    so a fixture that failed before it learned an id still cleans up. Returns the ids swept."""
    import pwd
    import signal

    from hatchway.providers.naming import netns_name, user_marker

    found = {p.name for p in (data_dir / "workspaces").iterdir()} if (data_dir / "workspaces").is_dir() else set()
    ids = sorted(set(known_ids) | found)
    for ws_id in ids:
        ns = netns_name(ws_id)
        for pid in run("ip", "netns", "pids", ns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "delete", ns, check=False)
        for entry in pwd.getpwall():
            if entry.pw_gecos == user_marker(ws_id):
                for pid in pids_of_uid(entry.pw_uid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                run("userdel", entry.pw_name, check=False)
    return ids
