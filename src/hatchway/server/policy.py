"""Who may open SSH to which workspace, as pure functions of the facts.

Kept free of I/O so every branch is tested directly, and so the relay, the config-ssh listing
and the web UI all give the same answer in the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

# Why an SSH connection was refused, in a few words fixed in advance: the ``reason`` label of
# ``hatchway_ssh_connections_refused_total`` (hatchway.server.metrics). Never a name or a message:
# a label's values must stay a small known set whoever connects.
BAD_REQUEST = "bad_request"  # a workspace or owner name that is not well-formed
UNAUTHENTICATED = "unauthenticated"  # no live sign-in session (none, expired, revoked, signed out)
SUSPENDED = "suspended"
NO_ACCESS = "no_access"  # no such workspace of theirs, or someone else's
EXTERNAL_CONNECT_OFF = "external_connect_off"
NOT_RUNNING = "not_running"
AGENT_UNREACHABLE = "agent_unreachable"  # not connected, lost, or silent past the dial timeout
TOO_MANY = "too_many"  # over the caps on connections being set up (hatchway.server.dialslots)
ENDED_DURING_SETUP = "ended_during_setup"  # a policy change or a shutdown while the agent dialled back
REFUSAL_REASONS = (
    BAD_REQUEST, UNAUTHENTICATED, SUSPENDED, NO_ACCESS, EXTERNAL_CONNECT_OFF, NOT_RUNNING, AGENT_UNREACHABLE,
    TOO_MANY, ENDED_DURING_SETUP,
)


#: What a suspended user is told, whichever check notices: a refused sign-in, a refused
#: connection, or a live one the suspension ends.
SUSPENDED_MESSAGE = "your account is suspended; ask a site manager to reactivate it"


@dataclass(frozen=True, slots=True)
class Refusal:
    """An SSH connection refused: ``message`` is the line its user reads, ``reason`` which of
    :data:`REFUSAL_REASONS` it is (what an operator counts)."""

    reason: str
    message: str


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
    """The one-line reason SSH is refused, or None when it is allowed."""
    refusal = check_ssh(f)
    return None if refusal is None else refusal.message


def check_ssh(f: SSHFacts) -> Refusal | None:
    """Why SSH is refused, or None when it is allowed.

    Site managers administer workspaces but do not enter other people's: a shell in someone
    else's home is not an administrative action.
    """
    if f.requester_suspended:
        return Refusal(SUSPENDED, SUSPENDED_MESSAGE)
    if not f.known_to_requester:
        return Refusal(NO_ACCESS, unknown_workspace_message(f"{f.owner}/{f.workspace}"))
    if f.owner_id != f.requester_id:
        return Refusal(NO_ACCESS, (
            f'workspace "{f.owner}/{f.workspace}" belongs to another user; '
            "you can only connect to your own workspaces"
        ))
    if not f.external_connect:
        return Refusal(EXTERNAL_CONNECT_OFF, external_connect_off_message(f.provider))
    if f.state != "running":
        why = f" ({f.state_reason})" if f.state_reason else ""
        if f.state == "starting":  # already on its way: starting it again changes nothing
            return Refusal(NOT_RUNNING, f'workspace "{f.workspace}" is starting{why}; try again in a few seconds')
        return Refusal(NOT_RUNNING, (
            f'workspace "{f.workspace}" is {f.state}{why}; '
            f"start it with: hatchway workspaces start {f.workspace}"
        ))
    if not f.agent_connected:
        return Refusal(AGENT_UNREACHABLE, (
            f'workspace "{f.workspace}" is not reachable: its agent is not connected; '
            f'start the agent in the workspace (see "hatchway workspaces show {f.workspace}")'
        ))
    return None


def unknown_workspace_message(name: str) -> str:
    return f'no workspace named "{name}" is yours; see "hatchway workspaces list"'
