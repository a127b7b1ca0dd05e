"""Hostile input at the API and on the SSH endpoint: every name, variable and value that could add
a line, a directive or a shell command is refused (4xx with the JSON error shape, never 500, nothing
stored) or, where the format allows it, carried through byte for byte without being interpreted.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from hatchway.names import ENV_NAME
from tests.helpers.server import api
from tests.helpers.world import World, build_world

MIB = 1024 * 1024

# Each of these must never become a name: they add lines, comments, quotes, ssh_config tokens,
# shell syntax, paths, invisible or non-ASCII characters, or are simply huge.
HOSTILE_NAMES = [
    "a\nb", "a\r\nb", "a\rb", "a\x00b", "#x", "x#y", '"q"', "'q'", "%h", "a%p", "a b", " a", "a ",
    "$(id)", "`id`", "a;b", "a|b", "a&b", "a>b", "a<b", "a\\b", "a/b", "..", "../etc", "a*", "a?",
    "a\tb", "a\x1b[31m", "\u202eevil", "é", "ａ", "A", "-rf", "a" * 64, "y" * 3000, "x" * MIB, "",
]
# Values of image variables: anything on one line is fine (written verbatim, never interpreted);
# these must be refused because they would add a line or cannot be written.
HOSTILE_VALUES = ["a\nb", "a\rb", "a\r\nHATCHWAY_URL=evil", "a\x00b", "x" * (64 * 1024 + 1), "x" * MIB]
# ... and these are accepted and must come back byte for byte.
LITERAL_VALUES = {
    "SHELLY": "$(touch /tmp/pwned) `id` ; rm -rf / | cat && echo",
    "QUOTES": "\"double\" 'single' \\back\\slash",
    "HASHES": "# not a comment #",
    "PERCENT": "%h %p %% %u",
    "SPACES": "  leading and trailing  ",
    "UNICODE": "é ü ☃ \u202e",
    "EQUALS": "a=b=c",
    "EMPTY": "",
}
NON_UTF8_BODIES = [
    b'{"username": "\xff\xfe", "email": "x@example.com"}',
    b'{"name": "a\xc3", "provider": "byo"}',
    b'\xef\xbb\xbf{"name": "B O M"}',  # a byte-order mark, then a bad name anyway
    b'{"name": "\\ud800", "provider": "byo"}',  # a lone surrogate, escaped
    b'{"name": ',  # truncated
    b"[" * 10000 + b"]" * 10000,  # deeply nested
]

tried: dict[str, int] = {}  # what each test threw at the server, for the README's figures


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    w = build_world(tmp_path_factory.mktemp("hostile"), members=("bob",), start_agents=False,
                    server_env={"HATCHWAY_LOCAL_ISOLATION": "off"})
    try:
        yield w
    finally:
        w.close()
        log = w.server.log()
        assert "Traceback" not in log, log[-4000:]
        print(f"\nhostile inputs tried: {tried} = {sum(tried.values())}")


def refused(r, *statuses: int) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code in (statuses or (413, 422)), (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"], body
    assert "\n" not in body["error"] + body["detail"], "an error message must not carry a raw newline"


def test_hostile_names_are_refused_everywhere(world: World) -> None:
    n = 0
    with world.api("alice") as c:
        before = {p: len(c.get(p).json()) for p in ("/users", "/providers", "/workspaces?all=true")}
        for bad in HOSTILE_NAMES:
            refused(c.post("/users", json={"username": bad, "email": "x@example.com"}))
            refused(c.post("/users", json={"username": "okname", "email": bad}))
            refused(c.post("/providers", json={"name": bad, "kind": "manual"}))
            refused(c.post("/workspaces", json={"name": bad, "provider": "byo"}))
            if 0 < len(bad) < 200 and not ENV_NAME.fullmatch(bad):  # ("A", "a"*64 are fine env names)
                refused(c.post("/workspaces", json={"name": "okws", "provider": "byo", "env": {bad: "v"}}))
            n += 5
        after = {p: len(c.get(p).json()) for p in ("/users", "/providers", "/workspaces?all=true")}
    assert after == before, "nothing hostile was stored"
    tried["names"] = n


def test_hostile_env_values_are_refused_and_one_line_values_are_kept_verbatim(world: World) -> None:
    with world.api("bob") as c:
        for value in HOSTILE_VALUES:
            refused(c.post("/workspaces", json={"name": "okws", "provider": "byo", "env": {"X": value}}))
        refused(c.post("/workspaces", json={"name": "okws", "provider": "byo", "env": {f"V{i}": "x" for i in range(257)}}))
        r = c.post("/workspaces", json={"name": "lit", "provider": "byo", "env": LITERAL_VALUES})
        assert r.status_code == 201, r.text
        assert r.json()["env"] == LITERAL_VALUES
    tried["env values"] = len(HOSTILE_VALUES) + 1 + len(LITERAL_VALUES)


async def test_literal_values_reach_the_ssh_session_byte_for_byte(world: World) -> None:
    """Email and image variables full of shell and ssh_config syntax are written to
    ~/.ssh/environment as one line each and arrive in the session unchanged, uninterpreted."""
    with world.api("bob") as c:
        token = c.post("/workspaces/lit/agent-token").json()["agent_token"]
    world.agent_tokens["bob"] = token
    agent = world.start_agent("bob", workspace="lit")
    env_file = (agent.home / ".ssh" / "environment").read_text()
    section = env_file.split("# ----------------- END HATCHWAY")[0]
    assert sum(line.startswith(("SHELLY=", "QUOTES=", "HASHES=", "PERCENT=", "SPACES=", "UNICODE=", "EQUALS=", "EMPTY="))
               for line in section.splitlines()) == len(LITERAL_VALUES), "one line per variable"
    t = await world.ssh("bob", "lit")
    try:
        for name, value in LITERAL_VALUES.items():
            r = await t.run(f"printenv {name}")
            assert r.stdout == (value + "\n").encode(), name
        assert (await t.run("test -e /tmp/pwned && echo pwned || echo safe")).stdout == b"safe\n"
    finally:
        await t.close()


def test_malformed_bodies_and_hostile_paths_never_reach_500(world: World) -> None:
    n = 0
    with world.api("alice") as c:
        for body in NON_UTF8_BODIES:
            for path in ("/users", "/workspaces", "/providers", "/auth/login"):
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                refused(r, 400, 413, 422)
                n += 1
        refused(c.post("/workspaces", content=b"x" * (MIB + 1), headers={"Content-Type": "application/json"}), 413)
        n += 1
    # A Content-Length that lies (no client library sends one): whatever follows is not a request.
    with socket.create_connection((world.server.host, world.server.port), timeout=10) as raw:
        raw.sendall(b"POST /api/v1/workspaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Authorization: Bearer " + world.people["alice"].token.encode() + b"\r\nContent-Length: 10\r\n\r\n")
        with contextlib.suppress(OSError):
            raw.sendall(b"x" * (MIB + 1))
        answer = raw.recv(65536)
        assert answer.startswith((b"HTTP/1.1 4",)), answer[:100]
        n += 1
    with world.api("alice") as c:
        for bad in HOSTILE_NAMES:
            if len(bad) > 4096:
                continue  # a 1 MiB URL is the HTTP layer's business (below)
            q = quote(bad, safe="")
            for method, path in (("GET", f"/workspaces/{q}"), ("DELETE", f"/workspaces/{q}"),
                                 ("GET", f"/workspaces/dev?owner={q}"), ("POST", f"/users/{q}/suspend"),
                                 ("PUT", f"/users/{q}/role"), ("PATCH", f"/providers/{q}"),
                                 ("GET", f"/connections?user={q}&workspace={q}"), ("GET", f"/audit?actor={q}")):
                body = {"role": "member"} if method == "PUT" else {"external_connect": True} if method == "PATCH" else None
                r = c.request(method, path, json=body)
                assert r.status_code < 500, (method, path, r.status_code, r.text[:200])
                assert r.status_code in (200, 307, 404, 403, 405, 422), (method, path, r.status_code)
                if r.status_code == 404:  # the name is echoed, but never a megabyte or a new line
                    said = r.json()["error"] + r.json()["detail"]
                    assert said.isprintable() and len(said) < 300, (method, path, said[:300])
                n += 1
    # A 1 MiB URL and a 1 MiB header (no client library sends those either).
    for request in (b"GET /api/v1/workspaces/" + b"a" * MIB + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"GET /api/v1/deployment HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * MIB + b"\r\n\r\n"):
        with socket.create_connection((world.server.host, world.server.port), timeout=10) as raw:
            with contextlib.suppress(OSError):
                raw.sendall(request)
            answer = b""
            with contextlib.suppress(OSError):
                answer = raw.recv(65536)
            assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 200")), answer[:100]
            assert not answer.startswith(b"HTTP/1.1 5")
        n += 1
    with api(world.url) as c:
        for bad in HOSTILE_NAMES[::3]:  # each costs an Argon2 verification: a sample is enough
            r = c.post("/auth/login", json={"username": bad, "password": bad})
            assert r.status_code in (401, 413, 422, 429), r.status_code
            n += 1
        for header in ("Bearer hws_ spaced out", "Bearer " + "x" * 8000, "bearer hws_" + "%0a" * 10, "Basic Zm9vOmJhcg==", "Bearer"):
            r = c.get("/users/me", headers={"Authorization": header})
            assert r.status_code in (400, 401, 431), r.status_code
            n += 1
    tried["bodies and paths"] = n


def test_hostile_names_on_the_ssh_endpoint_are_refused_and_cannot_forge_log_lines(world: World) -> None:
    bob = world.people["bob"]
    base = world.url.replace("http://", "ws://") + "/api/v1/workspaces/"
    forged = "x\n2030-01-01 00:00:00,000 INFO  hatchway.server.ssh: SSH to dev by alice: relaying (FORGED)"
    cases = [quote(forged, safe=""), quote("a\r\nb", safe=""), quote("$(id)", safe=""), "a" * 300,
             "dev?owner=" + quote(forged, safe=""), "dev?owner=" + quote("../../x", safe="")]
    for case in cases:
        path, _, query = case.partition("?")
        url = base + path + "/ssh" + (f"?{query}" if query else "")
        try:
            ws = connect(url, additional_headers={"Authorization": f"Bearer {bob.token}"})
        except InvalidStatus as exc:  # a path that matches no route at all ("%2F" is a "/")
            assert exc.response.status_code in (403, 404)
            continue
        with ws:
            message = json.loads(ws.recv(timeout=10))
            assert message["type"] == "error" and "invalid" in message["error"], message
            assert "\n" not in message["error"]
    log = world.server.log()
    assert "(FORGED)" not in "".join(line for line in log.splitlines(keepends=True) if line.startswith("2030-"))
    assert not any(line.startswith("2030-") for line in log.splitlines()), "a client forged a log line"
    tried["ssh endpoint"] = len(cases)
