"""The client side of the relay: ``hatchway proxy`` connects here for each SSH connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from fastapi import APIRouter, WebSocket
from sqlalchemy import select

from hatchway.db.models import SSHConnection, User, Workspace, utcnow
from hatchway.names import check_username, check_workspace_name
from hatchway.server.auth import bearer_token, user_for_token
from hatchway.server.context import ServerContext, client_source, get_ws_ctx
from hatchway.server.errors import APIError
from hatchway.server.policy import SSHFacts, ssh_refusal, unknown_workspace_message
from hatchway.server.relay import DialError, LiveStream, splice

log = logging.getLogger("hatchway.server.ssh")

router = APIRouter(prefix="/api/v1/workspaces", tags=["ssh"])


async def _refuse(websocket: WebSocket, message: str, code: int = 4403) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "error": message}))
        await websocket.close(code=code)


@router.websocket("/{name}/ssh")
async def ssh_stream(websocket: WebSocket, name: str) -> None:
    ctx = get_ws_ctx(websocket)
    owner = websocket.query_params.get("owner")
    source = client_source(websocket)
    await websocket.accept()
    try:  # names reach the log, the record and messages: only well-formed ones go further
        check_workspace_name(name)
        if owner is not None:
            check_username(owner)
    except ValueError as exc:
        log.info("SSH refused: %s", exc)
        await _refuse(websocket, str(exc))
        return
    log_row = SSHConnection(
        workspace_name=f"{owner}/{name}" if owner else name, source=source, result="refused", replica_id=ctx.cluster.id
    )
    async with ctx.sessions() as db:
        try:
            user: User = await user_for_token(db, bearer_token(websocket.headers))
        except APIError as exc:
            refusal = f"{exc.error}: {exc.detail}"
            log_row.reason = refusal  # recorded too: failed attempts are what an audit is for
            db.add(log_row)
            await db.commit()
            await _refuse(websocket, refusal, 4401)
            return
        log_row.user_id, log_row.username = user.id, user.username
        ws = (
            await db.execute(
                select(Workspace).join(Workspace.owner).where(Workspace.name == name, User.username == (owner or user.username))
            )
        ).scalar_one_or_none()
        if ws is None:
            refusal = unknown_workspace_message(f"{owner}/{name}" if owner else name)
        else:
            log_row.workspace_id, log_row.provider_name = ws.id, ws.provider.name
            refusal = ssh_refusal(
                SSHFacts(
                    requester=user.username,
                    requester_id=user.id,
                    requester_suspended=user.suspended,
                    workspace=ws.name,
                    owner=ws.owner.username,
                    owner_id=ws.owner_id,
                    provider=ws.provider.name,
                    external_connect=ws.provider.external_connect,
                    state=ws.state,
                    state_reason=ws.state_reason,
                    agent_connected=True,  # the hub is the live truth; checked at dial time
                )
            )
    # No database session is held while the agent dials back: its own request needs one, and a
    # burst of connections would otherwise drain the pool and starve every dial-back.
    if refusal is None:
        stream = LiveStream("", user.id, ws.id, ws.provider_id)
        try:
            stream.id, agent_ws, released = await ctx.relay.dial(ws.id, ws.name, source, user.id)
            log_row.result = "open"
        except DialError as exc:
            refusal = str(exc)
    log_row.reason = refusal
    try:
        async with ctx.sessions() as db:
            db.add(log_row)
            await db.commit()
    except BaseException:
        if refusal is None:
            released.set()  # let the agent's side go; nothing will be spliced
        raise
    if refusal is not None:
        log.info("SSH to %s by %s refused: %s", name, log_row.username, refusal)
        await _refuse(websocket, refusal)
        return
    # What the rest needs, as plain values: the rows stay out of the long-lived frame (an idle
    # relayed connection should cost a few sockets and buffers, not a graph of ORM objects).
    label, username, row_id = f"{ws.owner.username}/{ws.name}", user.username, log_row.id
    del ws, user, log_row
    await _relay(ctx, websocket, agent_ws, released, stream, label, username, row_id)


async def _relay(
    ctx: ServerContext, websocket: WebSocket, agent_ws: WebSocket, released: asyncio.Event,
    stream: LiveStream, label: str, username: str, row_id: str,
) -> None:
    """Splice an accepted stream to its agent, then close both and complete the record."""
    ctx.relay.register(stream)
    reason = mode = None
    try:
        hello = await agent_ws.receive()
        if hello.get("text"):
            with contextlib.suppress(ValueError, AttributeError):
                info = json.loads(hello["text"])
                mode = str(info.get("mode", ""))[:40] or None
        elif hello.get("bytes"):
            stream.from_workspace += len(hello["bytes"])
            await websocket.send_bytes(hello["bytes"])
        if hello["type"] == "websocket.receive":
            log.info("SSH to %s by %s: relaying (%s)", label, username, mode)
            reason = await splice(websocket, agent_ws, stream)
    finally:
        ctx.relay.unregister(stream)
        released.set()
        if reason:
            await _refuse(websocket, reason, 4410)
        with contextlib.suppress(Exception):
            await websocket.close()
        with contextlib.suppress(Exception):
            await agent_ws.close()
        async with ctx.sessions() as db:
            row = await db.get(SSHConnection, row_id)
            if row is not None:
                row.mode = mode
                row.ended_at = utcnow()
                row.bytes_to_workspace = stream.to_workspace
                row.bytes_from_workspace = stream.from_workspace
                row.result = "ended" if reason else "closed"
                row.reason = reason
                await db.commit()
        log.info(
            "SSH to %s by %s ended: %d bytes in, %d bytes out%s",
            label, username, stream.to_workspace, stream.from_workspace, f" ({reason})" if reason else "",
        )
