"""Passwords: changing your own (current one checked and throttled like a login, other sessions
end), a site manager setting anyone's (all their sessions end), audited without secrets, refused
clearly when hostile or wrong. Over the real API and the real CLI against a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, first_user

MIB = 1024 * 1024
ALICE_PW = "alice-password"


@dataclass
class World:
    srv: RunningServer
    tmp: Path
    alice: str  # the site manager's token

    def audit(self, action: str = "user.password") -> list[dict]:
        with api(self.srv.url, self.alice) as c:
            return [e for e in c.get("/audit").json() if e["action"] == action]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("passwords")
    srv = RunningServer(tmp / "data")
    srv.start()
    try:
        alice = first_user(srv.url, "alice", ALICE_PW)
        with api(srv.url, alice) as c:
            for name in ("bob", "carol", "dan", "erin", "fred"):
                c.post("/users", json={"username": name, "email": f"{name}@example.com",
                                       "password": f"{name}-password"}).raise_for_status()
        yield World(srv, tmp, alice)
    finally:
        srv.stop()
        assert "Traceback" not in srv.log(), srv.log()[-4000:]


def login(world: World, user: str, password: str | None = None) -> httpx.Response:
    with api(world.srv.url) as c:
        return c.post("/auth/login", json={"username": user, "password": password or f"{user}-password"})


def token(world: World, user: str, password: str | None = None) -> str:
    r = login(world, user, password)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def status(world: World, tok: str) -> int:
    with api(world.srv.url, tok) as c:
        return c.get("/users/me").status_code


def change(world: World, tok: str, current: str, new: str) -> httpx.Response:
    with api(world.srv.url, tok) as c:
        return c.put("/users/me/password", json={"current_password": current, "new_password": new})


def reset(world: World, tok: str, user: str, password: str) -> httpx.Response:
    with api(world.srv.url, tok) as c:
        return c.put(f"/users/{user}/password", json={"password": password})


def assert_no_secrets(world: World, *secrets: str) -> None:
    """Neither the audit log (as the API lists it) nor the server's own log holds a password."""
    with api(world.srv.url, world.alice) as c:
        audit = json.dumps(c.get("/audit").json())
    log = world.srv.log()
    for secret in secrets:
        assert secret not in audit and secret not in log, secret


def test_changing_your_own_password_ends_your_other_sessions_only(world: World) -> None:
    here, elsewhere = token(world, "bob"), token(world, "bob")
    carol = token(world, "carol")
    r = change(world, here, "bob-password", "bob-new-password-1")
    assert r.status_code == 200, r.text
    assert r.json()["revoked"] >= 1
    assert (status(world, here), status(world, elsewhere), status(world, carol)) == (200, 401, 200)
    assert login(world, "bob").status_code == 401  # the old one no longer works
    assert status(world, token(world, "bob", "bob-new-password-1")) == 200
    event = next(e for e in reversed(world.audit()) if e["target"] == "bob")
    assert (event["actor"], event["detail"]["had_password"]) == ("bob", True)
    assert event["detail"]["sessions_ended"] >= 1 and set(event["detail"]) == {"had_password", "sessions_ended"}
    assert_no_secrets(world, "bob-password", "bob-new-password-1")


def test_wrong_current_password_is_refused_and_throttled_like_a_login(world: World) -> None:
    tok = token(world, "erin")
    for _ in range(5):  # the server allows 5 failures per user and address
        r = change(world, tok, "not-my-password", "erin-new-password")
        assert r.status_code == 403
        assert r.json()["error"] == "current password is wrong"
        assert r.json()["detail"] == ("type the password you sign in with now and try again; if you forgot it, "
                                      "ask a site manager to set a new one (hatchway users set-password erin)")
    r = change(world, tok, "erin-password", "erin-new-password")  # even the right one now waits
    assert r.status_code == 429 and r.json()["error"] == "too many failed logins"
    assert int(r.headers["Retry-After"]) > 0
    assert login(world, "erin").status_code == 429  # one throttle, shared with sign-in
    assert status(world, tok) == 200  # the session itself is not punished
    assert_no_secrets(world, "not-my-password", "erin-new-password")


