"""``hatchway providers``: where workspaces run, and whether SSH to them is allowed."""

from __future__ import annotations

import click

from hatchway.cli.common import api, print_json, print_table


@click.group()
def providers() -> None:
    """Workspace providers (create and edit: site managers only)."""


@providers.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_providers(as_json: bool) -> None:
    rows = api().call("GET", "/providers")
    if as_json:
        print_json(rows)
        return
    print_table(
        ["NAME", "KIND", "EXTERNAL CONNECT", "WORKSPACES"],
        [[p["name"], p["kind"], "on" if p["external_connect"] else "off", p["workspace_count"]] for p in rows],
    )


@providers.command("create")
@click.argument("name")
@click.option("--kind", type=click.Choice(["local", "manual"]), required=True)
def create(name: str, kind: str) -> None:
    p = api().call("POST", "/providers", {"name": name, "kind": kind})
    click.echo(f"Created provider {p['name']} ({p['kind']}), External Connect on")


@providers.command("edit")
@click.argument("name")
@click.option("--external-connect", type=click.Choice(["on", "off"]), help="Allow SSH to this provider's workspaces.")
def edit(name: str, external_connect: str | None) -> None:
    body = {}
    if external_connect is not None:
        body["external_connect"] = external_connect == "on"
    if not body:
        raise click.UsageError("nothing to change: give --external-connect on|off")
    p = api().call("PATCH", f"/providers/{name}", body)
    state = "on" if p["external_connect"] else "off (SSH refused, live sessions ended)"
    click.echo(f"Provider {p['name']}: External Connect {state}")
