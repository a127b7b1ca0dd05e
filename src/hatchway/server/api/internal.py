"""Replica-to-replica endpoints: passing a dial on to an agent, taking a handed-over stream.

Only other replicas may call these: every request is signed with a key derived from the
deployment secret (hatchway.server.cluster). They are left out of the OpenAPI document, and a
load balancer in front of the replicas should not route ``/internal/`` from outside at all.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response, WebSocket
from sqlalchemy import update

from hatchway import peerjson
from hatchway.db.models import Workspace

from hatchway.providers.base import SetupError
from hatchway.server.cluster import AUTH_HEADER, SIGNATURE_WINDOW_S, origin_of
from hatchway.server.context import get_ctx, get_ws_ctx
from hatchway.server.errors import APIError
from hatchway.server.relay import NO_SUCH_STREAM
from hatchway.server.supervision import SUPERVISE_PATH, command_args

log = logging.getLogger("hatchway.server.internal")

router = APIRouter(prefix="/internal/v1", include_in_schema=False)

DIAL_PATH = "/internal/v1/dial"
#: Why an /internal/ request is refused: what a replica's operator can check.
REFUSED_DETAIL = (
    "replica-to-replica requests must be signed with the deployment secret, each signature used once "
    f"and within {SIGNATURE_WINDOW_S} s of when it was made: check that every replica has the same "
    "deployment.secret and Hatchway version, and that their clocks are synchronised (NTP)"
)


async def _signed_json(request: Request, path: str) -> tuple[str, Any]:
    """(sending replica, body) of a request another replica signed for ``path``, its query and
    body included; else 401/400."""
    body = await request.body()  # the signature covers it (at most 1 MiB: hatchway.server.limits)
    query = request.scope["query_string"].decode("latin-1")
    sender = get_ctx(request).cluster.check(request.headers.get(AUTH_HEADER), request.method, path, query, body)
    if sender is None:
        raise APIError(401, "unauthorized", REFUSED_DETAIL)
    try:
        return sender, peerjson.loads(body)
    except ValueError:
        raise APIError(400, "bad request", "the body must be JSON") from None


def _field(body: Any, name: str, limit: int) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise APIError(400, "bad request", f'"{name}" must be a non-empty string of at most {limit} characters')
    return value


@router.post(DIAL_PATH.removeprefix("/internal/v1"), status_code=204)
async def dial(request: Request) -> Response:
    """Send a dial to the agent connected here, for a stream waiting on the calling replica."""
    ctx = get_ctx(request)
    sender, body = await _signed_json(request, DIAL_PATH)
    workspace_id, stream, client = _field(body, "workspace_id", 32), _field(body, "stream", 128), _field(body, "client", 100)
    if origin_of(stream) != sender:
        raise APIError(400, "bad request", "a replica may only dial for its own streams")
    conn = ctx.hub.get(workspace_id)
    if conn is None:
        # The database says the agent is here but it is not (its disconnect could not be
        # recorded, e.g. during a database outage): correct the record for the next dial.
        async with ctx.sessions() as db:
            await db.execute(
                update(Workspace)
                .where(Workspace.id == workspace_id, Workspace.agent_replica_id == ctx.cluster.id)
                .values(agent_connected=False, agent_replica_id=None)
            )
            await db.commit()
        raise APIError(404, "not found", "the workspace's agent is not connected to this replica")
    if not await conn.send({"type": "dial", "stream": stream, "client": client}):
        raise APIError(502, "agent gone", "lost the connection to the workspace's agent")
    return Response(status_code=204)


@router.post(SUPERVISE_PATH.removeprefix("/internal/v1"), status_code=204)
async def supervise(request: Request) -> Response:
    """Start, stop, restart or delete a workspace for a replica that does not supervise."""
    action, ws_id = command_args((await _signed_json(request, SUPERVISE_PATH))[1])
    gate = request.app.state.supervisor
    if not gate.is_leading():  # never pass it on again: two replicas could bounce it forever
        raise APIError(503, "this replica does not supervise workspaces", "it lost the lock; try again")
    try:
        await gate.command(action, ws_id)
    except SetupError as exc:
        raise APIError(422, "setup failed", str(exc)) from None
    return Response(status_code=204)


@router.websocket("/streams/{stream_id}")
async def handed_over_stream(websocket: WebSocket, stream_id: str) -> None:
    """The agent's side of a stream whose dial-back reached another replica."""
    ctx = get_ws_ctx(websocket)
    workspace_id = websocket.query_params.get("workspace", "")
    query = websocket.scope["query_string"].decode("latin-1")  # ?workspace= is signed too
    if ctx.cluster.check(websocket.headers.get(AUTH_HEADER), "GET", f"/internal/v1/streams/{stream_id}", query) is None:
        await websocket.close(code=4401)  # before accept: the peer sees HTTP 403
        return
    if not ctx.relay.is_waiting(stream_id, workspace_id):
        await websocket.close(code=4404)
        return
    await websocket.accept()
    if not await ctx.relay.agent_arrived(stream_id, workspace_id, websocket):
        await websocket.close(code=4404, reason=NO_SUCH_STREAM)
