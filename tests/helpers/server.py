"""A real ``hatchway server`` process for tests, on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HATCHWAY = str(Path(sys.executable).with_name("hatchway"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """Start/stop/restart a server subprocess; its log is kept for assertions."""

    def __init__(self, data_dir: Path, port: int | None = None, db_url: str | None = None,
                 extra_env: dict[str, str] | None = None, host: str = "127.0.0.1"):
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port()
        self.db_url = db_url
        self.url = f"http://{host}:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        args = [HATCHWAY, "server", "--listen", f"{self.host}:{self.port}", "--data-dir", str(self.data_dir), "--verbose"]
        return args + ["--db", self.db_url] if self.db_url else args

    def spawn(self, log: Any) -> subprocess.Popen[bytes]:
        """Start the server process writing to ``log``; subclasses start it differently."""
        return subprocess.Popen(self.argv(), stdout=log, stderr=log, env={**os.environ, **self.extra_env})

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "ab")
        offset = log.tell()  # a restart appends: wait for a NEW ready line
        self.proc = self.spawn(log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            if "ready at" in self.log()[offset:]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"server did not become ready:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class running_server:
    """Context manager: ``with running_server(tmp_path) as srv: ...``."""

    def __init__(self, tmp_path: Path, port: int | None = None, db_url: str | None = None, **kw: Any):
        self.server = RunningServer(tmp_path / "server-data", port, db_url, **kw)

    def __enter__(self) -> RunningServer:
        self.server.start()
        return self.server

    def __exit__(self, *exc: object) -> None:
        if self.server.proc is not None:
            self.server.stop()


def api(url: str, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url + "/api/v1", headers=headers, timeout=30)


def wait_for(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def first_user(url: str, username: str = "alice", password: str = "correct-horse-1") -> str:
    with api(url) as c:
        r = c.post("/auth/first-user", json={"username": username, "email": f"{username}@example.com", "password": password})
        r.raise_for_status()
        return r.json()["token"]




def csrf_token(page: httpx.Response) -> str:
    """The CSRF token of a web UI form on ``page``, which a form post must send back."""
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found, page.text
    return found.group(1)
