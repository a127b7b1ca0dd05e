"""A replica joining the others (``Cluster.join``), on SQLite and PostgreSQL, with replicas as
``Cluster`` objects in one process: a live replica whose beat is old only because the database
was out must keep its row and claims (agent, open SSH connection records); one that is really
dead is forgotten with its claims once the database has been reachable for FORGET_AFTER_S, even
with the secret from before a rotation, and at once when PostgreSQL shows it is gone; a replica
with another secret than the one the database records is refused whatever the others' state,
and of two joining at once with different secrets one is; and a live one at the joining
replica's own hand-over address refuses it too, keeping its row, while a dead predecessor's
there is forgotten; and of two joining at once at one address, one is refused.

An outage is played per replica: its session factory refuses while ``down``, and its row's beat
is set back, as the database finds it when it comes back. So a joining replica sees exactly
that, with no race against the silenced replica's next beat."""

from __future__ import annotations

import asyncio
import errno
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hatchway.db.engine import create_engine, migrate, sessionmaker
from hatchway.db.models import Provider, Replica, SSHConnection, User, Workspace, utcnow
from hatchway.server import presence, secret_record
from hatchway.server.cluster import (
    FORGET_AFTER_S, HEARTBEAT_S, LOST_REPLICA_REASON, Cluster, ClusterError, new_replica_id,
)
from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.polling import until

