"""The user and workspace lists page and filter as the audit log does: ``limit``/``offset``
bounded the same way (an offset past 64 bits is a 422, not a database error), ``search``
matching a part of a name in any case, and without them the whole list as before paging."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.helpers.server import RunningServer, api, first_user

#: Made by the site manager "alice" (the first user), in no particular order.
USERS = ("zed", "al_x", "alx", "bob", "malia")
#: (owner, workspace name)
WORKSPACES = (("bob", "dev"), ("bob", "web-2"), ("malia", "dev"), ("alice", "lab"), ("zed", "devbox"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, str]]:
    server = RunningServer(tmp_path_factory.mktemp("paging") / "data")
    server.start()
    try:
        token = first_user(server.url, "alice", "alice-password")
        with api(server.url, token) as c:
            c.post("/providers", json={"name": "byo", "kind": "manual"}).raise_for_status()
            for name in USERS:
                c.post("/users", json={"username": name, "email": f"{name}@example.com",
                                       "password": f"{name}-password"}).raise_for_status()
            for owner, name in WORKSPACES:
                c.post("/workspaces", params={"owner": owner}, json={"name": name, "provider": "byo"}).raise_for_status()
        yield server, token
    finally:
        server.stop()


def _names(c: httpx.Client, path: str, **params: Any) -> list[str]:
    r = c.get(path, params=params)
    assert r.status_code == 200, r.text
    return [row["username"] if "username" in row else f'{row["owner"]}/{row["name"]}' for row in r.json()]


def test_users_page_and_filter_by_part_of_the_name(srv: tuple[RunningServer, str]) -> None:
    server, token = srv
    with api(server.url, token) as c:
        assert _names(c, "/users") == ["al_x", "alice", "alx", "bob", "malia", "zed"]
        assert _names(c, "/users", limit=2) == ["al_x", "alice"]
        assert _names(c, "/users", limit=2, offset=2) == ["alx", "bob"]
        assert _names(c, "/users", offset=5) == ["zed"]
        assert _names(c, "/users", offset=6) == []
        assert _names(c, "/users", search="ALi") == ["alice", "malia"]
        assert _names(c, "/users", search="al_") == ["al_x"]  # "_" is the character, not a wildcard
        assert _names(c, "/users", search="al", limit=2, offset=1) == ["alice", "alx"]
        assert _names(c, "/users", search="a b") == []  # no name holds a space
        assert _names(c, "/users", search="\x00") == []


def test_every_workspace_pages_and_filters_by_name_or_owner(srv: tuple[RunningServer, str]) -> None:
    server, token = srv
    with api(server.url, token) as c:
        everyone = ["alice/lab", "bob/dev", "bob/web-2", "malia/dev", "zed/devbox"]
        assert _names(c, "/workspaces", all="1") == everyone
        assert _names(c, "/workspaces", all="1", limit=2, offset=1) == ["bob/dev", "bob/web-2"]
        assert _names(c, "/workspaces", all="1", search="DEV") == ["bob/dev", "malia/dev", "zed/devbox"]
        assert _names(c, "/workspaces", all="1", search="bob") == ["bob/dev", "bob/web-2"]
        assert _names(c, "/workspaces", all="1", search="bob/de") == ["bob/dev"]
        assert _names(c, "/workspaces", all="1", search="/dev", offset=1) == ["malia/dev", "zed/devbox"]
        assert _names(c, "/workspaces") == ["alice/lab"]
        assert _names(c, "/workspaces", search="dev") == []


@pytest.mark.parametrize("path", ["/users", "/workspaces?all=1", "/audit"])
@pytest.mark.parametrize(
    "params",
    [{"offset": str(2**63)}, {"offset": str(2**64)}, {"offset": "-1"}, {"limit": "0"}, {"limit": "5001"}],
)
def test_out_of_bounds_paging_is_refused_with_422(srv: tuple[RunningServer, str], path: str, params: dict[str, str]) -> None:
    server, token = srv
    with api(server.url, token) as c:
        assert c.get(path, params=params).status_code == 422
        assert c.get(path, params={"offset": str(2**63 - 1)}).json() == []


def test_a_filter_longer_than_any_name_is_refused_with_422(srv: tuple[RunningServer, str]) -> None:
    server, token = srv
    with api(server.url, token) as c:
        assert c.get("/users", params={"search": "x" * 65}).status_code == 422
        assert c.get("/workspaces", params={"all": "1", "search": "x" * 101}).status_code == 422
        assert _names(c, "/workspaces", all="1", search="x" * 100) == []


def test_members_still_cannot_list_everyone(srv: tuple[RunningServer, str]) -> None:
    server, _ = srv
    with api(server.url) as c:
        member = c.post("/auth/login", json={"username": "bob", "password": "bob-password"}).json()["token"]
    with api(server.url, member) as c:
        assert c.get("/workspaces", params={"all": "1", "limit": "1"}).status_code == 403
        assert c.get("/users", params={"limit": "1"}).status_code == 403
        assert _names(c, "/workspaces", search="WEB") == ["bob/web-2"]
