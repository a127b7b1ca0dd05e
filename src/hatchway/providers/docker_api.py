"""What the ``docker`` provider sends to and reads from the Docker Engine API (pure).

Every request body, name, label and answer the provider deals with is shaped or parsed here,
without I/O, so it can be tested exhaustively; :mod:`hatchway.providers.docker_client` only moves
these bodies over the engine's Unix socket and :mod:`hatchway.providers.docker` decides when.

A workspace is three engine objects, all labelled as Hatchway's (``hatchway.managed=true`` plus
the workspace id, owner and name), so they are found by label and cleaned up on delete:

* a **container** ``hatchway-<owner>-<name>-<id8>`` in its own network namespace. Its PID 1 is
  Hatchway's small init (plain workspaces) or ``/sbin/init`` — systemd — (``--cvm``);
* a **volume** ``hatchway-<owner>-<name>-<id8>-home`` mounted on the workspace user's home, so the
  home survives stop/start (and even the container being re-created);
* the agent, run by ``exec`` inside the container as the workspace user, with the agent runtime
  bind-mounted read-only at :data:`RUNTIME_ROOT` (see :mod:`hatchway.providers.docker_runtime`).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: API versions this client speaks: 1.41 is Docker 20.10 (Debian 12's docker.io); newer engines
#: accept it as long as they still support it, and we ask for theirs when it is lower than ours.
MIN_API = (1, 41)
MAX_API = (1, 45)
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

LABEL_MANAGED = "hatchway.managed"
LABEL_ID = "hatchway.workspace.id"
LABEL_OWNER = "hatchway.workspace.owner"
LABEL_NAME = "hatchway.workspace.name"
LABEL_ROLE = "hatchway.role"

#: Where the agent runtime appears inside every workspace container (read-only bind mounts).
RUNTIME_ROOT = "/opt/hatchway"
RUNTIME_DIR = f"{RUNTIME_ROOT}/runtime"
STDLIB_DIR = f"{RUNTIME_ROOT}/stdlib"
DYNLOAD_DIR = f"{RUNTIME_ROOT}/dynload"
#: Import directories of the server (its ``hatchway`` package, its site-packages), in order.
PATH_SLOTS = 4
#: The command prefix that runs the bundled interpreter in any image: its own dynamic loader and
#: libraries (``--library-path`` applies to this process only, never to the shells it starts).
RUNTIME_PYTHON = [
    f"{RUNTIME_DIR}/ld.so", "--library-path", f"{RUNTIME_DIR}/lib", f"{RUNTIME_DIR}/bin/python",
    "-I", "-S", f"{RUNTIME_DIR}/boot.py",
]
INCONTAINER = "hatchway.providers.docker_incontainer"

#: What systemd needs to run as PID 1 in a container (as Podman's --systemd=always does).
CVM_TMPFS = {"/run": "rw,nosuid,nodev,mode=755", "/run/lock": "rw,nosuid,nodev,noexec", "/tmp": "rw,nosuid,nodev"}
CVM_STOP_SIGNAL = "SIGRTMIN+3"  # systemd's "halt" signal; SIGTERM would re-exec it
PLAIN_STOP_TIMEOUT = 10
CVM_STOP_TIMEOUT = 20


class DockerHostError(ValueError):
    pass


def parse_docker_host(value: str | None) -> str:
    """The path of the engine's Unix socket from a ``DOCKER_HOST``-style URL.

    Only Unix sockets are supported: the provider bind-mounts the agent runtime from this
    machine and listens inside each container's network namespace, so the engine must run here.
    """
    host = (value or "").strip() or DEFAULT_DOCKER_HOST
    if host.startswith(("unix://", "/")):
        # A bare path is held to what a unix:// one is: no NUL, short enough for a socket address.
        path = host.removeprefix("unix://")
        if path.startswith("/") and "\0" not in path and len(path.encode("utf-8", "surrogatepass")) < 108:
            return path
        raise DockerHostError(f"invalid Docker host {host!r}: use unix:///absolute/path/to/docker.sock")
    scheme = host.split("://", 1)[0] if "://" in host else host
    raise DockerHostError(
        f"Docker host {host!r} is not supported: the docker provider needs the engine on the server's own "
        f"machine, reached through its Unix socket (unix:///var/run/docker.sock), not {scheme}"
    )


def _version_tuple(v: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)", v.strip())
    if not m:
        raise ValueError(f"not an API version: {v!r}")
    return int(m.group(1)), int(m.group(2))


def negotiate_api_version(server_version: str, server_min: str | None = None) -> str:
    """The API version to put in every path: the engine's own when it is lower than ours."""
    server = _version_tuple(server_version)
    if server < MIN_API:
        raise ValueError(
            f"the Docker engine speaks API {server_version}; Hatchway needs {MIN_API[0]}.{MIN_API[1]} "
            "or later (Docker 20.10+)"
        )
    chosen = min(server, MAX_API)
    if server_min and _version_tuple(server_min) > chosen:
        raise ValueError(f"the Docker engine no longer supports API {chosen[0]}.{chosen[1]} (its minimum is {server_min})")
    return f"{chosen[0]}.{chosen[1]}"