ON_POSTGRESQL = pytest.mark.parametrize("db_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

SECRET = b"\x01" * 32
OTHER_SECRET = b"\x02" * 32
#: How far back an outage leaves a replica's last beat: well past FORGET_AFTER_S.
OUTAGE_S = 3 * FORGET_AFTER_S
WRONG_SECRET = (
    "this server's deployment secret differs from the one this deployment's database was set up with; every "
    "replica needs the same secret: copy deployment.secret from a running replica's data dir into this one's, "
    "or put back the one this database was set up with (to change the secret, stop every replica and run "
    "hatchway server rotate-secret). Last resort, if no data dir, replica or backup holds that secret any more: "
    "stop every replica and run hatchway server rotate-secret --old-secret-lost, which gives every user a new "
    "SSH key pair"
)


class Outage:
    """A replica's session factory that refuses while ``down``, as an unreachable database does."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self.down = False

    def __call__(self) -> AsyncSession:
        if self.down:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused (the test's outage)")
        return self._sessions()


@dataclass(frozen=True)
class Claims:
    """What a replica claims: a workspace's agent and an open SSH connection's record."""

    workspace_id: str
    connection_id: str


@dataclass
class Rig:
    db_url: str
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    joined: list[Cluster] = field(default_factory=list)
    outages: dict[str, Outage] = field(default_factory=dict)
    engines: dict[str, AsyncEngine] = field(default_factory=dict)

    def replica(self, secret: bytes = SECRET, address: str | None = None) -> Cluster:
        """A replica on its own loopback address, or on ``address`` (never dialled: join sends
        no traffic), with an engine of its own whose connections carry its name, as a server's do."""
        replica_id = new_replica_id()
        engine = create_engine(self.db_url, application_name=presence.application_name(replica_id))
        outage = Outage(sessionmaker(engine))
        address = address or f"http://127.0.0.1:{7100 + len(self.outages)}"
        cluster = Cluster(outage, secret, address, replica_id)  # type: ignore[arg-type]
        self.outages[cluster.id] = outage
        self.engines[cluster.id] = engine
        return cluster

    async def join(self, cluster: Cluster) -> Cluster:
        await cluster.join()
        self.joined.append(cluster)
        return cluster

    async def rotate(self, secret: bytes) -> None:
        """Make ``secret`` the deployment's, as ``hatchway server rotate-secret`` records it."""
        async with self.sessions() as db:
            await secret_record.record(db, secret_record.check_value(secret))
            await db.commit()

    async def kill(self, cluster: Cluster) -> None:
        """Kill ``cluster``: it stops beating, and its database connections close, as those of a
        process that exits do (its kernel closes them)."""
        stop_beating(cluster)
        await self.engines[cluster.id].dispose()

    async def cut_off(self, cluster: Cluster) -> None:
        """The database is out for ``cluster``: its beats fail, and its row's last beat is old."""
        self.outages[cluster.id].down = True
        async with self.sessions() as db:
            await db.execute(
                update(Replica).where(Replica.id == cluster.id).values(heartbeat_at=utcnow() - timedelta(seconds=OUTAGE_S))
            )
            await db.commit()

    async def claim(self, replica_id: str) -> Claims:
        """An agent connected through ``replica_id`` and an SSH connection open on it."""
        async with self.sessions() as db:
            user = User(username=f"u{secrets.token_hex(4)}", email="u@example.com", role="member", ssh_public_key="",
                        ssh_private_key_sealed="", ssh_key_fingerprint="")
            provider = Provider(name=f"p{secrets.token_hex(4)}", kind="manual")
            db.add_all([user, provider])
            await db.flush()
            ws = Workspace(name="dev", owner_id=user.id, provider_id=provider.id, state="running",
                           agent_connected=True, agent_replica_id=replica_id)
            conn = SSHConnection(workspace_name="dev", username=user.username, result="open", replica_id=replica_id)
            db.add_all([ws, conn])
            await db.commit()
            return Claims(ws.id, conn.id)

    async def claims_of(self, claims: Claims) -> tuple[bool, str | None, str, str | None]:
        """(agent connected, through which replica, the connection's result, its reason)."""
        async with self.sessions() as db:
            ws = await db.get(Workspace, claims.workspace_id)
            conn = await db.get(SSHConnection, claims.connection_id)
            assert ws is not None and conn is not None
            return ws.agent_connected, ws.agent_replica_id, conn.result, conn.reason

    async def registered(self, replica_id: str) -> bool:
        async with self.sessions() as db:
            return await db.get(Replica, replica_id) is not None


@pytest.fixture
async def rig(db_url: str) -> AsyncIterator[Rig]:
    engine = create_engine(db_url)
    await migrate(engine)
    made = Rig(db_url, engine, sessionmaker(engine))
    try:
        yield made
    finally:
        for outage in made.outages.values():
            outage.down = False
        for cluster in made.joined:
            await cluster.leave()
        for replica_engine in made.engines.values():
            await replica_engine.dispose()
        await engine.dispose()


def count_forget_passes(cluster: Cluster) -> list[list[str]]:
    """The replicas each of ``cluster``'s forget passes forgot, one list per pass, as they end."""
    passes: list[list[str]] = []
    forget_dead = cluster.forget_dead

    async def counted() -> list[str]:
        dead = await forget_dead()
        passes.append(dead)
        return dead

    cluster.forget_dead = counted  # type: ignore[method-assign]
    return passes


def stop_beating(cluster: Cluster) -> None:
    """Hang ``cluster``: no more beats and no goodbye; its row and claims stay behind, and so do
    its database connections, as those of a process that hangs, or of a host cut off from the
    network, stay open on PostgreSQL's side."""
    assert cluster._task is not None
    cluster._task.cancel()
    cluster._task = None


@ON_BOTH_DATABASES
async def test_a_replica_joining_as_the_database_comes_back_leaves_the_live_replicas_and_their_claims(rig: Rig) -> None:
    live = await rig.join(rig.replica())
    claims = await rig.claim(live.id)
    await rig.cut_off(live)
    joining = rig.replica()
    passes = count_forget_passes(joining)
    await rig.join(joining)
    assert await rig.claims_of(claims) == (True, live.id, "open", None)
    assert await rig.registered(live.id)
    rig.outages[live.id].down = False  # the live replica's next beat gets through
    # The joining replica's heartbeat loop forgets nobody before the database has been up for
    # FORGET_AFTER_S; by its first forget pass the live replica has beaten again.
    async def forget_pass_done() -> bool:
        return bool(passes)

    await until(forget_pass_done, FORGET_AFTER_S + 10 * HEARTBEAT_S, "a forget pass")
    assert passes[0] == []
    assert await rig.claims_of(claims) == (True, live.id, "open", None)
    assert await rig.registered(live.id)


@ON_BOTH_DATABASES
@pytest.mark.parametrize("secret", [SECRET, OTHER_SECRET], ids=["same-secret", "secret-rotated-since"])
async def test_a_replica_dead_before_the_join_is_forgotten_with_its_claims_once_the_database_stayed_up(
    rig: Rig, secret: bytes,
) -> None:
    """One that stopped beating with its database connections still open (hung, or its host
    cut off) is forgotten after FORGET_AFTER_S of reachable database (the joining replica cannot
    tell it from a live one cut off by an outage before that), within two beats more; and a
    dead one with the secret from before a rotation does not stop the new replica from starting."""
    dead = await rig.join(rig.replica(secret))
    claims = await rig.claim(dead.id)
    stop_beating(dead)
    await rig.rotate(SECRET)
    await rig.cut_off(dead)
    started = time.monotonic()
    joining = await rig.join(rig.replica(SECRET))
    assert await rig.registered(joining.id)

    async def forgotten() -> bool:
        return not await rig.registered(dead.id)

    await until(forgotten, FORGET_AFTER_S + 10 * HEARTBEAT_S, "the dead replica forgotten")
    took = time.monotonic() - started
    assert FORGET_AFTER_S <= took <= FORGET_AFTER_S + 2 * HEARTBEAT_S + 1.0, took
    assert await rig.claims_of(claims) == (False, None, "failed", LOST_REPLICA_REASON)


@ON_BOTH_DATABASES
async def test_a_replica_with_another_secret_is_refused_while_the_deployments_replicas_are_cut_off(rig: Rig) -> None:
    """The database records the deployment's secret, so one with another is refused whatever
    the live replicas look like: here cut off, silent through the whole join, which used to let
    it start beside them (they were taken for stopped)."""
    live = await rig.join(rig.replica(SECRET))
    claims = await rig.claim(live.id)
    await rig.cut_off(live)
    joining = rig.replica(OTHER_SECRET)
    with pytest.raises(ClusterError) as refused:
        await asyncio.wait_for(joining.join(), FORGET_AFTER_S + 5 * HEARTBEAT_S)
    assert str(refused.value) == WRONG_SECRET
    assert not await rig.registered(joining.id)
    assert await rig.registered(live.id)
    assert await rig.claims_of(claims) == (True, live.id, "open", None)


@ON_BOTH_DATABASES
async def test_of_two_replicas_with_different_secrets_joining_at_once_on_a_new_database_one_is_refused(
    rig: Rig,
) -> None:
    """Neither can see the other's row when both look: the database's record of the secret,
    which only one can make, refuses the other."""
    first, second = rig.replica(SECRET), rig.replica(OTHER_SECRET)
    results = await asyncio.gather(first.join(), second.join(), return_exceptions=True)
    joined = [c for c, result in zip((first, second), results) if result is None]
    rig.joined.extend(joined)
    refusals = [result for result in results if result is not None]
    assert len(joined) == 1 and len(refusals) == 1, results
    assert isinstance(refusals[0], ClusterError) and str(refusals[0]) == WRONG_SECRET
    assert [await rig.registered(c.id) for c in (first, second)] == [c in joined for c in (first, second)]


@ON_BOTH_DATABASES
async def test_a_live_replica_at_the_same_address_with_another_secret_refuses_the_join_and_keeps_its_claims(
    rig: Rig,
) -> None:
    """Two replicas given one hand-over address (the default 127.0.0.1:7080 on two hosts): one
    with another deployment secret neither starts beside the live one nor forgets it and its
    claims."""
    live = await rig.join(rig.replica(OTHER_SECRET))
    claims = await rig.claim(live.id)
    joining = rig.replica(SECRET, address=live.relay_url)
    with pytest.raises(ClusterError) as refused:
        await asyncio.wait_for(joining.join(), FORGET_AFTER_S + 5 * HEARTBEAT_S)
    assert str(refused.value) == WRONG_SECRET
    assert not await rig.registered(joining.id)
    assert await rig.registered(live.id)
    assert await rig.claims_of(claims) == (True, live.id, "open", None)


@ON_BOTH_DATABASES
@pytest.mark.parametrize("secret", [SECRET, OTHER_SECRET], ids=["same-secret", "secret-rotated-since"])
async def test_a_predecessor_that_died_at_the_same_address_is_forgotten_at_the_join(rig: Rig, secret: bytes) -> None:
    """A restart at the same address, with the same secret or a rotated one: the dead
    predecessor's row (its beat still fresh) does not beat again, so the join goes on within
    FORGET_AFTER_S and clears it."""
    dead = await rig.join(rig.replica(secret))
    claims = await rig.claim(dead.id)
    stop_beating(dead)
    await rig.rotate(SECRET)
    joining = rig.replica(SECRET, address=dead.relay_url)
    started = time.monotonic()
    await rig.join(joining)
    assert time.monotonic() - started <= FORGET_AFTER_S + 2 * HEARTBEAT_S
    assert await rig.registered(joining.id)
    assert not await rig.registered(dead.id)
    assert await rig.claims_of(claims) == (False, None, "failed", LOST_REPLICA_REASON)


@ON_BOTH_DATABASES
async def test_a_live_replica_at_the_same_address_with_the_same_secret_refuses_the_join_and_keeps_its_row(
    rig: Rig,
) -> None:
    """A second server started by mistake with the settings of a running one: the running one's
    row, and what it claims, are there at every moment of the join, and the new one is refused
    with the address and what to do about it."""
    live = await rig.join(rig.replica())
    claims = await rig.claim(live.id)
    joining = rig.replica(address=live.relay_url)
    missing_at: list[float] = []

    async def watch_row() -> None:
        while True:
            if not await rig.registered(live.id):
                missing_at.append(time.monotonic())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch_row())
    try:
        with pytest.raises(ClusterError) as refused:
            await asyncio.wait_for(joining.join(), FORGET_AFTER_S + 5 * HEARTBEAT_S)
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    assert str(refused.value) == (
        f"another Hatchway server, replica {live.id}, is running with this server's hand-over address "
        f"{live.relay_url}: stop it before starting this one, or give each server its own address with "
        "--internal-url (or --listen)"
    )
    assert missing_at == []
    assert not await rig.registered(joining.id)
    assert await rig.claims_of(claims) == (True, live.id, "open", None)


