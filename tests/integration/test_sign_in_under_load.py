"""Setting up and signing in when many ask at once, against a real server on SQLite and on
PostgreSQL: one first user however many race for it, and one address trying name after name
is throttled like one trying a name again and again."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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
