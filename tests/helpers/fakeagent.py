"""A fake agent on a workspace's control channel: the test decides when (and whether) it dials
back, and what it says. For the server's side of a dial: caps, timeouts, policy changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

from websockets.asyncio.client import ClientConnection, connect

from tests.helpers.server import wait_for
from tests.helpers.world import World


def agent_ws_url(world: World, path: str) -> str:
    return world.url.replace("http://", "ws://") + path


@contextlib.asynccontextmanager
async def fake_agent(world: World, token: str, owner: str, workspace: str) -> AsyncIterator[ClientConnection]:
    """The control channel of ``owner``'s ``workspace`` (agent ``token``), attached."""
    async with connect(agent_ws_url(world, "/api/v1/agent/control"), additional_headers={"Authorization": f"Bearer {token}"},
                       compression=None, max_size=None) as ws:
        wait_for(lambda: world.workspace(owner, workspace)["agent_connected"], 10, what="the fake agent to attach")
        yield ws


async def next_dial(ws: ClientConnection, timeout: float = 10) -> str:
    """The stream id of the next dial the server asks for."""
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message["type"] == "dial":
            return message["stream"]


async def refusal(ws: ClientConnection, timeout: float = 10) -> str:
    """The error a client stream is refused with."""
    message = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(message, str), f"expected a refusal, got {len(message)} bytes"
    return json.loads(message)["error"]
