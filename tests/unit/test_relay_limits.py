"""The relay's caps on streams waiting for their agent, and the server's guards, in process."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hatchway.server.broadcast import Broadcast
from hatchway.server.bus import LocalBus
from hatchway.server.guards import AcceptDeadline
from hatchway.server.relay import DialError, LiveStream, Relay, StreamMatch
from hatchway.server.throttle import LoginThrottle


class _Conn:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        return True


class _Hub:
    def __init__(self) -> None:
        self.conn = _Conn()

    def get(self, _workspace_id: str) -> _Conn:
        return self.conn


class _Peers:
    """Other replicas: none holds any agent unless told to."""

    id = "0123456789abcdef"

    def __init__(self, holder: str | None = None, accepts: bool = True) -> None:
        self.holder, self.accepts = holder, accepts
        self.dials: list[tuple[str, str, str, str]] = []

    async def agent_replica(self, _workspace_id: str) -> str | None:
        return self.holder

    async def request_dial(self, relay_url: str, workspace_id: str, stream_id: str, client: str) -> bool:
        self.dials.append((relay_url, workspace_id, stream_id, client))
        return self.accepts


def _stream(workspace_id: str, user_id: str = "", provider_id: str = "p1", session_id: str = "") -> LiveStream:
    return LiveStream("", user_id, workspace_id, provider_id, session_id)


class _NoAgentHub:
    def get(self, _workspace_id: str) -> None:
        return None


async def test_a_dial_for_an_agent_held_by_another_replica_goes_there_with_this_replicas_stream_id() -> None:
    peers = _Peers(holder="http://127.0.0.1:7091")
    relay = Relay(_NoAgentHub(), peers, dial_timeout_s=30)  # type: ignore[arg-type]
    stream = _stream("ws-a", "u1")
    task = asyncio.create_task(relay.dial(stream, "a", "10.0.0.1 5000"))
    while not peers.dials:
        await asyncio.sleep(0)
    url, ws_id, stream_id, client = peers.dials[0]
    assert (url, ws_id, client) == ("http://127.0.0.1:7091", "ws-a", "10.0.0.1 5000")
    assert stream_id.startswith(peers.id) and len(stream_id) == 48 and int(stream_id, 16) >= 0
    agent_socket = object()
    arrived = asyncio.create_task(relay.agent_arrived(stream_id, "ws-a", agent_socket))  # type: ignore[arg-type]
    got_socket, release = await task
    assert (stream.id, got_socket) == (stream_id, agent_socket)
    release.set()
    assert await arrived is True


async def test_a_dial_no_replica_takes_or_no_agent_anywhere_is_refused_with_the_reason() -> None:
    relay = Relay(_NoAgentHub(), _Peers(holder=None), dial_timeout_s=30)  # type: ignore[arg-type]
    with pytest.raises(DialError, match='workspace "a" is not reachable: its agent is not connected'):
        await relay.dial(_stream("ws-a"), "a", "c")
    relay = Relay(_NoAgentHub(), _Peers(holder="http://127.0.0.1:7091", accepts=False), dial_timeout_s=30)  # type: ignore[arg-type]
    with pytest.raises(DialError, match='workspace "a": lost the connection to its agent; try again'):
        await relay.dial(_stream("ws-a"), "a", "c")
    assert relay.pending_count() == 0


async def test_pending_streams_are_capped_per_user_and_per_workspace_and_slots_come_back() -> None:
    relay = Relay(_Hub(), _Peers(), dial_timeout_s=30, max_pending_per_user=3, max_pending_per_workspace=2, max_queued=0)  # type: ignore[arg-type]
    held = [asyncio.create_task(relay.dial(_stream("ws-a", u), "a", "c")) for u in ("u1", "u2")]
    held.append(asyncio.create_task(relay.dial(_stream("ws-b", "u1"), "b", "c")))
    await asyncio.sleep(0)
    assert relay.pending_count() == 3
    with pytest.raises(DialError, match='^too many SSH connections to workspace "a" are being set up at once '
                                        "\\(at most 2, and 0 more waiting\\); wait for them to finish and try again$"):
        await relay.dial(_stream("ws-a", "u3"), "a", "c")
    held.append(asyncio.create_task(relay.dial(_stream("ws-c", "u1"), "c", "c")))
    await asyncio.sleep(0)
    with pytest.raises(DialError, match="^too many SSH connections of yours are being set up at once \\(at most 3, "):
        await relay.dial(_stream("ws-d", "u1"), "d", "c")
    for t in held:  # the clients go away: every slot is given back
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert relay.pending_count() == 0 and relay.live_count() == 0
    assert relay.slots.by_user == {} and relay.slots.by_workspace == {}
    again = asyncio.create_task(relay.dial(_stream("ws-a", "u1"), "a", "c"))
    await asyncio.sleep(0)
    assert relay.pending_count() == 1
    again.cancel()
    await asyncio.gather(again, return_exceptions=True)


async def test_over_the_cap_a_dial_waits_its_turn_and_is_sent_when_a_slot_comes_back() -> None:
    hub = _Hub()
    relay = Relay(hub, _Peers(), dial_timeout_s=30, max_pending_per_user=1, max_queued=5)  # type: ignore[arg-type]
    first_stream, second_stream = _stream("ws-a", "u1"), _stream("ws-a", "u1")
    first = asyncio.create_task(relay.dial(first_stream, "a", "c"))
    second = asyncio.create_task(relay.dial(second_stream, "a", "c"))
    while len(hub.conn.sent) < 1:
        await asyncio.sleep(0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert [m["stream"] for m in hub.conn.sent] == [first_stream.id]  # the second waits, not dialled
    assert relay.live_count() == 2 and relay.slots.queued_by_user == {"u1": 1}
    agent = asyncio.create_task(relay.agent_arrived(first_stream.id, "ws-a", object()))  # type: ignore[arg-type]
    _, release = await first  # the agent came: the slot passes to the second
    while len(hub.conn.sent) < 2:
        await asyncio.sleep(0)
    assert hub.conn.sent[1]["stream"] == second_stream.id
    release.set()
    await agent
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    assert relay.slots.by_user == {} and relay.slots.queued_by_user == {}


async def test_a_dial_that_waited_too_long_for_its_turn_says_so() -> None:
    class _Stuck(_Hub):  # the control channel's send never completes: the slot stays taken
        def __init__(self) -> None:
            self.conn = self

        async def send(self, message: dict[str, Any]) -> bool:
            await asyncio.Event().wait()
            return True

    relay = Relay(_Stuck(), _Peers(), dial_timeout_s=0.2, max_pending_per_user=1, max_queued=5)  # type: ignore[arg-type]
    parked = asyncio.create_task(relay.dial(_stream("ws-a", "u1"), "a", "c"))
    await asyncio.sleep(0)
    with pytest.raises(DialError, match="^too many SSH connections of yours are being set up at once \\(at most 1\\): "
                                        "this one waited 0 s for its turn; wait for them to finish and try again$"):
        await relay.dial(_stream("ws-b", "u1"), "b", "c")
    parked.cancel()
    await asyncio.gather(parked, return_exceptions=True)
    assert relay.live_count() == 0 and relay.slots.by_user == {}


async def test_a_policy_end_reaches_a_dial_waiting_for_its_turn() -> None:
    relay = Relay(_Hub(), _Peers(), dial_timeout_s=30, max_pending_per_user=1, max_queued=5)  # type: ignore[arg-type]
    parked = asyncio.create_task(relay.dial(_stream("ws-a", "u1", provider_id="p1"), "a", "c"))
    waiting = asyncio.create_task(relay.dial(_stream("ws-b", "u1", provider_id="p2"), "b", "c"))
    for _ in range(10):
        await asyncio.sleep(0)
    assert await relay.end_sessions(StreamMatch(provider_id="p2"), 'provider "x": SSH disabled') == 1
    with pytest.raises(DialError, match='^provider "x": SSH disabled$'):
        await asyncio.wait_for(waiting, 1)
    assert relay.slots.queued_by_user == {} and relay.slots.by_user == {"u1": 1}
    parked.cancel()
    await asyncio.gather(parked, return_exceptions=True)


async def test_a_stream_ended_while_its_agent_dials_back_is_refused_at_once_with_the_reason() -> None:
    """External Connect off (or a suspension) while the agent is still dialling back: the
    client is refused then, not after the agent finally answers, and a late agent is turned
    away instead of being spliced."""
    hub = _Hub()
    relay = Relay(hub, _Peers(), dial_timeout_s=30)  # type: ignore[arg-type]
    stream = _stream("ws-a", "u1", provider_id="p9")
    task = asyncio.create_task(relay.dial(stream, "a", "c"))
    while not hub.conn.sent:
        await asyncio.sleep(0)
    assert relay.live_count() == 1
    assert await relay.end_sessions(StreamMatch(provider_id="p9"), 'provider "x": SSH disabled') == 1
    with pytest.raises(DialError, match='^provider "x": SSH disabled$'):
        await asyncio.wait_for(task, 1)  # well before the 30 s dial timeout
    assert relay.live_count() == 0 and relay.pending_count() == 0
    assert await relay.agent_arrived(stream.id, "ws-a", object()) is False  # type: ignore[arg-type]


async def test_a_dial_that_fails_after_its_agent_came_lets_the_agent_go() -> None:
    """The agent's request handler waits for its release: a dial given up after the agent came
    (the client went away) must release it, or the agent's side would hang."""
    hub = _Hub()
    relay = Relay(hub, _Peers(), dial_timeout_s=30)  # type: ignore[arg-type]
    stream = _stream("ws-a")
    task = asyncio.create_task(relay.dial(stream, "a", "c"))
    while not hub.conn.sent:
        await asyncio.sleep(0)
    arrived = asyncio.create_task(relay.agent_arrived(stream.id, "ws-a", object()))  # type: ignore[arg-type]
    while relay.is_waiting(stream.id, "ws-a"):
        await asyncio.sleep(0)
    task.cancel()  # the agent's socket was handed over, the dial not yet resumed
    await asyncio.gather(task, return_exceptions=True)
    assert await asyncio.wait_for(arrived, 1) is True
    assert relay.live_count() == 0 and relay.pending_count() == 0


