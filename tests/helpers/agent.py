"""A real ``hatchway agent`` process with its own HOME, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.helpers.server import HATCHWAY


class AgentProcess:
    def __init__(self, url: str, token: str, home: Path, ssh_port: int = 0, extra_env: dict[str, str] | None = None,
                 argv_prefix: list[str] | None = None) -> None:
        self.url, self.token, self.home, self.ssh_port = url, token, home, ssh_port
        self.state_dir = home / ".local" / "share" / "hatchway-agent"
        self.log_path = home.parent / f"{home.name}-agent.log"
        self.extra_env = extra_env or {}
        self.argv_prefix = argv_prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        home.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        env = {**os.environ, "HOME": str(self.home), "HATCHWAY_AGENT_TOKEN": self.token, **self.extra_env}
        args = [*self.argv_prefix, HATCHWAY, "agent", "--url", self.url, "--ssh-port", str(self.ssh_port), "--verbose"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
