"""A session signed out while one of its SSH connections is being set up ends that connection too.

The client's token is checked first; the connection is registered as live (where "end this
session's connections" finds it) only once its dial begins. A logout, revoke or new password
committed in between sweeps nothing, so the server must see the session gone when it re-reads
what the connection was let in on, and refuse it with the sweep's own message. The server here
holds every dial to a workspace named "held" at exactly that point, after the token check and
before the registration, until the test sends it SIGUSR1; it also logs each sweep and how many
connections it ended, so the test knows the session's end was committed and swept while the
connection was held. Bob's "held" workspace has a fake agent: the test answers its dial, and
sees it closed with the same code and reason the sweep would have given it (4410).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from hatchway.server.api.sessions import SIGNED_OUT
from tests.helpers.fakeagent import DialAnswer, answer_dial, next_dial, refusal_and_close_code
from tests.helpers.helddials import HeldDialsServer, held_before_live, wait_swept
from tests.helpers.server import api, csrf_token, wait_for
from tests.helpers.sshclient import open_stream
from tests.helpers.world import World, build_world

#: The close code of a connection let in and then ended because its access was withdrawn.
ENDED = 4410
#: What of SIGNED_OUT a close frame carries: 123 bytes at most, so cut, and marked as cut.
SIGNED_OUT_CLOSE_REASON = SIGNED_OUT[:120] + "…"
#: What the agent of a connection refused at the re-read is told: why, and nothing of the client's.
REFUSED_AT_REREAD = DialAnswer(ENDED, SIGNED_OUT_CLOSE_REASON, b"")

@contextlib.asynccontextmanager
async def control_channel(url: str, agent_token: str, attached: Callable[[], bool]) -> Any:
    """The fake agent's control channel to ``url``, once ``attached()`` says it is."""
    ws_url = url.replace("http://", "ws://") + "/api/v1/agent/control"
    async with connect(ws_url, additional_headers={"Authorization": f"Bearer {agent_token}"}) as ws:
        wait_for(attached, 10, what="the fake agent to attach")
        yield ws


def sign_in(url: str, username: str, password: str) -> tuple[str, str]:
    """A new API session: its token and its id."""
    with api(url) as c:
        r = c.post("/auth/login", json={"username": username, "password": password})
        r.raise_for_status()
        token = str(r.json()["token"])
    with api(url, token) as c:
        return token, next(s["id"] for s in c.get("/users/me/sessions").json() if s["current"])


