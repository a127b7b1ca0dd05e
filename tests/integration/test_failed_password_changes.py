"""A wrong current password when changing your own password is audited as
``user.password-failed`` (the signed-in user as actor, the account as target, why; never a
password), whether it comes from the API, the CLI or Account > Password, and a script holding a
session adds a bounded number of rows however often it guesses. Over a real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hatchway.server.unidentified import PER_KEY, WINDOW_S
from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, csrf_token, first_user, running_server, wait_for

ACTION = "user.password-failed"
WRONG = {
    "error": "current password is wrong",
    "detail": "type the password you sign in with now and try again; if you forgot it, ask a site manager "
              "to set a new one (hatchway users set-password bob)",
}
#: Every password these tests try; none may be found in the database or the server's log.
TRIED = ("api-Wq4z-guess", "cli-Lm7c-guess", "web-Rt2x-guess", "flood-Gh6n-guess", "new-Pb3v-password")


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path) as server:
        yield server


def _bob(srv: RunningServer) -> tuple[str, str]:
    """alice (site manager) and bob (a member), each signed in: their tokens."""
    alice = first_user(srv.url, "alice", "alice-password-1")
    with api(srv.url, alice) as c:
        c.post("/users", json={"username": "bob", "email": "bob@example.com", "password": "bob-password-1"}).raise_for_status()
        bob = c.post("/auth/login", json={"username": "bob", "password": "bob-password-1"})
    return alice, bob.json()["token"]


def _change(srv: RunningServer, token: str, current: str) -> httpx.Response:
    with api(srv.url, token) as c:
        return c.put("/users/me/password", json={"current_password": current, "new_password": "new-Pb3v-password"})


def _rows(srv: RunningServer, token: str) -> list[dict]:
    """The refused password changes in the audit record, oldest first."""
    with api(srv.url, token) as c:
        return list(reversed(c.get("/audit", params={"action": ACTION, "limit": 5000}).json()))


def _assert_no_password_kept(srv: RunningServer) -> None:
    stored = b"".join(p.read_bytes() for p in srv.data_dir.glob("hatchway.db*"))
    for password in TRIED:
        assert password.encode() not in stored and password not in srv.log(), password


def test_a_wrong_current_password_is_audited_from_the_api_the_cli_and_the_web_form(
    srv: RunningServer, tmp_path: Path,
) -> None:
    alice, bob = _bob(srv)
    r = _change(srv, bob, "api-Wq4z-guess")
    assert (r.status_code, r.json()) == (403, WRONG)

    cli = Cli(tmp_path / "bob")
    cli.login(srv.url, "bob", "bob-password-1")
    said = cli.run("password", "--stdin", stdin="cli-Lm7c-guess\nnew-Pb3v-password\n")
    assert (said.code, said.err.strip()) == (1, f"hatchway: {WRONG['error']}: {WRONG['detail']}")

    with httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "bob", "password": "bob-password-1"}
        assert browser.post("/sign-in", data=form).status_code == 303
        form = {"csrf_token": csrf_token(browser.get("/account/password")), "current_password": "web-Rt2x-guess",
                "new_password": "new-Pb3v-password", "new_password_confirm": "new-Pb3v-password"}
        page = browser.post("/account/password", data=form)
    assert page.status_code == 403 and "Your current password is not right." in page.text

    rows = _rows(srv, alice)
    clients = [e["detail"]["client"].split("/")[0] for e in rows]
    assert clients == ["python-httpx", "hatchway-cli", "python-httpx"]
    assert [(e["actor"], e["action"], e["target"], e["detail"]) for e in rows] == [
        ("bob", ACTION, "bob", {"reason": "wrong-password", "client": e["detail"]["client"]}) for e in rows
    ]
    assert all(e["source"].startswith("127.0.0.1 ") and e["source"].split(" ")[1].isdigit() for e in rows)
    with api(srv.url, alice) as c:
        assert [e["action"] for e in c.get("/audit", params={"actor": "bob"}).json()].count(ACTION) == 3
        assert c.get("/audit", params={"action": "user.password"}).json() == []  # nothing was changed

    assert _change(srv, bob, "bob-password-1").status_code == 200  # the right one: user.password only
    assert len(_rows(srv, alice)) == 3
    cli = Cli(tmp_path / "alice")
    cli.login(srv.url, "alice", "alice-password-1")
    listed = cli.ok("audit", "list", "--action", ACTION, "--json").json()
    assert [(e["actor"], e["action"], e["target"], e["detail"]["reason"]) for e in listed] == [
        ("bob", ACTION, "bob", "wrong-password")] * 3
    lines = [" ".join(line.split()[2:]) for line in cli.ok("audit", "list").out.splitlines() if ACTION in line]
    assert lines == [f"bob {ACTION} bob {e['source']} reason=wrong-password client={e['detail']['client']}"
                     for e in listed]  # ACTOR ACTION TARGET SOURCE DETAIL, newest first
    _assert_no_password_kept(srv)


def test_a_session_guessing_its_password_adds_a_bounded_number_of_rows(srv: RunningServer) -> None:
    """Five guesses get rows of their own (then the throttle refuses the rest unchecked); the
    rest are counted in one row for the account, apart from failed sign-ins at it."""
    alice, bob = _bob(srv)
    guesses = 30
    replies = [_change(srv, bob, "flood-Gh6n-guess").status_code for _ in range(guesses)]
    assert replies == [403] * 5 + [429] * (guesses - 5)  # the login throttle, as before
    signing_in = httpx.post(srv.url + "/api/v1/auth/login", json={"username": "bob", "password": "bob-password-1"})
    assert signing_in.status_code == 429  # one throttle; but its row is not crowded out

    def settled() -> list[dict] | None:
        rows = _rows(srv, alice)
        return rows if rows and rows[-1]["detail"].get("attempts") == guesses - PER_KEY else None

    rows = wait_for(settled, 30, what="the tally's row with every refused change counted")
    assert [(e["actor"], e["target"], e["detail"]["reason"]) for e in rows] == (
        [("bob", "bob", "wrong-password")] * PER_KEY + [("bob", "bob", "counted")])
    tally = rows[-1]
    assert (tally["source"], set(tally["detail"])) == ("127.0.0.1", {"reason", "attempts", "until", "summary"})
    assert tally["detail"]["summary"] == (
        f'{guesses - PER_KEY} more failed password changes of this account from "127.0.0.1", from this row\'s start '
        f"to its end, all refused; counted in this one row: one account gets at most {PER_KEY} rows of their own "
        f"per {WINDOW_S:.0f} s"
    )
    assert srv.log().count("failed password changes of account bob: more than 5 in 60 s") == 1
    with api(srv.url, alice) as c:
        sign_ins = c.get("/audit", params={"action": "session.sign-in-failed"}).json()
    assert [(e["actor"], e["target"], e["detail"]["reason"]) for e in sign_ins] == [(None, "bob", "throttled")]
    assert json.dumps(rows).count("flood-Gh6n") == 0
    _assert_no_password_kept(srv)
