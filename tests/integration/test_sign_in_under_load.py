"""Setting up and signing in when many ask at once, against a real server on SQLite and on
PostgreSQL: one first user however many race for it, and one address trying name after name
is throttled like one trying a name again and again."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from hatchway.server.web.signin import SETUP_DONE
from tests.helpers.server import api, running_server


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


def _csrf(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)


def test_racing_setup_forms_make_one_site_manager_and_send_the_others_to_sign_in(tmp_path: Path, db_url: str) -> None:
    """The web UI's setup form is the same first-user request: one browser wins, and every other
    is told the deployment is set up and taken to the sign-in page, not shown the form again."""
    with running_server(tmp_path, db_url=db_url) as srv:
        browsers = [httpx.Client(base_url=srv.url, follow_redirects=False, timeout=30) for _ in range(10)]
        try:
            forms = [_csrf(b.get("/")) for b in browsers]  # each its own setup page and pre-session

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
            form = {"csrf_token": _csrf(late.get("/")), "username": "late", "email": "late@example.com",
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
