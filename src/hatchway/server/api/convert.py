"""Rows to API bodies, in one place so the CLI, UI and API all show the same fields."""

from __future__ import annotations

from hatchway.db.models import AuditEvent, SSHConnection, User, Workspace
from hatchway.server.api import schemas
from hatchway.server.connlog import owner_of


def user_out(u: User) -> schemas.UserOut:
    return schemas.UserOut(
        username=u.username,
        email=u.email,
        role=u.role,
        suspended=u.suspended,
        created_at=u.created_at,
        ssh_key_fingerprint=u.ssh_key_fingerprint,
        has_password=u.password_hash is not None,
    )


def workspace_fields(w: Workspace) -> dict:
    return dict(
        id=w.id,
        name=w.name,
        owner=w.owner.username,
        provider=w.provider.name,
        provider_kind=w.provider.kind,
        external_connect=w.provider.external_connect,
        state=w.state,
        state_reason=w.state_reason,
        env=dict(w.env or {}),
        agent_connected=w.agent_connected,
        agent_replica=w.agent_replica_id,
        agent_last_seen=w.agent_last_seen,
        agent_version=w.agent_version,
        os_user=w.os_user,
        ssh_mode=w.ssh_mode,
        ssh_server_version=w.ssh_server_version,
        host_keys=list(w.host_keys or []),
        diagnostics=list(w.diagnostics or []),
        created_at=w.created_at,
        openssh=bool(w.openssh),
        isolation=w.isolation,
        image=w.image,
        cvm=bool(w.cvm),
    )


def workspace_out(w: Workspace) -> schemas.WorkspaceOut:
    return schemas.WorkspaceOut(**workspace_fields(w))


def audit_out(e: AuditEvent) -> schemas.AuditOut:
    return schemas.AuditOut(
        id=e.id, at=e.at, actor=e.actor, action=e.action, target=e.target, detail=e.detail or {}, source=e.source
    )


def connection_out(c: SSHConnection) -> schemas.ConnectionOut:
    return schemas.ConnectionOut(
        id=c.id,
        username=c.username,
        workspace=c.workspace_name,
        owner=owner_of(c.workspace_name, c.username),
        provider=c.provider_name,
        source=c.source,
        mode=c.mode,
        started_at=c.started_at,
        ended_at=c.ended_at,
        bytes_to_workspace=c.bytes_to_workspace,
        bytes_from_workspace=c.bytes_from_workspace,
        result=c.result,
        reason=c.reason,
        replica=c.replica_id,
    )
