"""``hatchway users``: user administration (site managers)."""

from __future__ import annotations

import click

from hatchway.cli.common import api, print_json, print_table, read_password_stdin


@click.group()
def users() -> None:
    """Manage users (site managers only)."""


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_users(as_json: bool) -> None:
    rows = api().call("GET", "/users")
    if as_json:
        print_json(rows)
        return
    print_table(
        ["USERNAME", "EMAIL", "ROLE", "STATUS", "CREATED"],
        [[u["username"], u["email"], u["role"], "suspended" if u["suspended"] else "active", u["created_at"]] for u in rows],
    )


@users.command("create")
@click.argument("name")
@click.option("--email", required=True)
@click.option("--role", type=click.Choice(["member", "site-manager"]), default="member", show_default=True)
@click.option("--password-stdin", is_flag=True, help="Read the new user's password from standard input.")
def create(name: str, email: str, role: str, password_stdin: bool) -> None:
    body = {"username": name, "email": email, "role": role}
    if password_stdin:
        body["password"] = read_password_stdin()
    u = api().call("POST", "/users", body)
    click.echo(f"Created {u['username']} ({u['role']}); SSH key {u['ssh_key_fingerprint']}")


@users.command("suspend")
@click.argument("name")
def suspend(name: str) -> None:
    api().call("POST", f"/users/{name}/suspend")
    click.echo(f"Suspended {name}: their sessions and SSH connections have ended")


@users.command("activate")
@click.argument("name")
def activate(name: str) -> None:
    api().call("POST", f"/users/{name}/activate")
    click.echo(f"Activated {name}: they can sign in again (sessions from before the suspension stay ended)")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(["member", "site-manager"]))
def set_role(name: str, role: str) -> None:
    api().call("PUT", f"/users/{name}/role", {"role": role})
    click.echo(f"{name} is now a {role}")
