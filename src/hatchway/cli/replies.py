"""What the CLI reads in each answer of the API, and the check that an answer has it.

The CLI talks to whatever answers at the URL it logged in to: Hatchway, or a reverse proxy's
error page, a captive portal, a server of another version. Indexing an answer that was not what
Hatchway sends ended in a traceback (KeyError, TypeError). Each call names the shape it reads
(``ApiClient.call(..., expect=...)``) and :func:`mismatch` checks the answer before any command
looks inside it, so a wrong answer is one line saying what is wrong with it.

The shapes list only the fields the CLI reads, typed as :mod:`hatchway.server.api.schemas`
declares them; a field the schema gives a default (or leaves out when None) is ``NotRequired``,
and read with ``.get``. A server that adds fields is understood as before.
"""

from __future__ import annotations

import functools
import types
from datetime import datetime
from typing import (
    Any,
    NewType,
    NotRequired,
    TypedDict,
    Union,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

#: A timestamp as the API writes it (ISO 8601, for ``datetime.fromisoformat``); checked to
#: parse, since the CLI computes with it.
IsoTime = NewType("IsoTime", str)


class ErrorReply(TypedDict):
    error: str
    detail: NotRequired[str]


class UserRef(TypedDict):
    username: str
    role: str


class LoginReply(TypedDict):
    token: str
    user: UserRef


class User(TypedDict):
    username: str
    email: str
    role: str
    suspended: bool
    has_password: bool
    created_at: str
    ssh_key_fingerprint: str


class Revoked(TypedDict):
    revoked: int


class Session(TypedDict):
    id: str
    client: str | None
    source: str | None
    created_at: str
    last_used_at: str | None
    expires_at: str
    current: bool


class Key(TypedDict):
    public_key: str
    fingerprint: str


class PrivateKey(TypedDict):
    private_key: str
    public_key: str
    fingerprint: str


class Provider(TypedDict):
    name: str
    kind: str
    external_connect: bool
    workspace_count: int
    docker_host: NotRequired[str | None]


class Workspace(TypedDict):
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
    agent_replica: NotRequired[str | None]
    agent_last_seen: str | None
    os_user: str | None
    ssh_mode: str | None
    ssh_server_version: str | None
    host_keys: list[str]
    diagnostics: list[str]
    openssh: NotRequired[bool]
    isolation: NotRequired[str | None]
    image: NotRequired[str | None]
    cvm: NotRequired[bool]


class CreatedWorkspace(Workspace):
    agent_command: NotRequired[str | None]  # manual provider: how to run its agent (with the token)


class AgentToken(TypedDict):
    agent_token: str
    agent_command: str


class AuditEvent(TypedDict):
    at: str
    actor: str | None
    action: str
    target: str
    detail: dict[str, Any]


class Connection(TypedDict):
    started_at: IsoTime
    ended_at: IsoTime | None
    username: str | None
    workspace: str
    provider: str | None
    source: str | None
    mode: str | None
    result: str
    bytes_to_workspace: int
    bytes_from_workspace: int
    reason: str | None


@functools.cache
def _fields(shape: type) -> dict[str, tuple[Any, bool]]:
    """A TypedDict's fields: name -> (type, required). Read from the annotations, not
    ``__required_keys__``, which Python 3.11 gets wrong under ``from __future__ import annotations``."""
    fields = {}
    for name, hint in get_type_hints(shape, include_extras=True).items():
        optional = get_origin(hint) is NotRequired
        fields[name] = (get_args(hint)[0] if optional else hint, not optional)
    return fields


def _kind(value: Any) -> str:
    """What a JSON value is, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    return "a list" if isinstance(value, list) else "an object"


_SCALARS = {str: "text", bool: "true/false", int: "a whole number"}


def mismatch(value: Any, shape: Any, where: str = "the answer") -> str | None:
    """How parsed JSON ``value`` differs from ``shape`` (one of the shapes above, a scalar type,
    ``list[...]``, ``dict[str, ...]``, ``X | None``, ``Any`` or ``object``), naming where; None
    when it has the shape."""
    if shape is Any or shape is object:
        return None
    origin = get_origin(shape)
    if origin is Union or origin is types.UnionType:
        problems = [mismatch(value, option, where) for option in get_args(shape)]
        return None if None in problems else problems[0]
    if shape is type(None):
        return None if value is None else f"{where} is {_kind(value)}, not null"
    if shape is IsoTime:
        problem = mismatch(value, str, where)
        if problem is None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return f"{where} is not a date and time"
        return problem
    if shape in _SCALARS:
        ok = isinstance(value, shape) and (shape is not int or not isinstance(value, bool))
        return None if ok else f"{where} is {_kind(value)}, not {_SCALARS[shape]}"
    if origin is list:
        if not isinstance(value, list):
            return f"{where} is {_kind(value)}, not a list"
        (item,) = get_args(shape)
        return next((p for i, v in enumerate(value) if (p := mismatch(v, item, f"{where}[{i}]"))), None)
    if origin is dict or is_typeddict(shape):
        if not isinstance(value, dict):
            return f"{where} is {_kind(value)}, not an object"
        if origin is dict:
            _, item = get_args(shape)
            return next((p for k, v in value.items() if (p := mismatch(v, item, f"{where}.{k}"))), None)
        for name, (field, required) in _fields(shape).items():
            if name in value:
                problem = mismatch(value[name], field, f"{where}.{name}")
                if problem:
                    return problem
            elif required:
                return f'{where} has no "{name}"'
        return None
    raise TypeError(f"not a shape: {shape!r}")
