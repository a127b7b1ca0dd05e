"""The embedded ``local`` provider: workspaces on the server's own machine.

As root, each workspace is a set of kernel objects combined around one agent process::

    ip netns exec hw-<id>                  own network namespace: own loopback, own port 22
      unshare --pid --fork --mount-proc    own PID namespace (and mount namespace, fresh /proc)
        tini -g                            PID 1: reaps orphans, forwards SIGTERM
          python -I -m hatchway.providers.nslaunch    root, inside: pass-through mounts, [sshd -D],
            -> exec hatchway agent (as hw-<owner>-<name>) --url http://127.0.0.1:<port> --ssh-port 22

* The **Unix user** ``hw-<owner>-<name>`` (see :mod:`hatchway.providers.naming`) owns the home
  ``<data dir>/workspaces/<id>/home`` (0700); the agent and every session run as that user.
* The **network namespace** has only its own loopback. The server reaches into it with a
  listening socket created inside it (:mod:`hatchway.providers.netns`), so the agent dials an
  ordinary ``http://127.0.0.1:<server port>`` and nothing else of the machine is reachable:
  not the host's services, not another workspace's port 22. No veth or address pool is needed.
  Ports below 1024 are unprivileged there: the workspace's port 22 is the workspace's.
* The **PID namespace** makes ``ps`` show the workspace's processes only; when its PID 1 (tini)
  ends, the kernel kills everything left in it, so "stopped" means nothing of it is running.
  ``--kill-child`` ties tini to ``unshare``, which the server holds: killing the group kills all.

Without root there are no Unix users to create and no named namespaces, but where the kernel
allows unprivileged user namespaces (checked and tried at server start, see
:mod:`hatchway.providers.userns`) each workspace still gets its own namespaces::

    unshare --user --map-root-user --net --mount --ipc   user namespace owned by the server's user
      python -I -m hatchway.providers.nslaunch          its root: loopback up, listener handed over,
        [own PID namespace]                          data dir / home / /tmp hidden; stays outside
          tini -g                                    PID 1, in a nested user namespace mapping
            -> hatchway agent (as the server's user) --url http://127.0.0.1:<port> --ssh-port 22

* The **network namespace** is reached exactly as the root path's: through a listening socket on
  its own ``127.0.0.1:<server port>``. An unprivileged server cannot ``setns`` into it, so the
  launcher opens that socket inside and hands it over on a Unix socket pair (``SCM_RIGHTS``); the
  server serves it like the root path's. Port 22 is the workspace's own, and forwarding to it is on.
* The **PID namespace** hides every other process; the **mount namespace** covers the server's
  data dir, its user's home and runtime dir with a tmpfs showing only the way to this
  workspace's directory and the code, and gives it fresh ``/tmp``, ``/var/tmp``, ``/dev/shm``.
* What is not possible: a separate Unix user. The agent runs as the server's user (mapped to
  itself), so that user's files elsewhere on the machine stay reachable; ``workspaces show``
  says so. ``--openssh`` is refused: sshd takes the home and ``authorized_keys`` of the account
  from ``/etc/passwd`` (the server user's real home, not the workspace's) and cannot switch users.

Where user namespaces are not allowed (or ``HATCHWAY_LOCAL_ISOLATION=off``), the agent runs as the
server's own user with its own HOME, on the shared network with port-22 forwarding off
(``--ssh-port 0``), and the workspace says so, and why, in ``hatchway workspaces show``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import hatchway
from hatchway.fdlimit import started_with
from hatchway.names import quoted
from hatchway.providers import netns as nsutil
from hatchway.providers import proc, userns
from hatchway.providers.base import (
    Prepared,
    RunningAgent,
    SetupError,
    WorkspaceProvider,
    WorkspaceSpec,
    open_agent_log,
)
from hatchway.providers.naming import netns_name, unix_user_candidates, user_marker
from hatchway.providers.nslaunch import (
    PLAN_ENV,
    PRIVATE_TMP,
    cover_plan,
    passthrough_plan,
)
from hatchway.providers.reown import Owner, devices_note, give_all, reown_tree, reowned_note
from hatchway.providers.sshd_config import render_sshd_config

log = logging.getLogger("hatchway.providers.local")

def login_wrapper() -> tuple[str, ...]:
    """What the workspace's first process runs under: a login's umask, not the server's own 077
    (kept for its data dir), so that sessions, scp and sshd in the workspace create files as on
    any machine; and the open-files limit the server was started with, not the one it raised
    for its sockets (see :func:`hatchway.fdlimit.started_with`), so that sshd's sessions get
    what a login gets and the agent raises its own. (uvloop's subprocess_exec takes neither,
    and the server's own must not change meanwhile.)"""
    limit = started_with()
    script = "umask 022" + (f" && ulimit -Sn {limit[0]}" if limit is not None else "") + ' && exec "$@"'
    return ("/bin/sh", "-c", script, "hatchway-workspace")


#: How the server serves one more listening socket (see ``hatchway.server.run``).
AddListener = Callable[[socket.socket], Awaitable["Closable"]]

SSHD = "/usr/sbin/sshd"
#: Debian packages providing the tools an isolated workspace needs.
ROOT_TOOLS = {
    "ip": "iproute2",
    "unshare": "util-linux",
    "tini": "tini",
    "useradd": "passwd",
    "userdel": "passwd",
}
OPENSSH_TOOLS = {"ssh-keygen": "openssh-client"}
#: ... and what a server that is not root needs for user-namespace isolation.
USERNS_TOOLS = {"unshare": "util-linux", "tini": "tini"}
#: How long the launcher may take to hand over the listener it opened inside the namespace.
HANDOVER_TIMEOUT = 30.0


class Closable(Protocol):
    def close(self) -> None: ...


def _is_root() -> bool:
    return os.geteuid() == 0


class LocalAgent(RunningAgent):
    """The process the server started for a workspace: ``ip``/``unshare`` as root (the session
    and process-group leader of everything else), or the agent itself without root."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    async def wait(self) -> int:
        return await self.process.wait()

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    async def stop(self, grace: float) -> int:
        if self.process.returncode is None:
            # unshare ignores SIGTERM; tini (same group) forwards it to the agent's group.
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.process.wait()), grace)
            except TimeoutError:
                log.warning("agent (pid %d) did not stop within %.0f s; killing it", self.pid, grace)
        # Also after a clean exit: anything left in the group goes now.
        self._signal_group(signal.SIGKILL)
        return await self.process.wait()


class LocalProvider(WorkspaceProvider):
    kind = "local"

    def __init__(
        self,
        data_dir: Path,
        server_port: int,
        server_url: str,
        add_listener: AddListener | None,
        *,
        isolate: bool | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.server_port = server_port or 7080
        self.server_url = server_url
        self.add_listener = add_listener
        #: Root isolation (Unix user, named network namespace): root, unless turned off.
        self.isolate = _is_root() if isolate is None else isolate
        self._turned_off = isolate is False
        #: User-namespace isolation: not root, not turned off, and the kernel allows it
        #: (decided by :meth:`startup`); else ``_no_userns`` says why not.
        self.userns = False
        self._no_userns = "user namespaces were not tried"
        self._tools: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        self._listeners: dict[str, Closable] = {}
        self._users_lock = asyncio.Lock()
        #: :meth:`startup` has run: :meth:`unisolated` knows whether user namespaces work.
        self.started = False

    # ---- paths -------------------------------------------------------------------------------

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    def ws_dir(self, spec: WorkspaceSpec) -> Path:
        return self.workspaces_dir / spec.id

    def home(self, spec: WorkspaceSpec) -> Path:
        return self.ws_dir(spec) / "home"

    def log_path(self, spec: WorkspaceSpec) -> str:
        return str(self.ws_dir(spec) / "agent.log")

    def log_tail(self, spec: WorkspaceSpec) -> str:
        return proc.tail_meaningful_line(Path(self.log_path(spec)))

    # ---- life cycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        names = {**ROOT_TOOLS, **OPENSSH_TOOLS} if self.isolate else {}
        for tool, package in names.items():
            found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
            if found:
                self._tools[tool] = found
            else:
                self._missing[tool] = package
        if self.isolate and self._missing:
            log.warning(
                "local workspaces cannot be isolated until these are installed: %s",
                ", ".join(f"{t} (package {p})" for t, p in sorted(self._missing.items())),
            )
        if self.isolate and self.add_listener is None:
            log.warning("local workspaces cannot be isolated: this server cannot listen inside their namespaces")
        if not self.isolate and not self._turned_off:
            await self._check_userns()
        self.started = True

    async def _check_userns(self) -> None:
        for tool, package in USERNS_TOOLS.items():
            found = shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")
            if found is None:
                self._no_userns = f"{tool} is not installed (Debian package {package})"
                break
            self._tools[tool] = found
        else:
            if self.add_listener is None:
                self._no_userns = "the server was not started with `hatchway server`, so it cannot serve a listener inside a namespace"
            else:
                support = await userns.check(self._tools["unshare"])
                self.userns = support.ok
                self._no_userns = support.reason
                # Symlinks on the way to the data dir could lead through a directory the
                # workspace's mount namespace covers: every path it is given is a real one.
                self.data_dir = self.data_dir.resolve()
        if self.userns:
            log.info(
                "the server does not run as root: local workspaces get their own user namespace and their own "
                "network, PID and mount namespaces, but run as this server's user"
            )
        else:
            log.warning(
                "the server does not run as root and cannot use user namespaces (%s): local workspaces share the "
                "server's network, processes and user",
                self._no_userns,
            )

    async def shutdown(self) -> None:
        for listener in self._listeners.values():
            listener.close()
        self._listeners.clear()

    def _tool(self, name: str) -> str:
        path = self._tools.get(name)
        if path is None:
            package = self._missing.get(name) or ROOT_TOOLS.get(name) or OPENSSH_TOOLS.get(name, name)
            raise SetupError(
                f"cannot isolate the workspace: {name} is not installed on the server "
                f"(install the Debian package {package}, e.g. with scripts/setup), then start the workspace again"
            )
        return path

    # ---- prepare ----------------------------------------------------------------------------

    async def prepare(self, spec: WorkspaceSpec) -> Prepared:
        if self.userns:
            return await self._prepare_userns(spec)
        if not self.isolate:
            return await self._prepare_unprivileged(spec)
        for tool in ROOT_TOOLS:
            self._tool(tool)
        if spec.openssh:
            self._tool("ssh-keygen")
            if not os.access(SSHD, os.X_OK):
                raise SetupError(
                    f"--openssh needs Debian's OpenSSH server ({SSHD} is missing): install openssh-server, "
                    "then start the workspace again"
                )
        if self.add_listener is None:
            raise SetupError(
                "cannot isolate the workspace: the server was not started with `hatchway server`, so it cannot "
                "listen inside the workspace's network namespace"
            )
        user = await self._ensure_user(spec)
        pw = pwd.getpwnam(user)
        home = self.home(spec)
        await asyncio.to_thread(self._make_dirs_root, spec, pw)
        if spec.openssh:
            await self._prepare_sshd(spec, user)
        await self._ensure_netns(spec)
        isolation = (
            f"isolated: Unix user {user}, own network namespace {netns_name(spec.id)} (own loopback and port 22), "
            "own PID namespace"
        )
        if spec.openssh:
            isolation += "; OpenSSH sshd runs on the workspace's port 22"
        return Prepared(
            unix_user=user, home=str(home), isolation=isolation, agent_url=f"http://127.0.0.1:{self.server_port}"
        )

    async def _prepare_userns(self, spec: WorkspaceSpec) -> Prepared:
        me = pwd.getpwuid(os.getuid()).pw_name
        if spec.openssh:
            raise SetupError(
                "--openssh needs a Hatchway server running as root: without root the workspace runs in a user "
                f"namespace as the server's user {me}, and sshd would take that account's real home and "
                "authorized_keys from /etc/passwd, not the workspace's. Delete it and create it again without "
                "--openssh (the agent's built-in SSH server serves it), or run the server as root"
            )
        # What a killed server left running of it (an agent with no way to reach us) goes first.
        await self._sweep(spec)
        await asyncio.to_thread(self._make_dirs_unprivileged, spec)
        isolation = (
            "isolated in a user namespace (the Hatchway server does not run as root): own network namespace "
            "(own loopback and port 22), own PID namespace, own mount namespace (the data dir, "
            f"{me}'s home and /tmp show only this workspace's own directory); it runs as {me}, the server's "
            f"user, mapped to itself. Not possible without root: a separate Unix user ({me}'s files elsewhere "
            "on the machine stay reachable from the workspace)"
        )
        return Prepared(
            unix_user=me, home=str(self.home(spec)), isolation=isolation, agent_url=f"http://127.0.0.1:{self.server_port}"
        )

    def unisolated(self) -> tuple[str, str] | None:
        """Why this server's local workspaces would run as the server's own user, and what would
        isolate them; None when they are isolated (a Unix user or a user namespace of their own).
        Known once :meth:`startup` has tried user namespaces."""
        if self.isolate or self.userns:
            return None
        if self._turned_off:
            return "isolation is turned off (HATCHWAY_LOCAL_ISOLATION=off)", "run the server as root for isolated workspaces"
        return (
            f"the Hatchway server does not run as root and cannot use user namespaces here ({self._no_userns})",
            "run the server as root, or allow user namespaces, for isolated workspaces",
        )

    async def _prepare_unprivileged(self, spec: WorkspaceSpec) -> Prepared:
        unisolated = self.unisolated()
        assert unisolated is not None
        why, hint = unisolated
        if spec.owner_role != "site-manager":
            raise SetupError(members_refused(why, hint))
        me = pwd.getpwuid(os.getuid()).pw_name
        await asyncio.to_thread(self._make_dirs_unprivileged, spec)
        isolation = (
            f"not isolated: {why}, so this workspace could not get its own "
            f"Unix user (it runs as {me}, with its own HOME), network namespace (it shares the server's network; "
            "port-22 forwarding is off, the built-in SSH server answers) or PID namespace (its processes are "
            f"visible to the server's user); {hint}"
        )
        if spec.openssh:
            isolation += "; --openssh was not applied: starting sshd on the workspace's own port 22 needs a root server"
        return Prepared(unix_user=me, home=str(self.home(spec)), isolation=isolation, agent_url=self.server_url)

    def _make_dirs_unprivileged(self, spec: WorkspaceSpec) -> None:
        for d in (self.workspaces_dir, self.ws_dir(spec), self.home(spec), self.ws_dir(spec) / "agent"):
            d.mkdir(mode=0o700, exist_ok=True, parents=True)
            os.chmod(d, 0o700)

    def _make_dirs_root(self, spec: WorkspaceSpec, pw: pwd.struct_passwd) -> None:
        """Directories the workspace user must traverse are 0711 (no listing, no reading of
        anything but what it owns); its home and agent state are its own, 0700, also when they
        came from another machine with that machine's uid (re-owned here, once)."""
        # The data dir and workspaces/ stay 0700: the workspace reaches its own directory only
        # through the pass-through mounts of its private mount namespace (see nslaunch).
        self.workspaces_dir.mkdir(mode=0o700, exist_ok=True, parents=True)
        self.ws_dir(spec).mkdir(mode=0o711, exist_ok=True)
        os.chmod(self.ws_dir(spec), 0o711)
        home = self.home(spec)
        if not home.exists():
            # Made beside its final name and renamed once whole: a first start cut short leaves
            # no home half root's (the next start makes it again), before anything of the user's runs.
            staging = home.with_name(home.name + ".new")
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir(mode=0o700)
            skel = Path("/etc/skel")
            if skel.is_dir():
                shutil.copytree(skel, staging, dirs_exist_ok=True, symlinks=True)
            give_all(staging, Owner(pw.pw_uid, pw.pw_gid))
            staging.rename(home)
        state = self.ws_dir(spec) / "agent"
        # The agent state first, the home last: the home's own owner says whether a move is done.
        _reown_moved(spec, pw, [d for d in (state, home) if d.exists()])
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o700)
        state.mkdir(mode=0o700, exist_ok=True)
        os.chown(state, pw.pw_uid, pw.pw_gid)
        os.chmod(state, 0o700)

    async def _ensure_user(self, spec: WorkspaceSpec) -> str:
        marker = user_marker(spec.id)
        async with self._users_lock:
            candidates = ([spec.unix_user] if spec.unix_user else []) + unix_user_candidates(spec.owner, spec.name, spec.id)
            for name in dict.fromkeys(candidates):
                try:
                    existing = pwd.getpwnam(name)
                except KeyError:
                    await self._useradd(name, marker, self.home(spec))
                    log.info("created Unix user %s for workspace %s/%s", name, spec.owner, spec.name)
                    return name
                if existing.pw_gecos == marker:
                    return name
                log.info("Unix user %s exists and is not workspace %s's; trying another name", name, spec.id)
        raise SetupError(
            f"cannot create a Unix user for the workspace: the names {', '.join(candidates)} are all taken "
            "by other accounts; remove one of them or rename the workspace"
        )

    async def _useradd(self, name: str, marker: str, home: Path) -> None:
        shell = "/bin/bash" if os.access("/bin/bash", os.X_OK) else "/bin/sh"
        argv = (
            self._tool("useradd"), "--comment", marker, "--home-dir", str(home), "--no-create-home",
            "--shell", shell, "--user-group", "--password", "*", name,
        )
        for attempt in range(20):
            done = await proc.run(*argv, timeout=30)
            if done.returncode == 0:
                return
            if done.returncode == 10 and attempt < 19:  # /etc/passwd locked by another tool: wait
                await asyncio.sleep(0.1)
                continue
            raise SetupError(f"cannot create Unix user {name}: {done.why()}")

    async def _prepare_sshd(self, spec: WorkspaceSpec, user: str) -> None:
        d = self.ws_dir(spec) / "sshd"
        key = d / "ssh_host_ed25519_key"

        def dirs() -> bool:
            d.mkdir(mode=0o700, exist_ok=True)
            os.chmod(d, 0o700)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
            return key.exists()

        if not await asyncio.to_thread(dirs):
            await proc.check(
                self._tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", f"hatchway workspace {spec.name}",
                "-f", str(key), what="cannot create the workspace's sshd host key",
            )
        config = render_sshd_config(host_key=str(key), allow_user=user)

        def write() -> None:
            from hatchway.fileutil import atomic_write

            os.chmod(key, 0o600)
            atomic_write(d / "sshd_config", config.encode(), 0o644)  # no secrets; the agent reads it

        await asyncio.to_thread(write)
        await proc.check(SSHD, "-t", "-f", str(d / "sshd_config"), what="the workspace's sshd_config is invalid")

    async def _ensure_netns(self, spec: WorkspaceSpec) -> None:
        """A fresh namespace unless this server already set it up (then it is kept across agent
        restarts, with the listening socket in it)."""
        name = netns_name(spec.id)
        if spec.id in self._listeners and nsutil.netns_exists(name):
            await self._kill_netns_pids(name)
            return
        await self._remove_netns(spec)
        ip = self._tool("ip")
        await proc.check(ip, "netns", "add", name, what="cannot create the workspace's network namespace")
        try:
            await proc.check(ip, "-n", name, "link", "set", "lo", "up", what="cannot bring up the workspace's loopback")
            # The namespace's ports are the workspace's: its user may run its own sshd on port 22.
            await nsutil.set_sysctl(name, "net.ipv4.ip_unprivileged_port_start", "0")
            sock = await nsutil.listen_in_netns(name, "127.0.0.1", self.server_port)
            assert self.add_listener is not None
            self._listeners[spec.id] = await self.add_listener(sock)
        except BaseException:
            await self._remove_netns(spec)
            raise

    async def _kill_netns_pids(self, name: str) -> None:
        done = await proc.run(self._tools.get("ip", "ip"), "netns", "pids", name, timeout=10)
        pids = [int(p) for p in done.stdout.split() if p.isdigit()]
        if pids:
            log.info("killing %d leftover process(es) in network namespace %s", len(pids), name)
            proc.kill_pids(pids)

    async def _remove_netns(self, spec: WorkspaceSpec) -> None:
        listener = self._listeners.pop(spec.id, None)
        if listener is not None:
            listener.close()
        name = netns_name(spec.id)
        if not nsutil.netns_exists(name):
            return
        await self._kill_netns_pids(name)
        done = await proc.run(self._tools.get("ip", "ip"), "netns", "delete", name, timeout=10)
        if done.returncode != 0 and nsutil.netns_exists(name):
            raise SetupError(f"cannot remove network namespace {name}: {done.why()}")

    # ---- launch -----------------------------------------------------------------------------

    def _agent_env(self, spec: WorkspaceSpec, prepared: Prepared, token: str) -> dict[str, str]:
        """A clean environment: nothing of the server's own leaks in except locale basics; the
        image variables as Docker ENV would set them; identity and the token last (not
        overridable by image variables)."""
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": os.environ.get("LANG", "C.UTF-8")}
        env.update(spec.env)
        shell = "/bin/sh"
        try:
            shell = pwd.getpwnam(prepared.unix_user).pw_shell or shell
        except KeyError:
            pass
        env.update(
            HOME=prepared.home,
            USER=prepared.unix_user,
            LOGNAME=prepared.unix_user,
            SHELL=shell,
            HATCHWAY_AGENT_TOKEN=token,
        )
        return env

    def _agent_argv(self, spec: WorkspaceSpec, prepared: Prepared) -> list[str]:
        return [
            # -I: the image's PYTHONPATH and friends are for its own programs, not the agent's.
            sys.executable, "-I", "-m", "hatchway", "agent",
            "--url", prepared.agent_url,
            "--state-dir", str(self.ws_dir(spec) / "agent"),
            "--ssh-port", "22" if self.isolate or self.userns else "0",
            # Without --openssh no sshd serves the workspace: the machine's own host keys
            # (/etc/ssh) are not the workspace's to report.
            *(() if spec.openssh else ("--sshd-config", "")),
        ]

    def _open_log(self, spec: WorkspaceSpec) -> int:
        return open_agent_log(self.log_path(spec), f"{spec.owner}/{spec.name}")

    def _userns_plan(self, spec: WorkspaceSpec, prepared: Prepared, argv: list[str], channel_fd: int) -> dict[str, Any]:
        targets = _cover_targets(self.ws_dir(spec))
        hide = [str(self.data_dir.resolve()), str(self.workspaces_dir.resolve()), f"/run/user/{os.getuid()}"]
        home = pwd.getpwuid(os.getuid()).pw_dir
        if home and os.path.isdir(home):
            hide.append(str(Path(home).resolve()))
        return {
            "mode": "userns",
            "listen_fd": channel_fd,
            "listen_port": self.server_port,
            "cover": cover_plan(sorted(targets), hide, PRIVATE_TMP),
            "uid": os.getuid(),
            "gid": os.getgid(),
            "home": prepared.home,
            "tini": self._tool("tini"),
            "argv": argv,
        }

    async def launch(self, spec: WorkspaceSpec, prepared: Prepared, agent_token: str) -> RunningAgent:
        argv = self._agent_argv(spec, prepared)
        env = self._agent_env(spec, prepared, agent_token)
        pass_fds: tuple[int, ...] = ()
        channel: socket.socket | None = None
        theirs: socket.socket | None = None
        if self.isolate:
            pw = pwd.getpwnam(prepared.unix_user)
            plan = {
                # /tmp, /var/tmp and /dev/shm of its own: nothing to read or plant for another
                # workspace. What the workspace needs below them (the code, the data dir in a
                # test) stays visible through the cover.
                "cover": cover_plan(sorted(_cover_targets(self.ws_dir(spec))), (), PRIVATE_TMP),
                "passthrough": passthrough_plan(_passthrough_targets(self.ws_dir(spec)), _mode_of),
                "sshd_config": str(self.ws_dir(spec) / "sshd" / "sshd_config") if spec.openssh else None,
                "sshd": SSHD,
                "uid": pw.pw_uid,
                "gid": pw.pw_gid,
                "user": pw.pw_name,
                "home": prepared.home,
                "argv": argv,
            }
            argv = [
                self._tool("ip"), "netns", "exec", netns_name(spec.id),
                self._tool("unshare"), "--pid", "--fork", "--mount-proc", "--kill-child", "--",
                self._tool("tini"), "-g", "--",
                *NSLAUNCH,
            ]
            env = launcher_env(plan, env)
        elif self.userns:
            self._close_listener(spec)
            channel, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            pass_fds = (theirs.fileno(),)
            env = launcher_env(self._userns_plan(spec, prepared, argv, theirs.fileno()), env)
            argv = [self._tool("unshare"), *userns.UNSHARE_FLAGS, "--", *NSLAUNCH]
        fd = await asyncio.to_thread(self._open_log, spec)
        try:
            process = await asyncio.create_subprocess_exec(
                *login_wrapper(), *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                cwd=prepared.home,
                start_new_session=True,  # its own process group: stop() signals the whole group
                pass_fds=pass_fds,
            )
        except BaseException:
            if channel is not None:
                channel.close()
            raise
        finally:
            os.close(fd)
            if theirs is not None:
                theirs.close()  # (the socket object, not its number: that may be reused by then)
        log.info("started the agent of workspace %s/%s (pid %d)", spec.owner, spec.name, process.pid)
        agent = LocalAgent(process)
        if channel is not None:
            try:
                await self._take_listener(spec, channel)
            except BaseException:
                await agent.stop(0)
                raise
        return agent

    async def _take_listener(self, spec: WorkspaceSpec, channel: socket.socket) -> None:
        """Serve the listener the launcher opened inside the workspace's network namespace.
        Nothing handed over means the launcher failed: its exit and its log line say why."""
        try:
            listener = await asyncio.to_thread(_receive_listener, channel, HANDOVER_TIMEOUT)
        except TimeoutError:
            raise SetupError(
                f"the workspace's launcher did not open its network within {HANDOVER_TIMEOUT:.0f} s; "
                f"see {self.log_path(spec)}"
            ) from None
        finally:
            channel.close()
        if listener is None:
            log.warning("the launcher of workspace %s/%s handed over no listener", spec.owner, spec.name)
            return
        log.debug("serving the listener of workspace %s/%s: %s", spec.owner, spec.name, listener)
        assert self.add_listener is not None
        try:
            self._listeners[spec.id] = await self.add_listener(listener)
        except BaseException:
            listener.close()
            raise

    def _close_listener(self, spec: WorkspaceSpec) -> None:
        listener = self._listeners.pop(spec.id, None)
        if listener is not None:
            listener.close()

    # ---- stop and delete ----------------------------------------------------------------------

    async def teardown(self, spec: WorkspaceSpec) -> None:
        if not self.isolate:
            self._close_listener(spec)
            await self._sweep(spec)
            return
        await self._remove_netns(spec)
        if spec.unix_user:
            await self._kill_user_processes(spec.unix_user, spec.id)

    async def _sweep(self, spec: WorkspaceSpec) -> None:
        """Without root there is no Unix user to sweep: find what is left of the workspace among
        our own processes. Sessions carry its id in their environment; the launcher, its init and
        the agent its HOME. In a user namespace, ending those ends its PID namespace (and once
        its listener is closed, nothing holds its network namespace)."""
        markers = (f"HATCHWAY_WORKSPACE_ID={spec.id}", f"HOME={self.home(spec)}")
        for _ in range(50):
            pids = await asyncio.to_thread(proc.pids_with_env, os.getuid(), *markers)
            pids = [p for p in pids if p != os.getpid()]
            if not pids:
                return
            proc.kill_pids(pids)
            await asyncio.sleep(0.05)
        raise SetupError(f"processes of the workspace survived SIGKILL: {', '.join(map(str, pids))}")

    async def _kill_user_processes(self, user: str, workspace_id: str) -> None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            return
        if pw.pw_gecos != user_marker(workspace_id):
            return  # not ours: never touch another account's processes
        for _ in range(50):
            pids = await asyncio.to_thread(proc.pids_of_uid, pw.pw_uid)
            if not pids:
                return
            proc.kill_pids(pids)
            await asyncio.sleep(0.05)
        raise SetupError(f"processes of Unix user {user} survived SIGKILL; see ps -u {user}")

    async def destroy(self, spec: WorkspaceSpec) -> None:
        await self.teardown(spec)
        if self.isolate:
            async with self._users_lock:
                for name in dict.fromkeys(
                    ([spec.unix_user] if spec.unix_user else []) + unix_user_candidates(spec.owner, spec.name, spec.id)
                ):
                    try:
                        pw = pwd.getpwnam(name)
                    except KeyError:
                        continue
                    if pw.pw_gecos != user_marker(spec.id):
                        continue
                    await self._kill_user_processes(name, spec.id)
                    done = await proc.run(self._tools.get("userdel", "userdel"), name, timeout=30)
                    if done.returncode not in (0, 6):  # 6: no such user (removed meanwhile)
                        raise SetupError(f"cannot remove Unix user {name}: {done.why()}")
                    log.info("removed Unix user %s of workspace %s/%s", name, spec.owner, spec.name)
        await asyncio.to_thread(shutil.rmtree, self.ws_dir(spec), True)


