"""Run the real ``hatchway`` CLI as a subprocess with its own config dir."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.server import HATCHWAY


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """One person's CLI: their own HOME and HATCHWAY_CONFIG_DIR."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.config_dir = home / ".config" / "hatchway"
        home.mkdir(parents=True, exist_ok=True)

    def env(self) -> dict[str, str]:
        return {**os.environ, "HOME": str(self.home), "HATCHWAY_CONFIG_DIR": str(self.config_dir)}

    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> Result:
        p = subprocess.run(
            [HATCHWAY, *args], input=stdin, capture_output=True, text=True, env=self.env(), timeout=timeout
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def ok(self, *args: str, stdin: str | None = None) -> Result:
        r = self.run(*args, stdin=stdin)
        assert r.code == 0, f"hatchway {' '.join(args)} failed ({r.code}):\n{r.out}\n{r.err}"
        return r

    def login(self, url: str, username: str, password: str, first: bool = False) -> Result:
        args = ["login", url, "--username", username, "--password-stdin"]
        if first:
            args += ["--first-user", "--email", f"{username}@example.com"]
        return self.ok(*args, stdin=password + "\n")


class TrustingCli(Cli):
    """A person whose machine trusts the deployment's CA (SSL_CERT_FILE, as OpenSSL reads it)."""

    def __init__(self, home: Path, ca: Path | None) -> None:
        super().__init__(home)
        self.ca = ca

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
        return {**env, "SSL_CERT_FILE": str(self.ca)} if self.ca else env
