"""JSON from peers: nested too deeply, it is malformed like any other (a ValueError)."""

from __future__ import annotations

import json

import pytest

from hatchway import peerjson
from hatchway.cli.proxy import message_text


def test_json_nested_too_deeply_is_a_value_error_of_its_own() -> None:
    with pytest.raises(peerjson.TooDeep, match="^JSON nested too deeply to parse$") as raised:
        peerjson.loads("[" * 200000 + "]" * 200000)
    assert isinstance(raised.value, ValueError) and raised.value.__cause__ is None
    with pytest.raises(peerjson.TooDeep):
        peerjson.loads(b'{"a":' * 100000)  # bytes too, and unterminated: the depth is what fails


def test_everything_else_is_json_loads() -> None:
    assert peerjson.loads('{"a": [[[1]]]}') == {"a": [[[1]]]}
    assert peerjson.loads(b"[" * 100 + b"]" * 100) == json.loads("[" * 100 + "]" * 100)  # deep enough for anyone
    with pytest.raises(ValueError) as raised:
        peerjson.loads("not json")
    assert not isinstance(raised.value, peerjson.TooDeep)


def test_the_proxy_shows_a_refusal_nested_too_deeply_as_it_came() -> None:
    deep = "[" * 200000
    assert message_text(deep) == deep
    assert message_text('{"error": "no such workspace"}') == "no such workspace"


def test_the_agent_reads_a_server_answer_nested_too_deeply_as_not_json() -> None:
    import httpx

    from hatchway.agent.runtime import _error_text

    answer = httpx.Response(401, content=b"[" * 200000)
    assert _error_text(answer) == "the server refused the agent token (HTTP 401)"
