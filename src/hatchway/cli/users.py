"""``hatchway users``: user administration (site managers)."""

from __future__ import annotations

import click

from hatchway.cli.common import (
    api,
    fail,
    json_option,
    name_segment,
    paging_options,
    print_json,
    print_table,
    prompt_secret,
    read_password_stdin,
    search_option,
)
from hatchway.cli.replies import Revoked, User
from hatchway.names import check_username


def user_segment(name: str) -> str:
    return name_segment(name, check_username, "see hatchway users list")


@click.group()
def users() -> None:
    """Manage users (site managers only)."""


@users.command("list")
@search_option("users whose name contains TEXT")
@paging_options
@json_option
def list_users(search: str | None, limit: int | None, offset: int | None, as_json: bool) -> None:
    """List every user (or those whose name contains --search), by name: role, status, password."""
    params = {k: v for k, v in (("search", search), ("limit", limit), ("offset", offset)) if v}
    rows = api().call("GET", "/users", params=params or None, expect=list[User])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["USERNAME", "EMAIL", "ROLE", "STATUS", "PASSWORD", "CREATED"],
        [[u["username"], u["email"], u["role"], "suspended" if u["suspended"] else "active",
          "set" if u["has_password"] else "none (users set-password)", u["created_at"]] for u in rows],
    )


@users.command("create")
@click.argument("name")
@click.option("--email", required=True, help="Their email address.")
@click.option(
    "--role", type=click.Choice(["member", "site-manager"]), default="member", show_default=True,
    help="Members reach their own workspaces; site managers administer everything.",
)
@click.option("--password-stdin", is_flag=True, help="Read the new user's password from standard input.")
def create(name: str, email: str, role: str, password_stdin: bool) -> None:
    """Create user NAME, with a platform SSH key of their own."""
    body = {"username": name, "email": email, "role": role}
    if password_stdin:
        body["password"] = read_password_stdin()
    u = api().call("POST", "/users", body, expect=User)
    click.echo(f"Created {u['username']} ({u['role']}); SSH key {u['ssh_key_fingerprint']}")
    if not password_stdin:
        click.echo(
            f"hatchway: warning: {u['username']} has no password and cannot sign in until one is set: "
            f"hatchway users set-password {u['username']} --password-stdin",
            err=True,
        )


@users.command("suspend")
@click.argument("name")
def suspend(name: str) -> None:
    """Suspend NAME: they cannot sign in or connect, and their sessions and SSH connections end."""
    api().call("POST", f"/users/{user_segment(name)}/suspend")
    click.echo(f"Suspended {name}: their sessions and SSH connections have ended")


@users.command("activate")
@click.argument("name")
def activate(name: str) -> None:
    """Let a suspended user sign in again."""
    api().call("POST", f"/users/{user_segment(name)}/activate")
    click.echo(f"Activated {name}: they can sign in again (sessions from before the suspension stay ended)")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(["member", "site-manager"]))
def set_role(name: str, role: str) -> None:
    """Make NAME a member or a site manager."""
    api().call("PUT", f"/users/{user_segment(name)}/role", {"role": role})
    click.echo(f"{name} is now a {role}")


@users.command("set-password")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input (one line).")
def set_password(name: str, password_stdin: bool) -> None:
    """Set or reset NAME's password; all of NAME's sign-in sessions end. Your own is changed with
    hatchway password, which asks for the current one."""
    path = f"/users/{user_segment(name)}/password"  # before asking for a password it cannot set
    client = api()
    if name == client.username:  # the server refuses it (409): say so before asking for a password
        fail("your own password is changed with your current one: run hatchway password")
    new = read_password_stdin() if password_stdin else prompt_secret(f"New password for {name}", "Repeat it")
    out = client.call("PUT", path, {"password": new}, expect=Revoked)
    n = out["revoked"]
    click.echo(f"Set the password of {name}; {n} of their sign-in session{'' if n == 1 else 's'} ended")
