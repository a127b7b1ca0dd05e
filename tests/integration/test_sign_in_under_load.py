"""Setting up and signing in when many ask at once, against a real server on SQLite and on
PostgreSQL: one first user however many race for it, and one address trying name after name
is throttled like one trying a name again and again. Password checks run off the event loop:
while they are held, the server still answers, and what cannot wait is told when to retry."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from hatchway.server import passwords
from hatchway.server.web.signin import SETUP_DONE
from tests.helpers.server import RunningServer, api, csrf_token, first_user, running_server, wait_for

#: ``hatchway server`` with every password check held until the file named first exists, and
#: each check saying in the log whether it runs on the event loop. A check on the loop stalls
#: the whole server, so the hold also ends 20 s after the first check: such a server fails the
#: test rather than hanging it. A number after the file replaces passwords.MAX_WAITING.
HELD_CHECKS = r"""
import asyncio, os, sys, time
from pathlib import Path

from hatchway.server import crypto, passwords

gate, release_by = Path(sys.argv[1]), []
if sys.argv[2].isdigit():
    passwords.MAX_WAITING = int(sys.argv[2])
real = crypto.verify_password


def held(password_hash, password):
    try:
        asyncio.get_running_loop()
        where = "ON the event loop"
    except RuntimeError:
        where = "off the event loop"
    # One write() for the whole line: print() writes the text and its newline separately, and
    # the server's log lines, written by other threads to the same file, landed in between.
    os.write(2, f"password check held, {where}\n".encode())
    release_by.append(time.monotonic() + 20)
    while not gate.exists() and time.monotonic() < release_by[0]:
        time.sleep(0.01)
    return real(password_hash, password)


crypto.verify_password = held
sys.argv = ["hatchway", *sys.argv[3:]]
from hatchway.cli.main import main

