"""Handing an agent's dial-back to the replica where its client waits.

Behind a load balancer the agent's data WebSocket may land on any replica. The one it lands on
opens a signed WebSocket to the replica named in the stream id, passes the agent's stream header
on, and splices the two: SSH bytes are copied, never decrypted. Either side closing ends both;
the origin's reason for ending a stream reaches the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from fastapi import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from hatchway.bytepath.frames import close_reason
from hatchway.server.fastsplice import splice_to_replica

log = logging.getLogger("hatchway.server.handover")

#: Same frame ceiling as the public listener (hatchway.server.run.WS_MAX_FRAME).
MAX_FRAME = 4 * 1024 * 1024


async def hand_over(agent: WebSocket, url: str, headers: dict[str, Any]) -> bool:
    """Splice the accepted agent socket to the origin replica; False if it would not take it."""
    try:
        peer = await connect(
            url, additional_headers=headers, compression=None, max_size=MAX_FRAME, open_timeout=5,
            ping_interval=20, ping_timeout=20,
        )
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        log.info("hand-over to %s refused: %s", url.split("?")[0], exc)
        return False
    try:
        await _splice(agent, peer)
    finally:
        await peer.close()
        with contextlib.suppress(Exception):
            await agent.close(*_passed_on(peer))
    return True


def _passed_on(peer: ClientConnection) -> tuple[int, str]:
    """The close code and reason for the agent: the origin's when it ended the stream saying
    why (access withdrawn, say, 4410), so the agent hears what it would have from the origin
    itself; else a normal close."""
    rcvd = peer.protocol.close_rcvd
    if rcvd is None or not 3000 <= rcvd.code < 5000:
        return 1000, ""
    return rcvd.code, close_reason(rcvd.reason)


async def _agent_to_peer(agent: WebSocket, peer: ClientConnection) -> None:
    while True:
        message = await agent.receive()
        if message["type"] != "websocket.receive":
            return
        if message.get("bytes") is not None:
            await peer.send(message["bytes"])
        elif message.get("text") is not None:
            await peer.send(message["text"])


async def _peer_to_agent(agent: WebSocket, peer: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for data in peer:
            if isinstance(data, bytes):
                await agent.send({"type": "websocket.send", "bytes": data})
            else:
                await agent.send({"type": "websocket.send", "text": data})


async def _splice(agent: WebSocket, peer: ClientConnection) -> None:
    """The agent's stream header first, as it came; then the stream, in the transports'
    callbacks (hatchway.server.fastsplice) or, where a socket cannot be taken over, by tasks."""
    message = await agent.receive()
    if message["type"] != "websocket.receive":
        return
    header = message.get("text") if message.get("text") is not None else message.get("bytes") or b""
    if await splice_to_replica(agent, peer, header):
        return
    await peer.send(header)
    tasks = [asyncio.create_task(_agent_to_peer(agent, peer)), asyncio.create_task(_peer_to_agent(agent, peer))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, Exception) and not isinstance(r, ConnectionClosed):
            log.debug("hand-over stream ended: %s", r)
