"""``hatchway audit``: the record of admin actions and SSH connections."""

from __future__ import annotations

from typing import Any

import click

from hatchway.cli.common import api, json_option, print_json, print_table
from hatchway.cli.replies import AuditEvent, Connection


def detail_text(detail: dict[str, Any]) -> str:
    parts = []
    for key, value in detail.items():
        if isinstance(value, dict) and set(value) == {"old", "new"}:
            value = f"{value['old']}->{value['new']}"
        parts.append(f"{key}={value}")
    return " ".join(parts)


@click.group()
def audit() -> None:
    """Admin actions and the SSH connection log."""


@audit.command("list")
@click.option("--limit", default=200, show_default=True, help="At most this many, newest first.")
@click.option("--actor", help="Only actions by this user.")
@click.option("--action", help="Only this action, e.g. session.sign-in-failed.")
@click.option("--target", help="Only actions on this user, workspace or provider (failed sign-ins: the name tried).")
@json_option
def list_events(limit: int, actor: str | None, action: str | None, target: str | None, as_json: bool) -> None:
    """Admin actions, newest first (site managers only).

    \b
    Examples:
      hatchway audit list --actor alice
      hatchway audit list --action session.sign-in-failed --target bob
    """
    params: dict[str, object] = {"limit": limit}
    params.update({k: v for k, v in (("actor", actor), ("action", action), ("target", target)) if v})
    rows = api().call("GET", "/audit", params=params, expect=list[AuditEvent])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["TIME", "ACTOR", "ACTION", "TARGET", "SOURCE", "DETAIL"],  # SOURCE: where the request came from
        [[e["at"], e["actor"], e["action"], e["target"], e["source"], detail_text(e["detail"])] for e in rows],
    )


@audit.command("connections")
@click.option("--limit", default=200, show_default=True, help="At most this many, newest first.")
@click.option("--user", "username", help="Only this user's connections.")
@click.option("--workspace", help="Only connections to this workspace.")
@json_option
def connections(limit: int, username: str | None, workspace: str | None, as_json: bool) -> None:
    """SSH connections, accepted and refused, newest first (yours; everyone's for site managers)."""
    params: dict[str, object] = {"limit": limit}
    if username:
        params["user"] = username
    if workspace:
        params["workspace"] = workspace
    rows = api().call("GET", "/connections", params=params, expect=list[Connection])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["STARTED", "USER", "WORKSPACE", "PROVIDER", "SOURCE", "MODE", "RESULT", "IN", "OUT", "DURATION", "REASON"],
        [
            [c["started_at"], c["username"], c["workspace"], c["provider"], c["source"], c["mode"], c["result"],
             c["bytes_to_workspace"], c["bytes_from_workspace"], duration_text(c), c["reason"]]
            for c in rows
        ],
    )


def duration_text(connection: Connection) -> str | None:
    """How long a connection lasted, as the web UI says it; None (shown "-") while it is open
    or when it was refused."""
    from datetime import datetime

    from hatchway.server.web.format import connection_duration, human_duration

    ended_at = connection["ended_at"]
    if connection["result"] == "refused" or not ended_at:
        return None
    started, ended = datetime.fromisoformat(connection["started_at"]), datetime.fromisoformat(ended_at)
    return human_duration(connection_duration(started, ended))