# ---- names and labels -------------------------------------------------------------------------


def _slug(text: str, limit: int) -> str:
    s = re.sub(r"[^a-z0-9_.-]+", "-", text.lower()).strip("-.")
    return s[:limit].rstrip("-.") or "x"


def container_name(owner: str, name: str, workspace_id: str) -> str:
    """Readable in ``docker ps`` and unique (the workspace id's start), valid for the engine."""
    return f"hatchway-{_slug(owner, 32)}-{_slug(name, 63)}-{workspace_id[:8]}"


def volume_name(owner: str, name: str, workspace_id: str) -> str:
    return container_name(owner, name, workspace_id) + "-home"


def labels(workspace_id: str, owner: str, name: str, role: str) -> dict[str, str]:
    return {LABEL_MANAGED: "true", LABEL_ID: workspace_id, LABEL_OWNER: owner, LABEL_NAME: name, LABEL_ROLE: role}


def label_filter(workspace_id: str) -> dict[str, list[str]]:
    """The ``filters`` query value selecting one workspace's objects (JSON-encode it)."""
    return {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_ID}={workspace_id}"]}


def workspace_user_name(owner: str) -> str:
    """The workspace's account in the container: the owner's Hatchway username (a valid Unix name)."""
    return owner


def home_of(user: str) -> str:
    return f"/home/{user}"


# ---- images -----------------------------------------------------------------------------------

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def image_env(inspect: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """The image's own ENV (``Config.Env`` of ``GET /images/{name}/json``) as a dict, and the
    entries that cannot be a workspace variable (bad name, newline or NUL) for the log."""
    env: dict[str, str] = {}
    dropped: list[str] = []
    for item in (inspect.get("Config") or {}).get("Env") or []:
        name, sep, value = str(item).partition("=")
        if not sep or not _ENV_NAME.fullmatch(name) or "\n" in value or "\r" in value or "\0" in value:
            dropped.append(name or str(item)[:40])
            continue
        env[name] = value
    return env, dropped


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "i686": "386", "i386": "386", "riscv64": "riscv64"}


def docker_arch(machine: str) -> str:
    """``platform.machine()`` in the engine's words (``x86_64`` -> ``amd64``)."""
    return _ARCH.get(machine.lower(), machine.lower())