def _receive_listener(channel: socket.socket, timeout: float) -> socket.socket | None:
    """The listening socket the launcher sends (blocking: run it in a thread); ``None`` when it
    ended without sending one."""
    channel.settimeout(timeout)
    try:
        _, fds, _, _ = socket.recv_fds(channel, 1, 1)
    except TimeoutError:
        raise TimeoutError from None
    if not fds:
        return None
    for extra in fds[1:]:
        os.close(extra)
    listener = socket.socket(fileno=fds[0])
    listener.setblocking(False)
    return listener


def _reown_moved(spec: WorkspaceSpec, pw: pwd.struct_passwd, trees: list[Path]) -> None:
    """Give the workspace's user back its files when they belong to another uid: copied from
    another machine with their numeric owners, restored by numeric owner, or left by a Unix
    user deleted and recreated (see :mod:`hatchway.providers.reown`)."""
    user = Owner(pw.pw_uid, pw.pw_gid)
    try:
        done = [r for r in (reown_tree(tree, user) for tree in trees) if r is not None]
    except OSError as exc:
        raise SetupError(
            f"cannot give the workspace's files, which belong to another uid (moved or restored from another "
            f"machine?), to its Unix user {pw.pw_name} ({user}): {exc}. Fix what the error names, then start the "
            "workspace again: it re-owns what is left"
        ) from None
    if done:
        why = "after a move from another machine, a restore by numeric owner or a recreated Unix user"
        log.info("workspace %s/%s: %s", spec.owner, spec.name, reowned_note(done, pw.pw_name, user, why))
    devices = devices_note(done, pw.pw_name)
    if devices is not None:
        log.warning("workspace %s/%s: %s", spec.owner, spec.name, devices)


