"""The first process of an isolated workspace after its init: finish, as root and inside the
workspace's namespaces, the set-up that can only be done there, then become the agent.

Run by the local provider as ``python -I -m hatchway.providers.nslaunch`` under ``tini``
(PID 1 of the workspace's PID namespace). It imports only the standard library, and it ends by
``exec``-ing the agent as the workspace user, so it costs no process while the workspace runs.

Inside the workspace's private mount namespace it:

1. gives the workspace ``/tmp``, ``/var/tmp`` and ``/dev/shm`` of its own (fresh tmpfs; the way
   to the code and the workspace's directory, if they lie below, stays visible);
2. **passes through** directories the workspace user could not traverse on the host: the
   Hatchway code and the Python it runs on may live under ``/root`` (0700), the workspace's own
   directory under the data dir (0700). Each such directory is covered, in this namespace only,
   by a small tmpfs holding bind mounts of exactly the entries needed, taken from the original
   through a file descriptor opened before covering it. The workspace sees its own directory and
   the code, and nothing else of those directories (not the database, not other workspaces).
3. with ``--openssh``, bind-mounts the workspace's sshd_config over ``/etc/ssh/sshd_config``
   (so sshd and the agent's diagnostics read the same file) and starts ``sshd -D`` detached, so
   PID 1 reaps it, in the launcher's own fixed environment.
4. drops to the workspace user (supplementary groups from the group database), changes to its
   home and ``exec``s the agent with the environment the plan gives it (the workspace's
   variables, its identity, the agent token).

The launch chain runs with privileges the workspace user does not have, so nothing it runs
takes the user's word: its environment is fixed (the workspace's variables, ``LD_PRELOAD`` or
``PYTHONPATH`` among them, only reach the agent, in the plan) and Python runs it with ``-I``
(the user's home, its working directory, is not on the import path).

Without root (``"mode": "userns"`` in the plan) it is started by ``unshare --user
--map-root-user --net --mount --ipc`` instead, as root of a user namespace the server's user owns
(mapped to that user), and it:

1. brings up the namespace's loopback, lets every user bind its ports (port 22 included), and
   opens the server's listener there, ``127.0.0.1:<server port>``, handing the listening socket
   to the server over the Unix socket the server passed in (``SCM_RIGHTS``): the same in-namespace
   listener the root path opens with ``setns``, which an unprivileged server cannot do itself;
2. **hides** what the workspace must not see although it runs as the same user: the server's data
   dir, that user's home and runtime dir are covered by a tmpfs that passes through only the way
   to this workspace's directory and to the code; ``/tmp``, ``/var/tmp`` and ``/dev/shm`` are fresh;
3. creates the workspace's PID namespace; its first process mounts a fresh ``/proc``, enters a
   nested user namespace that maps the server's uid to itself (so the agent runs as that user,
   with no capability over the namespaces set up above) and ``exec``s ``tini``, which runs the
   agent. This process stays outside, as the parent, forwarding the exit status; it is not
   visible from inside (not in the workspace's ``/proc``), so no workspace process can reach a
   process that holds privileges over the namespaces.

``python -I -m hatchway.providers.nslaunch --probe UID GID`` under the same ``unshare`` does every step of
that on nothing and exits 0, or prints why not: the server's test of whether the kernel lets it.

Any failure is printed as one line to the workspace log and ends with status 3, which the
supervisor shows as the workspace's failure reason.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import stat
import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath

EXIT_SETUP = 3
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_NOEXEC = 0x8
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
PR_SET_PDEATHSIG = 1
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
SSHD_CONFIG = "/etc/ssh/sshd_config"
#: Fresh, private in every user-namespace workspace (world-writable and sticky, as usual).
PRIVATE_TMP = ("/tmp", "/var/tmp", "/dev/shm")
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


def cover_plan(targets: Iterable[str], hide: Iterable[str], fresh: Iterable[str] = ()) -> list[tuple[str, list[str], int]]:
    """Which directories to cover with a tmpfs, and which of their entries to keep (pure).

    Each directory of ``hide`` (0711 cover) and ``fresh`` (1777 cover, like ``/tmp``) is
    covered, and so is every directory on the way from it down to a target below it (unless that
    directory is a target or inside one): what stays visible of a hidden directory is exactly
    the way to the targets. A hidden directory that is itself a target is not covered; one
    inside a target is (a data dir inside the code's tree is still hidden). Returned outermost
    first, with the mode of the covering tmpfs.
    """
    paths = [PurePosixPath(t) for t in targets]

    def in_target(d: PurePosixPath, top: PurePosixPath) -> bool:
        return any(d == t or t in d.parents for t in paths if top in t.parents)

    out: dict[str, tuple[set[str], int]] = {}
    for mode, dirs in ((0o711, hide), (0o1777, fresh)):
        for d in dirs:
            top = PurePosixPath(d)
            if str(top) == "/" or any(top == t for t in paths):
                continue
            out.setdefault(str(top), (set(), mode))
            for t in paths:
                if top not in t.parents:
                    continue
                for i in range(len(top.parts), len(t.parts)):
                    directory = PurePosixPath(*t.parts[:i])
                    if directory != top and in_target(directory, top):
                        break
                    out.setdefault(str(directory), (set(), mode if directory == top else 0o711))[0].add(t.parts[i])
    return sorted(
        ((d, sorted(keep), mode) for d, (keep, mode) in out.items()), key=lambda item: (item[0].count("/"), item[0])
    )


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
        _cover(libc, directory, children, 0o711, keep_owner=True)


def apply_cover(libc: ctypes.CDLL, plan: list[tuple[str, list[str], int]]) -> None:
    """Each tmpfs belongs to root (in a user namespace, its root: the server's user), whoever
    owned the directory (an owner the namespace does not map could not be named in the options)."""
    for directory, children, mode in plan:
        if os.path.isdir(directory):
            _cover(libc, directory, children, mode, keep_owner=False)


def _cover(libc: ctypes.CDLL, directory: str, children: list[str], mode: int, *, keep_owner: bool) -> None:
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        owner = f",uid={st.st_uid},gid={st.st_gid}" if keep_owner else ""
        size = "size=64k" if mode == 0o711 else "size=50%"
        _mount(libc, "tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode:04o}{owner},{size}")
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


def agent_env(plan: dict) -> dict[str, str]:
    """The agent's environment, from the plan: strings only, no NUL (execve would refuse)."""
    env = plan["env"]
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k and "\0" not in k + v for k, v in env.items()
    ):
        raise LaunchError("the plan's environment is not a map of strings")
    return env


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
    apply_cover(libc, [(d, list(c), int(m)) for d, c, m in plan.get("cover", [])])
    apply_passthrough(libc, [(d, list(c)) for d, c in plan.get("passthrough", [])])
    env = agent_env(plan)
    if plan.get("sshd_config"):
        _mount(libc, plan["sshd_config"], SSHD_CONFIG, None, MS_BIND)
        start_sshd(plan["sshd"], dict(os.environ))
    uid, gid, user = int(plan["uid"]), int(plan["gid"]), str(plan["user"])
    os.initgroups(user, gid)
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise LaunchError("could not drop privileges")
    os.chdir(plan["home"])
    argv = [str(a) for a in plan["argv"]]
    os.execve(argv[0], argv, env)


# ---- without root: inside a user namespace ------------------------------------------------


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(err)}")


