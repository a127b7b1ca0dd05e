"""Policy changes that land while a connection is being set up, and what the record says of it.

Between a client's arrival and the splice, the server waits for the workspace's agent to dial
back, for as long as the agent takes (up to the dial timeout). A site manager who turns External
Connect off, or suspends the user, in that window must stop the connection all the same. Bob's
workspace "dev" on the manual provider "byo" has a fake agent, so the test decides when it
dials back and what it says.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime

import pytest
from hatchway.server.relay import NO_SUCH_STREAM
from tests.helpers.fakeagent import DialAnswer, answer_dial, fake_agent, next_dial, refusal, refusal_and_close_code
from tests.helpers.server import wait_for
from tests.helpers.sshclient import open_stream
from tests.helpers.world import World, build_world

SUSPENDED = "your account is suspended; ask a site manager to reactivate it"

#: The close code of a connection let in and then ended because its access was withdrawn: the
#: same whether the change caught it while its agent dialled back or while it was relayed.
ENDED = 4410
OFF_MESSAGE = 'SSH access to workspaces on provider "byo" is disabled by a site manager (External Connect is off)'


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("dialpolicy"), members=("bob",), start_agents=False)
    try:
        yield w
    finally:
        w.close()
        assert "Traceback" not in w.server.log(), w.server.log()[-5000:]


def set_external_connect(world: World, on: bool) -> None:
    with world.api("alice") as c:
        c.patch("/providers/byo", json={"external_connect": on}).raise_for_status()


def bobs_connections(world: World) -> list[dict]:
    with world.api("alice") as c:
        r = c.get("/connections", params={"user": "bob"})
        r.raise_for_status()
        return r.json()


async def test_external_connect_off_while_the_agent_dials_back_refuses_the_connection(world: World) -> None:
    bob = world.people["bob"]
    async with fake_agent(world, world.agent_tokens["bob"], "bob", "dev") as agent:
        client = await open_stream(world.url, bob.token, "dev")
        stream_id = await next_dial(agent)  # the server now waits for the agent
        try:
            set_external_connect(world, False)
            t0 = time.monotonic()
            assert await refusal_and_close_code(client, 10) == (OFF_MESSAGE, ENDED)
            assert time.monotonic() - t0 < 5, "refused when the toggle landed, not when the agent answered"
            # The agent's late dial-back finds no stream waiting: nothing is relayed.
            late = await answer_dial(world.url, world.agent_tokens["bob"], stream_id)
            assert (late.code, late.reason) == (4404, NO_SUCH_STREAM)
        finally:
            await client.close()
            set_external_connect(world, True)
    row = bobs_connections(world)[0]
    assert (row["result"], row["reason"], row["username"], row["provider"]) == ("refused", OFF_MESSAGE, "bob", "byo")


async def test_a_suspension_while_the_agent_dials_back_refuses_and_the_old_session_stays_dead(world: World) -> None:
    bob = world.people["bob"]
    async with fake_agent(world, world.agent_tokens["bob"], "bob", "dev") as agent:
        client = await open_stream(world.url, bob.token, "dev")
        stream_id = await next_dial(agent)
        with world.api("alice") as c:
            c.post("/users/bob/suspend").raise_for_status()
        try:
            assert await refusal_and_close_code(client, 10) == (SUSPENDED, ENDED)
            late = await answer_dial(world.url, world.agent_tokens["bob"], stream_id)
            assert (late.code, late.reason) == (4404, NO_SUCH_STREAM)
            # A suspended user's next attempt is refused and recorded as theirs.
            again = await open_stream(world.url, bob.token, "dev")
            assert await refusal(again, 10) == "account suspended: your account is suspended; ask a site manager to reactivate it"
            await again.close()
        finally:
            await client.close()
            with world.api("alice") as c:
                c.post("/users/bob/activate").raise_for_status()
    rows = bobs_connections(world)
    assert rows[0]["username"] == "bob" and rows[0]["reason"].startswith("account suspended")
    assert rows[1]["reason"] == SUSPENDED and rows[1]["result"] == "refused"
    # Reactivation does not bring the sessions of before back: a stolen token stays dead.
    with world.api("bob") as c:
        r = c.get("/users/me")
        assert r.status_code == 401 and r.json()["error"] == "session expired or revoked"
    with world.api(None) as c:
        r = c.post("/auth/login", json={"username": "bob", "password": bob.password})
        r.raise_for_status()
        bob.token = r.json()["token"]


async def test_the_record_starts_when_the_client_arrives_and_shows_the_agents_mode_printable(world: World) -> None:
    bob = world.people["bob"]
    async with fake_agent(world, world.agent_tokens["bob"], "bob", "dev") as agent:
        arrived = datetime.now().astimezone()
        client = await open_stream(world.url, bob.token, "dev")
        stream_id = await next_dial(agent)
        await asyncio.sleep(1.5)  # a slow agent
        answered = datetime.now().astimezone()
        hostile = json.dumps({"mode": "\x1b]0;PWNED\x07\x1b[31mOpenSSH_9.2\r\nfake line"})
        answer = asyncio.create_task(answer_dial(world.url, world.agent_tokens["bob"], stream_id, hostile))
        assert await asyncio.wait_for(client.recv(), 10) == b"SSH-2.0-fake\r\n"
        await client.send(b"SSH-2.0-client\r\n")
        await client.close()
        assert await answer == DialAnswer(1000, "", b"SSH-2.0-client\r\n"), "the client's goodbye ends the agent's side cleanly"
    row = wait_for(lambda: (r := bobs_connections(world)[0])["ended_at"] and r, 10, what="the record to be completed")
    started = datetime.fromisoformat(row["started_at"])
    assert arrived.timestamp() - 1 < started.timestamp() < answered.timestamp()
    assert row["mode"] == "]0;PWNED[31mOpenSSH_9.2 fake line"[:40]
    assert row["result"] == "closed" and row["bytes_to_workspace"] == len(b"SSH-2.0-client\r\n")
