"""Sign-in sessions: listed with their client, address and last use; signed out one at a time or
all but the caller's; nobody reaches anyone else's. Over the real API and the real CLI."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, csrf_token, first_user


@dataclass
class World:
    srv: RunningServer
    tmp: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("sessions")
    srv = RunningServer(tmp / "data")
    srv.start()
    try:
        alice = first_user(srv.url, "alice", "alice-password")
        with api(srv.url, alice) as c:
            for name in ("bob", "carol"):
                c.post("/users", json={"username": name, "email": f"{name}@example.com",
                                       "password": f"{name}-password"}).raise_for_status()
        yield World(srv, tmp)
    finally:
        srv.stop()


def login(world: World, user: str, agent: str, forwarded_for: str | None = None) -> str:
    headers = {"User-Agent": agent.encode("latin-1")}  # as bytes: httpx would only send ASCII
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for.encode()
    with httpx.Client(base_url=world.srv.url + "/api/v1", headers=headers) as c:
        r = c.post("/auth/login", json={"username": user, "password": f"{user}-password"})
        r.raise_for_status()
        return str(r.json()["token"])


def sessions(world: World, token: str) -> list[dict]:
    with api(world.srv.url, token) as c:
        r = c.get("/users/me/sessions")
        r.raise_for_status()
        return list(r.json())


def status(world: World, token: str) -> int:
    with api(world.srv.url, token) as c:
        return c.get("/users/me").status_code


def test_sessions_are_listed_with_client_address_and_which_is_the_callers(world: World) -> None:
    laptop = login(world, "bob", "hatchway-cli/1.0 (laptop)")
    # Without --trusted-proxy nobody's X-Forwarded-For is believed, not even 127.0.0.1's (every
    # local workspace's address): the address is the connection's.
    browser = login(world, "bob", "Mozilla/5.0 (X11; Linux x86_64)", forwarded_for="203.0.113.77")
    login(world, "carol", "carol's own")  # never shown to bob
    rows = sessions(world, laptop)
    assert [(r["client"], r["source"], r["current"]) for r in rows] == [
        ("Mozilla/5.0 (X11; Linux x86_64)", "127.0.0.1", False),  # the most recent first
        ("hatchway-cli/1.0 (laptop)", "127.0.0.1", True),
    ]
    now = datetime.now(UTC)
    for r in rows:
        created, used, expires = (datetime.fromisoformat(r[k]) for k in ("created_at", "last_used_at", "expires_at"))
        assert now - timedelta(minutes=1) < created <= used <= now + timedelta(seconds=5)
        assert expires > now + timedelta(days=1)
    assert [r["current"] for r in sessions(world, browser)] == [True, False]


def test_last_use_is_written_when_a_minute_old(world: World) -> None:
    token = login(world, "bob", "stale-check")
    session_id = next(r["id"] for r in sessions(world, token) if r["current"])
    with sqlite3.connect(world.srv.data_dir / "hatchway.db") as db:
        db.execute("UPDATE api_tokens SET last_used_at = '2020-01-02 03:04:05.000000' WHERE id = ?", (session_id,))
    row = next(r for r in sessions(world, token) if r["id"] == session_id)  # this very call uses it
    used = datetime.fromisoformat(row["last_used_at"])
    assert datetime.now(UTC) - used < timedelta(minutes=1)


def test_hostile_user_agents_are_stored_printable_and_short(world: World) -> None:
    # HTTP itself refuses ASCII control characters in headers; C1 controls (latin-1) get through.
    token = login(world, "carol", "evil\x85\x9b31m red \t tabs\xa0" + "x" * 6_000)
    client = next(r["client"] for r in sessions(world, token) if r["current"])
    assert client.startswith("evil 31m red tabs xxx")  # white space folded, unprintables dropped
    assert len(client) == 200 and client.endswith("…")
    assert client.isprintable()


def test_signing_out_one_session_ends_it_and_only_it(world: World) -> None:
    keep = login(world, "bob", "keep")
    drop = login(world, "bob", "drop")
    drop_id = next(r["id"] for r in sessions(world, drop) if r["current"])
    with api(world.srv.url, keep) as c:
        assert c.delete(f"/users/me/sessions/{drop_id}").json() == {"ok": True}
        again = c.delete(f"/users/me/sessions/{drop_id}")
    assert (again.status_code, again.json()) == (404, {
        "error": "no such session", "detail": "list your sessions with: hatchway sessions list"})
    assert (status(world, drop), status(world, keep)) == (401, 200)
    with api(world.srv.url, drop) as c:
        assert c.get("/users/me").json()["error"] == "session expired or revoked"
    with api(world.srv.url, first_user_token(world)) as c:
        revocations = [e for e in c.get("/audit").json() if e["action"] == "session.revoke"]
    assert any(e["actor"] == "bob" and e["detail"] == {"session": drop_id} for e in revocations)


def test_nobody_signs_out_someone_elses_session(world: World) -> None:
    bob = login(world, "bob", "bob here")
    carol = login(world, "carol", "carol here")
    carol_id = next(r["id"] for r in sessions(world, carol) if r["current"])
    with api(world.srv.url, bob) as c:
        r = c.delete(f"/users/me/sessions/{carol_id}")
    assert r.status_code == 404  # not 403: whether the ID exists is not bob's business
    assert status(world, carol) == 200
    assert carol_id not in {s["id"] for s in sessions(world, bob)}


def test_sign_out_everywhere_else(world: World) -> None:
    mine = login(world, "carol", "this one")
    others = [login(world, "carol", f"other {i}") for i in range(3)]
    bob = login(world, "bob", "unaffected")
    with api(world.srv.url, mine) as c:
        out = c.post("/users/me/sessions/revoke-others").json()
    assert out["revoked"] >= 3  # and any carol sessions the tests above left
    assert [status(world, t) for t in others] == [401, 401, 401]
    assert (status(world, mine), status(world, bob)) == (200, 200)
    assert [(r["client"], r["current"]) for r in sessions(world, mine)] == [("this one", True)]
    with api(world.srv.url, first_user_token(world)) as c:
        actions = [(e["action"], e["actor"]) for e in c.get("/audit").json()]
    assert ("session.revoke-others", "carol") in actions


def sign_outs(world: World, session_id: str) -> list[dict]:
    """The audit's records of ``session_id`` being signed out (logout or the web's Sign out)."""
    with api(world.srv.url, first_user_token(world)) as c:
        r = c.get("/audit", params={"actor": "bob"})
        r.raise_for_status()
    return [e for e in r.json() if e["action"] == "session.sign-out" and e["detail"].get("session") == session_id]


def test_logging_out_is_audited_with_the_session_and_address_never_the_token(world: World) -> None:
    token = login(world, "bob", "logging out")
    session_id = next(r["id"] for r in sessions(world, token) if r["current"])
    with api(world.srv.url, token) as c:
        assert c.post("/auth/logout").json() == {"ok": True}
        again = c.post("/auth/logout")
    assert again.status_code == 401  # gone: a second logout signs nothing out, records nothing
    [event] = sign_outs(world, session_id)
    assert (event["actor"], event["target"], event["detail"]) == ("bob", "bob", {"session": session_id})
    host, port = event["source"].split(" ")  # the address logging out, as other events give it
    assert host == "127.0.0.1" and port.isdigit()
    assert token not in repr(event) and token[4:] not in repr(event)


def test_signing_in_is_audited_with_the_session_and_client_never_the_token(world: World) -> None:
    """Every way a session comes to be (API login, the web form) is recorded with the id the
    sessions list shows, so a token's life can be followed from sign-in to sign-out."""
    token = login(world, "bob", "signing in")
    session_id = next(r["id"] for r in sessions(world, token) if r["current"])
    with httpx.Client(base_url=world.srv.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "bob", "password": "bob-password"}
        assert browser.post("/sign-in", data=form).status_code == 303
        cookie = browser.cookies["hatchway_session"]
    web_id = next(r["id"] for r in sessions(world, cookie) if r["current"])
    with api(world.srv.url, first_user_token(world)) as c:
        events = [e for e in c.get("/audit", params={"actor": "bob"}).json() if e["action"] == "session.sign-in"]
    by_session = {e["detail"]["session"]: e for e in events}
    for sid in (session_id, web_id):
        event = by_session[sid]
        assert (event["actor"], event["target"]) == ("bob", "bob")
        assert event["source"].startswith("127.0.0.1 ")
    assert by_session[session_id]["detail"]["client"] == "signing in"  # the User-Agent it signed in with
    assert by_session[web_id]["detail"]["client"].startswith("python-httpx/")
    assert all(secret not in repr(events) and secret[4:] not in repr(events) for secret in (token, cookie))


