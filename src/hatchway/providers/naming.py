"""Names the local provider gives to a workspace's operating-system objects (pure).

A workspace's Unix user and network namespace outlive single runs of the agent, are shared with
every other program on the machine, and are removed by name on delete. So the names must be
deterministic (the same workspace always maps to the same objects), valid for ``useradd`` and
``ip netns``, and never land on an object that belongs to someone else. The first two are
decided here; the third is checked against the system by the provider, which then falls back to
the next candidate.
"""

from __future__ import annotations

import hashlib

#: ``useradd`` refuses longer names (and ``ps``/``ls`` columns get unreadable well before).
MAX_UNIX_USER = 32
#: Every Unix user the local provider creates carries this in its GECOS field, followed by the
#: workspace id: it is how a name is recognised as ours (reusable) or someone else's (skip it).
USER_MARKER = "hatchway workspace "
NETNS_PREFIX = "hw-"


def user_marker(workspace_id: str) -> str:
    return USER_MARKER + workspace_id


def _short_hash(workspace_id: str, n: int = 6) -> str:
    return hashlib.sha256(workspace_id.encode()).hexdigest()[:n]


def unix_user_candidates(owner: str, name: str, workspace_id: str) -> list[str]:
    """The names to try for a workspace's user, best first.

    ``hw-<owner>-<name>`` reads well in ``ps`` and ``id``; when it is too long it is cut and a
    hash of the workspace id keeps it unique. The last candidate, derived from the id alone,
    cannot collide with another workspace's and is used when the readable ones are taken (two
    pairs like ``a-b``/``c`` and ``a``/``b-c`` give the same readable name, or an unrelated
    local account already has it).
    """
    digest = _short_hash(workspace_id)
    readable = f"hw-{owner}-{name}"
    if len(readable) > MAX_UNIX_USER:
        readable = readable[: MAX_UNIX_USER - len(digest) - 1].rstrip("-") + "-" + digest
    fallback = f"hw-{readable[3:][: MAX_UNIX_USER - 4 - 12].rstrip('-')}-{_short_hash(workspace_id, 12)}"
    out = [readable]
    if fallback not in out:
        out.append(fallback)
    return out


def netns_name(workspace_id: str) -> str:
    """The workspace's named network namespace (``ip netns``); ids are unique, so names are."""
    return NETNS_PREFIX + workspace_id
