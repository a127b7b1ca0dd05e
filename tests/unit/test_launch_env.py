"""What the local provider's launch chain runs with: nothing the workspace's owner chose."""

from __future__ import annotations

import json

import pytest

from hatchway.providers.local import NSLAUNCH, launcher_env
from hatchway.providers.nslaunch import PLAN_ENV, LaunchError, agent_env

HOSTILE = {"LD_PRELOAD": "/home/u/evil.so", "PYTHONPATH": "/home/u", "PATH": "/home/u/bin", "BASH_ENV": "/home/u/x"}


def test_the_chain_gets_a_fixed_environment_and_the_agent_its_own_in_the_plan() -> None:
    env = launcher_env({"uid": 1000}, {**HOSTILE, "HATCHWAY_AGENT_TOKEN": "hwa_x"})
    assert set(env) == {"PATH", "LANG", PLAN_ENV}
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    plan = json.loads(env[PLAN_ENV])
    assert plan["uid"] == 1000 and agent_env(plan) == {**HOSTILE, "HATCHWAY_AGENT_TOKEN": "hwa_x"}


def test_the_launcher_ignores_python_variables_and_its_working_directory() -> None:
    assert NSLAUNCH[1:] == ("-I", "-m", "hatchway.providers.nslaunch")


@pytest.mark.parametrize("env", [None, [], {"A": 1}, {"": "x"}, {"A=B": "x"}, {"A": "x\0y"}, {"A\0": "x"}])
def test_a_plan_environment_execve_would_refuse_is_a_launch_error(env: object) -> None:
    with pytest.raises(LaunchError, match="the plan's environment is not a map of strings"):
        agent_env({"env": env})