@ON_BOTH_DATABASES
async def test_of_two_replicas_joining_at_once_at_one_address_one_registers_and_the_other_is_refused(rig: Rig) -> None:
    """Two servers started at the same instant with one hand-over address: each has looked and
    found no one there (a barrier holds each after its check until the other has checked too),
    then both register; only the first can, and the other is refused naming it."""
    first, second = rig.replica(address="http://127.0.0.1:7080"), rig.replica(address="http://127.0.0.1:7080")
    both_checked = asyncio.Barrier(2)
    for cluster in (first, second):
        hold_after_check(cluster, both_checked)
    results = await asyncio.gather(first.join(), second.join(), return_exceptions=True)
    joined = [c for c, result in zip((first, second), results) if result is None]
    rig.joined.extend(joined)
    refusals = [result for result in results if result is not None]
    assert len(joined) == 1 and len(refusals) == 1, results
    assert isinstance(refusals[0], ClusterError) and str(refusals[0]) == (
        f"another Hatchway server, replica {joined[0].id}, is running with this server's hand-over address "
        "http://127.0.0.1:7080: stop it before starting this one, or give each server its own address with "
        "--internal-url (or --listen)"
    )
    assert [await rig.registered(c.id) for c in (first, second)] == [c in joined for c in (first, second)]


