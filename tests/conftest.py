"""Fixtures shared by every test layer."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import postgres

#: Test modules that change the machine itself or look at it whole: they create Unix users and
#: network namespaces (``local`` workspaces), iptables rules, the test Docker engine, or check
#: that none of those is left. ``scripts/test`` runs the suite on two pytest-xdist workers
#: (``--dist loadfile``, see pytest_xdist_make_scheduler); these all go to one of them, one after
#: the other, so none meets another's users or namespaces. Every other module runs whole, in
#: order, on either worker.
MACHINE_WIDE = {
    *(f"tests/e2e/{name}.py" for name in (
        "test_docker_workspaces", "test_local_isolation", "test_local_moved_workspace", "test_local_quickstart",
        "test_local_userns", "test_local_workspace_for_member", "test_port22_forwarding", "test_replicas",
    )),
    *(f"tests/integration/{name}.py" for name in (
        "test_docker_home_owner", "test_faults", "test_local_provider_parts", "test_local_provider_unisolated",
        "test_metrics_listener", "test_one_server_per_data_dir", "test_reown_tree", "test_replica_processes",
        "test_vanished_database_peer",
    )),
    *(f"tests/ui/{name}.py" for name in (
        "test_ui_created_notice", "test_ui_list_context", "test_ui_workspace_owner", "test_web_ui",
    )),
}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """``--dist loadfile`` (each module whole and in order on one worker), except that the
    MACHINE_WIDE modules are one unit. Done here rather than with ``xdist_group`` marks, which
    pytest 9 no longer lets pytest-xdist 3.8 apply (it rewrites a node id pytest now derives)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class MachineWideTogether(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = super()._split_scope(nodeid)
            return "machine-wide" if module in MACHINE_WIDE else module

    return MachineWideTogether(config, log)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[object]:
    """A PostgreSQL server for the whole session (skipped, saying why, when not root)."""
    reason = postgres.can_run()
    if reason:
        pytest.skip(reason)
    external = os.environ.get("HATCHWAY_TEST_PG_URL")
    if external:
        yield external
        return
    pg = postgres.TempPostgres()
    pg.start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(pg_cluster: object) -> str:
    """A fresh, empty database on the session's PostgreSQL."""
    if isinstance(pg_cluster, str):
        import asyncio

        import asyncpg

        name = "t_" + uuid.uuid4().hex[:12]

        async def create() -> None:
            conn = await asyncpg.connect(pg_cluster)
            try:
                await conn.execute(f"CREATE DATABASE {name}")
            finally:
                await conn.close()

        asyncio.run(create())
        return pg_cluster.rsplit("/", 1)[0] + "/" + name
    return pg_cluster.new_database()  # type: ignore[attr-defined]


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db.sqlite'}"
    return request.getfixturevalue("pg_url")
