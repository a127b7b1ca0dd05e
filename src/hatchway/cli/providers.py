"""``hatchway providers``: where workspaces run, and whether SSH to them is allowed."""

from __future__ import annotations

import click

from hatchway.cli.common import api, json_option, name_segment, print_json, print_table
from hatchway.cli.replies import Provider
from hatchway.names import check_provider_name


def provider_segment(name: str) -> str:
    return name_segment(name, check_provider_name, "see hatchway providers list")


@click.group()
def providers() -> None:
    """Workspace providers (create and edit: site managers only)."""


@providers.command("list")
@json_option
def list_providers(as_json: bool) -> None:
    """List workspace providers: kind, External Connect, workspaces on each."""
    rows = api().call("GET", "/providers", expect=list[Provider])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["NAME", "KIND", "EXTERNAL CONNECT", "WORKSPACES"],
        [[p["name"], p["kind"], "on" if p["external_connect"] else "off", p["workspace_count"]] for p in rows],
    )


@providers.command("create")
@click.argument("name")
@click.option(
    "--kind", type=click.Choice(["local", "manual", "docker"]), required=True,
    help="local: on the server's machine; manual: you run the agent; docker: containers on an engine.",
)
@click.option(
    "--docker-host", metavar="unix:///PATH",
    help="docker: the engine's socket on the server's machine [default: the server's DOCKER_HOST, "
    "else unix:///var/run/docker.sock].",
)
@click.option(
    "--docker-network", metavar="NAME",
    help="docker: the network containers join [default: none, only their own loopback].",
)
def create(name: str, kind: str, docker_host: str | None, docker_network: str | None) -> None:
    """Create a workspace provider (External Connect starts on)."""
    if kind != "docker" and (docker_host or docker_network):
        raise click.UsageError("--docker-host and --docker-network are for --kind docker")
    body: dict[str, object] = {"name": name, "kind": kind}
    if docker_host:
        body["docker_host"] = docker_host
    if docker_network:
        body["docker_network"] = docker_network
    p = api().call("POST", "/providers", body, expect=Provider)
    where = ""
    if p["kind"] == "docker":
        where = f", engine {p.get('docker_host') or 'the server DOCKER_HOST (default unix:///var/run/docker.sock)'}"
    click.echo(f"Created provider {p['name']} ({p['kind']}{where}), External Connect on")


@providers.command("edit")
@click.argument("name")
@click.option("--external-connect", type=click.Choice(["on", "off"]), help="Allow SSH to this provider's workspaces.")
def edit(name: str, external_connect: str | None) -> None:
    """Change a provider: --external-connect off refuses SSH to its workspaces and ends live sessions."""
    body = {}
    if external_connect is not None:
        body["external_connect"] = external_connect == "on"
    if not body:
        raise click.UsageError("nothing to change: give --external-connect on|off")
    p = api().call("PATCH", f"/providers/{provider_segment(name)}", body, expect=Provider)
    state = "on" if p["external_connect"] else "off (SSH refused, live sessions ended)"
    click.echo(f"Provider {p['name']}: External Connect {state}")


@providers.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete a provider that has no workspaces left."""
    path = f"/providers/{provider_segment(name)}"
    if not yes:
        click.confirm(f"Delete provider {name}?", abort=True)
    api().call("DELETE", path)
    click.echo(f"Deleted provider {name}")
