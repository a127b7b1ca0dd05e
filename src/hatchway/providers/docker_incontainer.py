"""What runs inside a workspace container, started with the bundled interpreter (see
:mod:`hatchway.providers.docker_runtime`). Standard library only: the image has nothing of ours.
The server's import directories are mounted with that interpreter, so the hatchway package is
importable here; of it, only modules that are standard library only themselves are used
(:mod:`hatchway.providers.reown`, the re-own walk the ``local`` provider uses too).

``python boot.py hatchway.providers.docker_incontainer COMMAND``:

* ``init`` — PID 1 of a plain workspace: reaps orphans, and on ``docker stop`` (SIGTERM) asks
  every process to end, then kills what is left.
* ``cvm-init`` — the first moment of a ``--cvm`` workspace: waits until the server has made the
  container's own cgroup mounts writable (the cgroup namespace is private, so they show only
  this container's subtree; see :mod:`hatchway.providers.cgroup_rw`), and ``exec``s
  ``/sbin/init``. The container never holds CAP_SYS_ADMIN.
* ``setup --name NAME --home DIR`` — as root: make sure the workspace user exists (reusing an
  account the image already has, else adding lines to /etc/passwd, /etc/group and /etc/shadow
  itself, so the image needs no ``useradd``) and owns its home (the persistent volume, filled
  from /etc/skel the first time; see :func:`own_home`). Prints one JSON line: user, uid, gid,
  home, shell, and the re-own's log lines for the server (``reowned``, ``left_devices``: null
  when there is nothing to say).
* ``agent ARGS...`` — as the workspace user: runs ``hatchway agent ARGS`` and ties its life to
  stdin. The server holds stdin through the engine's attach stream; when the server closes it
  (stop, restart, or the server itself died) the agent gets SIGTERM, then SIGKILL.

Failures print one line starting with ``hatchway:`` and exit with status 3.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from hatchway.providers.reown import Owner, devices_note, give_all, reown_tree, reowned_note

EXIT_SETUP = 3
FIRST_UID = 1000
MAX_UID = 60000
#: How long a ``--cvm`` container's PID 1 waits for the server to make its cgroups writable.
CGROUP_RW_TIMEOUT = 30.0
INIT_CANDIDATES = ("/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd")
SHELLS = ("/bin/bash", "/usr/bin/bash", "/bin/sh", "/usr/bin/sh")
SKEL = "/etc/skel"
#: How a home volume comes to belong to another uid than its user's (the re-own's log line).
MOVED_WHY = (
    "after a volume is copied or restored from elsewhere by numeric owner, or an image whose account of that name "
    "has another uid"
)
AGENT_STOP_GRACE = 5.0


class InContainerError(Exception):
    pass


# ---- the account database (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def parse_passwd(text: str) -> list[Account]:
    out = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) != 7 or line.startswith(("#", "+", "-")):
            continue
        try:
            out.append(Account(parts[0], int(parts[2]), int(parts[3]), parts[5], parts[6]))
        except ValueError:
            continue
    return out


def parse_group_ids(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[2].isdigit():
            out[parts[0]] = int(parts[2])
    return out


def _free(used: set[int], preferred: int | None = None) -> int:
    if preferred is not None and FIRST_UID <= preferred < MAX_UID and preferred not in used:
        return preferred
    for n in range(FIRST_UID, MAX_UID):
        if n not in used:
            return n
    raise InContainerError("no free uid/gid between 1000 and 60000 in the image")


def is_regular_account(acc: Account) -> bool:
    """An account a person logs in as (not root, a system account or nobody)."""
    return FIRST_UID <= acc.uid < MAX_UID


@dataclass(frozen=True)
class UserPlan:
    name: str
    uid: int
    gid: int
    create_user: bool
    create_group: bool
    #: An existing account whose home must be changed to the workspace's home.
    set_home: bool


def plan_user(
    preferred: str, home: str, passwd: list[Account], groups: dict[str, int], home_owner: int | None
) -> UserPlan:
    """Which account the workspace runs as (pure).

    The owner's name when the image has no such account or has it as a regular user; when the
    name belongs to root or a system account, ``hw-<name>`` instead. A new account reuses the
    uid that owns the (persistent) home when that uid is free, so files keep their owner when
    the container is re-created; else the first free uid from 1000.
    """
    by_name = {a.name: a for a in passwd}
    name = preferred
    existing = by_name.get(name)
    if existing is not None and not is_regular_account(existing):
        name = ("hw-" + preferred)[:32]
        existing = by_name.get(name)
        if existing is not None and not is_regular_account(existing):
            raise InContainerError(f"the image's accounts {preferred} and {name} are system accounts; rename the user")
    if existing is not None:
        return UserPlan(name, existing.uid, existing.gid, False, False, existing.home != home)
    used_uids = {a.uid for a in passwd}
    uid = _free(used_uids, home_owner)
    gid_taken = set(groups.values())
    if name in groups:
        gid, create_group = groups[name], False
    else:
        gid, create_group = _free(gid_taken, uid), True
    return UserPlan(name, uid, gid, True, create_group, False)


def passwd_line(name: str, uid: int, gid: int, home: str, shell: str) -> str:
    return f"{name}:x:{uid}:{gid}:Hatchway workspace user:{home}:{shell}\n"


def group_line(name: str, gid: int) -> str:
    return f"{name}:x:{gid}:\n"


def shadow_line(name: str) -> str:
    # "*": no password, but not locked: OpenSSH accepts key logins (a "!" would lock them out).
    return f"{name}:*:19000:0:99999:7:::\n"


def with_home(text: str, name: str, home: str) -> str:
    """/etc/passwd with ``name``'s home field replaced (other lines byte for byte)."""
    out = []
    for line in text.splitlines(keepends=True):
        parts = line.rstrip("\n").split(":")
        if len(parts) == 7 and parts[0] == name:
            parts[5] = home
            line = ":".join(parts) + ("\n" if line.endswith("\n") else "")
        out.append(line)
    return "".join(out)