def env_list(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


# ---- containers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RuntimeMounts:
    """Host paths (stable: symlinks the server keeps pointing at its current Python) mounted
    read-only into every container."""

    runtime: str
    stdlib: str
    dynload: str
    paths: tuple[str, ...] = field(default_factory=tuple)  # exactly PATH_SLOTS entries
    #: Which build ``runtime`` points at (a container started earlier may still mount another).
    key: str = ""


@dataclass(frozen=True)
class ContainerPlan:
    workspace_id: str
    owner: str
    name: str
    image: str
    cvm: bool
    env: dict[str, str]
    user: str
    volume: str
    network: str
    runtime: RuntimeMounts
    #: The engine's cgroup version ("1" or "2"); only matters for --cvm.
    cgroup_version: str = "2"


def runtime_mounts(rt: RuntimeMounts) -> list[dict[str, Any]]:
    if len(rt.paths) != PATH_SLOTS:
        raise ValueError(f"exactly {PATH_SLOTS} import path slots are mounted, got {len(rt.paths)}")
    pairs = [(rt.runtime, RUNTIME_DIR), (rt.stdlib, STDLIB_DIR), (rt.dynload, DYNLOAD_DIR)]
    pairs += [(src, f"{RUNTIME_ROOT}/path{i}") for i, src in enumerate(rt.paths)]
    return [{"Type": "bind", "Source": src, "Target": dst, "ReadOnly": True} for src, dst in pairs]


def container_create_body(plan: ContainerPlan) -> dict[str, Any]:
    """The body of ``POST /containers/create``.

    Both kinds replace the image's ENTRYPOINT/CMD: a workspace's PID 1 is an init, and the agent
    comes in by ``exec``. ``--cvm`` runs systemd with what it needs in a container: tmpfs on
    /run, /run/lock and /tmp, ``container=docker``, SIGRTMIN+3 to stop, and a private cgroup
    namespace. Docker mounts its cgroups read-only; the server makes them writable from the host
    (:mod:`hatchway.providers.cgroup_rw`) while the in-container shim waits to exec
    ``/sbin/init``. No process of the container holds CAP_SYS_ADMIN: not the shim (which the
    image's LD_PRELOAD or /etc/ld.so.preload reach), not what ``docker exec`` starts.
    """
    mounts = [{"Type": "volume", "Source": plan.volume, "Target": home_of(plan.user)}] + runtime_mounts(plan.runtime)
    # The dynamic loader's variables of the workspace (LD_PRELOAD=~/x.so) would be loaded into
    # every root process of the container (its init, Hatchway's set-up): they reach the user's
    # sessions only, through the agent. The image's own stay, as Docker keeps its ENV.
    env = {k: v for k, v in plan.env.items() if not k.startswith("LD_")}
    host_config: dict[str, Any] = {
        "Mounts": mounts,
        "NetworkMode": plan.network,
        "RestartPolicy": {"Name": "no"},  # the server's supervisor decides what runs
        "Init": False,
    }
    body: dict[str, Any] = {
        "Image": plan.image,
        "Hostname": plan.name[:63],
        "Labels": labels(plan.workspace_id, plan.owner, plan.name, "workspace"),
        "Entrypoint": RUNTIME_PYTHON[:1],
        "Cmd": RUNTIME_PYTHON[1:] + [INCONTAINER, "cvm-init" if plan.cvm else "init"],
        "Env": env_list(env),
        "WorkingDir": "/",
        "User": "0:0",
        "Tty": False,
        "OpenStdin": False,
        "AttachStdin": False,
        "AttachStdout": False,
        "AttachStderr": False,
        "StopTimeout": CVM_STOP_TIMEOUT if plan.cvm else PLAIN_STOP_TIMEOUT,
        "HostConfig": host_config,
    }
    if plan.cvm:
        env.setdefault("container", "docker")
        body["Env"] = env_list(env)
        body["StopSignal"] = CVM_STOP_SIGNAL
        host_config["Tmpfs"] = dict(CVM_TMPFS)
        host_config["CgroupnsMode"] = "private"
    return body


def volume_create_body(plan: ContainerPlan) -> dict[str, Any]:
    return {"Name": plan.volume, "Labels": labels(plan.workspace_id, plan.owner, plan.name, "home")}


def exec_create_body(
    cmd: list[str], *, user: str = "0:0", env: dict[str, str] | None = None, workdir: str | None = None,
    stdin: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "Cmd": cmd,
        "User": user,
        "AttachStdin": stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": False,
        "Env": env_list(env or {}),
    }
    if workdir:
        body["WorkingDir"] = workdir
    return body


def runtime_command(*args: str) -> list[str]:
    """A command run by the bundled interpreter inside the container."""
    return RUNTIME_PYTHON + [INCONTAINER, *args]


# ---- answers ----------------------------------------------------------------------------------

STDOUT, STDERR = 1, 2


class FrameDecoder:
    """Splits the engine's multiplexed attach stream (8-byte headers: stream, 0, 0, 0, big-endian
    length) into ``(stream, payload)`` pairs, whatever the chunking of the bytes that arrive."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 8:
            stream = self._buf[0]
            (size,) = struct.unpack(">I", bytes(self._buf[4:8]))
            if len(self._buf) < 8 + size:
                break
            out.append((stream, bytes(self._buf[8 : 8 + size])))
            del self._buf[: 8 + size]
        return out

    @property
    def pending(self) -> int:
        return len(self._buf)


def frame(stream: int, payload: bytes) -> bytes:
    """One frame as the engine writes it (for tests and symmetry)."""
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


def engine_message(status: int, body: bytes | str | dict[str, Any] | None) -> str:
    """The engine's error text (``{"message": ...}``), else the status."""
    import json

    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body or "null")
        except ValueError:
            text = body.decode(errors="replace") if isinstance(body, bytes) else body
            return text.strip()[:500] or f"HTTP {status}"
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"]).strip()
    return f"HTTP {status}"


