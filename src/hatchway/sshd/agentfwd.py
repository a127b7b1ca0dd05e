"""Agent forwarding for one session (``ssh -A``).

The session that asked gets ``SSH_AUTH_SOCK`` pointing at a socket of its own (mode 0600, in a
fresh 0700 directory, like OpenSSH's ``/tmp/ssh-XXXXXXXXXX/agent.<pid>``); other sessions of the
same connection do not. Every connection to it becomes an ``auth-agent@openssh.com`` channel to
the client, which relays it to the agent on the developer's machine, so ``ssh-add -L``, ``git``
over SSH and onward ``ssh`` all use the developer's keys without copying them. The socket and
its directory are removed when the session ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from hatchway.sshd.forward import (
    Bridge,
    Listener,
    in_thread_owned,
    listen_unix,
    make_private_dir,
    remove_private_dir,
)

log = logging.getLogger("hatchway.sshd")

Inbound = Callable[[str, Callable[[Bridge], Awaitable[object]]], "Bridge | None"]


class AgentForward:
    """The agent socket of one session."""

    def __init__(self, *, label: str, inbound: Inbound,
                 open_channel: Callable[[Bridge], Awaitable[object]],
                 track_task: Callable[[asyncio.Task[None]], None]) -> None:
        self.label = label
        self._inbound = inbound
        self._open_channel = open_channel
        self._track_task = track_task
        self.path: str | None = None
        self.listener: Listener | None = None

    async def start(self) -> bool:
        directory = await in_thread_owned(remove_private_dir, make_private_dir, "ssh-")
        path = os.path.join(directory, f"agent.{os.getpid()}")
        try:
            self.listener = await listen_unix(
                path, self._accepted, mode=0o600,
                extra_cleanup=lambda: remove_private_dir(directory), track_task=self._track_task,
            )
        except OSError as exc:
            log.warning("%s: agent forwarding: cannot listen on %s: %s", self.label, path, exc)
            await asyncio.to_thread(remove_private_dir, directory)
            return False
        except BaseException:
            await asyncio.shield(asyncio.to_thread(remove_private_dir, directory))
            raise
        self.path = path
        log.debug("%s: agent socket %s", self.label, path)
        return True

    def _accepted(self, peer: object) -> Bridge | None:
        return self._inbound(f"{self.label} agent", self._open_channel)

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