def test_signing_out_of_the_web_ui_is_audited_like_logging_out(world: World) -> None:
    with httpx.Client(base_url=world.srv.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "bob", "password": "bob-password"}
        assert browser.post("/sign-in", data=form).status_code == 303
        cookie = browser.cookies["hatchway_session"]
        session_id = next(r["id"] for r in sessions(world, cookie) if r["current"])
        csrf = csrf_token(browser.get("/workspaces"))
        signed_out = browser.post("/sign-out", data={"csrf_token": csrf})
        assert (signed_out.status_code, signed_out.headers["location"]) == (303, "/")
        # The same form sent again with the dead session's cookie signs nothing out.
        browser.cookies.set("hatchway_session", cookie)
        assert browser.post("/sign-out", data={"csrf_token": csrf}).status_code == 303
    assert status(world, cookie) == 401
    [event] = sign_outs(world, session_id)
    assert (event["actor"], event["target"], event["detail"]) == ("bob", "bob", {"session": session_id})
    assert event["source"].startswith("127.0.0.1 ")
    assert cookie not in repr(event) and cookie[4:] not in repr(event)


def first_user_token(world: World) -> str:
    with httpx.Client(base_url=world.srv.url + "/api/v1") as c:
        return str(c.post("/auth/login", json={"username": "alice", "password": "alice-password"}).json()["token"])