@pytest.mark.parametrize("body,field,says", [
    ({"current_password": "dan-password", "new_password": "short"}, "new_password", "at least 8 characters"),
    ({"current_password": "dan-password", "new_password": "x" * 1025}, "new_password", "at most 1024 characters"),
    ({"current_password": "dan-password", "new_password": "two\nlines-here"}, "new_password", "line breaks"),
    ({"current_password": "dan-password", "new_password": "carriage\rreturn"}, "new_password", "line breaks"),
    ({"current_password": "dan-password", "new_password": "nul\x00-in-it"}, "new_password", "NUL"),
    ({"current_password": "dan-password"}, "new_password", "Field required"),
    ({"current_password": "dan-password", "new_password": "dan-new-password", "role": "site-manager"}, "role",
     "Extra inputs are not permitted"),
    ({"current_password": "x" * 1025, "new_password": "dan-new-password"}, "current_password", "at most 1024"),
])
def test_bad_new_passwords_are_refused_with_the_rule(world: World, body: dict, field: str, says: str) -> None:
    tok = token(world, "dan")
    with api(world.srv.url, tok) as c:
        r = c.put("/users/me/password", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid request"
    detail = r.json()["detail"]
    assert detail.startswith(f"{field}: ") and says in detail, detail
    assert "\n" not in detail and "lines-here" not in detail and "x" * 100 not in detail  # never echoed
    assert login(world, "dan").status_code == 200  # unchanged


def test_the_same_password_again_is_refused(world: World) -> None:
    r = change(world, token(world, "dan"), "dan-password", "dan-password")
    assert (r.status_code, r.json()) == (422, {
        "error": "the new password is the same as the current one", "detail": "choose a different new password"})


def test_huge_and_broken_bodies_get_a_clear_4xx(world: World) -> None:
    tok = token(world, "dan")
    huge = json.dumps({"current_password": "dan-password", "new_password": "x" * (10 * MIB)})
    for path in ("/users/me/password", "/users/dan/password"):
        with api(world.srv.url, tok if path.startswith("/users/me") else world.alice) as c:
            r = c.put(path, content=huge, headers={"Content-Type": "application/json"})
            assert r.status_code == 413 and set(r.json()) == {"error", "detail"}, r.text[:300]
            r = c.put(path, content=b'{"password": ', headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and set(r.json()) == {"error", "detail"}
            r = c.put(path, content=b'{"password": "\xff\xfe-bytes"}', headers={"Content-Type": "application/json"})
            assert r.status_code in (400, 422) and set(r.json()) == {"error", "detail"}, r.text
            r = c.put(path, content=b'{"password": "lone\\ud800surrogate"}', headers={"Content-Type": "application/json"})
            assert r.status_code == 422 and set(r.json()) == {"error", "detail"}, r.text
    assert login(world, "dan").status_code == 200


def test_a_member_cannot_set_anyone_elses_password(world: World) -> None:
    bob = token(world, "bob", "bob-new-password-1")
    r = reset(world, bob, "carol", "taken-over-123")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert "site manager" in r.json()["detail"]
    assert login(world, "carol", "taken-over-123").status_code == 401
    assert login(world, "carol").status_code == 200


def test_a_site_manager_reset_ends_all_of_that_users_sessions(world: World) -> None:
    sessions = [token(world, "carol") for _ in range(2)]
    r = reset(world, world.alice, "carol", "carol-reset-password")
    assert r.status_code == 200 and r.json()["revoked"] >= 2
    assert [status(world, t) for t in sessions] == [401, 401]
    assert status(world, world.alice) == 200
    assert login(world, "carol").status_code == 401
    assert status(world, token(world, "carol", "carol-reset-password")) == 200
    event = next(e for e in reversed(world.audit()) if e["target"] == "carol")
    assert (event["actor"], event["detail"]["had_password"]) == ("alice", True)
    assert_no_secrets(world, "carol-reset-password")

    r = reset(world, world.alice, "nobody", "whatever-password")
    assert (r.status_code, r.json()) == (404, {"error": 'no user named "nobody"', "detail": "see hatchway users list"})
    r = reset(world, world.alice, "carol", "short")
    assert r.status_code == 422 and r.json()["detail"] == "password: String should have at least 8 characters"


def test_a_site_manager_cannot_set_their_own_without_the_current_one(world: World) -> None:
    """A stolen session of a site manager's must not be turned into the account by setting its
    password here (which asks for no current password) and signing the owner out: refused, saying
    where the own password is changed, and nothing changes. Then the way that asks for it."""
    other = token(world, "alice", ALICE_PW)
    r = reset(world, world.alice, "alice", "taken-over-password")
    assert (r.status_code, r.json()) == (409, {
        "error": "your own password is changed with your current one",
        "detail": "a session alone must not be enough to take an account over, a site manager's least of all: use "
                  "hatchway password, Account > Password in the web UI, or PUT /api/v1/users/me/password",
    })
    assert (status(world, world.alice), status(world, other)) == (200, 200)
    assert login(world, "alice", "taken-over-password").status_code == 401
    assert not [e for e in world.audit() if e["target"] == "alice"]
    r = change(world, world.alice, ALICE_PW, "alice-password-2")
    assert r.status_code == 200
    assert (status(world, world.alice), status(world, other)) == (200, 401)
    assert status(world, token(world, "alice", "alice-password-2")) == 200


def test_a_user_created_without_a_password_can_sign_in_once_one_is_set(world: World) -> None:
    with api(world.srv.url, world.alice) as c:
        c.post("/users", json={"username": "gina", "email": "gina@example.com"}).raise_for_status()
    assert login(world, "gina", "anything-at-all").status_code == 401
    assert reset(world, world.alice, "gina", "gina-first-password").json() == {"revoked": 0}
    assert status(world, token(world, "gina", "gina-first-password")) == 200
    event = next(e for e in reversed(world.audit()) if e["target"] == "gina")
    assert event["detail"] == {"had_password": False, "sessions_ended": 0}


def test_cli_create_without_a_password_warns_and_names_the_command(world: World) -> None:
    admin = Cli(world.tmp / "cli-alice")
    admin.login(world.srv.url, "alice", "alice-password-2")
    r = admin.ok("users", "create", "hank", "--email", "hank@example.com")
    assert r.out.startswith("Created hank (member)")
    assert r.err.strip() == ("hatchway: warning: hank has no password and cannot sign in until one is set: "
                             "hatchway users set-password hank --password-stdin")
    with_pw = admin.ok("users", "create", "ivy", "--email", "ivy@example.com", "--password-stdin", stdin="ivy-password\n")
    assert with_pw.err == ""

    r = admin.ok("users", "set-password", "hank", "--password-stdin", stdin="hank-password-1\n")
    assert r.out.strip() == "Set the password of hank; 0 of their sign-in sessions ended"
    hank = Cli(world.tmp / "cli-hank")
    hank.login(world.srv.url, "hank", "hank-password-1")
    assert hank.ok("whoami", "--json").json()["username"] == "hank"

    no_tty = admin.run("users", "set-password", "hank", stdin="")
    assert (no_tty.code, no_tty.err.strip()) == (1, (
        "hatchway: standard input is not a terminal, so there is no one to prompt; pass --password-stdin "
        "and give the password on one line"))
    no_tty_login = Cli(world.tmp / "cli-hank-2").run("login", world.srv.url, "--username", "hank", stdin="")
    assert (no_tty_login.code, no_tty_login.out, no_tty_login.err.strip()) == (1, "", (
        "hatchway: standard input is not a terminal, so there is no one to prompt; pass --password-stdin "
        "and give the password on one line"))
    member = hank.run("users", "set-password", "ivy", "--password-stdin", stdin="hijacked-password\n")
    assert member.code == 1 and member.err.startswith("hatchway: forbidden: only a site manager can do this")
    short = admin.run("users", "set-password", "hank", "--password-stdin", stdin="short\n")
    assert (short.code, short.err.strip()) == (
        1, "hatchway: invalid request: password: String should have at least 8 characters")


def test_cli_set_password_on_yourself_says_where_before_asking_for_one(world: World) -> None:
    admin = Cli(world.tmp / "cli-alice-self")
    admin.login(world.srv.url, "alice", "alice-password-2")
    for args, stdin in ((("--password-stdin",), "unused-new-password\n"), ((), "")):
        r = admin.run("users", "set-password", "alice", *args, stdin=stdin)
        assert (r.code, r.out, r.err) == (1, "", "hatchway: your own password is changed with your current one: run "
                                                 "hatchway password\n")
    assert login(world, "alice", "unused-new-password").status_code == 401


def test_cli_password_changes_your_own_and_keeps_this_session(world: World) -> None:
    me, laptop = Cli(world.tmp / "cli-fred"), Cli(world.tmp / "cli-fred-laptop")
    me.login(world.srv.url, "fred", "fred-password")
    laptop.login(world.srv.url, "fred", "fred-password")

    wrong = me.run("password", "--stdin", stdin="not-freds\nfred-new-password\n")
    assert wrong.code == 1 and wrong.err.startswith("hatchway: current password is wrong: ")
    for stdin, message in (
        ("fred-password\n", "no new password on standard input"),
        ("", "no current password on standard input"),
        ("fred-password\n\n", "the new password line is empty"),
    ):
        r = me.run("password", "--stdin", stdin=stdin)
        expected = f"hatchway: {message}; --stdin expects two lines on standard input: your current password, then the new one"
        assert (r.code, r.err.strip()) == (1, expected)
    r = me.run("password", stdin="")
    assert r.code == 1 and "standard input is not a terminal" in r.err and "--stdin" in r.err

    out = me.ok("password", "--stdin", stdin="fred-password\nfred-new-password\n").out
    assert out.strip() == "Password changed; signed out 1 other session (this one stays signed in)"
    assert me.ok("whoami", "--json").json()["username"] == "fred"
    gone = laptop.run("whoami")
    assert gone.code == 1 and "session expired or revoked" in gone.err
    laptop.login(world.srv.url, "fred", "fred-new-password")
    assert_no_secrets(world, "fred-new-password", "not-freds")
