"""The client side of the relay: ``hatchway proxy`` connects here for each SSH connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime

from fastapi import APIRouter, WebSocket
from sqlalchemy import select

from hatchway import peerjson
from hatchway.bytepath.frames import close_reason
from hatchway.db.models import ApiToken, SSHConnection, User, Workspace, new_id, utcnow
from hatchway.names import check_username, check_workspace_name
from hatchway.server.api.sessions import SIGNED_OUT
from hatchway.server.auth import bearer_token, token_holder, user_and_session
from hatchway.server.context import ServerContext, client_source, get_ws_ctx
from hatchway.server.completions import Completion
from hatchway.server.errors import APIError, db_error_text
from hatchway.server.metrics import ConnectionSetup
from hatchway.server.policy import (
    BAD_REQUEST, NO_ACCESS, SUSPENDED, UNAUTHENTICATED, Refusal, SSHFacts, check_ssh, unknown_workspace_message,
)
from hatchway.server.relay import DialEnded, DialError, LiveStream, splice
from hatchway.server.session_tokens import printable
from hatchway.server.unidentified import Tally

log = logging.getLogger("hatchway.server.ssh")

router = APIRouter(prefix="/api/v1/workspaces", tags=["ssh"])


#: Close codes of a client's stream (README, "Close codes"), by what happened rather than by
#: when the server noticed: a sign-out or a policy change is one event, whether the sweep found
#: the stream while its agent dialled back, the re-read after the dial did, or the sweep found it
#: relaying. 4401 (not signed in) is the authentication's.
REFUSED = 4403  # not let in: not allowed as things stood when it arrived, or not set up
ENDED = 4410  # let in, then ended by the server: access withdrawn since, shutdown, a broken agent
#: Why the agent's side of a stream is closed when setting it up failed in the server itself.
SETUP_FAILED = "the server failed while setting up this connection; see the server's log"


async def _refuse(websocket: WebSocket, message: str, code: int = REFUSED) -> None:
    with contextlib.suppress(Exception):
        await websocket.send_text(json.dumps({"type": "error", "error": message}))
        await websocket.close(code=code)


async def _close_agent(agent_ws: WebSocket, code: int, reason: str) -> None:
    """Close the agent's data socket with a close frame that says why. Before its release: the
    agent's request handler returns then, and uvicorn drops a socket still open at that point
    without a close frame (the agent saw 1006 and no reason)."""
    with contextlib.suppress(Exception):  # the agent may be gone already
        await agent_ws.close(code=code, reason=close_reason(reason))


def _facts(user: User, ws: Workspace) -> SSHFacts:
    return SSHFacts(
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
        requester_sees_all=user.role == "site-manager",
    )


def _refusal(user: User, ws: Workspace | None, shown: str) -> Refusal | None:
    """Why ``user`` may not reach ``ws`` (None: they may); ``shown`` names a missing one."""
    if ws is None:
        return Refusal(NO_ACCESS, unknown_workspace_message(shown))
    return check_ssh(_facts(user, ws))


def _counted_only(ctx: ServerContext, websocket: WebSocket, shown: str, at: datetime) -> bool:
    """Whether this attempt by someone not identified is only counted, in a row shared with
    others from its address, rather than given a row of its own (``hatchway.server.unidentified``)."""
    address = websocket.client.host if websocket.client else "unknown"
    tally = ctx.unidentified.admit(address, shown, at)
    if tally is None:
        return False
    ctx.metrics.unidentified_tallied.inc()
    if tally.count == 1:
        log.warning(
            "unauthenticated SSH attempts from %s: more than %d in %.0f s; the rest are refused and counted "
            "in one row of the connection log", address if tally.key else "all addresses together",
            tally.limit, tally.window_s,
        )
    ctx.unidentified.keep_writing(lambda t: _write_tally(ctx, t), "connection-log-tallies")
    return True


async def write_tallies_now(ctx: ServerContext) -> None:
    """At shutdown: the counts not written yet are written now, not lost with the process."""
    await ctx.unidentified.write_now(lambda t: _write_tally(ctx, t))


async def _write_tally(ctx: ServerContext, tally: Tally) -> None:
    """Write a tally's row, or rewrite it with what was counted since."""
    row_id = tally.row_id or new_id()
    values = {
        "workspace_name": tally.asked, "source": tally.key, "result": "refused", "reason": tally.reason(),
        "started_at": tally.first_at, "ended_at": tally.last_at, "replica_id": ctx.cluster.id,
    }
    try:
        async with ctx.sessions() as db:
            row = await db.get(SSHConnection, row_id) if tally.row_id else None
            if row is None:
                db.add(SSHConnection(id=row_id, **values))
            else:
                for key, value in values.items():
                    setattr(row, key, value)
            await db.commit()
        tally.row_id = row_id
    except Exception as exc:  # the database may be down: say what the log is missing
        log.warning("could not record in the connection log %d unauthenticated SSH attempts from %s: %s",
                    tally.count, tally.key or "several addresses", db_error_text(exc))