main()
"""


class HeldChecksServer(RunningServer):
    """A real server whose password checks wait for :attr:`gate` (see :data:`HELD_CHECKS`)."""

    def __init__(self, data_dir: Path, max_waiting: int | None = None) -> None:
        super().__init__(data_dir)
        self.gate = data_dir.parent / "release-password-checks"
        self.max_waiting = max_waiting

    def spawn(self, log: Any) -> subprocess.Popen[bytes]:
        limit = "-" if self.max_waiting is None else str(self.max_waiting)
        return subprocess.Popen([sys.executable, "-c", HELD_CHECKS, str(self.gate), limit, *self.argv()[1:]],
                                stdout=log, stderr=log)

    def checks_held(self) -> list[str]:
        return [line for line in self.log().splitlines() if line.startswith("password check held")]


def test_racing_first_user_requests_make_one_site_manager(tmp_path: Path, db_url: str) -> None:
    with running_server(tmp_path, db_url=db_url) as srv:
        def claim(i: int) -> int:
            with api(srv.url) as c:
                body = {"username": f"racer{i}", "email": f"racer{i}@example.com", "password": "correct-horse-1"}
                return c.post("/auth/first-user", json=body).status_code

        with ThreadPoolExecutor(20) as pool:
            statuses = sorted(pool.map(claim, range(20)))
        assert statuses == [201] + [409] * 19
        with api(srv.url) as c:
            assert c.get("/deployment").json()["needs_first_user"] is False
            winner = next(i for i in range(20) if c.post("/auth/login", json={
                "username": f"racer{i}", "password": "correct-horse-1"}).status_code == 200)
            token = c.post("/auth/login", json={"username": f"racer{winner}", "password": "correct-horse-1"}).json()["token"]
        with api(srv.url, token) as c:
            users = c.get("/users").json()
        assert [(u["username"], u["role"]) for u in users] == [(f"racer{winner}", "site-manager")]


def test_racing_setup_forms_make_one_site_manager_and_send_the_others_to_sign_in(tmp_path: Path, db_url: str) -> None:
    """The web UI's setup form is the same first-user request: one browser wins, and every other
    is told the deployment is set up and taken to the sign-in page, not shown the form again."""
    with running_server(tmp_path, db_url=db_url) as srv:
        browsers = [httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) for _ in range(10)]
        try:
            forms = [csrf_token(b.get("/")) for b in browsers]  # each its own setup page and pre-session

            def submit(i: int) -> httpx.Response:
                return browsers[i].post("/setup", data={
                    "csrf_token": forms[i], "username": f"racer{i}", "email": f"racer{i}@example.com",
                    "password": "correct-horse-1", "password_confirm": "correct-horse-1"})

            with ThreadPoolExecutor(len(browsers)) as pool:
                answers = list(pool.map(submit, range(len(browsers))))
            assert [r.status_code for r in answers] == [303] * len(browsers)
            places = [r.headers["location"] for r in answers]
            assert sorted(places) == ["/"] * (len(browsers) - 1) + ["/workspaces"]
            winner = places.index("/workspaces")
            for i, browser in enumerate(browsers):
                if i != winner:
                    page = browser.get("/")
                    assert "<title>Sign in · Hatchway</title>" in page.text
                    assert SETUP_DONE in page.text
            # A form left open and sent afterwards is told the same.
            late = httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30)
            browsers.append(late)
            form = {"csrf_token": csrf_token(late.get("/")), "username": "late", "email": "late@example.com",
                    "password": "correct-horse-1", "password_confirm": "correct-horse-1"}
            r = late.post("/setup", data=form)
            assert (r.status_code, r.headers["location"]) == (303, "/")
            token = browsers[winner].cookies["hatchway_session"]
        finally:
            for browser in browsers:
                browser.close()
        with api(srv.url, token) as c:
            assert [(u["username"], u["role"]) for u in c.get("/users").json()] == [(f"racer{winner}", "site-manager")]


def test_one_address_trying_made_up_names_is_throttled(tmp_path: Path) -> None:
    with running_server(tmp_path) as srv:
        with api(srv.url) as c:
            c.post("/auth/first-user", json={"username": "alice", "email": "a@example.com", "password": "correct-horse-1"})
            statuses = [c.post("/auth/login", json={"username": f"made-up-{i}", "password": "guess"}).status_code
                        for i in range(21)]
            assert statuses == [401] * 20 + [429]  # 4 x the 5 failures a name is allowed
            refused = c.post("/auth/login", json={"username": "alice", "password": "correct-horse-1"})
            assert refused.status_code == 429, "alice never signed in from here"
            assert refused.json()["detail"].startswith("wait ") and int(refused.headers["Retry-After"]) > 0


def _bogus_login(url: str, i: int) -> int:
    with api(url) as c:
        return c.post("/auth/login", json={"username": f"made-up-{i}", "password": "guess-1234"}).status_code


def test_requests_are_answered_while_password_checks_are_held(tmp_path: Path) -> None:
    """Argon2 (about 150 ms a check) must not run on the event loop, which answers every request
    and relays every SSH byte. With every check of a burst of made-up-name logins held, an
    authenticated request is still answered, before any of those logins is; a check run on the
    loop would hold the loop, and that request, until the checks are let go."""
    srv = HeldChecksServer(tmp_path / "data")
    srv.start()
    try:
        token = first_user(srv.url)  # hashes a password, checks none
        answered: list[str] = []

        def login(i: int) -> None:
            answered.append(f"login {_bogus_login(srv.url, i)}")

        with ThreadPoolExecutor(8) as pool:
            logins = [pool.submit(login, i) for i in range(8)]
            wait_for(srv.checks_held, 30, what="a login to reach its password check")
            with api(srv.url, token) as c:
                answered.append(f"me {c.get('/users/me').status_code}")
            srv.gate.touch()
            for done in logins:
                done.result()
        assert answered == ["me 200"] + ["login 401"] * 8
        assert set(srv.checks_held()) == {"password check held, off the event loop"}
    finally:
        srv.stop()


def test_sign_ins_beyond_what_may_wait_are_told_when_to_try_again(tmp_path: Path) -> None:
    """Once every worker is busy and nothing more may wait, a sign-in is refused at once, on the
    API and in the web UI, saying in how many seconds to try again."""
    srv = HeldChecksServer(tmp_path / "data", max_waiting=0)
    srv.start()
    try:
        first_user(srv.url)
        with ThreadPoolExecutor(passwords.WORKERS) as pool:  # the same machine: the same count
            held = [pool.submit(_bogus_login, srv.url, i) for i in range(passwords.WORKERS)]
            wait_for(lambda: len(srv.checks_held()) == passwords.WORKERS, 30, what="every worker to be busy")
            with api(srv.url) as c:
                refused = c.post("/auth/login", json={"username": "alice", "password": "correct-horse-1"})
            assert (refused.status_code, refused.headers["Retry-After"]) == (503, "2")
            assert refused.json()["detail"] == f"the server is checking {passwords.WORKERS} passwords; try again in 2 seconds"
            with httpx.Client(base_url=srv.url, timeout=30) as browser:
                form = {"csrf_token": csrf_token(browser.get("/")), "username": "alice", "password": "correct-horse-1"}
                page = browser.post("/sign-in", data=form)
            assert (page.status_code, page.headers["Retry-After"]) == (503, "2")
            assert "The server is checking too many passwords at once. Please try again in 2 seconds." in page.text
            srv.gate.touch()
            assert [done.result() for done in held] == [401] * passwords.WORKERS
        with api(srv.url) as c:  # room again
            assert c.post("/auth/login", json={"username": "alice", "password": "correct-horse-1"}).status_code == 200
    finally:
        srv.stop()