#: The launcher runs with privileges the workspace user lacks (root, or the server's own user
#: before the data dir is hidden), in the user's home: -I keeps that directory and every
#: PYTHON* variable away from its imports.
NSLAUNCH = (sys.executable, "-I", "-m", "hatchway.providers.nslaunch")


def launcher_env(plan: dict[str, Any], agent_env: dict[str, str]) -> dict[str, str]:
    """The environment of the launch chain (``sh``, ``ip``, ``unshare``, ``tini``, nslaunch,
    and sshd): fixed, with none of the workspace's variables, which are the user's to choose
    (``LD_PRELOAD`` into a process with privileges is theirs no longer). The agent's own
    environment travels in the plan, applied only once privileges are dropped."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        # not argv: keeps ps readable; removed before anything else runs
        PLAN_ENV: json.dumps({**plan, "env": agent_env}),
    }


def members_refused(why: str, hint: str, member: str | None = None) -> str:
    """Why a member may not own a local workspace on a server that cannot isolate one: it would
    run as the server's own user, who can read the deployment secret and the database (every
    user's private key, every session). A site manager is trusted with the deployment already.

    ``member`` names the member when a site manager asked for them: the way out is then theirs
    to take, not a site manager's to be asked for."""
    way_out = (
        f"To give {quoted(member)} one, {hint}, or create theirs on another provider" if member is not None
        else f"Ask a site manager to {hint}, or to give you a workspace on another provider"
    )
    return (
        f"local workspaces on this server are not isolated: {why}; one would run as the server's own user, "
        f"with its access to the deployment's secrets and database, so only a site manager may own one. {way_out}"
    )


