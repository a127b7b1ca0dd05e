"""Whether a server that is not root may isolate local workspaces with user namespaces.

Without root the local provider cannot create Unix users, named network namespaces or veths,
but where the kernel allows unprivileged user namespaces it can still give each workspace its
own network, PID, mount and IPC namespaces (see :mod:`hatchway.providers.nslaunch`). Whether it
may is decided in two steps: the kernel's switches (a clear reason when one is off), then a real
attempt — the launcher's ``--probe`` does every step of a workspace start on nothing — because
other things can refuse too (AppArmor, seccomp filters of a container, an overmounted ``/proc``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from hatchway.providers import proc

#: Debian patches: 0 forbids user namespaces to every user but root.
UNPRIVILEGED_USERNS_CLONE = "/proc/sys/kernel/unprivileged_userns_clone"
#: 0 forbids them to everyone (root included, but root does not need them here).
MAX_USER_NAMESPACES = "/proc/sys/user/max_user_namespaces"
#: Ubuntu 23.10+: 1 lets unconfined programs create them but without capabilities in them.
APPARMOR_RESTRICT = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"
#: What an unprivileged workspace start runs (followed by the launcher).
UNSHARE_FLAGS = ("--user", "--map-root-user", "--net", "--mount", "--ipc")


@dataclass(frozen=True)
class Support:
    ok: bool
    #: Why not, as the end of a sentence ("... because <reason>"), with what to do about it.
    reason: str = ""


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def kernel_switches(read: Callable[[str], str | None] = _read) -> Support:
    """The kernel's own switches (pure given ``read``): refused only when one says no."""
    if read(UNPRIVILEGED_USERNS_CLONE) == "0":
        return Support(
            False,
            "the kernel does not allow unprivileged user namespaces (kernel.unprivileged_userns_clone = 0; "
            "a site manager can allow them with sysctl -w kernel.unprivileged_userns_clone=1)",
        )
    if read(MAX_USER_NAMESPACES) == "0":
        return Support(
            False,
            "user namespaces are disabled (user.max_user_namespaces = 0; "
            "a site manager can allow them with sysctl -w user.max_user_namespaces=10000)",
        )
    return Support(True)


def probe_failure(why: str, read: Callable[[str], str | None] = _read) -> Support:
    """The reason for a failed attempt, with the likeliest cause when the kernel says which."""
    reason = f"creating the workspace's namespaces without root failed ({why})"
    if read(APPARMOR_RESTRICT) == "1":
        reason += (
            "; AppArmor restricts unprivileged user namespaces (kernel.apparmor_restrict_unprivileged_userns = 1): "
            "a site manager can allow them for the server's Python with an AppArmor profile, or with "
            "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0"
        )
    return Support(False, reason)


async def check(unshare: str) -> Support:
    """The switches, then a real attempt as this (unprivileged) process."""
    switches = kernel_switches()
    if not switches.ok:
        return switches
    try:
        done = await proc.run(
            unshare, *UNSHARE_FLAGS, "--", sys.executable, "-I", "-m", "hatchway.providers.nslaunch",
            "--probe", str(os.getuid()), str(os.getgid()),
            timeout=30,
        )
    except (TimeoutError, OSError) as exc:
        return probe_failure(str(exc) or type(exc).__name__)
    if done.returncode != 0:
        return probe_failure(done.why())
    return Support(True)
