"""External Connect turned off while an SSH connection is being set up, as its ends see it: real
OpenSSH through ``hatchway proxy`` on one side, a real agent (built-in server) on the other.

The server holds the dial where no sweep can find it (tests.helpers.helddials), so only its
re-read after the agent dialled back sees the change. That connection must end as one the
sweep ends while it is live: ssh's stderr has the same one line, and the agent's data
connection is closed with a close frame carrying the same code (4410) and reason, which the
agent logs as one line, not a warning, before it goes on serving.
"""

from __future__ import annotations

import re
import select
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.agent import AgentProcess
from tests.helpers.cli import Cli
from tests.helpers.helddials import HeldDialsServer, wait_swept
from tests.helpers.server import wait_for
from tests.helpers.world import World, build_world

pytestmark = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client (scripts/setup installs it)")

OFF_MESSAGE = 'SSH access to workspaces on provider "byo" is disabled by a site manager (External Connect is off)'
#: What ssh's stderr says, whichever way the connection was ended.
PROXY_LINE = f"hatchway: {OFF_MESSAGE}"
#: What the agent logs when the server closes a data connection for that reason.
AGENT_LINE = re.compile(
    r"INFO  hatchway\.agent: stream [0-9a-f]{8}: the server ended the connection \(4410\): " + re.escape(OFF_MESSAGE)
)


@dataclass
class Setup:
    world: World
    server: HeldDialsServer
    agent: AgentProcess
    bob: Cli
    ssh_config: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("withdrawn")
    server = HeldDialsServer(tmp / "data")
    w = build_world(tmp, members=("bob",), start_agents=False, server=server)
    try:
        with w.api("bob") as c:
            r = c.post("/workspaces", json={"name": "held", "provider": "byo"})
            r.raise_for_status()
        agent = w.agents["bob/held"] = AgentProcess(w.url, r.json()["agent_token"], tmp / "held-home")
        agent.start()
        wait_for(lambda: w.workspace("bob", "held")["host_keys"], 20, what="the agent to report its host keys")
        bob = Cli(tmp / "bob-cli")
        bob.login(w.url, "bob", w.people["bob"].password)
        ssh_config = tmp / "bob-ssh-config"
        bob.ok("config-ssh", "--ssh-config", str(ssh_config), "-y")
        yield Setup(w, server, agent, bob, ssh_config)
    finally:
        w.close()
        assert "Traceback" not in server.log(), server.log()[-5000:]


def set_external_connect(world: World, on: bool) -> None:
    with world.api("alice") as c:
        c.patch("/providers/byo", json={"external_connect": on}).raise_for_status()


def ssh_held(s: Setup, command: str) -> subprocess.Popen[str]:
    """``ssh hatchway.held COMMAND``, once the server holds its connection before it is live."""
    held = len(s.server.held())
    proc = subprocess.Popen(
        ["ssh", "-F", str(s.ssh_config), "-o", "BatchMode=yes", "hatchway.held", command],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s.bob.env(),
    )
    try:
        wait_for(lambda: len(s.server.held()) > held, 20, what="ssh's connection to be held")
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Wait (bounded) for ``proc``; (exit status, stdout, stderr)."""
    try:
        out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def agent_endings(agent: AgentProcess) -> list[str]:
    return [line for line in agent.log().splitlines() if "the server ended the connection" in line]


def assert_agent_logged_one_quiet_line(agent: AgentProcess, before: int) -> None:
    """The agent logged the end as exactly one more INFO line, and nothing louder ever."""
    wait_for(lambda: len(agent_endings(agent)) > before, 10, what="the agent to log how its data connection ended")
    new = agent_endings(agent)[before:]
    assert len(new) == 1 and AGENT_LINE.search(new[0]), new
    loud = [line for line in agent.log().splitlines() if re.search(r" (WARNING|ERROR)|Traceback", line)]
    assert loud == [], loud


def test_refused_after_the_agent_dialled_back_ends_like_a_live_session_and_the_agent_goes_on(setup: Setup) -> None:
    s = setup
    logged = len(agent_endings(s.agent))
    proc = ssh_held(s, "true")
    try:
        sweeps = len(s.server.sweeps())
        set_external_connect(s.world, False)
        wait_swept(s.server, sweeps)  # nothing live to end: only the re-read can refuse it
        s.server.release()
        code, _, err = finish(proc)
    finally:
        set_external_connect(s.world, True)
    assert code == 255 and PROXY_LINE in err.splitlines(), err
    assert_agent_logged_one_quiet_line(s.agent, logged)
    again = ssh_held(s, "echo still serving")
    s.server.release()
    assert finish(again)[:2] == (0, "still serving\n")


def test_a_live_session_ended_by_the_sweep_says_the_same(setup: Setup) -> None:
    s = setup
    logged = len(agent_endings(s.agent))
    proc = ssh_held(s, "echo live; exec sleep 60")
    try:
        s.server.release()
        assert proc.stdout is not None
        assert select.select([proc.stdout], [], [], 30)[0] and proc.stdout.readline() == "live\n"
        set_external_connect(s.world, False)
        code, _, err = finish(proc)
    finally:
        set_external_connect(s.world, True)
    assert code == 255 and PROXY_LINE in err.splitlines(), err
    assert_agent_logged_one_quiet_line(s.agent, logged)
