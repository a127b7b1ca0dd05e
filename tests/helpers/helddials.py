"""A real ``hatchway server`` that holds SSH connections at one exact point of their set-up.

Between the check of a client's token, workspace and policy and the stream's registration as
live (where a sign-out's or a policy change's sweep finds it), nothing sweeps a connection: the
server re-reads what it was let in on once its agent has dialled back. Holding dials there lets
a test commit a change in that window and see what the re-read makes of it.
"""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

from tests.helpers.server import RunningServer, wait_for

#: ``hatchway server`` whose dials to a workspace named "held" wait, once the client's token,
#: workspace and policy were checked and before the stream is registered as live, until the
#: process gets SIGUSR1; each sweep of live streams (what a sign-out broadcasts) is logged with
#: what it matched and how many it ended.
HELD_DIALS = r"""
import asyncio, signal, sys

from hatchway.server.relay import Relay

real_dial, real_end_sessions = Relay.dial, Relay.end_sessions


async def dial(self, stream, workspace_name, client):
    if workspace_name == "held":
        loop, released = asyncio.get_running_loop(), asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, released.set)
        print(f"dial held for session {stream.session_id}", file=sys.stderr, flush=True)
        try:
            await released.wait()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
    return await real_dial(self, stream, workspace_name, client)


async def end_sessions(self, match, reason):
    n = await real_end_sessions(self, match, reason)
    print(f"sweep of {match}: {n} ended", file=sys.stderr, flush=True)
    return n


Relay.dial, Relay.end_sessions = dial, end_sessions
sys.argv = ["hatchway", *sys.argv[1:]]
from hatchway.cli.main import main

main()
"""


class HeldDialsServer(RunningServer):
    """A real server that holds dials to "held" workspaces (see :data:`HELD_DIALS`)."""

    def spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", HELD_DIALS, *self.argv()[1:]], stdout=log, stderr=log)

    def held(self) -> list[str]:
        return re.findall(r"^dial held for session (\w+)$", self.log(), re.M)

    def sweeps(self) -> list[str]:
        return [line for line in self.log().splitlines() if line.startswith("sweep of StreamMatch(")]

    def release(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)


@contextlib.contextmanager
def held_before_live(server: HeldDialsServer, session_id: str) -> Iterator[None]:
    """Around opening a connection with ``session_id``'s token: left once ``server`` holds it
    between its authorisation and its registration."""
    held = len(server.held())
    yield
    wait_for(lambda: len(server.held()) > held, 10, what="the connection to be held before it is live")
    assert server.held()[held:] == [session_id]


def wait_swept(server: HeldDialsServer, sweeps_before: int) -> str:
    """The sweep that ended the session, once ``server`` has run it; it found nothing to end."""
    found = wait_for(lambda: server.sweeps()[sweeps_before:], 10, what="the sign-out to be swept")
    assert len(found) == 1 and found[0].endswith(": 0 ended"), found
    return str(found[0])
