"""``hatchway sessions``: where you are signed in, and signing out the ones you do not want."""

from __future__ import annotations

import click

from hatchway.cli.common import api, fail, json_option, print_json, print_table
from hatchway.cli.replies import Revoked, Session
from hatchway.cli.session import clear_session
from hatchway.cli.urlpath import segment


@click.group()
def sessions() -> None:
    """Your sign-in sessions (this CLI, other machines, browsers)."""


@sessions.command("list")
@json_option
def list_sessions(as_json: bool) -> None:
    """List your unexpired sessions, the most recently used first (* marks this one)."""
    rows = api().call("GET", "/users/me/sessions", expect=list[Session])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["", "ID", "CLIENT", "FROM", "SIGNED IN", "LAST USED", "EXPIRES"],
        [["*" if s["current"] else "", s["id"][:8], s["client"], s["source"], s["created_at"], s["last_used_at"],
          s["expires_at"]] for s in rows],
    )


@sessions.command("revoke")
@click.argument("session_id", required=False)
@click.option("--others", is_flag=True, help="Sign out every session but this one (and end their SSH connections).")
def revoke(session_id: str | None, others: bool) -> None:
    """Sign out one session: its ID, or the first characters of it, from "hatchway sessions list".
    The SSH connections it opened end too."""
    client = api()
    if others == bool(session_id):
        fail("name one session ID to sign out, or pass --others (not both)")
    if others:
        out = client.call("POST", "/users/me/sessions/revoke-others", expect=Revoked)
        click.echo(f"Signed out {out['revoked']} other session{'s' if out['revoked'] != 1 else ''}; "
                   "SSH connections they opened have ended")
        return
    assert session_id is not None
    mine = client.call("GET", "/users/me/sessions", expect=list[Session])
    matches = [s for s in mine if s["id"].startswith(session_id.lower())]
    if not matches:
        fail(f"no session of yours starts with {session_id!r}; see hatchway sessions list")
    if len(matches) > 1:
        fail(f"{len(matches)} of your sessions start with {session_id!r}; give more of the ID")
    target = matches[0]
    client.call("DELETE", f"/users/me/sessions/{segment(target['id'])}")
    if target["current"]:
        clear_session()
        click.echo("Signed out this session and ended its SSH connections; log in again with hatchway login")
    else:
        click.echo(f"Signed out session {target['id'][:8]} ({target['client'] or 'unknown client'}); "
                   "SSH connections it opened have ended")
