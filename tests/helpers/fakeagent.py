"""A fake agent on a workspace's control channel: the test decides when (and whether) it dials
back, and what it says. For the server's side of a dial: caps, timeouts, policy changes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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


async def refusal_and_close_code(ws: ClientConnection, timeout: float = 10) -> tuple[str, int | None]:
    """The error a client stream is refused with, and the close code the server ends it with."""
    error = await refusal(ws, timeout)
    await asyncio.wait_for(ws.wait_closed(), timeout)
    return error, ws.close_code


@dataclass(frozen=True)
class DialAnswer:
    """How the server ended a dial-back the test answered as the workspace's agent."""

    code: int | None  # of the server's close frame; 1006 when it sent none
    reason: str
    got: bytes  # what the client's side sent through it


async def answer_dial(base: str, agent_token: str, stream_id: str, hello: str = '{"mode": "built-in"}') -> DialAnswer:
    """Dial back to ``base`` for ``stream_id`` as an agent would (its stream header ``hello``,
    then an SSH banner), and read until the server ends the stream."""
    url = base.replace("http://", "ws://") + f"/api/v1/agent/streams/{stream_id}"
    got = b""
    async with connect(url, additional_headers={"Authorization": f"Bearer {agent_token}"}) as data:
        with contextlib.suppress(ConnectionClosed):
            await data.send(hello)
            await data.send(b"SSH-2.0-fake\r\n")
            while True:
                message = await asyncio.wait_for(data.recv(), 10)
                if isinstance(message, bytes):
                    got += message
    return DialAnswer(data.close_code, data.close_reason or "", got)
