"""Who may open SSH to which workspace, as pure functions of the facts.

Kept free of I/O so every branch is tested directly, and so the relay, the config-ssh listing
and the web UI all give the same answer in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass


def external_connect_off_message(provider: str) -> str:
    return (
        f'SSH access to workspaces on provider "{provider}" is disabled by a site manager '
        "(External Connect is off)"
    )


@dataclass(frozen=True)
class SSHFacts:
    requester: str
    requester_id: str
    requester_suspended: bool
    workspace: str
    owner: str
    owner_id: str
    provider: str
    external_connect: bool
    state: str
    state_reason: str | None
    agent_connected: bool
    # A site manager sees every workspace anyway; a member is not told which of other people's exist.
    requester_sees_all: bool = False

    @property
    def known_to_requester(self) -> bool:
        """Whether the requester may learn that this workspace exists at all: what a refusal
        says, and what the connection log keeps of the attempt, depend on it."""
        return self.owner_id == self.requester_id or self.requester_sees_all


def ssh_refusal(f: SSHFacts) -> str | None:
    """The one-line reason SSH is refused, or None when it is allowed.

    Site managers administer workspaces but do not enter other people's: a shell in someone
    else's home is not an administrative action.
    """
    if f.requester_suspended:
        return "your account is suspended; ask a site manager to reactivate it"
    if not f.known_to_requester:
        return unknown_workspace_message(f"{f.owner}/{f.workspace}")
    if f.owner_id != f.requester_id:
        return (
            f'workspace "{f.owner}/{f.workspace}" belongs to another user; '
            "you can only connect to your own workspaces"
        )
    if not f.external_connect:
        return external_connect_off_message(f.provider)
    if f.state != "running":
        why = f" ({f.state_reason})" if f.state_reason else ""
        if f.state == "starting":  # already on its way: starting it again changes nothing
            return f'workspace "{f.workspace}" is starting{why}; try again in a few seconds'
        return (
            f'workspace "{f.workspace}" is {f.state}{why}; '
            f"start it with: hatchway workspaces start {f.workspace}"
        )
    if not f.agent_connected:
        return (
            f'workspace "{f.workspace}" is not reachable: its agent is not connected; '
            f'start the agent in the workspace (see "hatchway workspaces show {f.workspace}")'
        )
    return None


def unknown_workspace_message(name: str) -> str:
    return f'no workspace named "{name}" is yours; see "hatchway workspaces list"'
