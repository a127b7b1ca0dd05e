"""Request and response bodies of the REST API (they are also its OpenAPI document)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hatchway import names
from hatchway.server.limits import MAX_BODY_BYTES

_STRICT = ConfigDict(extra="forbid")

PASSWORD_MIN, PASSWORD_MAX = 8, 1024
#: A name tried at sign-in longer than this is no account's (names have at most 32 characters:
#: ``names.USERNAME``); it is refused unchecked as too long (see :class:`LoginIn`).
LOGIN_NAME_MAX = 64


def _check_new_password(v: str | None) -> str | None:
    """A password someone will have to type again: a line break or NUL could never be entered at
    a prompt or read by --password-stdin (one line), so it would lock its owner out. The message
    never repeats the value: it is a secret."""
    if v is not None and any(ch in v for ch in "\r\n\x00"):
        raise ValueError("a password cannot contain line breaks or NUL characters; choose one you can type on one line")
    return v


class FirstUserIn(BaseModel):
    model_config = _STRICT
    username: str
    email: str
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)

    _u = field_validator("username")(lambda v: names.check_new_username(v))
    _e = field_validator("email")(lambda v: names.check_email(v))
    _p = field_validator("password")(lambda v: _check_new_password(v))


class LoginIn(BaseModel):
    """A sign-in attempt. A name longer than :data:`LOGIN_NAME_MAX` or a password longer than
    :data:`PASSWORD_MAX` is no account's, but it is an attempt all the same: the login refuses
    it as it refuses any other (401, counted by the throttle, audited as ``too-long``), so no
    bound here may refuse it first: a 422 would be neither throttled nor audited, and would
    tell it apart from other failures.

    What is accepted at all is bounded by the request body limit (``BodyLimit``, 1 MiB): a
    larger body is refused with 413 as it streams in, before anything parses it. That is the
    cheap refusal; a bound on the fields could not be one, since by the time they are checked
    the body has been read and parsed. The fields' own bound is that same size: it changes
    nothing while the body limit stands, and still holds should a deployment raise it. A name
    or password that long costs the login a length check and a 64-character slice (the throttle
    counts the name's first :data:`LOGIN_NAME_MAX` characters): no database lookup, no Argon2."""

    model_config = _STRICT
    username: str = Field(max_length=MAX_BODY_BYTES)
    password: str = Field(max_length=MAX_BODY_BYTES)


class TokenOut(BaseModel):
    token: str
    user: "UserOut"


class UserOut(BaseModel):
    username: str
    email: str
    role: str
    suspended: bool
    created_at: datetime
    ssh_key_fingerprint: str
    has_password: bool = Field(description="false: created without one; they cannot sign in until a site manager sets it")


class UserCreateIn(BaseModel):
    model_config = _STRICT
    username: str
    email: str
    role: Literal["member", "site-manager"] = "member"
    password: str | None = Field(default=None, min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)

    _u = field_validator("username")(lambda v: names.check_new_username(v))
    _e = field_validator("email")(lambda v: names.check_email(v))
    _p = field_validator("password")(lambda v: _check_new_password(v))


class PasswordChangeIn(BaseModel):
    """Your own password: the current one proves it is you, not someone at an unlocked screen."""

    model_config = _STRICT
    current_password: str = Field(max_length=PASSWORD_MAX)
    new_password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)

    _p = field_validator("new_password")(lambda v: _check_new_password(v))


class PasswordSetIn(BaseModel):
    """A site manager setting someone's password (a user created without one, or a forgotten one)."""

    model_config = _STRICT
    password: str = Field(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)

    _p = field_validator("password")(lambda v: _check_new_password(v))


class RoleIn(BaseModel):
    model_config = _STRICT
    role: Literal["member", "site-manager"]


class KeyOut(BaseModel):
    public_key: str
    fingerprint: str
    updated_at: datetime


class PrivateKeyOut(BaseModel):
    private_key: str
    public_key: str
    fingerprint: str


class ProviderOut(BaseModel):
    name: str
    kind: str
    external_connect: bool
    workspace_count: int
    docker_host: str | None = None  # docker providers: the engine (None: the server's DOCKER_HOST)
    docker_network: str | None = None


