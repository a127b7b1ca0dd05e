"""The CLI's answer shapes (hatchway.cli.replies) against the server's response models.

The CLI does not import the server, so it declares what it reads of each answer itself. If the
server's schema changes (a field renamed, made nullable, its type changed), a CLI that checks
answers would start refusing real answers from its own server: these tests catch that drift.
"""

from __future__ import annotations

import types
from datetime import datetime
from typing import Any, Union, get_args, get_origin

import pytest
from pydantic import BaseModel

from hatchway.cli import replies
from hatchway.server.api import schemas

PAIRS = [
    (replies.LoginReply, schemas.TokenOut),
    (replies.User, schemas.UserOut),
    (replies.Revoked, schemas.RevokedOut),
    (replies.Session, schemas.SessionOut),
    (replies.Key, schemas.KeyOut),
    (replies.PrivateKey, schemas.PrivateKeyOut),
    (replies.Provider, schemas.ProviderOut),
    (replies.Workspace, schemas.WorkspaceOut),
    (replies.CreatedWorkspace, schemas.WorkspaceCreatedOut),
    (replies.AgentToken, schemas.AgentTokenOut),
    (replies.AuditEvent, schemas.AuditOut),
    (replies.Connection, schemas.ConnectionOut),
]

for _, _model in PAIRS:
    _model.model_rebuild()  # resolves the forward references ("UserOut") as FastAPI does at start


def _options(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    return list(get_args(annotation)) if origin is Union or origin is types.UnionType else [annotation]


def sample(annotation: Any) -> Any:
    """A JSON value the server may send for a field of this (non-None) type."""
    origin = get_origin(annotation) or annotation
    if isinstance(origin, type) and issubclass(origin, BaseModel):
        return {name: sample(next(a for a in _options(f.annotation) if a is not type(None)))
                for name, f in origin.model_fields.items()}
    values = {str: "text", bool: True, int: 7, float: 1.5, datetime: "2026-11-28T12:00:00+00:00",
              list: [], dict: {}}
    for kind, value in values.items():
        if isinstance(origin, type) and issubclass(origin, kind):
            return value
    return "text"  # Literal and enum-like annotations serialise as text here


@pytest.mark.parametrize(("shape", "model"), PAIRS, ids=[shape.__name__ for shape, _ in PAIRS])
def test_every_field_the_cli_reads_is_one_the_server_sends_as_the_cli_expects(shape: type, model: type[BaseModel]) -> None:
    fields = model.model_fields
    for name, (field_type, _required) in replies._fields(shape).items():
        assert name in fields, f"{shape.__name__}.{name}: the server's {model.__name__} has no such field"
        options = _options(fields[name].annotation)
        if type(None) in options:
            assert replies.mismatch(None, field_type) is None, (
                f"{shape.__name__}.{name}: the server may send null, and the CLI would refuse it")
        for option in options:
            if option is type(None):
                continue
            value = sample(option)
            assert replies.mismatch(value, field_type) is None, (
                f"{shape.__name__}.{name}: the server sends {option!r} ({value!r}), and the CLI would refuse it")


def test_a_whole_answer_built_from_the_server_models_passes() -> None:
    for shape, model in PAIRS:
        answer = sample(model)
        assert replies.mismatch(answer, shape) is None, shape.__name__