@ON_BOTH_DATABASES
async def test_a_replica_back_from_an_outage_where_another_took_its_address_stops_and_says_why_once(
    rig: Rig, caplog: pytest.LogCaptureFixture,
) -> None:
    """Cut off long enough to be forgotten, and meanwhile another server started with its
    address: back, it does not register beside that one, says why in one line and stops (it
    used to say so at every beat while it went on serving, unregistered)."""
    cut_off = await rig.join(rig.replica())
    stopped: list[str] = []
    cut_off.on_displaced = lambda: stopped.append(cut_off.id)
    await rig.cut_off(cut_off)
    successor = await rig.join(rig.replica(address=cut_off.relay_url))
    assert not await rig.registered(cut_off.id)

    async def heartbeat_ended() -> bool:
        return cut_off._task is not None and cut_off._task.done()

    with caplog.at_level("ERROR", logger="hatchway.server.cluster"):
        rig.outages[cut_off.id].down = False
        await until(heartbeat_ended, 5 * HEARTBEAT_S, "the returning replica's heartbeat ends")
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"replica {cut_off.id} stops: the other replicas forgot it (cut off from the database, or frozen, for over 4 s) "
        f"and meanwhile another Hatchway server, replica {successor.id}, started with its hand-over address "
        f"{cut_off.relay_url}; give each server its own address with --internal-url (or --listen), or stop the other "
        "one, then start this one again"
    ]
    assert stopped == [cut_off.id]
    assert await rig.registered(successor.id)
    assert not await rig.registered(cut_off.id)


