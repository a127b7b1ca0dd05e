"""The control plane's tables.

Everything that matters lives here rather than in memory, so a restart (or, later, another
replica) sees the same world. Types are chosen to mean the same thing on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.expression import false as sa_false


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps always come back timezone-aware UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    role: Mapped[str] = mapped_column(String(20))
    suspended: Mapped[bool] = mapped_column(Boolean, default=False)
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    ssh_public_key: Mapped[str] = mapped_column(Text)
    ssh_private_key_sealed: Mapped[str] = mapped_column(Text)
    ssh_key_fingerprint: Mapped[str] = mapped_column(String(80))
    ssh_key_updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Written at most once a minute (hatchway.server.sessions.due_for_touch), not per request.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # What signed in (its User-Agent, printable and shortened) and from which address (0005).
    client: Mapped[str | None] = mapped_column(String(200), nullable=True)
    source: Mapped[str | None] = mapped_column(String(64), nullable=True)

    user: Mapped[User] = relationship(lazy="joined")


class Provider(Base):
    __tablename__ = "providers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    external_connect: Mapped[bool] = mapped_column(Boolean, default=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # ``docker`` providers (0003): the engine's socket (NULL: the server's DOCKER_HOST) and the
    # network containers join (NULL: none, only their own loopback).
    docker_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    docker_network: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = (UniqueConstraint("owner_id", "name", name="uq_workspace_owner_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(63))
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("providers.id"), index=True)
    env: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(20), default="pending")
    state_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    agent_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    # What the agent last reported about itself.
    agent_connected: Mapped[bool] = mapped_column(Boolean, default=False)
    agent_last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    os_user: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ssh_mode: Mapped[str | None] = mapped_column(String(20), nullable=True)
    ssh_server_version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    host_keys: Mapped[list[str]] = mapped_column(JSON, default=list)
    diagnostics: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Server-managed providers (``local``): what should run, survives server restarts (0002).
    desired_state: Mapped[str] = mapped_column(String(20), default="running", server_default="running")
    # Start Debian's sshd on the workspace's own port 22 (``--openssh``, local provider).
    openssh: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # The Unix user the provider created for it, and how it is isolated (or why it is not).
    unix_user: Mapped[str | None] = mapped_column(String(32), nullable=True)
    isolation: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Container providers (0003): the image it was created from, and systemd as PID 1 (--cvm).
    image: Mapped[str | None] = mapped_column(String(500), nullable=True)
    cvm: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    # The server replica holding the agent's control channel (0004); None when not connected.
    agent_replica_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)

    owner: Mapped[User] = relationship(lazy="joined")
    provider: Mapped[Provider] = relationship(lazy="joined")


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(32), nullable=True)
    action: Mapped[str] = mapped_column(String(60))
    target: Mapped[str] = mapped_column(String(200))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    source: Mapped[str | None] = mapped_column(String(100), nullable=True)


class SSHConnection(Base):
    __tablename__ = "ssh_connections"
    __table_args__ = (Index("ix_ssh_connections_started_at", "started_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    username: Mapped[str | None] = mapped_column(String(32), nullable=True)
    workspace_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    workspace_name: Mapped[str] = mapped_column(String(200))
    provider_name: Mapped[str | None] = mapped_column(String(63), nullable=True)
    source: Mapped[str | None] = mapped_column(String(100), nullable=True)
    mode: Mapped[str | None] = mapped_column(String(40), nullable=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    bytes_to_workspace: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_from_workspace: Mapped[int] = mapped_column(BigInteger, default=0)
    result: Mapped[str] = mapped_column(String(20))  # open | closed | refused | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The replica carrying the client's stream (0004): if it dies, others close the row.
    replica_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)


class Replica(Base):
    """A running ``hatchway server`` process; forgotten by the others when its heartbeat stops.

    ``relay_url`` is how other replicas reach it for stream hand-over, one replica's at a time (so
    of two servers started at once with one address, only one can register); ``secret_check`` is the
    check of its deployment secret (see :class:`DeploymentSecret`), which replicas of earlier
    versions compare with theirs, and from which migration 0006 took the deployment's."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    relay_url: Mapped[str] = mapped_column(String(255), unique=True, index=True)
    secret_check: Mapped[str] = mapped_column(String(64))
    # Holds the supervision lock: starts and keeps server-managed workspaces running.
    supervises: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class DeploymentSecret(Base):
    """The check of the deployment secret this database belongs to (one row, id 1): recorded by
    the first server to start on it (or by migration 0006 from the replicas of an earlier
    version) and by ``hatchway server rotate-secret``, and compared with every starting
    server's (hatchway.server.secret_record). Its key lets only one be recorded, so of two
    servers starting at once with different secrets one is refused."""

    __tablename__ = "deployment_secret"
    __table_args__ = (CheckConstraint("id = 1", name="ck_deployment_secret_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    secret_check: Mapped[str] = mapped_column(String(64))