def hosts_with_hostname(text: str, hostname: str) -> str | None:
    """/etc/hosts with a line for the container's own hostname, or None when it has one.

    Without a network (``--docker-network none``) the engine writes no such line, and programs
    that look their own host up fail: sshd's X11 forwarding with ``X11UseLocalhost no`` sets
    DISPLAY=<hostname>:10.0, which xauth then cannot resolve (``bad display name``)."""
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and hostname in fields[1:]:
            return None
    return appended(text, f"127.0.1.1\t{hostname}\n")


def appended(text: str, line: str) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line


# ---- setup (I/O) ------------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def _write_like(path: str, text: str, default_mode: int) -> None:
    """Replace ``path`` atomically, keeping its mode and owner."""
    try:
        st = os.stat(path)
        mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        mode, uid, gid = default_mode, 0, 0
    tmp = f"{path}.hatchway-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8", errors="surrogateescape"))
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _shell() -> str:
    for s in SHELLS:
        if os.access(s, os.X_OK):
            return s
    raise InContainerError("the image has no shell (/bin/sh): SSH sessions need one; use an image with a shell")


def own_home(home: str, name: str, user: Owner, skel: str = SKEL) -> dict[str, str | None]:
    """Make ``home`` the workspace user's (``name``, ``user``); returns the lines the server logs
    about it: ``reowned`` (info) and ``left_devices`` (warning), None when there is nothing to say.

    What this set-up or the engine made is wholly the user's: a home filled from ``skel`` now, or
    one whose top is root's (the engine's new volume, empty or holding its copy of the image's
    directory). A home whose top another uid or gid owns came from elsewhere (a volume restored
    by numeric owner, an image whose account has another uid now): there the ``local``
    provider's rules and walk apply (:func:`hatchway.providers.reown.reown_tree`): only that old
    owner's entries move, root's and other accounts' stay theirs, device nodes are left and
    named, symlinks are not followed and nothing mounted inside is entered. The top moves last,
    so an interrupted run is finished at the next start."""
    os.makedirs(home, exist_ok=True)
    if not os.listdir(home) and os.path.isdir(skel):
        shutil.copytree(skel, home, dirs_exist_ok=True, symlinks=True)
        give_all(home, user)
    if os.lstat(home).st_uid == 0:
        give_all(home, user)
        return {"reowned": None, "left_devices": None}
    try:
        done = reown_tree(Path(home), user)
    except OSError as exc:
        raise InContainerError(
            f"cannot give {home}, whose files belong to another uid (a volume restored by numeric owner, or an image "
            f"whose account {name} has another uid now?), to {name} ({user}): {exc}. Paths are the container's; fix "
            "what the error names, then start the workspace again: it re-owns what is left"
        ) from None
    os.chown(home, user.uid, user.gid, follow_symlinks=False)  # a top in root's group too (the walk keeps root's gid)
    if done is None:
        return {"reowned": None, "left_devices": None}
    return {"reowned": reowned_note([done], name, user, MOVED_WHY), "left_devices": devices_note([done], name)}


