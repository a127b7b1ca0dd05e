"""The ``docker`` provider: workspaces as containers of a Docker engine on the server's machine.

Per workspace (see :mod:`hatchway.providers.docker_api` for the exact engine objects)::

    container hatchway-<owner>-<name>-<id8>      from the image given at creation (--image)
      own network namespace                      the server listens on ITS 127.0.0.1:<port>
      PID 1: Hatchway's init | systemd (--cvm)
      /home/<user>  <- volume ...-home           persistent across stop/start
      /opt/hatchway <- agent runtime (ro)        the server's Python, see docker_runtime
      exec (as <user>): hatchway agent --url http://127.0.0.1:<port> --ssh-port 22

* **Network.** The container has its own network namespace (``--docker-network``, default
  ``none``: only its own loopback). As for local workspaces, the server opens a listening socket
  *inside* that namespace (through ``/proc/<container pid>/ns/net``), so the agent reaches
  ``http://127.0.0.1:<server port>`` whatever the container's network is, no address, route or
  port publishing is needed, and port 22 as the agent sees it is the container's own.
* **User.** The owner's username (``hw-<name>`` when the image has it as a system account),
  created by the in-container ``setup`` step as the image's own accounts are (no ``useradd``
  needed), with the home on the workspace's volume.
* **Agent.** Started with ``exec`` as that user with the token in the exec's environment only (not
  in the container's configuration, not in argv), its stdin and output attached to the server:
  output goes to ``<data dir>/docker/workspaces/<id>/agent.log``; closing stdin stops it (the
  engine cannot signal an exec'd process). The supervisor restarts it when it dies, as for
  every provider.
* **CVM** (``--cvm``): systemd is PID 1 (what Podman calls ``--systemd=always``), so an image
  with ``systemctl enable ssh`` runs OpenSSH on the container's port 22, and the agent forwards
  SSH connections to it. The agent waits until systemd has booted.
* **Stop** stops the container (the writable layer and the home volume stay); **delete** removes
  the container and its volume (found by label).

The engine must run on the server's machine (``unix://`` Docker host): its containers mount
this machine's paths, and the server enters their network namespaces, which needs root.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from hatchway.providers import docker_api as api
from hatchway.providers import netns as nsutil
from hatchway.providers import proc
from hatchway.providers.base import (
    Prepared,
    RunningAgent,
    SetupError,
    WorkspaceProvider,
    WorkspaceSpec,
    open_agent_log,
)
from hatchway.providers.docker_client import AttachedExec, DockerClient, EngineError
from hatchway.providers.docker_runtime import ensure_runtime

log = logging.getLogger("hatchway.providers.docker")

SYSTEMD_BOOT_TIMEOUT = 90.0
#: "offline" (systemd does not answer) for this long means it is not coming: go on without it.
SYSTEMD_OFFLINE_TIMEOUT = 15.0
#: How long entering a CVM container to make its cgroups writable may take (a few ms normally).
CGROUP_RW_TIMEOUT = 20
DEFAULT_NETWORK = "none"


class Closable(Protocol):
    def close(self) -> None: ...


class DockerAgent(RunningAgent):
    """The agent exec'd in a container, with its stdin and output attached to the server."""

    def __init__(self, attached: AttachedExec, log_path: Path, pid: int) -> None:
        self.attached = attached
        self.pid = pid
        self._log_path = log_path
        self._pump = asyncio.create_task(self._copy_output(), name=f"docker-agent-log-{pid}")
        self._code: int | None = None

    async def _copy_output(self) -> None:
        fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            async for _stream, data in self.attached.frames():
                await asyncio.to_thread(os.write, fd, data)
        finally:
            os.close(fd)

    async def wait(self) -> int:
        if self._code is not None:
            return self._code
        await asyncio.shield(self._pump)
        code = None
        for _ in range(20):  # the engine records the exit code a moment after the stream ends
            try:
                code = await self.attached.exit_code()
            except SetupError:
                break
            if code is not None:
                break
            await asyncio.sleep(0.1)
        await self.attached.aclose()
        self._code = code if code is not None else -1
        return self._code

    async def stop(self, grace: float) -> int:
        if self._code is None:
            self.attached.close_stdin()  # the in-container wrapper sends SIGTERM, then SIGKILL
            try:
                await asyncio.wait_for(asyncio.shield(self._pump), grace + 2)
            except TimeoutError:
                log.warning("the agent (exec pid %d) did not stop within %.0f s", self.pid, grace + 2)
                self._pump.cancel()
                await asyncio.gather(self._pump, return_exceptions=True)
                await self.attached.aclose()
                self._code = -9
                return self._code
        return await self.wait()


