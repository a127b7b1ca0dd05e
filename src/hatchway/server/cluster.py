"""This replica among the others: its registration, heartbeat, and how replicas reach each other.

Every server process registers a row in ``replicas`` (id, the URL other replicas use to hand
streams over, heartbeat) and refreshes it every second. Each replica also forgets the ones whose
heartbeat stopped: their row goes, and so does everything claiming them (agents marked as
connected through them, SSH connections shown as open on them). With SQLite there is just one
replica, and the same bookkeeping closes what a crashed previous run left open.

Replica-to-replica requests carry a signature made with a key derived from the deployment
secret (which every replica must share), over the sender, a timestamp, a random nonce and the
whole request: method, path, query string and a SHA-256 of the body. The receiver accepts each
nonce once while its timestamp is fresh, so a signed request seen on the wire can be neither
sent again nor given another body or query (another workspace to delete, another stream's).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hatchway.db.models import Replica, SSHConnection, Workspace, utcnow
from hatchway.server import secret_record
from hatchway.server.crypto import derive_key
from hatchway.server.errors import db_error_text
from hatchway.server.presence import DatabaseView, look
from hatchway.names import stream_label

log = logging.getLogger("hatchway.server.cluster")

HEARTBEAT_S = 1.0
#: Tries to register while the address is taken and let go again in between (each a race lost).
REGISTER_ATTEMPTS = 5
RECLAIM_EVERY = 10
#: A replica whose heartbeat is older than this is gone (a few missed beats, not one slow one).
FORGET_AFTER_S = 4.0
#: How far a signed request's timestamp may be from ours (clocks must be NTP-synchronised).
SIGNATURE_WINDOW_S = 30
AUTH_HEADER = "X-Hatchway-Replica"
REPLICA_ID_LEN = 16
LOST_REPLICA_REASON = "the Hatchway server process relaying it stopped"
PROVEN_GONE = "forgot stopped replica(s) %s and what they held: PostgreSQL shows they are gone"


class ClusterError(Exception):
    """This replica cannot join the others; the message says what to fix."""


class AddressTaken(ClusterError):
    """Another server, replica ``holder``, is registered at this replica's hand-over address."""

    def __init__(self, holder: str, message: str) -> None:
        super().__init__(message)
        self.holder = holder


#: Nonces remembered at once. Only a replica holding the key can add one, and each is forgotten
#: once its timestamp is out of the window: thousands of replica-to-replica requests a second fit.
MAX_NONCES = 200_000
#: ``REPLICA.TS.NONCE.MAC``: a replica id, Unix seconds, 128 random bits and the MAC, in hex.
_SIGNATURE = re.compile(rf"([0-9a-f]{{{REPLICA_ID_LEN}}})\.([0-9]{{1,12}})\.([0-9a-f]{{32}})\.([0-9a-f]{{64}})")


def _mac(key: bytes, replica_id: str, ts: str, nonce: str, method: str, path: str, query: str, body: bytes) -> str:
    """The MAC of a request: who sent it, when, once (the nonce), and all of what it asks."""
    signed = "\n".join((replica_id, ts, nonce, method.upper(), path, query, hashlib.sha256(body).hexdigest()))
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


def sign(
    key: bytes, replica_id: str, method: str, path: str, query: str = "", body: bytes = b"",
    now: float | None = None, nonce: str | None = None,
) -> str:
    """The value of :data:`AUTH_HEADER` for a request from ``replica_id``: ``query`` is the query
    string as sent (without ``?``), ``body`` the body's bytes as sent."""
    ts = str(int(time.time() if now is None else now))
    nonce = nonce or secrets.token_hex(16)
    return f"{replica_id}.{ts}.{nonce}.{_mac(key, replica_id, ts, nonce, method, path, query, body)}"


class SeenNonces:
    """Nonces of the signatures accepted, each kept until its timestamp leaves the window (after
    which the timestamp alone refuses it): what makes a signature good for one request."""

    def __init__(self, limit: int = MAX_NONCES) -> None:
        self._limit = limit
        self._until: OrderedDict[str, float] = OrderedDict()  # nonce -> when it may be forgotten
        self._warned = False

    def first_use(self, nonce: str, ts: int, now: float) -> bool:
        """Record ``nonce``; False when it was used before (a replay) or, in the unlikely case
        that the limit is reached by fresh ones, when it cannot be remembered."""
        while self._until:
            oldest, until = next(iter(self._until.items()))
            if until >= now:
                break  # roughly in order: signatures are sent as they are made
            del self._until[oldest]
        if nonce in self._until:
            return False
        if len(self._until) >= self._limit:
            if not self._warned:
                self._warned = True
                log.warning("refusing replica-to-replica requests: over %d in %d s, more than this replica can "
                            "check for replays; see whether a replica is misbehaving", self._limit, 2 * SIGNATURE_WINDOW_S)
            return False
        self._warned = False
        self._until[nonce] = ts + SIGNATURE_WINDOW_S
        return True

    def remembered(self) -> int:
        """How many nonces are held (the memory this costs)."""
        return len(self._until)


