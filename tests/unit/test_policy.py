"""Every branch of the SSH admission policy, with the exact words users see."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hatchway.server.policy import (
    AGENT_UNREACHABLE, EXTERNAL_CONNECT_OFF, NO_ACCESS, NOT_RUNNING, SUSPENDED, SSHFacts, check_ssh, external_connect_off_message,
    ssh_refusal, unknown_workspace_message,
)

OK = SSHFacts(
    requester="bob", requester_id="u1", requester_suspended=False, workspace="dev", owner="bob", owner_id="u1",
    provider="gpu", external_connect=True, state="running", state_reason=None, agent_connected=True,
)


def test_owner_with_everything_on_is_allowed() -> None:
    assert ssh_refusal(OK) is None


def test_external_connect_off_message_is_the_documented_line() -> None:
    assert ssh_refusal(replace(OK, external_connect=False)) == (
        'SSH access to workspaces on provider "gpu" is disabled by a site manager (External Connect is off)'
    )
    assert external_connect_off_message("gpu") == ssh_refusal(replace(OK, external_connect=False))


def test_someone_elses_workspace_is_refused_even_for_site_managers() -> None:
    msg = ssh_refusal(replace(OK, requester="alice", requester_id="u2", requester_sees_all=True))
    assert msg == 'workspace "bob/dev" belongs to another user; you can only connect to your own workspaces'


def test_a_member_is_not_told_whether_someone_elses_workspace_exists() -> None:
    msg = ssh_refusal(replace(OK, requester="carol", requester_id="u3"))
    assert msg == unknown_workspace_message("bob/dev") == 'no workspace named "bob/dev" is yours; see "hatchway workspaces list"'


def test_only_the_owner_and_site_managers_may_know_a_workspace_exists() -> None:
    """What the connection log keeps of an attempt (its provider) hangs on this too."""
    assert OK.known_to_requester
    assert replace(OK, requester="alice", requester_id="u2", requester_sees_all=True).known_to_requester
    assert not replace(OK, requester="carol", requester_id="u3").known_to_requester


def test_suspended_comes_first() -> None:
    msg = ssh_refusal(replace(OK, requester_suspended=True, external_connect=False, owner_id="other"))
    assert msg == "your account is suspended; ask a site manager to reactivate it"


@pytest.mark.parametrize("state,reason,expected", [
    ("stopped", None, 'workspace "dev" is stopped; start it with: hatchway workspaces start dev'),
    ("failed", "agent exited 3 times", 'workspace "dev" is failed (agent exited 3 times); start it with: hatchway workspaces start dev'),
    ("starting", "restarting", 'workspace "dev" is starting (restarting); try again in a few seconds'),
])
def test_not_running(state: str, reason: str | None, expected: str) -> None:
    assert ssh_refusal(replace(OK, state=state, state_reason=reason)) == expected


def test_agent_not_connected() -> None:
    assert ssh_refusal(replace(OK, agent_connected=False)) == (
        'workspace "dev" is not reachable: its agent is not connected; '
        'start the agent in the workspace (see "hatchway workspaces show dev")'
    )


def test_external_connect_is_checked_before_state() -> None:
    assert "External Connect is off" in ssh_refusal(replace(OK, external_connect=False, state="stopped"))


def test_unknown_workspace() -> None:
    assert unknown_workspace_message("nope") == 'no workspace named "nope" is yours; see "hatchway workspaces list"'


@pytest.mark.parametrize("facts,reason", [
    (replace(OK, requester_suspended=True), SUSPENDED),
    (replace(OK, requester="carol", requester_id="u3"), NO_ACCESS),
    (replace(OK, requester="alice", requester_id="u2", requester_sees_all=True), NO_ACCESS),
    (replace(OK, external_connect=False), EXTERNAL_CONNECT_OFF),
    (replace(OK, state="starting"), NOT_RUNNING),
    (replace(OK, state="stopped"), NOT_RUNNING),
    (replace(OK, agent_connected=False), AGENT_UNREACHABLE),
], ids=["suspended", "unknown", "someone-elses", "external-connect-off", "starting", "stopped", "no-agent"])
def test_each_refusal_names_its_reason_for_the_metrics_with_the_same_message(facts: SSHFacts, reason: str) -> None:
    refusal = check_ssh(facts)
    assert refusal is not None and (refusal.reason, refusal.message) == (reason, ssh_refusal(facts))
    assert check_ssh(OK) is None