def bring_up_loopback() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)[:18])[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))


def _write(path: str, text: str) -> None:
    try:
        with open(path, "w") as fh:
            fh.write(text)
    except OSError as exc:
        raise LaunchError(f"cannot write {path}: {exc.strerror}") from None


def set_up_network() -> None:
    """The namespace's loopback up; every port (22 too) bindable by the workspace's user."""
    try:
        bring_up_loopback()
    except OSError as exc:
        raise LaunchError(f"cannot bring up the loopback: {exc.strerror}") from None
    _write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")


def hand_over_listener(channel_fd: int, port: int) -> None:
    """Listen on the namespace's ``127.0.0.1:port`` and give the socket to the server."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        with socket.socket(fileno=channel_fd) as channel:
            socket.send_fds(channel, [b"L"], [listener.fileno()])
    finally:
        listener.close()


def enter_pid_namespace(libc: ctypes.CDLL) -> int:
    """Fork into a new PID namespace: 0 in the child (its PID 1), the child's pid in the parent.
    The child dies with the parent (as ``unshare --kill-child``) and has its own ``/proc``."""
    _check(libc.unshare(CLONE_NEWPID), "cannot create a PID namespace")
    pid = os.fork()
    if pid:
        return pid
    # (getppid() is 0 here, the parent being outside: a parent killed before this line leaves
    # the child in its process group, which the server's stop kills as a whole.)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    return 0


def become_user(libc: ctypes.CDLL, uid: int, gid: int) -> None:
    """A nested user namespace in which we are ``uid``/``gid`` (the outer namespace's root, that
    is the server's user on the host) and hold no capability once we ``exec``."""
    _check(libc.unshare(CLONE_NEWUSER), "cannot create the inner user namespace")
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} 0 1\n")
    _write("/proc/self/gid_map", f"{gid} 0 1\n")
    if os.getuid() != uid or os.getgid() != gid:
        raise LaunchError("the inner user namespace does not map the server's user")


