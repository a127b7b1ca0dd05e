"""Every API and WebSocket endpoint against every kind of caller, with the documented result.

Identities: anonymous, member (bob, owns workspace "a"), other member (carol, owns "b"),
suspended user (dave), site manager (alice), the agent tokens of "a" and "b", and a revoked
session token. A new endpoint without a row here fails ``test_matrix_covers_every_endpoint``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.helpers.server import RunningServer, api, first_user

IDS = ("anon", "member", "other", "suspended", "manager", "agent_a", "agent_b", "revoked")
USERS = ("member", "other", "manager")  # active users


@dataclass
class World:
    srv: RunningServer
    tokens: dict[str, str | None]
    keys: dict[str, str]  # username -> public key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    srv = RunningServer(tmp_path_factory.mktemp("authz") / "data")
    srv.start()
    alice = first_user(srv.url, "alice", "alice-password")
    tokens: dict[str, str | None] = {"anon": None, "manager": alice}
    with api(srv.url, alice) as c:
        c.post("/providers", json={"name": "byo", "kind": "manual"}).raise_for_status()
        for name in ("bob", "carol", "dave", "zed", "eve"):
            c.post("/users", json={"username": name, "email": f"{name}@example.com", "password": f"{name}-password"}).raise_for_status()
    with api(srv.url) as c:
        def login(u: str) -> str:
            return c.post("/auth/login", json={"username": u, "password": f"{u}-password"}).json()["token"]
        tokens["member"], tokens["other"], tokens["suspended"] = login("bob"), login("carol"), login("dave")
        tokens["revoked"] = login("eve")
    with api(srv.url, tokens["revoked"]) as c:
        c.post("/auth/logout").raise_for_status()
    for who, ws in (("member", "a"), ("other", "b")):
        with api(srv.url, tokens[who]) as c:
            tokens[f"agent_{ws}"] = c.post("/workspaces", json={"name": ws, "provider": "byo"}).json()["agent_token"]
    with api(srv.url, alice) as c:
        c.post("/users/dave/suspend").raise_for_status()
        keys = {}
    for who, name in (("member", "bob"), ("other", "carol"), ("manager", "alice")):
        with api(srv.url, tokens[who]) as c:
            keys[name] = c.get("/users/me/key").json()["public_key"]
    try:
        yield World(srv, tokens, keys)
    finally:
        srv.stop()


USER_ONLY = {"anon": 401, "agent_a": 401, "agent_b": 401, "revoked": 401, "suspended": 403}
MANAGER_ONLY = {**USER_ONLY, "member": 403, "other": 403, "manager": None}
ANY_USER = {**USER_ONLY, "member": None, "other": None, "manager": None}
AGENT_ONLY = {i: 401 for i in IDS} | {"agent_a": None, "agent_b": None}

_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}{next(_counter)}"


@dataclass
class Row:
    method: str
    path: str  # as in the OpenAPI document
    url: str | Callable[[], str]
    expect: dict[str, int | None]  # None: the identity's success status (below)
    ok: int = 200
    body: Callable[[], object] | None = None


def ws_path(owner: str) -> str:
    return f"/workspaces/a?owner={owner}"


ROWS = [
    Row("GET", "/api/v1/deployment", "/deployment", {i: None for i in IDS}),
    Row("POST", "/api/v1/auth/first-user", "/auth/first-user", {i: 409 for i in IDS},
        body=lambda: {"username": unique("x"), "email": "x@example.com", "password": "long-enough-pw"}),
    Row("POST", "/api/v1/auth/login", "/auth/login", {i: 401 for i in IDS},
        body=lambda: {"username": unique("nobody"), "password": "wrong-password"}),
    Row("GET", "/api/v1/users/me", "/users/me", ANY_USER),
    Row("GET", "/api/v1/users", "/users", MANAGER_ONLY),
    Row("POST", "/api/v1/users", "/users", MANAGER_ONLY, ok=201,
        body=lambda: {"username": unique("u"), "email": "u@example.com"}),
    Row("POST", "/api/v1/users/{username}/suspend", "/users/zed/suspend", MANAGER_ONLY),
    Row("POST", "/api/v1/users/{username}/activate", "/users/zed/activate", MANAGER_ONLY),
    Row("PUT", "/api/v1/users/{username}/role", "/users/zed/role", MANAGER_ONLY, body=lambda: {"role": "member"}),
    Row("PUT", "/api/v1/users/{username}/password", "/users/zed/password", MANAGER_ONLY,
        body=lambda: {"password": "zed-new-password"}),
    # Every signed-in user reaches the check of their own current password (a wrong one: 403);
    # nobody else gets that far.
    Row("PUT", "/api/v1/users/me/password", "/users/me/password",
        {**USER_ONLY, "member": 403, "other": 403, "manager": 403},
        body=lambda: {"current_password": "not-the-password", "new_password": "long-enough-pw"}),
    Row("GET", "/api/v1/users/me/key", "/users/me/key", ANY_USER),
    Row("GET", "/api/v1/users/me/key/private", "/users/me/key/private", ANY_USER),
    Row("GET", "/api/v1/users/me/sessions", "/users/me/sessions", ANY_USER),
    Row("DELETE", "/api/v1/users/me/sessions/{session_id}", "/users/me/sessions/nothing-here",
        {**USER_ONLY, "member": 404, "other": 404, "manager": 404}),
    Row("GET", "/api/v1/providers", "/providers", ANY_USER),
    Row("POST", "/api/v1/providers", "/providers", MANAGER_ONLY, ok=201,
        body=lambda: {"name": unique("p"), "kind": "manual"}),
    Row("PATCH", "/api/v1/providers/{name}", "/providers/local", MANAGER_ONLY, body=lambda: {"external_connect": True}),
    # The built-in provider is never deleted: a site manager gets that far, nobody else.
    Row("DELETE", "/api/v1/providers/{name}", "/providers/local", {**MANAGER_ONLY, "manager": 409}),
    Row("GET", "/api/v1/workspaces", "/workspaces", ANY_USER),
    Row("POST", "/api/v1/workspaces", "/workspaces", ANY_USER, ok=201,
        body=lambda: {"name": unique("w"), "provider": "byo"}),
    # For bob (?owner=): bob himself and site managers; for nobody at all, only a site manager
    # learns that no such user exists.
    Row("POST", "/api/v1/workspaces", "/workspaces?owner=bob", {**USER_ONLY, "member": None, "other": 403, "manager": None},
        ok=201, body=lambda: {"name": unique("w"), "provider": "byo"}),
    Row("POST", "/api/v1/workspaces", "/workspaces?owner=nobody", {**USER_ONLY, "member": 403, "other": 403, "manager": 404},
        body=lambda: {"name": unique("w"), "provider": "byo"}),
    # Bob's workspace "a", addressed by its owner: only bob and site managers.
    Row("GET", "/api/v1/workspaces/{name}", ws_path("bob"), {**USER_ONLY, "member": None, "other": 403, "manager": None}),
    Row("POST", "/api/v1/workspaces/{name}/start", "/workspaces/a/start?owner=bob", {**USER_ONLY, "member": 409, "other": 403, "manager": 409}),
    Row("POST", "/api/v1/workspaces/{name}/stop", "/workspaces/a/stop?owner=bob", {**USER_ONLY, "member": 409, "other": 403, "manager": 409}),
    Row("POST", "/api/v1/workspaces/{name}/restart", "/workspaces/a/restart?owner=bob", {**USER_ONLY, "member": 409, "other": 403, "manager": 409}),
    Row("DELETE", "/api/v1/workspaces/{name}", "/workspaces/nothing-here?owner=bob", {**USER_ONLY, "member": 404, "other": 403, "manager": 404}),
    Row("GET", "/api/v1/audit", "/audit", MANAGER_ONLY),
    Row("GET", "/api/v1/connections", "/connections", ANY_USER),
    Row("GET", "/api/v1/agent/manifest", "/agent/manifest", AGENT_ONLY),
]
# Run last: they change the callers' own state (keys, agent tokens, sessions).
LATE_ROWS = [
    Row("POST", "/api/v1/users/me/key/regenerate", "/users/me/key/regenerate", ANY_USER),
    Row("POST", "/api/v1/workspaces/{name}/agent-token", "/workspaces/b/agent-token?owner=carol",
        {**USER_ONLY, "member": 403, "other": None, "manager": None}),
    Row("POST", "/api/v1/users/me/sessions/revoke-others", "/users/me/sessions/revoke-others", ANY_USER),
    Row("POST", "/api/v1/auth/logout", "/auth/logout", ANY_USER),
]


def call(world: World, row: Row, who: str) -> httpx.Response:
    url = row.url() if callable(row.url) else row.url
    with api(world.srv.url, world.tokens[who]) as c:
        return c.request(row.method, url, json=row.body() if row.body else None)


def check(world: World, row: Row, who: str) -> None:
    r = call(world, row, who)
    want = row.expect[who] or row.ok
    assert r.status_code == want, f"{row.method} {row.url} as {who}: {r.status_code} {r.text}"
    if r.status_code >= 400:
        assert set(r.json()) == {"error", "detail"}, r.text


@pytest.mark.parametrize("row", ROWS, ids=lambda r: f"{r.method} {r.path}")
def test_http_matrix(world: World, row: Row) -> None:
    for who in IDS:
        check(world, row, who)


def test_matrix_covers_every_endpoint(world: World) -> None:
    doc = httpx.get(world.srv.url + "/api/v1/openapi.json").json()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in ROWS + LATE_ROWS}


def test_private_key_is_always_the_callers_own(world: World) -> None:
    for who, name in (("member", "bob"), ("other", "carol"), ("manager", "alice")):
        with api(world.srv.url, world.tokens[who]) as c:
            body = c.get("/users/me/key/private").json()
        assert body["public_key"] == world.keys[name]
        others = [k for n, k in world.keys.items() if n != name]
        assert all(k.split()[1] not in json.dumps(body) for k in others)


def test_manifest_is_the_agents_own_workspace(world: World) -> None:
    for who, ws, owner in (("agent_a", "a", "bob"), ("agent_b", "b", "carol")):
        with api(world.srv.url, world.tokens[who]) as c:
            m = c.get("/agent/manifest").json()
        assert (m["workspace"]["name"], m["owner"]["username"]) == (ws, owner)
        assert m["authorized_keys"] == [world.keys[owner]]


def _ws(world: World, path: str, who: str) -> tuple[str | None, int | None]:
    """Open a WebSocket as ``who``; returns (first text message, close code)."""
    url = world.srv.url.replace("http://", "ws://") + "/api/v1" + path
    token = world.tokens[who]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with connect(url, additional_headers=headers, open_timeout=10) as ws:
        first = None
        try:
            while True:
                msg = ws.recv(timeout=10)
                if isinstance(msg, str):
                    first = first or msg
                    if json.loads(msg).get("type") in ("error", "goodbye"):
                        break
                    if json.loads(msg).get("type") == "manifest":
                        return msg, None  # an accepted control channel
        except Exception:
            pass
        ws.close()
        return first, ws.close_code


@pytest.mark.parametrize("who", IDS)
def test_ssh_stream_matrix(world: World, who: str) -> None:
    text, code = _ws(world, "/workspaces/a/ssh?owner=bob", who)
    error = json.loads(text or "{}").get("error", "")
    expected = {
        "member": 'workspace "a" is not reachable: its agent is not connected',
        "other": 'no workspace named "bob/a" is yours; see "hatchway workspaces list"',  # as for one that is not there
        "manager": 'workspace "bob/a" belongs to another user; you can only connect to your own workspaces',
        "suspended": "account suspended",
    }.get(who, "")
    if expected:
        assert error.startswith(expected), (who, error)
    else:  # anonymous, agent tokens, revoked: not a user at all
        assert error.startswith(("not authenticated", "session expired or revoked")), (who, error)


@pytest.mark.parametrize("who", IDS)
def test_agent_channels_matrix(world: World, who: str) -> None:
    text, _ = _ws(world, "/agent/control", who)
    message = json.loads(text or "{}")
    if who.startswith("agent_"):
        assert message["type"] == "manifest"
        assert message["manifest"]["workspace"]["name"] == who[-1]
    else:
        assert message["type"] == "error" and message["error"] == "not authenticated"
    text, _ = _ws(world, "/agent/streams/" + "0" * 32, who)
    message = json.loads(text or "{}")
    assert message["type"] == "error"
    assert message["error"] == ("no such stream" if who.startswith("agent_") else "not authenticated")


def test_revoked_agent_token_is_refused(world: World, tmp_path: Path) -> None:
    with api(world.srv.url, world.tokens["member"]) as c:
        created = c.post("/workspaces", json={"name": "rotated", "provider": "byo"}).json()
        old = created["agent_token"]
        c.post("/workspaces/rotated/agent-token").raise_for_status()
    with api(world.srv.url, old) as c:
        r = c.get("/agent/manifest")
    assert r.status_code == 401 and r.json()["error"] == "agent token not valid"


def test_late_http_matrix(world: World) -> None:
    """Last in the module: regenerating keys and logging out change the callers themselves."""
    for row in LATE_ROWS:
        for who in IDS:
            check(world, row, who)


def test_replica_endpoints_refuse_everyone_without_a_fresh_signature_of_the_deployment_secret(world: World) -> None:
    """/internal/ is for other replicas only: no user, agent or forged signature gets through,
    and a genuine one is good for the one request it signs (not another body, nor twice)."""
    import time

    from websockets.exceptions import InvalidStatus

    from hatchway.server.api.internal import REFUSED_DETAIL
    from hatchway.server.cluster import AUTH_HEADER, derive_key, sign

    refused = {"error": "unauthorized", "detail": REFUSED_DETAIL}
    sender = "ab" * 8
    dial = {"workspace_id": "nope", "stream": sender + "00" * 16, "client": "127.0.0.1 1"}
    calls = [("/internal/v1/dial", dial), ("/internal/v1/supervise", {"action": "stop", "workspace_id": "nope"})]

    def post(path: str, body: object, headers: dict[str, str]) -> httpx.Response:
        """POST exactly the bytes a replica signs (json.dumps)."""
        return httpx.post(world.srv.url + path, content=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json", **headers}, timeout=30)

    for who in IDS:
        token = world.tokens[who]
        for path, body in calls:
            r = post(path, body, {"Authorization": f"Bearer {token}"} if token else {})
            assert (r.status_code, r.json()) == (401, refused), (who, path)
    secret = bytes.fromhex((world.srv.data_dir / "deployment.secret").read_text().strip())
    key = derive_key(secret, b"replica-relay/v1")
    signed = json.dumps(dial).encode()
    forged = {
        "another secret": sign(derive_key(b"\x01" * 32, b"replica-relay/v1"), sender, "POST", "/internal/v1/dial", body=signed),
        "another path": sign(key, sender, "POST", "/internal/v1/supervise", body=signed),
        "another method": sign(key, sender, "PUT", "/internal/v1/dial", body=signed),
        "another query": sign(key, sender, "POST", "/internal/v1/dial", "workspace=x", body=signed),
        "another body": sign(key, sender, "POST", "/internal/v1/dial", body=json.dumps({**dial, "client": "x"}).encode()),
        "stale": sign(key, sender, "GET", "/internal/v1/streams/" + sender + "00" * 16, "workspace=x", now=time.time() - 120),
        "garbage": "x.y.z",
    }
    for what, header in forged.items():
        r = post("/internal/v1/dial", dial, {AUTH_HEADER: header})
        assert (r.status_code, r.json()) == (401, refused), what
    # The real signature passes, once; the request itself then says what is wrong with it.
    header = sign(key, sender, "POST", "/internal/v1/dial", body=signed)
    r = post("/internal/v1/dial", dial, {AUTH_HEADER: header})
    assert r.status_code == 404 and r.json()["detail"] == "the workspace's agent is not connected to this replica"
    r = post("/internal/v1/dial", dial, {AUTH_HEADER: header})
    assert (r.status_code, r.json()) == (401, refused), "replayed"
    other = {**dial, "stream": "cd" * 8 + "00" * 16}
    r = post("/internal/v1/dial", other, {AUTH_HEADER: sign(key, sender, "POST", "/internal/v1/dial", body=json.dumps(other).encode())})
    assert r.status_code == 400 and r.json()["detail"] == "a replica may only dial for its own streams"
    # A captured order to stop one workspace cannot be turned into deleting another, nor repeated.
    stop = {"action": "stop", "workspace_id": "nope"}
    header = sign(key, sender, "POST", "/internal/v1/supervise", body=json.dumps(stop).encode())
    for body in ({"action": "delete", "workspace_id": "other"}, {"action": "delete", "workspace_id": "nope"}):
        r = post("/internal/v1/supervise", body, {AUTH_HEADER: header})
        assert (r.status_code, r.json()) == (401, refused), body
    assert post("/internal/v1/supervise", stop, {AUTH_HEADER: header}).status_code == 204
    assert post("/internal/v1/supervise", stop, {AUTH_HEADER: header}).status_code == 401
    # The hand-over WebSocket: refused at the handshake without the signature.
    ws_url = world.srv.url.replace("http://", "ws://") + "/internal/v1/streams/" + sender + "00" * 16 + "?workspace=x"
    for headers in ({}, {"Authorization": f"Bearer {world.tokens['agent_a']}"}, {AUTH_HEADER: forged["stale"]}):
        with pytest.raises(InvalidStatus) as err:
            connect(ws_url, additional_headers=headers, open_timeout=10).close()
        assert err.value.response.status_code == 403
    # None of it is in the public API document.
    doc = httpx.get(world.srv.url + "/api/v1/openapi.json").json()
    assert not [p for p in doc["paths"] if p.startswith("/internal")]