def verify(
    key: bytes, header: str | None, method: str, path: str, query: str = "", body: bytes = b"", *,
    seen: SeenNonces, now: float | None = None,
) -> str | None:
    """The sending replica's id when ``header`` is a fresh, valid signature of this very request
    (method, path, query string, body) that was not used before; else None."""
    m = _SIGNATURE.fullmatch(header or "")
    if m is None:
        return None
    replica_id, ts, nonce, mac = m.groups()
    now = time.time() if now is None else now
    if abs(now - int(ts)) > SIGNATURE_WINDOW_S:
        return None
    if not hmac.compare_digest(_mac(key, replica_id, ts, nonce, method, path, query, body), mac):
        return None
    return replica_id if seen.first_use(nonce, int(ts), now) else None


def _silent(rows: list[Replica]) -> list[Replica]:
    """The replicas whose last beat is older than FORGET_AFTER_S: dead, or cut off by an outage."""
    cutoff = utcnow() - timedelta(seconds=FORGET_AFTER_S)
    return [r for r in rows if r.heartbeat_at < cutoff]


def proven_dead(rows: list[Replica], view: DatabaseView | None, now: datetime | None = None) -> list[str]:
    """The replicas of ``rows`` that PostgreSQL's ``view`` shows are gone, not cut off: silent for
    FORGET_AFTER_S with no connection open, PostgreSQL up since well before their last beat (a
    PostgreSQL restart silences live replicas and drops their connections; the margin of
    FORGET_AFTER_S covers a replica's clock, which stamped the beat, a few seconds off the
    database's). None of them on SQLite (``view`` None). See hatchway.server.presence."""
    if view is None:
        return []
    now = now or utcnow()
    dead = []
    for r in rows:
        silent_s = (now - r.heartbeat_at).total_seconds()
        if silent_s >= FORGET_AFTER_S and r.id not in view.connected and view.up_s >= silent_s + FORGET_AFTER_S:
            dead.append(r.id)
    return dead