def _default_signals() -> None:
    # Python ignores SIGPIPE (and SIGXFSZ); an exec keeps ignored signals ignored.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _wait_and_exit(pid: int) -> None:
    """Stay outside as the PID namespace's parent until its PID 1 ends; exit as it did."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # tini, in our process group, gets them and forwards them
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def run_userns(plan: dict) -> None:
    libc = _libc()
    libc.unshare.argtypes = [ctypes.c_int]
    set_up_network()
    hand_over_listener(int(plan["listen_fd"]), int(plan["listen_port"]))
    apply_cover(libc, [(d, list(c), int(m)) for d, c, m in plan.get("cover", [])])
    env = agent_env(plan)
    pid = enter_pid_namespace(libc)
    if pid:
        _wait_and_exit(pid)
    try:
        become_user(libc, int(plan["uid"]), int(plan["gid"]))
        os.chdir(plan["home"])
        _default_signals()
        argv = [str(plan["tini"]), "-g", "--", *[str(a) for a in plan["argv"]]]
        os.execve(argv[0], argv, env)
    except (LaunchError, OSError) as exc:
        print(f"hatchway: cannot set up the workspace inside its namespaces: {exc}", file=sys.stderr, flush=True)
    os._exit(EXIT_SETUP)


def probe(uid: int, gid: int) -> None:
    """Every step of :func:`run_userns` on nothing; raises :class:`LaunchError` on the first
    that the kernel refuses."""
    libc = _libc()
    libc.unshare.argtypes = [ctypes.c_int]
    set_up_network()
    a, b = socket.socketpair()
    with a, b:
        hand_over_listener(os.dup(a.fileno()), 0)
        _, fds, _, _ = socket.recv_fds(b, 1, 1)
        for fd in fds:
            os.close(fd)
    apply_cover(libc, [("/tmp", [], 0o1777)])
    pid = enter_pid_namespace(libc)
    if pid == 0:
        try:
            become_user(libc, uid, gid)
            if os.getpid() != 1 or not os.path.exists("/proc/1"):
                raise LaunchError("the PID namespace has no /proc of its own")
        except (LaunchError, OSError) as exc:
            print(f"hatchway: {exc}", file=sys.stderr, flush=True)
            os._exit(EXIT_SETUP)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(EXIT_SETUP)


def main() -> None:
    try:
        if sys.argv[1:2] == ["--probe"]:
            probe(int(sys.argv[2]), int(sys.argv[3]))
            return
        plan = json.loads(os.environ.pop(PLAN_ENV))
        if plan.get("mode") == "userns":
            run_userns(plan)
        else:
            run(plan)
    except (LaunchError, OSError, KeyError, ValueError, IndexError) as exc:
        print(f"hatchway: cannot set up the workspace inside its namespaces: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_SETUP) from None


if __name__ == "__main__":
    main()
