"""The supervisor's state machine with a fake provider and hub: which commands change the state
a person sees, and that none leaves a workspace "starting" while its agent is connected."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import Provider, User, Workspace
from hatchway.providers.base import Prepared, RunningAgent, WorkspaceProvider, WorkspaceSpec
from hatchway.providers.supervisor import Supervisor


class FakeAgent(RunningAgent):
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._ended = asyncio.Event()

    async def wait(self) -> int:
        await self._ended.wait()
        return 0

    async def stop(self, grace: float) -> int:
        self._ended.set()
        return 0


class FakeProvider(WorkspaceProvider):
    kind = "local"

    def __init__(self) -> None:
        self.launched: list[FakeAgent] = []

    async def prepare(self, spec: WorkspaceSpec) -> Prepared:
        return Prepared(unix_user="nobody", home="/nonexistent", isolation="none (a test)", agent_url="http://t")

    async def launch(self, spec: WorkspaceSpec, prepared: Prepared, agent_token: str) -> RunningAgent:
        self.launched.append(FakeAgent(len(self.launched) + 1))
        return self.launched[-1]

    async def teardown(self, spec: WorkspaceSpec) -> None:
        pass

    async def destroy(self, spec: WorkspaceSpec) -> None:
        pass


class FakeHub:
    """Which agents have connected their control channel (AgentHub.get's answer)."""

    def __init__(self) -> None:
        self.connected: set[str] = set()

    def get(self, ws_id: str) -> object | None:
        return object() if ws_id in self.connected else None


class NoBroadcast:
    async def disconnect_agent(self, ws_id: str, reason: str) -> None:
        pass

    async def end_sessions(self, match: Any, reason: str) -> None:
        pass


@dataclass
class Rig:
    supervisor: Supervisor
    provider: FakeProvider
    hub: FakeHub
    sessions: Any
    ws_id: str

    async def state(self) -> tuple[str, str | None]:
        async with self.sessions() as db:
            ws = (await db.execute(select(Workspace).where(Workspace.id == self.ws_id))).scalar_one()
            return ws.state, ws.state_reason

    async def until(self, state: str, timeout: float = 5.0) -> None:
        """The supervisor notices a connected agent by polling its hub every 0.1 s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (await self.state())[0] != state:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"still {await self.state()} after {timeout} s, expected {state}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await migrate(engine)
    sessions = sessionmaker(engine)
    async with sessions() as db:
        user = User(username="alice", email="alice@example.com", role="site-manager", ssh_public_key="",
                    ssh_private_key_sealed="", ssh_key_fingerprint="")
        provider = Provider(name="local", kind="local")
        db.add_all([user, provider])
        await db.flush()
        ws = Workspace(name="dev", owner_id=user.id, provider_id=provider.id, state="stopped", desired_state="stopped")
        db.add(ws)
        await db.commit()
        ws_id = ws.id
    fake, hub = FakeProvider(), FakeHub()
    supervisor = Supervisor(sessions, hub, NoBroadcast(), {"local": fake})
    try:
        yield Rig(supervisor, fake, hub, sessions, ws_id)
    finally:
        await supervisor.shutdown()
        await engine.dispose()


async def test_starting_a_running_workspace_changes_nothing(rig: Rig) -> None:
    await rig.supervisor.start(rig.ws_id)
    assert await rig.state() == ("starting", "setting up and starting its agent")
    rig.hub.connected.add(rig.ws_id)
    await rig.until("running")
    await rig.supervisor.start(rig.ws_id)
    # Still running, same agent: nothing would ever mark it running again.
    assert await rig.state() == ("running", None)
    assert [a.pid for a in rig.provider.launched] == [1]


async def test_starting_a_starting_workspace_keeps_its_launch(rig: Rig) -> None:
    await rig.supervisor.start(rig.ws_id)
    await rig.supervisor.start(rig.ws_id)
    assert await rig.state() == ("starting", "setting up and starting its agent")
    rig.hub.connected.add(rig.ws_id)
    await rig.until("running")
    assert [a.pid for a in rig.provider.launched] == [1]


async def test_restarting_a_running_workspace_launches_a_new_agent_and_runs_again(rig: Rig) -> None:
    await rig.supervisor.start(rig.ws_id)
    rig.hub.connected.add(rig.ws_id)
    await rig.until("running")
    await rig.supervisor.restart(rig.ws_id)
    await rig.until("running")
    assert [a.pid for a in rig.provider.launched] == [1, 2]