async def test_a_dialled_stream_is_live_until_its_owner_unregisters_it() -> None:
    hub = _Hub()
    relay = Relay(hub, _Peers(), dial_timeout_s=30)  # type: ignore[arg-type]
    stream = _stream("ws-a", "u1")
    task = asyncio.create_task(relay.dial(stream, "a", "c"))
    while not hub.conn.sent:
        await asyncio.sleep(0)
    agent_socket = object()
    arrived = asyncio.create_task(relay.agent_arrived(stream.id, "ws-a", agent_socket))  # type: ignore[arg-type]
    got, release = await task
    assert got is agent_socket and relay.live_count() == 1 and stream.interrupt is None
    assert await relay.end_sessions(StreamMatch(user_id="u1"), "suspended") == 1
    assert stream.end_reason == "suspended"  # the splice sees it before copying a byte
    relay.unregister(stream)
    release.set()
    assert await arrived is True and relay.live_count() == 0


async def test_signing_sessions_out_ends_the_streams_they_opened_and_no_other() -> None:
    relay = Relay(_NoAgentHub(), _Peers(), dial_timeout_s=30)  # type: ignore[arg-type]
    broadcast = Broadcast(LocalBus("0123456789abcdef"), None, relay, LoginThrottle(5, 60))  # type: ignore[arg-type]
    laptop, tablet, desk, other_user = (
        _stream("ws-a", "u1", session_id="s-laptop"), _stream("ws-b", "u1", session_id="s-tablet"),
        _stream("ws-a", "u1", session_id="s-desk"), _stream("ws-c", "u2", session_id="s-u2"),
    )
    for i, s in enumerate((laptop, tablet, desk, other_user)):
        s.id = f"stream-{i}"
        relay.register(s)

    await broadcast.end_sessions(StreamMatch(user_id="u1", session_id="s-laptop"), "signed out")
    assert [s.end_reason for s in (laptop, tablet, desk, other_user)] == ["signed out", None, None, None]

    await broadcast.end_sessions(StreamMatch(user_id="u1", keep_session_id="s-desk"), "all but desk")
    assert [s.end_reason for s in (tablet, desk, other_user)] == ["all but desk", None, None]

    await broadcast.end_sessions(StreamMatch(user_id="u1"), "new password")
    assert [s.end_reason for s in (desk, other_user)] == ["new password", None]


async def test_a_websocket_not_accepted_in_time_is_refused_with_1013() -> None:
    async def slow_app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(10)

    async def quick_app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        await asyncio.sleep(0.2)  # longer than the deadline: after accepting, nothing is bounded
        await send({"type": "websocket.close", "code": 1000})

    for app, expected in ((slow_app, [{"type": "websocket.close", "code": 1013, "reason": "try again later"}]),
                          (quick_app, [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1000}])):
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any], into: list[dict[str, Any]] = sent) -> None:
            into.append(message)

        await asyncio.wait_for(AcceptDeadline(app, 0.1)({"type": "websocket", "path": "/x"}, None, send), 5)  # type: ignore[arg-type]
        assert sent == expected