def start_error_hint(message: str, plan_cvm: bool) -> str:
    """A sentence people can act on for a container that will not start."""
    low = message.lower()
    if plan_cvm and ("/sbin/init" in low or "no such file" in low and "init" in low):
        return "the image has no /sbin/init: --cvm needs an image with systemd (see docs/images/openssh/Dockerfile)"
    if "exec format error" in low:
        return "the image is for another CPU architecture than this server"
    if "bind source path does not exist" in low or "invalid mount config" in low:
        return f"the agent runtime mounted into the container is missing on the server ({message}); restart the server"
    return message


def running(inspect: dict[str, Any]) -> bool:
    return bool((inspect.get("State") or {}).get("Running"))


def container_pid(inspect: dict[str, Any]) -> int:
    return int((inspect.get("State") or {}).get("Pid") or 0)


def systemd_state_ready(output: str) -> bool | None:
    """``systemctl is-system-running``: True when booted (running/degraded), False while booting
    ("offline" too: right after the exec of /sbin/init systemd does not answer yet), None when it
    will not come up by itself (maintenance, stopping)."""
    state = output.strip().splitlines()[-1].strip() if output.strip() else ""
    if state in ("running", "degraded"):
        return True
    if state in ("initializing", "starting", "offline", ""):
        return False
    return None


def made_as_planned(inspect: dict[str, Any], plan: ContainerPlan) -> bool:
    """Whether an existing container was created with the mounts and capabilities this plan
    needs (an older server may have used other ones, such as CAP_SYS_ADMIN for ``--cvm``; such a
    container is re-created, keeping the home volume)."""
    body = container_create_body(plan)
    want = {(m["Target"], m.get("Source")) for m in body["HostConfig"]["Mounts"]}
    have: set[tuple[str, str | None]] = set()
    for m in inspect.get("Mounts") or []:
        src = m.get("Name") if m.get("Type") == "volume" else m.get("Source")
        have.add((m.get("Destination"), src))
    caps = (inspect.get("HostConfig") or {}).get("CapAdd") or []
    return want <= have and sorted(caps) == sorted(body["HostConfig"].get("CapAdd") or [])


def sole(items: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    items = list(items)
    return items[0] if items else None