def isolation_override() -> bool | None:
    """``HATCHWAY_LOCAL_ISOLATION=off`` runs local workspaces unisolated (shared network, no
    namespaces, no Unix users) whether the server is root or not: to debug the provider, or
    where namespaces misbehave (some containers). Unset or ``auto``: a root server isolates with
    Unix users and named namespaces; a server that is not root uses user namespaces where the
    kernel allows them, else the same unisolated fallback."""
    value = os.environ.get("HATCHWAY_LOCAL_ISOLATION", "auto").strip().lower()
    if value in ("off", "0", "no", "false"):
        return False
    return None


def _mode_of(path: str) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _passthrough_targets(ws_dir: Path) -> list[str]:
    """What the workspace user must reach: its own directory, the interpreter, and every
    directory Python imports from (the venv, the standard library, this package)."""
    targets = {str(ws_dir), str(Path(sys.executable).resolve().parent), str(Path(hatchway.__file__).resolve().parent)}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            targets.add(str(Path(entry).resolve()))
    return sorted(targets)


def _cover_targets(ws_dir: Path) -> set[str]:
    """What must stay reachable through the tmpfs covers of a workspace's mount namespace."""
    targets = set(_passthrough_targets(ws_dir.resolve()))
    return targets | {str(Path(sys.executable).parent.resolve()), str(Path(sys.prefix).resolve())}


def spec_from_row(ws: Any) -> WorkspaceSpec:
    """A :class:`WorkspaceSpec` from a ``Workspace`` row (with its owner loaded)."""
    return WorkspaceSpec(
        id=ws.id,
        name=ws.name,
        owner=ws.owner.username,
        env=dict(ws.env or {}),
        owner_role=ws.owner.role,
        openssh=bool(getattr(ws, "openssh", False)),
        unix_user=getattr(ws, "unix_user", None),
        image=getattr(ws, "image", None),
        cvm=bool(getattr(ws, "cvm", False)),
        docker_host=getattr(ws.provider, "docker_host", None),
        docker_network=getattr(ws.provider, "docker_network", None),
    )
