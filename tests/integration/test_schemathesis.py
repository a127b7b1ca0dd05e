"""schemathesis against the published OpenAPI document, as a site manager: whatever it
generates (valid and invalid bodies, parameters, headers), the server never answers 5xx and
never crashes. Examples per operation are bounded so this runs in about a minute.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")

from tests.helpers.migrations import ON_BOTH_DATABASES
from tests.helpers.world import World, build_world

MAX_EXAMPLES = int(os.environ.get("HATCHWAY_SCHEMATHESIS_EXAMPLES", "20"))


#: On PostgreSQL too: it refuses what SQLite takes (a NUL in text), and a value no row can hold
#: must be an answer there as well, not a database error.
pytestmark = ON_BOTH_DATABASES


@pytest.fixture
def deployment(tmp_path: Path, db_url: str) -> Iterator[World]:
    # Workspaces it manages to create on the local provider run unisolated (cheap, no users).
    w = build_world(tmp_path, members=("bob",), start_agents=False,
                    server_env={"HATCHWAY_LOCAL_ISOLATION": "off"},
                    db_url=None if db_url.startswith("sqlite") else db_url)
    try:
        yield w
    finally:
        w.close()
        log = w.server.log()
        assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-5000:]


def test_no_server_errors_on_any_operation(deployment: World) -> None:
    """Every operation (logout aside: it would end the run's own session), positive and
    negative data; any 5xx is collected with the request that caused it."""
    schema = schemathesis.openapi.from_url(deployment.url + "/api/v1/openapi.json")
    token = deployment.people["alice"].token
    failures: list[str] = []
    calls = 0
    operations = 0
    plan = [(result.ok(), mode) for result in schema.get_all_operations()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)]
    for operation, mode in plan:
        if operation.path == "/api/v1/auth/logout":
            continue
        operations += mode is schemathesis.GenerationMode.POSITIVE
        try:
            strategy = operation.as_strategy(generation_mode=mode)
        except Exception as exc:  # noqa: BLE001 - e.g. nothing to negate without parameters
            print(f"schemathesis: no {mode.value} data for {operation.method} {operation.path}: {exc}")
            continue

        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  phases=[Phase.explicit, Phase.generate], derandomize=True, database=None)
        @given(case=strategy)
        def run(case) -> None:  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            response = case.call(headers={"Authorization": f"Bearer {token}"}, timeout=30)
            if response.status_code >= 500:
                failures.append(f"{response.status_code} {case.method} {case.formatted_path} "
                                f"query={case.query!r} body={str(case.body)[:200]!r}: {response.text[:200]}")

        try:
            run()
        except Unsatisfiable:  # nothing can be negated in an operation without inputs
            if mode is schemathesis.GenerationMode.POSITIVE:
                raise
    print(f"\nschemathesis: {calls} requests over {operations} operations, {len(failures)} server errors")
    assert deployment.server.proc is not None and deployment.server.proc.poll() is None, "the server crashed"
    assert not failures, "\n".join(failures[:20])
    assert operations >= 20 and calls >= operations * min(MAX_EXAMPLES, 5)
