"""Failed sign-ins are audited (``session.sign-in-failed``): the account tried, the address and
why, never the password, nor a name no account has (it may be a password typed into the wrong
field), while the client is told exactly what it was told before. A flood of them
adds a bounded number of rows. Over a real server, its API, its web form and the real CLI."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from hatchway.server.unidentified import PER_KEY, WINDOW_S
from tests.helpers.cli import Cli
from tests.helpers.server import RunningServer, api, csrf_token, first_user, running_server, wait_for

WRONG = {"error": "wrong username or password", "detail": "check both and try again"}
SUSPENDED = {"error": "account suspended", "detail": "your account is suspended; ask a site manager to reactivate it"}
WRONG_PAGE = "Wrong username or password. Check both and try again."
#: Every password these tests try; none may be found in the database or the server's log.
TRIED = ("guess-Zq8v-wrong", "carol-Kx3p-right", "dave-Yw2m-any", "web-Hn5t-wrong", "hostile-Pc7r-pw", "flood-Jd4s-pw",
         "bob-password-1", "long-Vb8q-pw")
#: A password longer than any can be (PASSWORD_MAX is 1024): refused unchecked, as too long.
LONG_PASSWORD = "long-Vb8q-pw" + "p" * 1024
WAIT = re.compile(r"wait \d+ seconds before trying again")
UNKNOWN = "(unknown name)"


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[RunningServer]:
    with running_server(tmp_path) as server:
        yield server


def _manager(srv: RunningServer) -> str:
    """alice, site manager, and bob (a password), carol (suspended) and dave (no password yet)."""
    token = first_user(srv.url, "alice", "alice-password-1")
    with api(srv.url, token) as c:
        for name, password in (("bob", "bob-password-1"), ("carol", "carol-Kx3p-right"), ("dave", None)):
            body = {"username": name, "email": f"{name}@example.com"} | ({"password": password} if password else {})
            c.post("/users", json=body).raise_for_status()
        c.post("/users/carol/suspend").raise_for_status()
    return token


def _failures(srv: RunningServer, token: str) -> list[dict]:
    """The failed sign-ins in the audit record, oldest first."""
    with api(srv.url, token) as c:
        events = c.get("/audit", params={"limit": 5000}).json()
    return [e for e in reversed(events) if e["action"] == "session.sign-in-failed"]


def _login(srv: RunningServer, username: str, password: str) -> httpx.Response:
    with api(srv.url) as c:
        return c.post("/auth/login", json={"username": username, "password": password})


def _web_sign_in(srv: RunningServer, username: str, password: str) -> httpx.Response:
    with httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": username, "password": password}
        return browser.post("/sign-in", data=form)


def _assert_no_password_kept(srv: RunningServer) -> None:
    stored = b"".join(p.read_bytes() for p in srv.data_dir.glob("hatchway.db*"))
    logged = srv.log()
    for password in TRIED:
        assert password.encode() not in stored and password not in logged, password


def test_each_kind_of_failed_sign_in_is_one_row_saying_why(srv: RunningServer, tmp_path: Path) -> None:
    alice = _manager(srv)
    cli = Cli(tmp_path / "home")
    said = cli.run("login", srv.url, "--username", "bob", "--password-stdin", stdin="guess-Zq8v-wrong\n")
    assert (said.code, said.err.strip()) == (1, "hatchway: wrong username or password: check both and try again")
    replies = [_login(srv, "mallory", "guess-Zq8v-wrong"), _login(srv, "dave", "dave-Yw2m-any"),
               _login(srv, "carol", "carol-Kx3p-right")]
    assert [(r.status_code, r.json()) for r in replies] == [(401, WRONG), (401, WRONG), (403, SUSPENDED)]
    page = _web_sign_in(srv, "bob", "web-Hn5t-wrong")
    assert page.status_code == 401 and WRONG_PAGE in page.text

    rows = _failures(srv, alice)
    assert [(e["actor"], e["target"], e["detail"]["reason"]) for e in rows] == [
        (None, "bob", "wrong-password"), (None, UNKNOWN, "unknown-user"), (None, "dave", "no-password"),
        (None, "carol", "suspended"), (None, "bob", "wrong-password"),
    ]
    assert rows[1]["detail"]["name_length"] == len("mallory") and "mallory" not in srv.log()
    assert all(e["source"].startswith("127.0.0.1 ") and e["source"].split(" ")[1].isdigit() for e in rows)
    assert rows[0]["detail"]["client"].startswith("hatchway-cli/") and rows[1]["detail"]["client"].startswith("python-httpx/")
    assert {tuple(e["detail"]) for e in rows} == {("reason", "client"), ("reason", "client", "name_length")}
    _assert_no_password_kept(srv)

    cli.login(srv.url, "alice", "alice-password-1")
    lines = cli.ok("audit", "list", "--limit", "7").out.splitlines()
    failed = [[f.strip() for f in line.split(None, 2)[2].split("  ") if f.strip()]
              for line in lines if "session.sign-in-failed" in line]  # ACTOR ACTION TARGET SOURCE DETAIL
    assert [f[:3] + [f[3].split()[0], f[4].split()[0]] for f in failed] == [
        ["-", "session.sign-in-failed", "bob", "127.0.0.1", "reason=wrong-password"],
        ["-", "session.sign-in-failed", "carol", "127.0.0.1", "reason=suspended"],
        ["-", "session.sign-in-failed", "dave", "127.0.0.1", "reason=no-password"],
        ["-", "session.sign-in-failed", UNKNOWN, "127.0.0.1", "reason=unknown-user"],
        ["-", "session.sign-in-failed", "bob", "127.0.0.1", "reason=wrong-password"],
    ]
    assert all(f[3].split()[1].isdigit() for f in failed)  # and the client's port
    assert failed[3][4].endswith(" name_length=7")
    # Who tried to sign in as bob: no actor to filter by, so by action and target.
    bobs = cli.ok("audit", "list", "--action", "session.sign-in-failed", "--target", "bob", "--json").json()
    assert [(e["action"], e["target"], e["detail"]["reason"]) for e in bobs] == [
        ("session.sign-in-failed", "bob", "wrong-password"), ("session.sign-in-failed", "bob", "wrong-password"),
    ]
    assert cli.ok("audit", "list", "--action", "session.sign-in", "--target", "bob", "--json").json() == []


def test_a_name_no_account_has_is_not_kept_only_its_length(srv: RunningServer, tmp_path: Path) -> None:
    """A password typed into the username field (it happens) must not land in the record; nor
    may a hostile name: 10 KB, newlines, terminal escapes, a NUL."""
    alice = _manager(srv)
    huge = "eve-Xq9t\nroot" + "A" * 10_240
    page = _web_sign_in(srv, huge, "hostile-Pc7r-pw")  # longer than a name can be: refused unchecked
    assert page.status_code == 401 and WRONG_PAGE in page.text
    control = "mal-Rb6w\r\n\x1b[31mred\x00"
    replies = [_login(srv, control, "hostile-Pc7r-pw"), _login(srv, "bob-password-1", "bob")]
    assert [(r.status_code, r.json()) for r in replies] == [(401, WRONG), (401, WRONG)]

    rows = _failures(srv, alice)
    assert [(e["target"], e["detail"]["reason"], e["detail"]["name_length"]) for e in rows] == [
        (UNKNOWN, "too-long", len(huge)), (UNKNOWN, "unknown-user", len(control)),
        (UNKNOWN, "unknown-user", len("bob-password-1")),
    ]
    _assert_no_password_kept(srv)
    stored = b"".join(p.read_bytes() for p in srv.data_dir.glob("hatchway.db*"))
    names = ("eve-Xq9t", "mal-Rb6w")
    assert not [n for n in names if n.encode() in stored or n in srv.log()]

    cli = Cli(tmp_path / "home")
    cli.login(srv.url, "alice", "alice-password-1")
    out = cli.ok("audit", "list", "--action", "session.sign-in-failed").out
    assert out.count(UNKNOWN) == 3 and not [n for n in names if n in out]
    with httpx.Client(base_url=srv.url, timeout=30) as browser:
        form = {"csrf_token": csrf_token(browser.get("/")), "username": "alice", "password": "alice-password-1"}
        assert browser.post("/sign-in", data=form).status_code == 303
        audit = browser.get("/manage/audit", params={"view": "admin"}).text
    assert audit.count(">not signed in</td>") == 3 and audit.count(UNKNOWN) == 3
    assert not [n for n in names if n in audit]


def test_a_flood_of_failed_sign_ins_adds_a_bounded_number_of_rows(srv: RunningServer) -> None:
    """From one address: made-up names get PER_KEY rows and one tally for the address; attempts at
    bob (throttled soon, refused unchecked) PER_KEY rows and one tally for his account, whatever
    the made-up names used up."""
    alice = _manager(srv)
    names, at_bob = 40, 30
    replies = [_login(srv, f"nobody{i}", "flood-Jd4s-pw").status_code for i in range(names)]
    replies += [_login(srv, "bob", "flood-Jd4s-pw").status_code for _ in range(at_bob)]
    assert set(replies[:20]) == {401} and set(replies[20:]) == {429}  # the throttle, as before

    def settled() -> list[dict] | None:
        rows = _failures(srv, alice)
        done = {e["detail"].get("attempts") for e in rows} >= {names - PER_KEY, at_bob - PER_KEY}
        return rows if done else None

    rows = wait_for(settled, 30, what="both tallies' rows with every attempt counted")
    assert len(rows) == 2 * (PER_KEY + 1), rows
    own = [e for e in rows if e["detail"]["reason"] != "counted"]
    assert [(e["target"], e["detail"]["reason"]) for e in own] == (
        [(UNKNOWN, "unknown-user")] * PER_KEY + [("bob", "throttled")] * PER_KEY
    )
    by_name, by_bob = sorted((e for e in rows if e["detail"]["reason"] == "counted"), key=lambda e: e["target"])
    assert (by_name["target"], by_name["source"], by_name["detail"]["attempts"]) == (UNKNOWN, "127.0.0.1", 35)
    assert by_name["detail"]["summary"] == (
        f'35 more failed sign-ins from this address as "{UNKNOWN}", from this row\'s start to its end, all refused; '
        f"counted in this one row: one address gets at most {PER_KEY} rows of their own per {WINDOW_S:.0f} s"
    )
    assert (by_bob["target"], by_bob["source"], by_bob["detail"]["attempts"]) == ("bob", "127.0.0.1", 25)
    assert by_bob["detail"]["summary"] == (
        '25 more failed sign-ins to this account from "127.0.0.1", from this row\'s start to its end, all refused; '
        f"counted in this one row: one account gets at most {PER_KEY} rows of their own per {WINDOW_S:.0f} s"
    )
    assert datetime.fromisoformat(by_name["at"]) <= datetime.fromisoformat(by_name["detail"]["until"])
    assert srv.log().count("failed sign-ins from 127.0.0.1: more than 5 in 60 s") == 1
    assert srv.log().count("failed sign-ins to account bob: more than 5 in 60 s") == 1

    # Counted just before the server stops: written as it stops, not lost (in rows of their own
    # instead, should this test outlast the window).
    assert [_login(srv, "nobody", "flood-Jd4s-pw").status_code for _ in range(3)] == [429] * 3
    srv.stop()
    with sqlite3.connect(srv.data_dir / "hatchway.db") as db:
        recorded = [json.loads(d) for (d,) in db.execute(
            "SELECT detail FROM audit_events WHERE action = 'session.sign-in-failed' AND target != 'bob' ORDER BY id")]
    assert sum(d.get("attempts", 1) for d in recorded) == names + 3, recorded
    _assert_no_password_kept(srv)


def test_an_over_long_name_or_password_on_the_api_is_a_failed_sign_in_like_any_other(srv: RunningServer) -> None:
    """Not a 422 before the login code runs: answered as a wrong password is, byte for byte,
    and audited as too-long, a name no account has by its length only. The hard bound is the
    body limit: a larger body is refused with 413 before it is read, and is no attempt."""
    alice = _manager(srv)
    long_names = ["name-Tk3w" + "n" * 56, "name-Tk3w" + "n" * 500_000]  # 65 characters; 500 KB
    replies = [_login(srv, long_names[0], "hostile-Pc7r-pw"), _login(srv, long_names[1], "hostile-Pc7r-pw"),
               _login(srv, "bob", LONG_PASSWORD), _login(srv, long_names[0], LONG_PASSWORD)]
    control = _login(srv, "mallory", "guess-Zq8v-wrong")
    assert (control.status_code, control.json()) == (401, WRONG)
    said = [(r.status_code, r.headers["content-type"], r.content) for r in replies]
    assert said == [(401, control.headers["content-type"], control.content)] * 4
    page = _web_sign_in(srv, "bob", LONG_PASSWORD)  # the form: the same login, so the same row
    assert page.status_code == 401 and WRONG_PAGE in page.text

    with api(srv.url) as c:
        body = json.dumps({"username": "bob", "password": "x" * (1024 * 1024)})
        huge = c.post("/auth/login", content=body, headers={"Content-Type": "application/json"})
    assert (huge.status_code, huge.json()) == (
        413, {"error": "request too large", "detail": "request bodies are limited to 1048576 bytes"})

    rows = _failures(srv, alice)
    client = rows[0]["detail"]["client"]
    assert client.startswith("python-httpx/")
    assert [(e["actor"], e["target"], e["detail"]) for e in rows] == [
        (None, UNKNOWN, {"reason": "too-long", "client": client, "name_length": 65}),
        (None, UNKNOWN, {"reason": "too-long", "client": client, "name_length": len(long_names[1])}),
        (None, "bob", {"reason": "too-long", "client": client}),
        (None, UNKNOWN, {"reason": "too-long", "client": client, "name_length": 65}),
        (None, UNKNOWN, {"reason": "unknown-user", "client": client, "name_length": 7}),
        (None, "bob", {"reason": "too-long", "client": client}),
    ]
    _assert_no_password_kept(srv)
    stored = b"".join(p.read_bytes() for p in srv.data_dir.glob("hatchway.db*"))
    assert b"name-Tk3w" not in stored and "name-Tk3w" not in srv.log()


def test_over_long_attempts_are_counted_by_the_throttle(srv: RunningServer) -> None:
    """Five too-long passwords at bob from one address are five failures: his right password
    then waits, and a too-long attempt throttled is refused as any throttled one is. Over-long
    names count against the address, as made-up names do."""
    alice = _manager(srv)
    assert [_login(srv, "bob", LONG_PASSWORD).status_code for _ in range(5)] == [401] * 5
    waits = [_login(srv, "bob", "bob-password-1"), _login(srv, "bob", LONG_PASSWORD)]
    assert [(r.status_code, r.json()["error"]) for r in waits] == [(429, "too many failed logins")] * 2
    assert all(WAIT.fullmatch(r.json()["detail"]) and r.headers["Retry-After"].isdigit() for r in waits)
    # The address's allowance across names is 20 failures: bob's 5, and 15 over-long names.
    names = [_login(srv, f"name-Tk3w{i}" + "n" * 64, "hostile-Pc7r-pw").status_code for i in range(15)]
    assert names == [401] * 15
    assert [_login(srv, "mallory", "guess-Zq8v-wrong").status_code,
            _login(srv, "name-Tk3w" + "n" * 64, "hostile-Pc7r-pw").status_code] == [429, 429]

    own = [(e["target"], e["detail"]["reason"]) for e in _failures(srv, alice) if e["detail"]["reason"] != "counted"]
    assert own == [("bob", "too-long")] * PER_KEY + [(UNKNOWN, "too-long")] * PER_KEY
    assert srv.log().count("failed sign-ins to account bob: more than 5 in 60 s") == 1
    assert srv.log().count("failed sign-ins from 127.0.0.1: more than 5 in 60 s") == 1
