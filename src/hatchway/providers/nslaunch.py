"""The first process of an isolated workspace after its init: finish, as root and inside the
workspace's namespaces, the set-up that can only be done there, then become the agent.

Run by the local provider as ``python -m hatchway.providers.nslaunch`` under ``tini``
(PID 1 of the workspace's PID namespace). It imports only the standard library, and it ends by
``exec``-ing the agent as the workspace user, so it costs no process while the workspace runs.

Inside the workspace's private mount namespace it:

1. **passes through** directories the workspace user could not traverse on the host: the
   Hatchway code and the Python it runs on may live under ``/root`` (0700), the workspace's own
   directory under the data dir (0700). Each such directory is covered, in this namespace only,
   by a small tmpfs holding bind mounts of exactly the entries needed, taken from the original
   through a file descriptor opened before covering it. The workspace sees its own directory and
   the code, and nothing else of those directories (not the database, not other workspaces).
2. with ``--openssh``, bind-mounts the workspace's sshd_config over ``/etc/ssh/sshd_config``
   (so sshd and the agent's diagnostics read the same file) and starts ``sshd -D`` detached, so
   PID 1 reaps it; the agent token is removed from sshd's environment.
3. drops to the workspace user (supplementary groups from the group database), changes to its
   home and ``exec``s the agent.

Any failure is printed as one line to the workspace log and ends with status 3, which the
supervisor shows as the workspace's failure reason.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

EXIT_SETUP = 3
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
SSHD_CONFIG = "/etc/ssh/sshd_config"
#: The plan (JSON) arrives in this environment variable, which is removed before anything runs.
PLAN_ENV = "HATCHWAY_NSLAUNCH_PLAN"


class LaunchError(Exception):
    pass


def passthrough_plan(targets: Iterable[str], mode_of: Callable[[str], int | None]) -> list[tuple[str, list[str]]]:
    """Which directories need covering, and which of their entries to keep (pure).

    For every ancestor of every target (and the target itself excluded: its own mode is its
    owner's business) that others cannot traverse, the entry on the way to the target must be
    passed through. Returned outermost first, because covering an outer directory must happen
    before an inner one is looked up through the new view.
    """
    needed: dict[str, set[str]] = {}
    for target in targets:
        parts = PurePosixPath(target).parts
        for i in range(1, len(parts)):
            directory = str(PurePosixPath(*parts[:i]))
            mode = mode_of(directory)
            if mode is not None and not mode & stat.S_IXOTH:
                needed.setdefault(directory, set()).add(parts[i])
    return sorted(((d, sorted(children)) for d, children in needed.items()), key=lambda item: (item[0].count("/"), item[0]))


def _mode(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    return libc


def _mount(libc: ctypes.CDLL, source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    rc = libc.mount(
        source.encode(), target.encode(), fstype.encode() if fstype else None, flags, data.encode() if data else None
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"mount {source} on {target}: {os.strerror(err)}")


def apply_passthrough(libc: ctypes.CDLL, plan: list[tuple[str, list[str]]]) -> None:
    for directory, children in plan:
        fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            _mount(libc, "tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=0711,uid={st.st_uid},gid={st.st_gid},size=64k")
            for child in children:
                source = f"/proc/self/fd/{fd}/{child}"
                target = os.path.join(directory, child)
                if os.path.isdir(source):
                    os.mkdir(target, 0o700)
                else:
                    os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
                _mount(libc, source, target, None, MS_BIND | MS_REC)
        finally:
            os.close(fd)


def start_sshd(sshd: str, env: dict[str, str]) -> None:
    """Start ``sshd -D`` through a double fork: it is re-parented to PID 1 (tini), which reaps
    it, and it shares our process group, so tini's SIGTERM reaches it at stop."""
    pid = os.fork()
    if pid == 0:
        try:
            if os.fork() == 0:
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.execve(sshd, [sshd, "-D", "-e", "-f", SSHD_CONFIG], env)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


def run(plan: dict) -> None:
    libc = _libc()
    apply_passthrough(libc, [(d, list(c)) for d, c in plan.get("passthrough", [])])
    env = dict(os.environ)
    if plan.get("sshd_config"):
        _mount(libc, plan["sshd_config"], SSHD_CONFIG, None, MS_BIND)
        sshd_env = {k: v for k, v in env.items() if k != "HATCHWAY_AGENT_TOKEN"}
        start_sshd(plan["sshd"], sshd_env)
    uid, gid, user = int(plan["uid"]), int(plan["gid"]), str(plan["user"])
    os.initgroups(user, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise LaunchError("could not drop privileges")
    os.chdir(plan["home"])
    argv = [str(a) for a in plan["argv"]]
    os.execve(argv[0], argv, env)


def main() -> None:
    try:
        plan = json.loads(os.environ.pop(PLAN_ENV))
        run(plan)
    except (LaunchError, OSError, KeyError, ValueError, IndexError) as exc:
        print(f"hatchway: cannot set up the workspace inside its namespaces: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SETUP) from None


if __name__ == "__main__":
    main()