def _ensure_hostname_resolves() -> None:
    import socket

    hostname = socket.gethostname()
    if not hostname:
        return
    hosts = hosts_with_hostname(_read("/etc/hosts"), hostname)
    if hosts is not None:
        with open("/etc/hosts", "w") as fh:  # the engine bind-mounts this file: write in place
            fh.write(hosts)


def setup(preferred: str, home: str) -> dict:
    _ensure_hostname_resolves()
    passwd_text = _read("/etc/passwd")
    group_text = _read("/etc/group")
    try:
        home_owner: int | None = os.stat(home).st_uid
    except FileNotFoundError:
        home_owner = None
    plan = plan_user(preferred, home, parse_passwd(passwd_text), parse_group_ids(group_text), home_owner)
    shell = _shell()
    if plan.create_group:
        _write_like("/etc/group", appended(group_text, group_line(plan.name, plan.gid)), 0o644)
    if plan.create_user:
        _write_like("/etc/passwd", appended(passwd_text, passwd_line(plan.name, plan.uid, plan.gid, home, shell)), 0o644)
        if os.path.exists("/etc/shadow"):
            shadow = _read("/etc/shadow")
            if not any(line.split(":", 1)[0] == plan.name for line in shadow.splitlines()):
                _write_like("/etc/shadow", appended(shadow, shadow_line(plan.name)), 0o640)
    elif plan.set_home:
        _write_like("/etc/passwd", with_home(passwd_text, plan.name, home), 0o644)
    else:
        account = next(a for a in parse_passwd(passwd_text) if a.name == plan.name)
        shell = account.shell or shell
    notes = own_home(home, plan.name, Owner(plan.uid, plan.gid))
    os.chmod(home, 0o700)
    return {"user": plan.name, "uid": plan.uid, "gid": plan.gid, "home": home, "shell": shell, **notes}


# ---- init -------------------------------------------------------------------------------------


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def init() -> None:
    """PID 1: reap, and end everything on SIGTERM/SIGINT."""
    wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, wanted)
    while True:
        info = signal.sigtimedwait(wanted, 5.0)
        _reap()
        if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
            break
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(50):
        _reap()
        if not _others():
            break
        signal.sigtimedwait({signal.SIGCHLD}, 0.1)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap()
    sys.exit(0)


def _others() -> bool:
    me = os.getpid()
    return any(e.isdigit() and int(e) != me for e in os.listdir("/proc"))


def cgroup_mounts(mountinfo: str) -> list[tuple[str, bool]]:
    """(mount point, read-only) of every cgroup file system in /proc/self/mountinfo (pure)."""
    out = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, rfields = left.split(), right.split()
        if len(fields) < 6 or not rfields or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point = fields[4].replace("\\040", " ")
        out.append((mount_point, "ro" in fields[5].split(",")))
    return out


