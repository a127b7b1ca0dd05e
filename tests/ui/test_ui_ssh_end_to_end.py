"""The documented way to disable SSH, end to end: a site manager flips External Connect in the
browser, and the real OpenSSH client (through the real relay, a real agent and its built-in
server) is refused with the documented line; flipping it back on in the browser restores SSH."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.server import wait_for
from tests.ui import flows
from tests.ui.conftest import LAB, MEMBER, MEMBER_PW, UIServer

REFUSAL = f'hatchway: SSH access to workspaces on provider "{LAB}" is disabled by a site manager (External Connect is off)'


@pytest.fixture
def member_with_workspace(ui_server: UIServer, tmp_path: Path) -> Iterator[tuple[Cli, Path]]:
    bob = Cli(tmp_path / "bob")
    bob.login(ui_server.url, MEMBER, MEMBER_PW)
    out = bob.ok("workspaces", "create", "ssh-e2e", "--provider", LAB).out
    agent = AgentProcess(ui_server.url, out.split("HATCHWAY_AGENT_TOKEN=")[1].split()[0], tmp_path / "ws-home")
    agent.start()
    try:
        wait_for(lambda: bob.ok("workspaces", "show", "ssh-e2e", "--json").json()["host_keys"], 20, what="agent")
        config = tmp_path / "ssh_config"
        bob.ok("config-ssh", "--ssh-config", str(config), "-y")
        yield bob, config
    finally:
        agent.stop()
        bob.run("workspaces", "delete", "ssh-e2e", "--yes")


def test_toggle_in_the_ui_refuses_and_restores_real_ssh(manager_page: Any, member_with_workspace: tuple[Cli, Path]) -> None:
    bob, config = member_with_workspace

    def ssh() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ssh", "-F", str(config), "-o", "BatchMode=yes", "hatchway.ssh-e2e", "echo reached"],
                              capture_output=True, text=True, env=bob.env(), timeout=60)

    assert ssh().stdout == "reached\n"
    page = manager_page.page
    try:
        flash = flows.set_external_connect(page, LAB, on=False)
        assert "External Connect" in flash
        r = ssh()
        assert r.returncode == 255 and r.stdout == ""
        assert REFUSAL in r.stderr.splitlines()
    finally:
        flows.set_external_connect(page, LAB, on=True)
    r = ssh()
    assert (r.returncode, r.stdout) == (0, "reached\n"), r.stderr