class DockerProvider(WorkspaceProvider):
    kind = "docker"

    def __init__(
        self,
        data_dir: Path,
        server_port: int,
        add_listener: Any,
        *,
        default_host: str | None = None,
        is_root: bool | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.server_port = server_port or 7080
        self.add_listener = add_listener
        self.default_host = default_host if default_host is not None else os.environ.get("DOCKER_HOST")
        self.is_root = (os.geteuid() == 0) if is_root is None else is_root
        self._clients: dict[str, DockerClient] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._runtime: api.RuntimeMounts | None = None
        self._runtime_lock = asyncio.Lock()
        self._listeners: dict[str, tuple[int, Closable]] = {}
        self._accounts: dict[str, dict[str, Any]] = {}

    # ---- paths and clients ----------------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        return self.data_dir / "docker"

    def ws_dir(self, spec: WorkspaceSpec) -> Path:
        return self.base_dir / "workspaces" / spec.id

    def log_path(self, spec: WorkspaceSpec) -> str:
        return str(self.ws_dir(spec) / "agent.log")

    def log_tail(self, spec: WorkspaceSpec) -> str:
        return proc.tail_meaningful_line(Path(self.log_path(spec)))

    def host_of(self, spec: WorkspaceSpec) -> str:
        return spec.docker_host or self.default_host or api.DEFAULT_DOCKER_HOST

    def client(self, spec: WorkspaceSpec) -> DockerClient:
        try:
            path = api.parse_docker_host(self.host_of(spec))
        except api.DockerHostError as exc:
            raise SetupError(str(exc)) from None
        c = self._clients.get(path)
        if c is None:
            c = self._clients[path] = DockerClient(path)
        return c

    async def _engine_info(self, client: DockerClient) -> dict[str, Any]:
        info = self._info.get(client.socket_path)
        if info is None:
            info = self._info[client.socket_path] = await client.info()
        return info

    async def shutdown(self) -> None:
        for _pid, listener in self._listeners.values():
            listener.close()
        self._listeners.clear()
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()

    # ---- creation -------------------------------------------------------------------------------

    async def image_environment(self, spec: WorkspaceSpec) -> dict[str, str]:
        if not spec.image:
            raise SetupError("a docker workspace needs an image: give --image")
        inspect = await self._image(self.client(spec), spec)
        env, dropped = api.image_env(inspect)
        if dropped:
            log.warning("image %s: ENV entries %s cannot be workspace variables; left out", spec.image, ", ".join(dropped))
        return env

    async def _image(self, client: DockerClient, spec: WorkspaceSpec) -> dict[str, Any]:
        assert spec.image
        inspect = await client.image_inspect(spec.image)
        if inspect is None:
            raise SetupError(
                f'image "{spec.image}" is not on the provider\'s Docker engine: build or pull it there, then try '
                "again (docker build / docker pull on the engine hatchway providers list shows site managers; "
                "without a registry see docs/images/openssh/build-offline)"
            )
        arch = inspect.get("Architecture")
        here = api.docker_arch(platform.machine())
        if arch and arch != here:
            raise SetupError(
                f'image "{spec.image}" is for {arch}, this server is {here}: the agent runs on the server\'s own '
                "Python inside the container, so the image must be for the server's architecture"
            )
        return inspect

    # ---- prepare ----------------------------------------------------------------------------------

    def _plan(self, spec: WorkspaceSpec, rt: api.RuntimeMounts, cgroup_version: str) -> api.ContainerPlan:
        assert spec.image
        return api.ContainerPlan(
            workspace_id=spec.id,
            owner=spec.owner,
            name=spec.name,
            image=spec.image,
            cvm=spec.cvm,
            env=dict(spec.env),
            user=api.workspace_user_name(spec.owner),
            volume=api.volume_name(spec.owner, spec.name, spec.id),
            network=spec.docker_network or DEFAULT_NETWORK,
            runtime=rt,
            cgroup_version=cgroup_version,
        )

    async def _ensure_runtime(self) -> api.RuntimeMounts:
        async with self._runtime_lock:
            if self._runtime is None:
                started = time.monotonic()
                self._runtime = await asyncio.to_thread(ensure_runtime, self.base_dir / "agent-runtime")
                log.info("agent runtime for containers ready in %.1f s", time.monotonic() - started)
            return self._runtime

    async def prepare(self, spec: WorkspaceSpec) -> Prepared:
        if not spec.image:
            raise SetupError("this docker workspace has no image; delete it and create it again with --image")
        if not self.is_root:
            raise SetupError(
                "docker workspaces need the Hatchway server to run as root: it listens inside each container's own "
                "network namespace so the agent reaches it on the container's loopback"
            )
        if self.add_listener is None:
            raise SetupError("docker workspaces need `hatchway server` (it listens inside each container's network namespace)")
        client = self.client(spec)
        await client.ping()
        info = await self._engine_info(client)
        rt = await self._ensure_runtime()
        await self._image(client, spec)
        plan = self._plan(spec, rt, str(info.get("CgroupVersion") or "1"))
        await asyncio.to_thread(self._make_dirs, spec)
        if await client.volume_inspect(plan.volume) is None:
            await client.volume_create(api.volume_create_body(plan))
            log.info("created volume %s for workspace %s/%s", plan.volume, spec.owner, spec.name)
        inspect = await self._ensure_container(client, spec, plan)
        pid = api.container_pid(inspect)
        if spec.cvm:
            await self._wait_for_systemd(client, inspect["Id"], spec)
        try:
            await self._ensure_listener(spec, pid)
        except SetupError:
            await self._raise_if_stopped(client, inspect["Id"], "the workspace's container stopped")
            raise
        account = await self._setup_user(client, inspect["Id"], plan)
        _log_reown(spec, account.pop("reowned", None), account.pop("left_devices", None))
        self._accounts[spec.id] = {**account, "container": inspect["Id"]}
        name = inspect.get("Name", "").lstrip("/")
        isolation = (
            f"container {name} of image {spec.image}"
            + (" with systemd as PID 1 (CVM)" if spec.cvm else "")
            + f"; own network namespace (network {plan.network}; the agent reaches the server on the container's "
            f"loopback); user {account['user']} (uid {account['uid']}); home {account['home']} on volume {plan.volume}"
        )
        return Prepared(
            unix_user=account["user"], home=account["home"], isolation=isolation,
            agent_url=f"http://127.0.0.1:{self.server_port}",
        )

    def _make_dirs(self, spec: WorkspaceSpec) -> None:
        for d in (self.data_dir, self.base_dir, self.base_dir / "workspaces", self.ws_dir(spec)):
            d.mkdir(mode=0o700, exist_ok=True, parents=True)

    async def _ensure_container(self, client: DockerClient, spec: WorkspaceSpec, plan: api.ContainerPlan) -> dict[str, Any]:
        cname = api.container_name(spec.owner, spec.name, spec.id)
        inspect = await client.container_inspect(cname)
        if inspect is not None and (inspect.get("Config", {}).get("Labels") or {}).get(api.LABEL_ID) != spec.id:
            raise SetupError(f"a container named {cname} exists and is not this workspace's; remove it (docker rm {cname})")
        if inspect is not None and not api.made_as_planned(inspect, plan):
            log.warning("container %s was made by another server version; re-creating it (the home volume stays)", cname)
            await client.container_remove(inspect["Id"])
            inspect = None
        if inspect is None:
            await client.container_create(cname, api.container_create_body(plan))
            log.info("created container %s for workspace %s/%s", cname, spec.owner, spec.name)
            inspect = await client.container_inspect(cname)
            assert inspect is not None
        if api.running(inspect) and not await self._runtime_current(client, inspect["Id"], plan):
            # Started by an earlier server (one that was killed, so it did not stop its containers)
            # with another agent runtime, which is gone now: a restart mounts the current one.
            log.info("restarting container %s: it runs an older agent runtime", cname)
            await client.container_stop(inspect["Id"], api.CVM_STOP_TIMEOUT if spec.cvm else api.PLAIN_STOP_TIMEOUT)
            inspect = await client.container_inspect(inspect["Id"])
            assert inspect is not None
        if not api.running(inspect):
            try:
                await client.container_start(inspect["Id"])
            except EngineError as exc:
                raise SetupError(f"the workspace's container does not start: {api.start_error_hint(exc.engine_message, spec.cvm)}") from None
            inspect = await client.container_inspect(inspect["Id"])
            assert inspect is not None
            if spec.cvm and api.running(inspect):
                await self._make_cgroups_writable(client, inspect)
        if not api.running(inspect):
            await self._raise_if_stopped(client, inspect["Id"], "the workspace's container stopped at once")
        return inspect

    async def _make_cgroups_writable(self, client: DockerClient, inspect: dict[str, Any]) -> None:
        """What the container's systemd waits for, done from here: it has no CAP_SYS_ADMIN."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", "-m", "hatchway.providers.cgroup_rw", str(api.container_pid(inspect)),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, cwd="/",
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), CGROUP_RW_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            err = b"it did not finish within %d s" % CGROUP_RW_TIMEOUT
        if proc.returncode != 0:
            await self._raise_if_stopped(client, inspect["Id"], "the CVM container stopped while starting")
            why = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            raise SetupError(f"cannot make the CVM container's cgroup file systems writable for systemd: {why[0]}")

    async def _runtime_current(self, client: DockerClient, ref: str, plan: api.ContainerPlan) -> bool:
        try:
            done = await client.exec_run(ref, api.runtime_command("key"), timeout=30)
        except SetupError:
            return False
        return done.exit_code == 0 and done.stdout.strip() == plan.runtime.key

    async def _container_logs(self, client: DockerClient, ref: str) -> str:
        try:
            r = await client.request("GET", f"/containers/{ref}/logs", params={"stdout": "1", "stderr": "1", "tail": "20"})
        except SetupError:
            return ""
        text = b"".join(data for _s, data in api.FrameDecoder().feed(r.content)).decode(errors="replace")
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        chosen = next((ln for ln in reversed(lines) if ln.startswith("hatchway:")), lines[-1] if lines else "")
        return chosen[:300]

    async def _wait_for_systemd(self, client: DockerClient, ref: str, spec: WorkspaceSpec) -> None:
        """An exec right after the start may find systemd still booting: wait until it is up."""
        started = time.monotonic()
        deadline = started + SYSTEMD_BOOT_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            await self._raise_if_stopped(client, ref, "the CVM container stopped while systemd was booting")
            try:
                done = await client.exec_run(ref, ["systemctl", "is-system-running"], timeout=15)
            except EngineError as exc:
                if "executable file not found" in exc.engine_message or "no such file" in exc.engine_message.lower():
                    raise SetupError("--cvm needs systemd in the image (no systemctl found); see docs/images/openssh/Dockerfile") from None
                last = exc.engine_message
                await asyncio.sleep(0.25)
                continue
            last = (done.stdout or done.stderr).strip()
            ready = api.systemd_state_ready(done.stdout)
            if ready:
                log.info("workspace %s/%s: systemd booted in %.1f s", spec.owner, spec.name, time.monotonic() - started)
                return
            if ready is None or (last == "offline" and time.monotonic() - started > SYSTEMD_OFFLINE_TIMEOUT):
                await self._raise_if_stopped(client, ref, "the CVM container stopped while systemd was booting")
                log.warning("workspace %s/%s: systemd says %r; starting the agent anyway", spec.owner, spec.name, last)
                return
            await asyncio.sleep(0.25)
        log.warning("workspace %s/%s: systemd still booting after %.0f s (%s); starting the agent anyway",
                    spec.owner, spec.name, SYSTEMD_BOOT_TIMEOUT, last)

    async def _raise_if_stopped(self, client: DockerClient, ref: str, what: str) -> None:
        inspect = await client.container_inspect(ref)
        if inspect is None or not api.running(inspect):
            logs = await self._container_logs(client, ref)
            code = (inspect or {}).get("State", {}).get("ExitCode")
            raise SetupError(f"{what} (exit status {code})" + (f": {logs}" if logs else ""))

    async def _ensure_listener(self, spec: WorkspaceSpec, pid: int) -> None:
        current = self._listeners.get(spec.id)
        if current is not None and current[0] == pid:
            return
        self._close_listener(spec)
        try:
            # An absolute path: netns joins it as it does /run/netns/<name>.
            sock = await nsutil.listen_in_netns(f"/proc/{pid}/ns/net", "127.0.0.1", self.server_port)
        except OSError as exc:
            raise SetupError(f"cannot listen inside the container's network namespace: {exc}") from None
        self._listeners[spec.id] = (pid, await self.add_listener(sock))

    def _close_listener(self, spec: WorkspaceSpec) -> None:
        current = self._listeners.pop(spec.id, None)
        if current is not None:
            current[1].close()

    async def _setup_user(self, client: DockerClient, ref: str, plan: api.ContainerPlan) -> dict[str, Any]:
        cmd = api.runtime_command("setup", "--name", plan.user, "--home", api.home_of(plan.user))
        try:
            done = await client.exec_run(ref, cmd, timeout=60)
        except EngineError as exc:
            raise SetupError(f"cannot run the agent runtime in the container: {api.start_error_hint(exc.engine_message, plan.cvm)}") from None
        if done.exit_code != 0:
            lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip()]
            why = next((ln for ln in reversed(lines) if ln.startswith("hatchway:")), lines[-1] if lines else f"exit status {done.exit_code}")
            raise SetupError(f"setting up the workspace user in the container failed: {why.removeprefix('hatchway: ')}")
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise SetupError(f"setting up the workspace user in the container gave no answer: {done.stderr.strip()[-300:]}") from None

    # ---- launch -----------------------------------------------------------------------------------

    def _open_log(self, spec: WorkspaceSpec) -> None:
        os.close(open_agent_log(self.log_path(spec), f"{spec.owner}/{spec.name}"))

    async def launch(self, spec: WorkspaceSpec, prepared: Prepared, agent_token: str) -> RunningAgent:
        account = self._accounts.get(spec.id)
        if account is None:
            raise SetupError("the workspace was not set up before its agent was started")
        client = self.client(spec)
        env = {
            "HOME": account["home"],
            "USER": account["user"],
            "LOGNAME": account["user"],
            "SHELL": account["shell"],
            "HATCHWAY_AGENT_TOKEN": agent_token,
        }
        cmd = api.runtime_command("agent", "--url", prepared.agent_url, "--ssh-port", "22")
        body = api.exec_create_body(cmd, user=f"{account['uid']}:{account['gid']}", env=env, workdir=account["home"], stdin=True)
        await asyncio.to_thread(self._open_log, spec)
        attached = await client.exec_attach(account["container"], body)
        log.info("started the agent of workspace %s/%s in its container (exec %s)", spec.owner, spec.name, attached.exec_id[:12])
        return DockerAgent(attached, Path(self.log_path(spec)), 0)

    # ---- stop and delete ---------------------------------------------------------------------------

    async def teardown(self, spec: WorkspaceSpec) -> None:
        self._close_listener(spec)
        self._accounts.pop(spec.id, None)
        if not spec.image:
            return
        client = self.client(spec)
        for c in await client.containers(api.label_filter(spec.id)):
            if c.get("State") == "running":
                await client.container_stop(c["Id"], api.CVM_STOP_TIMEOUT if spec.cvm else api.PLAIN_STOP_TIMEOUT)
                log.info("stopped container %s of workspace %s/%s", (c.get("Names") or ["?"])[0].lstrip("/"), spec.owner, spec.name)

    async def destroy(self, spec: WorkspaceSpec) -> None:
        self._close_listener(spec)
        self._accounts.pop(spec.id, None)
        client = self.client(spec)
        for c in await client.containers(api.label_filter(spec.id)):
            await client.container_remove(c["Id"])
            log.info("removed container %s of workspace %s/%s", (c.get("Names") or ["?"])[0].lstrip("/"), spec.owner, spec.name)
        for v in await client.volumes(api.label_filter(spec.id)):
            await client.volume_remove(v["Name"])
            log.info("removed volume %s of workspace %s/%s", v["Name"], spec.owner, spec.name)
        await asyncio.to_thread(shutil.rmtree, self.ws_dir(spec), True)


def _log_reown(spec: WorkspaceSpec, reowned: str | None, left_devices: str | None) -> None:
    """Log what the in-container set-up said of re-owning a home volume of another uid
    (:func:`hatchway.providers.docker_incontainer.own_home`), as the local provider logs its own."""
    if reowned is not None:
        log.info("workspace %s/%s: %s", spec.owner, spec.name, reowned)
    if left_devices is not None:
        log.warning("workspace %s/%s: %s", spec.owner, spec.name, left_devices)