async def _let_go(ctx: ServerContext, stream: LiveStream, released: asyncio.Event, agent_ws: WebSocket,
                  code: int, reason: str) -> None:
    """A dialled stream that will not be spliced: the agent's side is closed saying why (the
    client's code and reason), then released; the stream is no more."""
    await _close_agent(agent_ws, code, reason)
    released.set()
    ctx.relay.unregister(stream)


@router.websocket("/{name}/ssh")
async def ssh_stream(websocket: WebSocket, name: str) -> None:
    ctx = get_ws_ctx(websocket)
    owner = websocket.query_params.get("owner")
    source = client_source(websocket)
    await websocket.accept()
    setup = ctx.metrics.setup()
    try:
        await _serve_stream(ctx, websocket, name, owner, source, setup)
    finally:
        setup.close()


async def _serve_stream(
    ctx: ServerContext, websocket: WebSocket, name: str, owner: str | None, source: str, setup: ConnectionSetup,
) -> None:
    """Check, dial, record and relay one accepted SSH stream; ``setup`` learns how it went."""
    try:  # names reach the log, the record and messages: only well-formed ones go further
        check_workspace_name(name)
        if owner is not None:
            check_username(owner)
    except ValueError as exc:
        log.info("SSH refused: %s", exc)
        setup.refused(BAD_REQUEST)
        await _refuse(websocket, str(exc))
        return
    shown = f"{owner}/{name}" if owner else name
    log_row = SSHConnection(
        workspace_name=shown, source=source, result="refused", replica_id=ctx.cluster.id, started_at=utcnow()
    )
    async with ctx.sessions() as db:
        token = bearer_token(websocket.headers)
        try:
            user, session_id = await user_and_session(db, token)
        except APIError as exc:
            message = f"{exc.error}: {exc.detail}"
            holder = await token_holder(db, token)  # a suspended user's attempt is theirs
            setup.refused(SUSPENDED if exc.status == 403 else UNAUTHENTICATED)
            if holder is None and _counted_only(ctx, websocket, shown, log_row.started_at):
                await _refuse(websocket, message, 4401)  # the same answer as a recorded attempt's
                return
            log_row.reason = message  # recorded too: failed attempts are what an audit is for
            if holder is not None:
                log_row.user_id, log_row.username = holder.id, holder.username
            db.add(log_row)
            await db.commit()
            await _refuse(websocket, message, 4401)
            return
        log_row.user_id, log_row.username = user.id, user.username
        ws = (
            await db.execute(
                select(Workspace).join(Workspace.owner).where(Workspace.name == name, User.username == (owner or user.username))
            )
        ).scalar_one_or_none()
        # The requester reads this row back (GET /connections): for a workspace they may not know
        # of, it keeps what they asked for and nothing that tells it apart from one not there.
        if ws is not None and _facts(user, ws).known_to_requester:
            log_row.workspace_id, log_row.provider_name = ws.id, ws.provider.name
        refusal = _refusal(user, ws, shown)
    # No database session is held while the agent dials back: its own request needs one, and a
    # burst of connections would otherwise drain the pool and starve every dial-back.
    dialled, code = False, REFUSED
    if refusal is None:
        assert ws is not None
        stream = LiveStream("", user.id, ws.id, ws.provider_id, session_id)
        try:
            agent_ws, released = await ctx.relay.dial(stream, ws.name, source)
            dialled = True
        except DialError as exc:
            refusal, code = Refusal(exc.reason, str(exc)), ENDED if isinstance(exc, DialEnded) else REFUSED
    try:
        async with ctx.sessions() as db:
            if dialled:
                # The stream has been live (and so ended by any policy change broadcast) since the
                # dial began; what changed before that, since the token was checked above, is seen
                # here, in a fresh read of everything it was let in on: the user, the workspace and
                # its provider, and the sign-in session. A logout or revoke committed in between
                # found no live stream of the session to end, so it is refused here as that sweep
                # would have ended it; one committed after this read finds it live. The shared
                # database makes this hold whichever replica the session was signed out on.
                now_user = await db.get(User, user.id)
                refusal = (
                    Refusal(UNAUTHENTICATED, "your account was deleted") if now_user is None
                    else _refusal(now_user, await db.get(Workspace, ws.id), shown)
                )
                if refusal is None and await db.get(ApiToken, session_id) is None:
                    refusal = Refusal(UNAUTHENTICATED, SIGNED_OUT)
            log_row.result = "open" if refusal is None else "refused"
            log_row.reason = None if refusal is None else refusal.message
            db.add(log_row)
            await db.commit()
    except BaseException:
        if dialled:
            await _let_go(ctx, stream, released, agent_ws, 1011, SETUP_FAILED)
        raise
    if refusal is not None:
        if dialled:  # it was let in: what refuses it now changed since, as for the sweep's end
            code = ENDED
            await _let_go(ctx, stream, released, agent_ws, code, refusal.message)
        log.info("SSH to %s by %s refused: %s", name, log_row.username, refusal.message)
        setup.refused(refusal.reason)
        await _refuse(websocket, refusal.message, code)
        return
    # What the rest needs, as plain values: the rows stay out of the long-lived frame (an idle
    # relayed connection should cost a few sockets and buffers, not a graph of ORM objects).
    label, username, row_id = f"{ws.owner.username}/{ws.name}", user.username, log_row.id
    del ws, user, log_row
    await _relay(ctx, websocket, agent_ws, released, stream, label, username, row_id, setup)