@ON_BOTH_DATABASES
async def test_a_replica_back_from_an_outage_where_a_server_since_dead_took_its_address_takes_it_back(
    rig: Rig, caplog: pytest.LogCaptureFixture,
) -> None:
    """The server that registered at the address meanwhile died before it was forgotten: its
    row stays silent, so the returning replica forgets it, as a joining one forgets a dead
    predecessor, and registers again instead of stopping."""
    cut_off = await rig.join(rig.replica())
    stopped: list[str] = []
    cut_off.on_displaced = lambda: stopped.append(cut_off.id)
    await rig.cut_off(cut_off)
    successor = await rig.join(rig.replica(address=cut_off.relay_url))
    await rig.kill(successor)
    claims = await rig.claim(successor.id)

    async def back() -> bool:
        return await rig.registered(cut_off.id)

    with caplog.at_level("WARNING", logger="hatchway.server.cluster"):
        rig.outages[cut_off.id].down = False
        await until(back, FORGET_AFTER_S + 10 * HEARTBEAT_S, "the returning replica registered again")
    assert not await rig.registered(successor.id)
    assert await rig.claims_of(claims) == (False, None, "failed", LOST_REPLICA_REASON)
    assert stopped == []
    assert f"replica {cut_off.id} had been forgotten by the others (database outage?); registered again" in [
        r.getMessage() for r in caplog.records
    ]
    assert not [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]


@ON_BOTH_DATABASES
async def test_registering_again_a_replica_already_registered_is_no_refusal(rig: Rig) -> None:
    """A registration whose commit went through but whose answer was lost is tried again: the
    replica then finds its own row at its address, which is not another server's. It was refused
    naming itself as "another Hatchway server"."""
    replica = await rig.join(rig.replica())
    await replica._register()
    assert await rig.registered(replica.id)


def hold_after_check(cluster: Cluster, barrier: asyncio.Barrier) -> None:
    """Make ``cluster``'s join wait at ``barrier`` once it has checked who is registered and
    cleared what the dead left (its last step before registering)."""
    forget = cluster._forget
    held = False

    async def then_wait(ids: list[str], unclaimed: bool = False) -> None:
        nonlocal held
        await forget(ids, unclaimed)
        if not held:
            held = True
            await asyncio.wait_for(barrier.wait(), FORGET_AFTER_S + 5 * HEARTBEAT_S)

    cluster._forget = then_wait  # type: ignore[method-assign]


@ON_POSTGRESQL
async def test_a_replica_postgresql_shows_is_gone_is_forgotten_at_the_join_and_one_still_connected_is_not(
    rig: Rig,
) -> None:
    """A replica killed (its connections closed) and silent for FORGET_AFTER_S is gone, as
    PostgreSQL shows: the joining replica forgets it and its claims at once, not FORGET_AFTER_S
    later. One silent as long whose connections are still open (cut off by a network outage,
    say) may be alive: it is kept, with its claims."""
    dead = await rig.join(rig.replica())
    cut_off = await rig.join(rig.replica())
    dead_claims = await rig.claim(dead.id)
    cut_off_claims = await rig.claim(cut_off.id)
    await rig.kill(dead)
    await rig.cut_off(dead)  # its last beat is OUTAGE_S old
    await rig.cut_off(cut_off)
    joining = await rig.join(rig.replica())
    assert await rig.registered(joining.id)
    assert not await rig.registered(dead.id)
    assert await rig.claims_of(dead_claims) == (False, None, "failed", LOST_REPLICA_REASON)
    assert await rig.registered(cut_off.id)
    assert await rig.claims_of(cut_off_claims) == (True, cut_off.id, "open", None)