def new_replica_id() -> str:
    return secrets.token_hex(REPLICA_ID_LEN // 2)


def origin_of(stream_id: str) -> str:
    """Stream ids start with the id of the replica where the client waits."""
    return stream_id[:REPLICA_ID_LEN]


class Cluster:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], deployment_secret: bytes, relay_url: str, replica_id: str,
    ) -> None:
        self.id = replica_id  # new_replica_id(); its database connections are named after it (presence.py)
        self.relay_url = relay_url.rstrip("/")
        self._sessions = sessions
        self._key = derive_key(deployment_secret, b"replica-relay/v1")
        self._secret_check = secret_record.check_value(deployment_secret)
        self._seen = SeenNonces()
        self._http: httpx.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        #: Makes this replica's claims (agents it holds, supervision) true in the database again:
        #: called after it had been forgotten (a long database outage) and registered again, and
        #: every RECLAIM_EVERY beats, which repairs a claim that a lost write left wrong.
        self.on_reclaim: Callable[[], Awaitable[None]] | None = None
        #: Stops this server (and makes it exit with a failure): called once, when this replica
        #: comes back after being forgotten and finds another live server registered at its
        #: hand-over address. Serving on unregistered would make two servers claim one address,
        #: and agents recorded under an id no other replica knows, which cannot be handed streams.
        self.on_displaced: Callable[[], None] | None = None

    # ---- membership -------------------------------------------------------------------------

    async def join(self, alone: bool = False) -> None:
        """Check the secret is the deployment's, clear what a dead predecessor left, register.

        The deployment secret is compared with the one the database records (see
        hatchway.server.secret_record), not with the live replicas': those cannot all be seen.

        Forgotten here are only registrations that cannot be alive: every earlier one when
        ``alone`` (SQLite: one process by construction), so what a crashed predecessor claimed
        is cleared before the first request; the ones PostgreSQL shows are gone
        (:func:`proven_dead`), so a replica that died before this one started does not keep its
        claims, and supervision, for FORGET_AFTER_S more; and a row with our own hand-over
        address, once it has shown it is a dead predecessor's (see :meth:`_outwait`): another
        server running with this address makes this one refuse to start, its row untouched.
        Another replica's old beat alone proves nothing yet: the database may just be back from
        an outage that silenced every replica, and forgetting a live one marks its agents
        disconnected and its live SSH connections failed. The heartbeat loop forgets it if it
        stays silent while the database is reachable for FORGET_AFTER_S, counted from here, as
        after an outage of this replica's own."""
        if not hmac.compare_digest(await secret_record.claim(self._sessions, self._secret_check), self._secret_check):
            raise ClusterError(
                "this server's deployment secret differs from the one this deployment's database was set up "
                "with; every replica needs the same secret: copy deployment.secret from a running replica's "
                "data dir into this one's, or put back the one this database was set up with (to change the "
                "secret, stop every replica and run hatchway server rotate-secret). Last resort, if no data "
                "dir, replica or backup holds that secret any more: stop every replica and run hatchway server "
                "rotate-secret --old-secret-lost, which gives every user a new SSH key pair"
            )
        rows, dead = await self._survey()
        healthy_since = time.monotonic()  # the database answered: the heartbeat loop's guard starts now
        rows = [r for r in rows if alone or r.id not in dead]
        predecessors = [] if alone else [r for r in rows if r.relay_url == self.relay_url]
        others = [] if alone else [r for r in rows if r not in predecessors]
        if predecessors:
            await self._outwait({r.id: r.heartbeat_at for r in predecessors}, healthy_since)
        await self._forget(dead + [r.id for r in rows if alone or r in predecessors], unclaimed=True)
        await self._register()
        self._http = httpx.AsyncClient(timeout=5.0)
        self._task = asyncio.create_task(self._heartbeat_forever(healthy_since), name="replica-heartbeat")
        if dead:
            log.warning(PROVEN_GONE, ", ".join(dead))
        silent = len(_silent(others))
        log.info("replica %s registered (hand-over address %s; %d other replica(s)%s)", self.id, self.relay_url,
                 len(others) - silent, f", and {silent} silent one(s), forgotten if they stay silent" if silent else "")

    async def _survey(self, ids: list[str] | None = None) -> tuple[list[Replica], list[str]]:
        """The other replicas' rows (only those of ``ids`` when given), and the ids of those
        PostgreSQL shows are gone (:func:`proven_dead`)."""
        query = select(Replica).where(Replica.id != self.id)
        if ids is not None:
            query = query.where(Replica.id.in_(ids))
        async with self._sessions() as db:
            rows = list((await db.execute(query)).scalars().all())
            view = await look(db) if _silent(rows) else None
        return rows, proven_dead(rows, view)

    async def _outwait(self, predecessors: dict[str, datetime], healthy_since: float) -> None:
        """Wait until each replica of ``predecessors`` (registered at this server's own
        hand-over address; id: the beat its row showed) beats again, which raises AddressTaken
        (the join is refused; a replica back from being forgotten stops), or
        is forgotten or shown gone by PostgreSQL, or stays silent until the database has been
        reachable for FORGET_AFTER_S since ``healthy_since``: what the heartbeat loop takes for
        dead. A live replica beats every HEARTBEAT_S, so one is told from a dead one within a
        beat or two; a dead one costs FORGET_AFTER_S at most."""
        log.info("replica(s) %s registered at this server's own hand-over address %s: waiting up to %.0f s to see "
                 "whether they are alive (this server would then not run) or a stopped predecessor's (then forgotten)",
                 ", ".join(predecessors), self.relay_url, FORGET_AFTER_S)
        while True:
            rows, dead = await self._survey(list(predecessors))
            beat_again = [r for r in rows if r.heartbeat_at != predecessors[r.id]]
            if beat_again:
                raise self._address_taken(beat_again[0].id)
            if len(dead) == len(rows) or time.monotonic() - healthy_since >= FORGET_AFTER_S:
                break
            await asyncio.sleep(HEARTBEAT_S / 4)
        if rows:
            log.info("replica(s) %s stayed silent: taken for stopped; they will be forgotten",
                     ", ".join(r.id for r in rows))

    def _address_taken(self, replica_id: str) -> AddressTaken:
        return AddressTaken(
            replica_id,
            f"another Hatchway server, replica {replica_id}, is running with this server's hand-over "
            f"address {self.relay_url}: stop it before starting this one, or give each server its own "
            "address with --internal-url (or --listen)"
        )

    async def _register(self) -> None:
        """Add this replica's row. The database keeps one row per hand-over address: of servers
        started at the same instant with one address, each finding no one there when it looked,
        the first to register does and the others are refused here, naming it."""
        for _ in range(REGISTER_ATTEMPTS):
            try:
                async with self._sessions() as db:
                    db.add(Replica(id=self.id, relay_url=self.relay_url, secret_check=self._secret_check))
                    await db.commit()
                return
            except IntegrityError:
                async with self._sessions() as db:
                    holder = (await db.execute(
                        select(Replica.id).where(Replica.relay_url == self.relay_url)
                    )).scalar_one_or_none()
                if holder == self.id:
                    return  # registered already (a commit whose answer was lost, then a retry)
                if holder is not None:
                    raise self._address_taken(holder) from None
                # it left again meanwhile: the address is free
        raise ClusterError(
            f"could not register replica {self.id} at {self.relay_url}: other servers kept taking and leaving "
            "that address; give each server its own address with --internal-url (or --listen)"
        )

    async def _register_again(self) -> None:
        """Register after the others forgot this replica (its beat found no row). Meanwhile
        another server may have registered at this address: one that beats (a live server)
        raises AddressTaken; one that stays silent is a dead server's and is forgotten, as at
        the join (:meth:`_outwait`), and this replica takes its address back."""
        try:
            await self._register()
            return
        except AddressTaken as exc:
            holder = exc.holder
        rows, _ = await self._survey([holder])
        if rows:
            await self._outwait({r.id: r.heartbeat_at for r in rows}, time.monotonic())
            await self._forget([r.id for r in rows])
        await self._register()

    def _displaced(self, holder: str) -> None:
        """Say why this replica stops, in one line, and stop it (see on_displaced)."""
        log.error(
            "replica %s stops: the other replicas forgot it (cut off from the database, or frozen, for over %.0f s) "
            "and meanwhile another Hatchway server, replica %s, started with its hand-over address %s; give each "
            "server its own address with --internal-url (or --listen), or stop the other one, then start this one again",
            self.id, FORGET_AFTER_S, holder, self.relay_url,
        )
        if self.on_displaced is not None:
            self.on_displaced()

    async def leave(self) -> None:
        """Stop beating and remove this replica and its claims at once, not after a timeout."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
        try:
            await self._forget([self.id])
        except Exception as exc:  # the database may be what is going away
            log.warning("could not deregister replica %s: %s", self.id, db_error_text(exc))

    async def _heartbeat_forever(self, healthy_since: float | None) -> None:
        """Beat every HEARTBEAT_S; forget the replicas whose beat is old, but only once the
        database has been reachable for FORGET_AFTER_S (since ``healthy_since``, when join()
        first read it, or since the end of an outage). Ends when this replica, forgotten, finds
        another live server at its address (see on_displaced)."""
        beats = 0
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with self._sessions() as db:
                    n = (await db.execute(
                        update(Replica).where(Replica.id == self.id).values(heartbeat_at=utcnow())
                    )).rowcount
                    await db.commit()
                if not n:  # forgotten while the database was unreachable: come back
                    await self._register_again()
                beats += 1
                if not n:
                    log.warning("replica %s had been forgotten by the others (database outage?); registered again", self.id)
                if (not n or beats % RECLAIM_EVERY == 0) and self.on_reclaim is not None:
                    await self.on_reclaim()
                healthy_since = healthy_since or time.monotonic()
                # Right after an outage of our own, the others' beats are old because the
                # database was down, not because they are: give them time to beat again, and
                # meanwhile forget only those PostgreSQL shows are gone.
                if time.monotonic() - healthy_since >= FORGET_AFTER_S:
                    await self.forget_dead()
                else:
                    await self.forget_proven_dead()
            except AddressTaken as exc:  # a live server registered at this address meanwhile
                self._displaced(exc.holder)
                return  # no row to beat for: the server stops
            except ClusterError as exc:  # races lost to servers taking and leaving this address
                healthy_since = None
                log.error("replica %s cannot register again: %s", self.id, exc)
            except Exception as exc:
                healthy_since = None
                log.warning("replica heartbeat failed: %s", db_error_text(exc))

    async def forget_dead(self) -> list[str]:
        """Forget the replicas silent for FORGET_AFTER_S. Only for a caller that has seen the
        database reachable for as long: right after an outage every beat is old."""
        cutoff = utcnow() - timedelta(seconds=FORGET_AFTER_S)
        async with self._sessions() as db:
            dead = list((await db.execute(select(Replica.id).where(Replica.heartbeat_at < cutoff))).scalars())
        if dead:
            await self._forget(dead)
            log.warning("forgot stopped replica(s) %s and what they held", ", ".join(dead))
        return dead

    async def forget_proven_dead(self) -> list[str]:
        """Forget the replicas PostgreSQL shows are gone (:func:`proven_dead`): for a caller
        that has not yet seen the database reachable for FORGET_AFTER_S."""
        _, dead = await self._survey()
        if dead:
            await self._forget(dead)
            log.warning(PROVEN_GONE, ", ".join(dead))
        return dead

    async def _forget(self, ids: list[str], unclaimed: bool = False) -> None:
        """Remove replicas ``ids`` and what they claimed; ``unclaimed`` also clears claims that
        name no replica (written before replicas were tracked; never by a live replica)."""
        agent_held = Workspace.agent_replica_id.in_(ids)
        stream_held = SSHConnection.replica_id.in_(ids)
        if unclaimed:
            agent_held = or_(agent_held, Workspace.agent_replica_id.is_(None))
            stream_held = or_(stream_held, SSHConnection.replica_id.is_(None))
        async with self._sessions() as db:
            await db.execute(
                update(Workspace)
                .where(agent_held, Workspace.agent_connected.is_(True))
                .values(agent_connected=False, agent_replica_id=None)
            )
            await db.execute(
                update(SSHConnection)
                .where(stream_held, SSHConnection.result == "open", SSHConnection.ended_at.is_(None))
                .values(ended_at=utcnow(), result="failed", reason=LOST_REPLICA_REASON)
            )
            await db.execute(delete(Replica).where(Replica.id.in_(ids)))
            await db.commit()

    # ---- finding each other -----------------------------------------------------------------

    async def replica_url(self, replica_id: str) -> str | None:
        """Hand-over URL of a live replica other than this one."""
        if replica_id == self.id:
            return None
        cutoff = utcnow() - timedelta(seconds=FORGET_AFTER_S)
        async with self._sessions() as db:
            return (await db.execute(
                select(Replica.relay_url).where(Replica.id == replica_id, Replica.heartbeat_at >= cutoff)
            )).scalar_one_or_none()

    async def agent_replica(self, workspace_id: str) -> str | None:
        """Hand-over URL of the other live replica holding this workspace's agent, if any."""
        async with self._sessions() as db:
            rid = (await db.execute(
                select(Workspace.agent_replica_id).where(Workspace.id == workspace_id, Workspace.agent_connected.is_(True))
            )).scalar_one_or_none()
        return await self.replica_url(rid) if rid else None

    # ---- signed replica-to-replica requests -------------------------------------------------

    def auth_header(self, method: str, path: str, query: str = "", body: bytes = b"") -> dict[str, str]:
        return {AUTH_HEADER: sign(self._key, self.id, method, path, query, body)}

    def signed_json(self, path: str, payload: object) -> tuple[bytes, dict[str, str]]:
        """The body and headers of a signed JSON POST to ``path``: serialised here, so the
        signature covers the very bytes sent."""
        body = json.dumps(payload).encode()
        return body, {**self.auth_header("POST", path, body=body), "Content-Type": "application/json"}

    def check(self, header: str | None, method: str, path: str, query: str = "", body: bytes = b"") -> str | None:
        """The sending replica when ``header`` signs this request and was not used before."""
        return verify(self._key, header, method, path, query, body, seen=self._seen)

    async def request_dial(self, relay_url: str, workspace_id: str, stream_id: str, client: str) -> bool:
        """Ask the replica holding the agent to send it a dial; True when it did."""
        assert self._http is not None, "join() first"
        path = "/internal/v1/dial"
        body, headers = self.signed_json(path, {"workspace_id": workspace_id, "stream": stream_id, "client": client})
        try:
            r = await self._http.post(relay_url + path, content=body, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("replica at %s did not take the dial for stream %s: %s", relay_url, stream_label(stream_id), exc)
            return False
        if r.status_code != 204:
            log.info("replica at %s refused the dial for stream %s: HTTP %d", relay_url, stream_label(stream_id), r.status_code)
        return r.status_code == 204

    def stream_request(self, relay_url: str, stream_id: str, workspace_id: str) -> tuple[str, dict[str, Any]]:
        """URL and headers of the WebSocket that hands an agent's data stream to its origin."""
        path, query = f"/internal/v1/streams/{stream_id}", f"workspace={workspace_id}"
        base = relay_url.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        return f"{base}{path}?{query}", self.auth_header("GET", path, query)
