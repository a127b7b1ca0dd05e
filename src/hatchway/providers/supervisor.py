"""Keeps every running workspace of server-managed providers running.

The database says what should run (``desired_state``) and shows what does (``state``,
``state_reason``); this module turns the first into the second:

* ``starting`` — setting up and launching the agent, until its control channel connects;
* ``running`` — the agent connected (the relay lets SSH in only now);
* ``failed`` — with a reason a person can act on: a set-up error (no retry until someone
  starts it again), or an agent that keeps dying (retried with capped backoff meanwhile);
* ``stopped`` — nothing of it is running.

Each workspace that should run has exactly one owned task here (a *unit*); stopping, restarting
or deleting cancels that task, whose cleanup stops the agent and reaps it. At every launch the
workspace's agent token is replaced: only its hash is stored, the token itself goes to the new
agent through its environment and is then forgotten, so an agent from an earlier run (or a copy
of its token) is refused.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchway.db.models import Provider, Workspace
from hatchway.providers.base import RunningAgent, SetupError, WorkspaceProvider, WorkspaceSpec
from hatchway.providers.local import spec_from_row
from hatchway.server.auth import AGENT_TOKEN_PREFIX
from hatchway.server.crypto import new_token
from hatchway.server.relay import StreamMatch

log = logging.getLogger("hatchway.providers.supervisor")

#: How long an agent gets to connect before the state says it is late (it keeps waiting).
CONNECT_DEADLINE = 60.0
#: An agent that stayed up this long is healthy again: the next crash restarts quickly.
STABLE_AFTER = 60.0
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
#: Consecutive quick crashes after which the state turns from "starting" to "failed".
FAILED_AFTER = 3
STOP_GRACE = 5.0


def restart_delay(failures: int) -> float:
    """0.5 s, 1 s, 2 s ... capped at 30 s, with a little jitter so crash loops of many
    workspaces do not restart in lock step."""
    base = min(MAX_DELAY, FIRST_DELAY * 2 ** max(0, failures - 1))
    return base * random.uniform(0.9, 1.1)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by signal {-code}"
    if code > 128:
        return f"was killed by signal {code - 128}"
    return f"exited with status {code}"


class Supervisor:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        hub: Any,
        broadcast: Any,
        providers: dict[str, WorkspaceProvider],
    ) -> None:
        self._sessions = sessions
        self._hub = hub  # this replica's agents (hatchway.server.hub.AgentHub)
        self._broadcast = broadcast  # changes for every replica (hatchway.server.broadcast)
        self._providers = providers
        self._units: dict[str, asyncio.Task[None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closing = False

    def manages(self, provider_kind: str) -> bool:
        return provider_kind in self._providers

    def provider(self, provider_kind: str) -> WorkspaceProvider | None:
        return self._providers.get(provider_kind)

    def _lock(self, ws_id: str) -> asyncio.Lock:
        return self._locks.setdefault(ws_id, asyncio.Lock())

    # ---- server life cycle ------------------------------------------------------------------

    async def startup(self) -> None:
        """Bring back what should run; make sure what should not is really gone."""
        for provider in self._providers.values():
            await provider.startup()
        async with self._sessions() as db:
            rows = (
                await db.execute(select(Workspace).join(Workspace.provider).where(Provider.kind.in_(list(self._providers))))
            ).scalars().all()
            plan = [(w.id, w.desired_state, w.state, spec_from_row(w), w.provider.kind) for w in rows]
        for ws_id, desired, state, spec, kind in plan:
            if desired == "running":
                log.info("starting workspace %s/%s (it was running before the server stopped)", spec.owner, spec.name)
                await self._set(ws_id, state="starting", state_reason="starting after a server restart")
                self._spawn(ws_id)
            else:
                try:
                    await self._providers[kind].teardown(spec)
                except Exception as exc:  # leftovers are reported, not fatal for the server
                    log.warning("cleaning up stopped workspace %s/%s failed: %s", spec.owner, spec.name, exc)
                if state != "stopped":
                    await self._set(ws_id, state="stopped", state_reason=None)

    async def shutdown(self) -> None:
        """Stop every agent (their desired state is kept: they come back at the next start)."""
        self._closing = True
        ids = list(self._units)
        units = list(self._units.values())
        for task in units:
            task.cancel()
        await asyncio.gather(*units, return_exceptions=True)
        self._units.clear()
        # Nothing of a workspace outlives the server: namespaces are made again at the next start.
        for ws_id in ids:
            spec, kind = await self._load(ws_id)
            if spec is not None and kind is not None:
                try:
                    await self._providers[kind].teardown(spec)
                except Exception as exc:
                    log.warning("cleaning up workspace %s/%s failed: %s", spec.owner, spec.name, exc)
        for provider in self._providers.values():
            await provider.shutdown()

    # ---- commands (from the API) ------------------------------------------------------------

    async def start(self, ws_id: str, reason: str = "setting up and starting its agent") -> None:
        """Make the workspace run; one that already runs, or is on its way there, is left alone.

        Only a unit marks a workspace running, once, when its agent connects: "starting" written
        over the state of a unit that is past that point would stay forever, with the agent
        connected and SSH refused. So a workspace whose unit is launching, waiting for its agent
        or running is left as it is."""
        async with self._lock(ws_id):
            _, _, state = await self._load_state(ws_id)
            if ws_id in self._units and state in ("starting", "running"):
                return
            await self._set(ws_id, desired_state="running", state="starting", state_reason=reason)
            if ws_id in self._units and state == "failed":
                # Someone fixed what made it fail: try now rather than after the backoff.
                await self._stop_unit(ws_id)
            if ws_id not in self._units:
                self._spawn(ws_id)

    async def stop(self, ws_id: str) -> None:
        async with self._lock(ws_id):
            await self._set(ws_id, desired_state="stopped")
            # Sessions first, while they can still be told why: the agent's end would cut them bare.
            await self._broadcast.end_sessions(StreamMatch(workspace_id=ws_id), "the workspace was stopped")
            await self._stop_unit(ws_id)
            spec, kind = await self._load(ws_id)
            await self._broadcast.disconnect_agent(ws_id, "workspace stopped")
            if spec is not None and kind is not None:
                try:
                    await self._providers[kind].teardown(spec)
                except SetupError as exc:
                    await self._set(ws_id, state="failed", state_reason=f"stopping left something behind: {exc}")
                    raise
            await self._set(ws_id, state="stopped", state_reason=None, agent_connected=False)

    async def restart(self, ws_id: str) -> None:
        async with self._lock(ws_id):
            await self._set(ws_id, desired_state="running", state="starting", state_reason="restarting")
            await self._broadcast.end_sessions(StreamMatch(workspace_id=ws_id), "the workspace is restarting")
            await self._stop_unit(ws_id)
            self._spawn(ws_id)

    async def delete(self, ws_id: str) -> None:
        """Stop and remove everything of the workspace; the caller deletes the row afterwards."""
        async with self._lock(ws_id):
            spec, kind = await self._load(ws_id)
            label = f'workspace "{spec.owner}/{spec.name}"' if spec is not None else "the workspace"
            await self._broadcast.end_sessions(StreamMatch(workspace_id=ws_id), f"{label} was deleted")
            await self._stop_unit(ws_id)
            if spec is not None and kind is not None:
                await self._providers[kind].destroy(spec)
        self._locks.pop(ws_id, None)

    # ---- units ------------------------------------------------------------------------------

    def _spawn(self, ws_id: str) -> None:
        if self._closing:
            return
        task = asyncio.create_task(self._unit(ws_id), name=f"workspace-{ws_id[:8]}")
        self._units[ws_id] = task

        def forget(t: asyncio.Task[None]) -> None:
            if self._units.get(ws_id) is t:
                del self._units[ws_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("supervision of workspace %s ended with an error", ws_id, exc_info=t.exception())

        task.add_done_callback(forget)

    async def _stop_unit(self, ws_id: str) -> None:
        task = self._units.pop(ws_id, None)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _unit(self, ws_id: str) -> None:
        """Launch the agent, wait for it to connect, wait for it to end, restart it; forever."""
        agent: RunningAgent | None = None
        failures = 0
        loop = asyncio.get_running_loop()
        try:
            while True:
                spec, kind = await self._load(ws_id)
                if spec is None or kind is None:
                    return
                provider = self._providers[kind]
                try:
                    prepared = await provider.prepare(spec)
                    token, digest = new_token(AGENT_TOKEN_PREFIX)
                    await self._set(
                        ws_id, agent_token_hash=digest, unix_user=prepared.unix_user, isolation=prepared.isolation
                    )
                    # The previous agent's connection (if the server has not noticed its death
                    # yet) must not pass for the new one's.
                    await self._broadcast.disconnect_agent(ws_id, "agent restarted")
                    agent = await provider.launch(spec, prepared, token)
                    del token
                except SetupError as exc:
                    log.warning("workspace %s/%s cannot start: %s", spec.owner, spec.name, exc)
                    await self._set(ws_id, state="failed", state_reason=str(exc))
                    return
                except (OSError, ValueError) as exc:
                    log.exception("starting workspace %s/%s failed", spec.owner, spec.name)
                    await self._set(ws_id, state="failed", state_reason=f"starting the workspace failed: {exc}")
                    return
                started = loop.time()
                code = await self._watch(ws_id, spec, provider, agent, started)
                agent = None
                failures = 1 if loop.time() - started >= STABLE_AFTER else failures + 1
                delay = restart_delay(failures)
                tail = provider.log_tail(spec)
                where = provider.log_path(spec)
                reason = f"the agent {describe_exit(code)}" + (f" ({tail})" if tail else "")
                reason += f"; restarting in {delay:.1f} s" + (f"; see {where}" if where else "")
                log.warning("workspace %s/%s: %s", spec.owner, spec.name, reason)
                await self._set(
                    ws_id,
                    state="failed" if failures >= FAILED_AFTER else "starting",
                    state_reason=reason,
                )
                await asyncio.sleep(delay)
        finally:
            if agent is not None:
                await agent.stop(STOP_GRACE)

    async def _watch(
        self, ws_id: str, spec: WorkspaceSpec, provider: WorkspaceProvider, agent: RunningAgent, started: float
    ) -> int:
        """Mark the workspace running once its agent connects; return the agent's exit status."""
        loop = asyncio.get_running_loop()
        exited = asyncio.create_task(agent.wait(), name=f"wait-agent-{ws_id[:8]}")
        try:
            late = False
            while not exited.done():
                if self._hub.get(ws_id) is not None:
                    await self._set(ws_id, state="running", state_reason=None)
                    log.info("workspace %s/%s is running", spec.owner, spec.name)
                    break
                if not late and loop.time() - started > CONNECT_DEADLINE:
                    late = True
                    tail = provider.log_tail(spec)
                    await self._set(
                        ws_id,
                        state_reason=f"the agent has not connected after {CONNECT_DEADLINE:.0f} s; still waiting"
                        + (f" (last log line: {tail})" if tail else "")
                        + (f"; see {provider.log_path(spec)}" if provider.log_path(spec) else ""),
                    )
                await asyncio.wait({exited}, timeout=0.1 if not late else 1.0)
            return await exited
        finally:
            if not exited.done():
                exited.cancel()
                await asyncio.gather(exited, return_exceptions=True)

    # ---- database ---------------------------------------------------------------------------

    async def _load(self, ws_id: str) -> tuple[WorkspaceSpec | None, str | None]:
        async with self._sessions() as db:
            ws = (await db.execute(select(Workspace).where(Workspace.id == ws_id))).scalar_one_or_none()
            if ws is None or ws.provider.kind not in self._providers:
                return None, None
            return spec_from_row(ws), ws.provider.kind

    async def _load_state(self, ws_id: str) -> tuple[WorkspaceSpec | None, str | None, str | None]:
        async with self._sessions() as db:
            ws = (await db.execute(select(Workspace).where(Workspace.id == ws_id))).scalar_one_or_none()
            if ws is None or ws.provider.kind not in self._providers:
                return None, None, None
            return spec_from_row(ws), ws.provider.kind, ws.state

    async def _set(self, ws_id: str, **fields: Any) -> None:
        async with self._sessions() as db:
            ws = (await db.execute(select(Workspace).where(Workspace.id == ws_id))).scalar_one_or_none()
            if ws is None:
                return
            for key, value in fields.items():
                setattr(ws, key, value)
            await db.commit()