def read_only_cgroups(mountinfo: str) -> list[str]:
    """The cgroup mount points under /sys/fs/cgroup that are still read-only (pure)."""
    return [point for point, read_only in cgroup_mounts(mountinfo) if read_only and point.startswith("/sys/fs/cgroup")]


def cvm_init(timeout: float = CGROUP_RW_TIMEOUT) -> None:
    """Wait until the server has made the cgroup mounts writable (``hatchway.providers.cgroup_rw``:
    the container has no CAP_SYS_ADMIN to do it itself), then become systemd."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/self/mountinfo") as fh:
            waiting = read_only_cgroups(fh.read())
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise InContainerError(
                f"{waiting[0]} is still read-only after {timeout:.0f} s; the Hatchway server makes it writable for "
                "systemd when it starts the workspace: start it with `hatchway workspaces start`, not `docker start`"
            )
        time.sleep(0.01)
    for candidate in INIT_CANDIDATES:
        if os.access(candidate, os.X_OK):
            sys.stdout.flush()
            os.execv(candidate, [candidate])
    raise InContainerError(
        "the image has no /sbin/init: --cvm needs an image with systemd as its init "
        "(see docs/images/openssh/Dockerfile)"
    )


# ---- the agent, tied to stdin ------------------------------------------------------------------


def _runtime_argv() -> list[str]:
    """How this interpreter was started (its loader, library path and boot script)."""
    with open("/proc/self/cmdline", "rb") as fh:
        argv = [a.decode(errors="surrogateescape") for a in fh.read().split(b"\0") if a]
    # [ld.so, --library-path, LIB, python, -I, -S, boot.py, MODULE, agent, ...]
    boot = next(i for i, a in enumerate(argv) if a.endswith("/boot.py"))
    return argv[: boot + 1]


def agent(args: list[str]) -> None:
    argv = _runtime_argv() + ["hatchway", "agent", *args]
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    stopping = threading.Event()

    def forward(signo: int, _frame: object) -> None:
        _signal_group(pid, signo)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stopping.set()
        _signal_group(pid, signal.SIGTERM)
        if not _wait_exit(pid, AGENT_STOP_GRACE):
            print("hatchway: the agent did not stop within 5 s; killing it", file=sys.stderr, flush=True)
            _signal_group(pid, signal.SIGKILL)

    threading.Thread(target=watch_stdin, daemon=True).start()
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    code = os.waitstatus_to_exitcode(status)
    sys.stdout.flush()
    os._exit(128 - code if code < 0 else code)


def _wait_exit(pid: int, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def _signal_group(pid: int, signo: int) -> None:
    for target in (-pid, pid):
        try:
            os.kill(target, signo)
        except (ProcessLookupError, PermissionError):
            pass


# ---- main ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    try:
        if not argv:
            raise InContainerError("usage: docker_incontainer init|cvm-init|setup|agent|key ...")
        command, rest = argv[0], argv[1:]
        if command == "init":
            init()
        elif command == "cvm-init":
            cvm_init()
        elif command == "key":
            with open(os.path.join(os.path.dirname(_runtime_argv()[-1]), "KEY")) as fh:
                print(fh.read().strip(), flush=True)
        elif command == "setup":
            opts = dict(zip(rest[::2], rest[1::2], strict=False))
            print(json.dumps(setup(opts["--name"], opts["--home"])), flush=True)
        elif command == "agent":
            agent(rest)
        else:
            raise InContainerError(f"unknown command {command!r}")
    except (InContainerError, OSError, KeyError, ValueError) as exc:
        print(f"hatchway: {exc}", file=sys.stderr, flush=True)
        sys.exit(EXIT_SETUP)


if __name__ == "__main__":
    main(sys.argv[1:])
