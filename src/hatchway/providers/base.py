"""What a workspace provider must do so the server can keep workspaces' agents running.

The server's supervisor (``hatchway.providers.supervisor``) owns the life cycle — desired state,
restarts with backoff, token rotation, the state people see — and asks a provider only for the
mechanics: set up the workspace's operating-system objects, launch its agent, stop it, remove it.
A container or Kubernetes provider implements the same four steps with its own objects, and the
supervisor does not change.
"""

from __future__ import annotations

import abc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path


class SetupError(Exception):
    """The workspace cannot be set up and retrying will not help until a person acts.

    The message is shown as the workspace's ``state_reason``: it says what is wrong and what to
    do about it (install a package, free a name, run the server as root...).
    """


@dataclass(frozen=True)
class WorkspaceSpec:
    """Everything a provider may use about a workspace, copied out of its database row so the
    provider never holds a database session."""

    id: str
    name: str
    owner: str
    env: dict[str, str] = field(default_factory=dict)
    #: The owner's role: a provider that cannot isolate a workspace from the server itself
    #: (``local`` without namespaces) starts only a site manager's. Unknown counts as a member.
    owner_role: str = "member"
    openssh: bool = False
    unix_user: str | None = None  # chosen on the first start and kept on the row
    # Container providers (``docker``): the image, systemd as PID 1, and the provider's engine.
    image: str | None = None
    cvm: bool = False
    docker_host: str | None = None
    docker_network: str | None = None


@dataclass(frozen=True)
class Prepared:
    """The result of setting a workspace up, ready to launch its agent."""

    unix_user: str
    home: str
    #: One sentence on how this workspace is isolated, or what isolation could not be set up
    #: and why; shown by ``hatchway workspaces show``.
    isolation: str
    #: The URL the agent uses to reach this server from where it runs.
    agent_url: str


class RunningAgent(abc.ABC):
    """A launched agent (with whatever wraps it: namespaces, init, sshd)."""

    pid: int

    @abc.abstractmethod
    async def wait(self) -> int:
        """Wait until it exits; its exit status (negative: killed by that signal)."""

    @abc.abstractmethod
    async def stop(self, grace: float) -> int:
        """Ask it to stop, kill it after ``grace`` seconds, and reap everything it started."""


class WorkspaceProvider(abc.ABC):
    kind: str

    async def startup(self) -> None:
        """Called once when the server starts, before any workspace is started."""

    async def shutdown(self) -> None:
        """Called once when the server stops, after every agent was stopped."""

    @abc.abstractmethod
    async def prepare(self, spec: WorkspaceSpec) -> Prepared:
        """Create (or reuse) the workspace's user, home, namespaces; idempotent.
        Raises :class:`SetupError` when a person must act first."""

    @abc.abstractmethod
    async def launch(self, spec: WorkspaceSpec, prepared: Prepared, agent_token: str) -> RunningAgent:
        """Start the agent. ``agent_token`` must reach it through its environment only: never
        argv (every local user can read every command line), never a log."""

    @abc.abstractmethod
    async def teardown(self, spec: WorkspaceSpec) -> None:
        """After the agent stopped: remove what only a running workspace needs (namespaces)
        and make sure nothing of it is left running. The user and home stay."""

    @abc.abstractmethod
    async def destroy(self, spec: WorkspaceSpec) -> None:
        """Delete: teardown, then remove the user, the home and every file of the workspace."""

    async def image_environment(self, spec: WorkspaceSpec) -> dict[str, str]:
        """The variables the workspace's image defines (Docker ENV), read once when the workspace
        is created; raises :class:`SetupError` when the image cannot be read."""
        return {}

    def log_tail(self, spec: WorkspaceSpec) -> str:
        """The last meaningful line the agent (or what wraps it) logged, for failure reasons."""
        return ""

    def log_path(self, spec: WorkspaceSpec) -> str | None:
        return None


#: An agent log bigger than this is moved to ``<log>.1`` before the next start.
LOG_MAX_BYTES = 2 * 1024 * 1024


def open_agent_log(path: str, label: str) -> int:
    """Open (rotating once when large) a workspace agent's log for appending, 0600, with a line
    marking this start; returns the fd. Blocking: call it in a thread."""
    log = Path(path)
    try:
        if log.stat().st_size > LOG_MAX_BYTES:
            os.replace(log, log.with_name(log.name + ".1"))
    except FileNotFoundError:
        pass
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.write(fd, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting the agent of {label}\n".encode())
    return fd