def newest_connection(url: str, alice: str) -> dict:
    with api(url, alice) as c:
        r = c.get("/connections", params={"user": "bob"})
        r.raise_for_status()
        return dict(r.json()[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("signoutsetup")
    w = build_world(tmp, members=("bob",), start_agents=False, server=HeldDialsServer(tmp / "data"))
    try:
        with w.api("bob") as c:
            r = c.post("/workspaces", json={"name": "held", "provider": "byo"})
            r.raise_for_status()
            w.agent_tokens["bob/held"] = r.json()["agent_token"]
        yield w
    finally:
        w.close()
        assert "Traceback" not in w.server.log(), w.server.log()[-5000:]


def _held_agent(world: World) -> Any:
    return control_channel(world.url, world.agent_tokens["bob/held"],
                           lambda: world.workspace("bob", "held")["agent_connected"])


def _end_by_logout(world: World, token: str, _session_id: str) -> None:
    with api(world.url, token) as c:
        assert c.post("/auth/logout").json() == {"ok": True}


def _end_by_revoke(world: World, _token: str, session_id: str) -> None:
    other, _ = sign_in(world.url, "bob", world.people["bob"].password)
    with api(world.url, other) as c:
        assert c.delete(f"/users/me/sessions/{session_id}").json() == {"ok": True}


def _end_by_new_password(world: World, _token: str, _session_id: str) -> None:
    with world.api("alice") as c:  # sets it to what it was: still a new password, sessions end
        r = c.put("/users/bob/password", json={"password": world.people["bob"].password})
        assert r.json()["revoked"] >= 1
    world.people["bob"].token = sign_in(world.url, "bob", world.people["bob"].password)[0]  # for the next tests


async def _released(world: World, server: HeldDialsServer, agent: Any, sweeps: int) -> asyncio.Task[DialAnswer]:
    """Once the sign-out's sweep has run (and found the held connection not yet live), let the
    connection go on; the fake agent answers its dial, and how the server ends it is the task's result."""
    wait_swept(server, sweeps)
    server.release()
    return asyncio.create_task(answer_dial(world.url, world.agent_tokens["bob/held"], await next_dial(agent)))


ENDINGS: dict[str, Callable[[World, str, str], None]] = {
    "hatchway logout": _end_by_logout,
    "hatchway sessions revoke": _end_by_revoke,
    "a new password": _end_by_new_password,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
async def test_a_session_ended_between_authorisation_and_registration_takes_the_connection(
    world: World, ending: str
) -> None:
    server = world.server
    assert isinstance(server, HeldDialsServer)
    token, session_id = sign_in(world.url, "bob", world.people["bob"].password)
    async with _held_agent(world) as agent:
        sweeps = len(server.sweeps())
        with held_before_live(server, session_id):
            client = await open_stream(world.url, token, "held")
        try:
            ENDINGS[ending](world, token, session_id)
            answer = await _released(world, server, agent, sweeps)
            assert await refusal_and_close_code(client, 10) == (SIGNED_OUT, ENDED)
            assert await answer == REFUSED_AT_REREAD
        finally:
            await client.close()
    row = newest_connection(world.url, world.people["alice"].token)
    assert (row["result"], row["reason"], row["workspace"]) == ("refused", SIGNED_OUT, "held")


async def test_signing_out_the_web_ui_between_authorisation_and_registration_takes_the_connection(world: World) -> None:
    server = world.server
    assert isinstance(server, HeldDialsServer)
    with httpx.Client(base_url=world.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "bob", "password": world.people["bob"].password}
        assert browser.post("/sign-in", data=form).status_code == 303
        cookie = browser.cookies["hatchway_session"]
        with api(world.url, cookie) as c:
            session_id = next(s["id"] for s in c.get("/users/me/sessions").json() if s["current"])
        async with _held_agent(world) as agent:
            sweeps = len(server.sweeps())
            with held_before_live(server, session_id):
                client = await open_stream(world.url, cookie, "held")
            try:
                signed_out = browser.post("/sign-out", data={"csrf_token": csrf_token(browser.get("/workspaces"))})
                assert (signed_out.status_code, signed_out.headers["location"]) == (303, "/")
                answer = await _released(world, server, agent, sweeps)
                assert await refusal_and_close_code(client, 10) == (SIGNED_OUT, ENDED)
                assert await answer == REFUSED_AT_REREAD
            finally:
                await client.close()


async def test_another_session_ended_meanwhile_leaves_the_connection_alone(world: World) -> None:
    """The refusal is this session's: a held connection whose own session lives on is relayed."""
    server = world.server
    assert isinstance(server, HeldDialsServer)
    token, session_id = sign_in(world.url, "bob", world.people["bob"].password)
    other_token, other_id = sign_in(world.url, "bob", world.people["bob"].password)
    async with _held_agent(world) as agent:
        sweeps = len(server.sweeps())
        with held_before_live(server, session_id):
            client = await open_stream(world.url, token, "held")
        try:
            _end_by_logout(world, other_token, other_id)
            answer = await _released(world, server, agent, sweeps)
            assert await asyncio.wait_for(client.recv(), 10) == b"SSH-2.0-fake\r\n"
            await client.send(b"SSH-2.0-client\r\n")
        finally:
            await client.close()
        assert (await answer).got == b"SSH-2.0-client\r\n"
    row = wait_for(lambda: (r := newest_connection(world.url, world.people["alice"].token))["ended_at"] and r, 10,
                   what="the record to be completed")
    assert (row["result"], row["reason"], row["workspace"]) == ("closed", None, "held")


# ---- across replicas ----------------------------------------------------------------------------


@pytest.fixture
def replicas(pg_url: str, tmp_path: Path) -> Iterator[tuple[World, HeldDialsServer]]:
    """Two replicas on one PostgreSQL: the world's (A, which holds bob's agents) and B."""
    w = build_world(tmp_path, members=("bob",), start_agents=False,
                    server=HeldDialsServer(tmp_path / "a", db_url=pg_url))
    b = HeldDialsServer(tmp_path / "b", db_url=pg_url)
    try:
        with w.api("bob") as c:
            r = c.post("/workspaces", json={"name": "held", "provider": "byo"})
            r.raise_for_status()
            w.agent_tokens["bob/held"] = r.json()["agent_token"]
        b.data_dir.mkdir(mode=0o700, parents=True)  # every replica needs the deployment secret of the first
        shutil.copy2(w.server.data_dir / "deployment.secret", b.data_dir / "deployment.secret")
        b.start()
        yield w, b
    finally:
        if b.proc is not None:
            b.stop()
        w.close()
        for s in (w.server, b):
            assert "Traceback" not in s.log(), s.log()[-5000:]


@pytest.mark.postgres
async def test_a_logout_on_one_replica_takes_a_connection_being_set_up_on_another(
    replicas: tuple[World, HeldDialsServer],
) -> None:
    """Bob's agent is on replica A; his connection arrives at B and is held there while he logs
    out through A. A's sweep reaches B (over PostgreSQL) before the connection is live there, and
    B, released, must find the session gone in the shared database."""
    world, b = replicas
    token, session_id = sign_in(b.url, "bob", world.people["bob"].password)
    async with _held_agent(world) as agent:
        sweeps_b = len(b.sweeps())
        with held_before_live(b, session_id):
            client = await open_stream(b.url, token, "held")
        try:
            _end_by_logout(world, token, session_id)  # through A
            assert f"session_id='{session_id}'" in wait_swept(b, sweeps_b)  # what A told B
            b.release()
            answer = asyncio.create_task(answer_dial(b.url, world.agent_tokens["bob/held"], await next_dial(agent)))
            assert await refusal_and_close_code(client, 10) == (SIGNED_OUT, ENDED)
            assert await answer == REFUSED_AT_REREAD
        finally:
            await client.close()
    row = newest_connection(world.url, world.people["alice"].token)
    assert (row["result"], row["reason"], row["workspace"]) == ("refused", SIGNED_OUT, "held")