def test_cli_lists_and_signs_out_sessions(world: World) -> None:
    cli, other = Cli(world.tmp / "cli-bob"), Cli(world.tmp / "cli-bob-2")
    cli.login(world.srv.url, "bob", "bob-password")
    other.login(world.srv.url, "bob", "bob-password")
    listed = cli.ok("sessions", "list", "--json").json()
    mine = next(r for r in listed if r["current"])
    host = "".join(ch for ch in socket.gethostname() if 32 < ord(ch) < 127 and ch not in "()")[:64]
    assert mine["client"].startswith("hatchway-cli/") and mine["client"].endswith(f"({host})")
    table = cli.ok("sessions", "list").out.splitlines()
    assert table[0].split() == ["ID", "CLIENT", "FROM", "SIGNED", "IN", "LAST", "USED", "EXPIRES"]
    assert any(line.split()[:2] == ["*", mine["id"][:8]] for line in table[1:])

    theirs = next(r["id"] for r in other.ok("sessions", "list", "--json").json() if r["current"])
    out = cli.ok("sessions", "revoke", theirs[:8]).out
    assert out.startswith(f"Signed out session {theirs[:8]} (hatchway-cli/")
    denied = other.run("whoami")
    assert (denied.code, denied.err.strip()) == (
        1, f"hatchway: session expired or revoked: log in again: hatchway login {world.srv.url} --username bob")

    for args, message in (
        (["revoke"], "name one session ID to sign out, or pass --others (not both)"),
        (["revoke", "abc", "--others"], "name one session ID to sign out, or pass --others (not both)"),
        (["revoke", "zz"], "no session of yours starts with 'zz'; see hatchway sessions list"),
    ):
        r = cli.run("sessions", *args)
        assert (r.code, r.err.strip()) == (1, f"hatchway: {message}")

    other.login(world.srv.url, "bob", "bob-password")
    assert cli.ok("sessions", "revoke", "--others").out.strip().startswith("Signed out ")
    assert other.run("whoami").code == 1
    assert cli.ok("sessions", "revoke", mine["id"]).out.strip() == (
        "Signed out this session and ended its SSH connections; log in again with hatchway login")
    gone = cli.run("whoami")
    assert gone.code == 1 and "hatchway login" in gone.err