#: Why a stream ends whose agent opened it with a header of JSON nested too deeply to parse.
TOO_DEEP_HEADER = (
    "the workspace's agent opened the connection with a header of JSON nested too deeply to parse, "
    "which Hatchway's agent never sends; ask the workspace's owner to check what runs as its agent"
)


def _header_mode(text: str) -> str | None:
    """The SSH server an agent's stream header names, as shown in tables; None when the header
    is malformed (it only informs the record). Raises :class:`peerjson.TooDeep`."""
    try:
        info = peerjson.loads(text)
    except peerjson.TooDeep:
        raise
    except ValueError:
        return None
    return printable(str(info.get("mode", "")), 40) if isinstance(info, dict) else None


async def _relay(
    ctx: ServerContext, websocket: WebSocket, agent_ws: WebSocket, released: asyncio.Event,
    stream: LiveStream, label: str, username: str, row_id: str, setup: ConnectionSetup,
) -> None:
    """Splice an accepted stream to its agent (live since its dial), then close both and
    complete the record. An agent that hangs up before its header, or sends one nested too
    deeply, leaves ``setup`` uncounted: a failure, not a decision."""
    reason = mode = None
    try:
        hello = await agent_ws.receive()
        if hello.get("text"):
            try:
                mode = _header_mode(hello["text"])  # the agent's word: shown in tables
            except peerjson.TooDeep:
                log.warning("SSH to %s by %s: the agent's stream header is JSON nested too deeply to parse; "
                            "ending the connection", label, username)
                reason = TOO_DEEP_HEADER
        elif hello.get("bytes"):
            stream.from_workspace += len(hello["bytes"])
            await websocket.send_bytes(hello["bytes"])
        if hello["type"] == "websocket.receive" and reason is None:
            log.info("SSH to %s by %s: relaying (%s)", label, username, mode)
            stream.relaying = True
            setup.accepted()
            reason = await splice(websocket, agent_ws, stream)
    finally:
        ctx.relay.unregister(stream)
        if reason:
            await _refuse(websocket, reason, ENDED)
        with contextlib.suppress(Exception):
            await websocket.close()
        await _close_agent(agent_ws, ENDED if reason else 1000, reason or "")
        released.set()
        # The session itself is over either way: a database that is down or full only delays
        # its record's last word, which is kept and written once the database takes it.
        await ctx.completions.complete(Completion(
            row_id, f"SSH to {label} by {username}", utcnow(), mode, stream.to_workspace, stream.from_workspace, reason,
        ))
        log.info(
            "SSH to %s by %s ended: %d bytes in, %d bytes out%s",
            label, username, stream.to_workspace, stream.from_workspace, f" ({reason})" if reason else "",
        )