def _check_docker_host(v: str | None) -> str | None:
    if v is None:
        return v
    from hatchway.providers.docker_api import parse_docker_host

    parse_docker_host(v)
    return v.strip()


def _check_docker_network(v: str | None) -> str | None:
    import re

    if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v):
        raise names.Refused(
            f"invalid Docker network name {v[:100]!r}",
            f"{{label}} {names.quoted(v)} is not valid: name a network of the Docker engine "
            "(letters, digits, '_', '.' and '-'), or leave it empty for none",
        )
    return v


def _check_image(v: str | None) -> str | None:
    """A Docker image reference (name[:tag][@digest]); it goes into engine URL paths."""
    import re

    if v is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*", v) or ".." in v or "//" in v):
        raise ValueError(f"invalid image reference {v[:100]!r}: use NAME[:TAG] or NAME@DIGEST")
    return v


class ProviderCreateIn(BaseModel):
    model_config = _STRICT
    name: str
    kind: Literal["local", "manual", "docker"]
    external_connect: bool = True
    docker_host: str | None = Field(default=None, max_length=255)
    docker_network: str | None = Field(default=None, max_length=100)

    _n = field_validator("name")(lambda v: names.check_provider_name(v))
    _dh = field_validator("docker_host")(lambda v: _check_docker_host(v))
    _dn = field_validator("docker_network")(lambda v: _check_docker_network(v))


class ProviderEditIn(BaseModel):
    model_config = _STRICT
    external_connect: bool | None = None


class WorkspaceCreateIn(BaseModel):
    model_config = _STRICT
    name: str
    provider: str = Field(default="local", max_length=63)
    env: dict[str, str] = Field(default_factory=dict)
    openssh: bool = False  # local provider: also run Debian's sshd on the workspace's port 22
    image: str | None = Field(default=None, min_length=1, max_length=500)  # docker provider
    cvm: bool = False  # docker provider: systemd as PID 1

    _n = field_validator("name")(lambda v: names.check_workspace_name(v))
    _i = field_validator("image")(lambda v: _check_image(v))
    _env = field_validator("env")(lambda v: names.check_env(v))


class WorkspaceOut(BaseModel):
    id: str
    name: str
    owner: str
    provider: str
    provider_kind: str
    external_connect: bool
    state: str
    state_reason: str | None
    env: dict[str, str]
    agent_connected: bool
    agent_replica: str | None = Field(None, description="The server replica holding the agent's control channel.")
    agent_last_seen: datetime | None
    agent_version: str | None
    os_user: str | None
    ssh_mode: str | None
    ssh_server_version: str | None
    host_keys: list[str]
    diagnostics: list[str]
    created_at: datetime
    openssh: bool = False
    isolation: str | None = None  # how the provider isolated it, or what it could not set up
    image: str | None = None
    cvm: bool = False


class WorkspaceCreatedOut(WorkspaceOut):
    agent_token: str | None = None
    agent_command: str | None = None


class AgentTokenOut(BaseModel):
    agent_token: str
    agent_command: str


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str | None
    action: str
    target: str
    detail: dict
    source: str | None


class ConnectionOut(BaseModel):
    id: str
    username: str | None
    workspace: str = Field(description="NAME when it is the connecting user's own workspace, else OWNER/NAME.")
    owner: str | None = Field(
        None, description="Whose workspace it is; null when the client was never identified and named no owner."
    )
    provider: str | None
    source: str | None
    mode: str | None
    started_at: datetime
    ended_at: datetime | None
    bytes_to_workspace: int
    bytes_from_workspace: int
    result: str
    reason: str | None
    replica: str | None = Field(None, description="The server replica that relayed the client's stream.")


class DeploymentOut(BaseModel):
    version: str
    access_url: str
    needs_first_user: bool
    replica: str = Field(description="The server replica that answered (several may share one database).")


class OkOut(BaseModel):
    ok: bool = True


class SessionOut(BaseModel):
    id: str
    client: str | None = Field(description="The User-Agent that signed in (hatchway CLI, a browser).")
    source: str | None = Field(description="The address it signed in from, as the server saw it.")
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    expires_at: datetime
    current: bool = Field(description="Whether this is the session making the request.")


class RevokedOut(BaseModel):
    revoked: int
