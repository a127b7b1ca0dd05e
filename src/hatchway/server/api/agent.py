"""The agent's side of the server: manifest, control channel, dial-back data streams.

An agent token grants exactly these routes for exactly one workspace.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Depends, WebSocket
from sqlalchemy import select

from hatchway import peerjson
from hatchway.db.models import Workspace, utcnow
from hatchway.names import stream_label
from hatchway.server.auth import bearer_token, current_agent, workspace_for_agent_token
from hatchway.server.cluster import origin_of
from hatchway.server.handover import hand_over
from hatchway.server.context import ServerContext, get_ctx, get_ws_ctx
from hatchway.server.errors import APIError
from hatchway.server.hub import AgentConnection
from hatchway.server.manifest import build_manifest
from hatchway.server.relay import NO_SUCH_STREAM

log = logging.getLogger("hatchway.server.agent")

router = APIRouter(prefix="/api/v1/agent", tags=["agent"])

# What an agent may report about itself, with the longest value kept for each.
_REPORT_FIELDS = {"os_user": 32, "ssh_mode": 20, "ssh_server_version": 255, "version": 40}
MAX_HOST_KEYS = 8
MAX_DIAGNOSTICS = 20
#: The goodbye's reason when an agent's control message is JSON nested too deeply to parse.
TOO_DEEP_GOODBYE = "a control message was JSON nested too deeply to parse; Hatchway's agent never sends that"


@router.get("/manifest")
async def manifest(ws: Workspace = Depends(current_agent), ctx: ServerContext = Depends(get_ctx)) -> dict[str, Any]:
    return build_manifest(ws, ctx.settings.url)


def apply_report(ws: Workspace, report: dict[str, Any]) -> None:
    """Copy the fields an agent reported onto its row, ignoring anything malformed."""
    for key, limit in _REPORT_FIELDS.items():
        if key not in report:
            continue
        value = report[key]
        column = "agent_version" if key == "version" else key
        if value is None:
            setattr(ws, column, None)  # e.g. port 22 no longer SSH: no server version any more
        elif isinstance(value, str) and len(value) <= limit and value.isprintable():
            setattr(ws, column, value)
    keys = report.get("host_keys")
    if isinstance(keys, list):
        ws.host_keys = [k for k in keys if isinstance(k, str) and len(k) < 4096 and k.isprintable()][:MAX_HOST_KEYS]
    diags = report.get("diagnostics")
    if isinstance(diags, list):
        ws.diagnostics = [d[:500] for d in diags if isinstance(d, str) and d.isprintable()][:MAX_DIAGNOSTICS]


async def _refuse(websocket: WebSocket, exc: APIError) -> None:
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "error", "error": exc.error, "detail": exc.detail}))
    await websocket.close(code=4401 if exc.status == 401 else 4403)


async def _set_connected(ctx: ServerContext, ws_id: str, connected: bool, report: dict[str, Any] | None = None) -> None:
    """Record the agent as connected through this replica, or as gone — unless by now it is
    connected through another replica, whose claim a late disconnect here must not undo."""
    async with ctx.sessions() as db:
        ws = (await db.execute(select(Workspace).where(Workspace.id == ws_id))).scalar_one_or_none()
        if ws is None:
            return
        if not connected and ws.agent_replica_id not in (None, ctx.cluster.id):
            return
        ws.agent_connected = connected
        ws.agent_replica_id = ctx.cluster.id if connected else None
        ws.agent_last_seen = utcnow()
        if report:
            apply_report(ws, report)
        await db.commit()


async def _agent_workspace(websocket: WebSocket, ctx: ServerContext) -> tuple[str, str, dict[str, Any]] | None:
    """(id, name, manifest) of the workspace whose agent token the socket presents, or None
    after refusing the socket with the reason."""
    async with ctx.sessions() as db:
        try:
            ws = await workspace_for_agent_token(db, bearer_token(websocket.headers))
        except APIError as exc:
            await _refuse(websocket, exc)
            return None
        return ws.id, ws.name, build_manifest(ws, ctx.settings.url)


@router.websocket("/control")
async def control(websocket: WebSocket) -> None:
    ctx = get_ws_ctx(websocket)
    found = await _agent_workspace(websocket, ctx)
    if found is None:
        return
    ws_id, ws_name, first_manifest = found
    await websocket.accept()
    conn = AgentConnection(ws_id, websocket)
    await ctx.hub.attach(conn)
    await _set_connected(ctx, ws_id, True)
    await ctx.broadcast.agent_attached(ws_id)
    log.info("agent of workspace %s connected", ws_name)
    await conn.send({"type": "manifest", "manifest": first_manifest})
    try:
        while True:
            message = await websocket.receive()
            if message["type"] != "websocket.receive":
                break
            try:
                data = peerjson.loads(message.get("text") or "")
            except peerjson.TooDeep:
                # No agent sends that by mistake: one line, and the connection ends (a reconnect
                # costs a handshake, so the log cannot be flooded at the rate of messages).
                log.warning("agent of workspace %s sent a control message nested too deeply to parse; "
                            "closed its connection", ws_name)
                await conn.close(TOO_DEEP_GOODBYE)
                break
            except ValueError:
                log.warning("agent of workspace %s sent a malformed control message; ignored", ws_name)
                continue
            if not isinstance(data, dict):
                continue
            kind = data.get("type")
            if kind in ("hello", "report"):
                await _set_connected(ctx, ws_id, True, data)
            elif kind == "ping":
                await conn.send({"type": "pong"})
    finally:
        if ctx.hub.detach(conn):
            await _set_connected(ctx, ws_id, False)
            log.info("agent of workspace %s disconnected", ws_name)


@router.websocket("/streams/{stream_id}")
async def data_stream(websocket: WebSocket, stream_id: str) -> None:
    ctx = get_ws_ctx(websocket)
    found = await _agent_workspace(websocket, ctx)
    if found is None:
        return
    ws_id = found[0]
    await websocket.accept()
    origin = origin_of(stream_id)
    if origin != ctx.cluster.id:  # the client waits on another replica: hand the stream over
        relay_url = await ctx.cluster.replica_url(origin)
        if relay_url is not None:
            url, headers = ctx.cluster.stream_request(relay_url, stream_id, ws_id)
            log.info("stream %s: dial-back of workspace %s handed over to replica %s", stream_label(stream_id), found[1], origin)
            if await hand_over(websocket, url, headers):
                return
    elif await ctx.relay.agent_arrived(stream_id, ws_id, websocket):
        return
    await websocket.send_text(json.dumps({"type": "error", "error": "no such stream", "detail": NO_SUCH_STREAM}))
    await websocket.close(code=4404, reason=NO_SUCH_STREAM)
