"""``hatchway workspaces``: create, list, show, delete, and agent tokens."""

from __future__ import annotations

import time
from typing import Any

import click

from hatchway.cli.common import (
    ApiClient,
    api,
    fail,
    json_option,
    name_segment,
    paging_options,
    print_json,
    print_table,
    search_option,
    split_owner,
)
from hatchway.cli.replies import AgentToken, CreatedWorkspace, Workspace
from hatchway.cli.urlpath import segment
from hatchway.names import check_username, check_workspace_name, parse_env_assignment, shown
from hatchway.sshmode import port22_server_text

#: What to do about a workspace argument no workspace can have (as ``hatchway proxy`` says it).
NAME_ADVICE = "name a workspace as NAME or OWNER/NAME (see: hatchway workspaces list)"


def ssh_mode_text(ws: Workspace) -> str:
    if not ws["external_connect"]:
        return "disabled by a site manager (External Connect is off)"
    mode = ws.get("ssh_mode")
    if mode == "openssh":
        return port22_server_text(ws.get("ssh_server_version"))
    if mode:
        return mode
    return "unknown (agent has not reported yet)"


def state_text(ws: Workspace) -> str:
    """The state, with the reason when it is one a person must read (failed, starting)."""
    if ws["state"] in ("failed", "starting") and ws.get("state_reason"):
        return f"{ws['state']}: {ws['state_reason']}"
    return ws["state"]


def agent_text(ws: Workspace) -> str:
    return "connected" if ws["agent_connected"] else "disconnected"


def _owner_params(owner: str | None) -> dict[str, str] | None:
    return {"owner": owner} if owner else None


def owner_and_name(name: str) -> tuple[str, dict[str, str] | None]:
    """NAME (yours) or OWNER/NAME (another user's, site managers) as the workspace's name and
    the query naming its owner (``?owner=``, as every workspace endpoint takes it).

    An empty OWNER ("/dev") is refused, not taken as your own dev.
    """
    ws_name, owner = split_owner(name)
    if owner == "":
        name_segment(owner, check_username, NAME_ADVICE)  # fails: "" is nobody's username
    return ws_name, _owner_params(owner)


def address(name: str) -> tuple[str, dict[str, str] | None]:
    """:func:`owner_and_name` with the name as the API path segment of the workspace; both
    reach the server exactly as typed."""
    ws_name, params = owner_and_name(name)
    return name_segment(ws_name, check_workspace_name, NAME_ADVICE), params


@click.group()
def workspaces() -> None:
    """Your development workspaces."""


#: How long ``create``/``start``/``restart`` wait for the agent to connect.
WAIT_TIMEOUT = 90.0


def wait_until_running(client: ApiClient, name: str, params: dict[str, str] | None, timeout: float = WAIT_TIMEOUT) -> None:
    """Poll until the workspace runs (agent connected); exit non-zero, saying why, if it fails."""
    deadline = time.monotonic() + timeout
    last_reason = None
    while True:
        w = client.call("GET", f"/workspaces/{segment(name)}", params=params, expect=Workspace)
        if w["state"] == "running" and w["agent_connected"]:
            return
        if w["state"] in ("failed", "stopped"):
            fail(f'workspace "{name}" is {w["state"]}' + (f": {w['state_reason']}" if w.get("state_reason") else ""))
        if w.get("state_reason") and w["state_reason"] != last_reason:
            last_reason = w["state_reason"]
            click.echo(shown(f"  {w['state']}: {last_reason}"), err=True)
        if time.monotonic() > deadline:
            fail(
                f'workspace "{name}" is still {w["state"]} after {timeout:.0f} s'
                + (f" ({w['state_reason']})" if w.get("state_reason") else "")
                + f'; see "hatchway workspaces show {name}"'
            )
        time.sleep(0.25)


@workspaces.command("create", epilog="A site manager creates one for another user with OWNER/NAME (hatchway "
                    "workspaces create bob/dev): it is theirs, reached with their key once they run hatchway config-ssh.")
@click.argument("name", metavar="[OWNER/]NAME")
@click.option("--provider", default="local", show_default=True, help="The provider it runs on (hatchway providers list).")
@click.option("--env", "env_items", multiple=True, metavar="NAME=VALUE", help="Image environment variable (repeatable).")
@click.option("--openssh", is_flag=True, help="Local provider: also run OpenSSH's sshd on the workspace's own port 22.")
@click.option("--image", metavar="IMAGE", help="Docker provider: the image (its ENV becomes the image environment).")
@click.option("--cvm", is_flag=True, help="Docker provider: run systemd as PID 1 (e.g. OpenSSH enabled in the image).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until a workspace Hatchway starts (local, docker) is running.")
def create(
    name: str, provider: str, env_items: tuple[str, ...], openssh: bool, image: str | None, cvm: bool, wait: bool
) -> None:
    """Create workspace NAME on a provider (local by default) and, where Hatchway runs it, start it.
    OWNER/NAME: for another user (site managers)."""
    env: dict[str, str] = {}
    for item in env_items:
        try:
            key, value = parse_env_assignment(item)
        except ValueError as exc:
            fail(str(exc))
        env[key] = value
    ws_name, params = owner_and_name(name)
    body: dict[str, Any] = {"name": ws_name, "provider": provider, "env": env}
    if openssh:
        body["openssh"] = True
    if image:
        body["image"] = image
    if cvm:
        if not image:
            raise click.UsageError("--cvm needs --image")
        body["cvm"] = True
    client = api()
    ws = client.call("POST", "/workspaces", body, params, expect=CreatedWorkspace)
    theirs = params is not None and ws["owner"] != client.username
    label = f"{ws['owner']}/{ws['name']}" if theirs else ws["name"]
    owned = f" for {ws['owner']}" if theirs else ""
    click.echo(shown(f"Created workspace {ws['name']}{owned} on provider {ws['provider']} ({ws['state']})"))
    if ws["state"] == "starting" and wait:
        click.echo(shown(f"Starting workspace {label}..."), err=True)
        wait_until_running(client, ws["name"], params)
        connect = "" if theirs else f"; connect with: ssh hatchway.{ws['name']}"
        click.echo(shown(f"Workspace {label} is running (agent connected){connect}"))
    elif ws.get("agent_command"):  # an agent Hatchway does not run (manual provider): its token is in it
        click.echo("Run the agent on the workspace machine, as the user SSH sessions should run as:")
        click.echo(f"  {shown(ws['agent_command'])}")
        click.echo(shown("The token is shown only now; get a new one with: hatchway workspaces agent-token " + label))
    if theirs:
        # Site managers do not enter other people's workspaces (policy.check_ssh): say who does, and how.
        click.echo(shown(f'Only {ws["owner"]} can connect: they run "hatchway config-ssh", then "ssh hatchway.{ws["name"]}"'))


@workspaces.command("list")
@click.option("--all", "all_users", is_flag=True, help="Every user's workspaces (site managers).")
@search_option("workspaces whose name or owner contains TEXT (OWNER/NAME: both)")
@paging_options
@json_option
def list_workspaces(all_users: bool, search: str | None, limit: int | None, offset: int | None, as_json: bool) -> None:
    """List your workspaces, by owner and name: state, agent and how SSH is served."""
    given = (("all", "true" if all_users else None), ("search", search), ("limit", limit), ("offset", offset))
    params = {k: v for k, v in given if v}
    rows = api().call("GET", "/workspaces", params=params or None, expect=list[Workspace])
    if as_json:
        print_json(rows)
        return
    print_table(
        ["NAME", "OWNER", "PROVIDER", "STATE", "AGENT", "SSH"],
        [[w["name"], w["owner"], w["provider"], state_text(w), agent_text(w), ssh_mode_text(w)] for w in rows],
    )


@workspaces.command("show")
@click.argument("name")
@json_option
def show(name: str, as_json: bool) -> None:
    """Show a workspace (OWNER/NAME for another user's, site managers)."""
    ws, params = address(name)
    w = api().call("GET", f"/workspaces/{ws}", params=params, expect=Workspace)
    if as_json:
        print_json(w)
        return
    state = w["state"] + (f" ({w['state_reason']})" if w.get("state_reason") else "")
    lines = [
        ("name", w["name"]),
        ("id", w["id"]),
        ("owner", w["owner"]),
        ("provider", f"{w['provider']} ({w['provider_kind']})"),
        ("state", state),
        # The server replica holding its control channel: whose log to read when it misbehaves.
        ("agent", agent_text(w)
         + (f" through replica {w['agent_replica']}" if w.get("agent_connected") and w.get("agent_replica") else "")
         + (f", last seen {w['agent_last_seen']}" if w.get("agent_last_seen") else "")),
        ("os user", w.get("os_user") or "-"),
        ("isolation", w.get("isolation") or "-"),
        ("openssh", "yes (sshd on the workspace's port 22)" if w.get("openssh") else "no"),
        *([("image", w["image"] + (" (CVM: systemd as PID 1)" if w.get("cvm") else ""))] if w.get("image") else []),
        ("ssh", ssh_mode_text(w)),
        ("connect", f"ssh hatchway.{w['name']}" if w["external_connect"] else "-"),
    ]
    for key, value in sorted(w["env"].items()):
        lines.append(("env", f"{key}={value}"))
    for d in w.get("diagnostics") or []:
        lines.append(("warning", d))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        click.echo(f"{key + ':':<{width + 1}} {shown(value)}")  # the server's text, and the agent's


@workspaces.command("delete")
@click.argument("name")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(name: str, yes: bool) -> None:
    """Delete a workspace (OWNER/NAME for another user's, site managers); its SSH sessions end."""
    ws, params = address(name)
    if not yes:
        click.confirm(f"Delete workspace {name}? Live SSH sessions to it end", abort=True)
    api().call("DELETE", f"/workspaces/{ws}", params=params)
    click.echo(f"Deleted workspace {name}")


@workspaces.command("agent-token")
@click.argument("name")
def agent_token(name: str) -> None:
    """Issue a new agent token (the old one stops working)."""
    ws, params = address(name)
    out = api().call("POST", f"/workspaces/{ws}/agent-token", params=params, expect=AgentToken)
    click.echo(shown(out["agent_token"]))
    click.echo(f"Run the agent with:\n  {shown(out['agent_command'])}", err=True)


def _lifecycle(action: str, name: str, wait: bool) -> None:
    ws, params = address(name)
    client = api()
    w = client.call("POST", f"/workspaces/{ws}/{action}", params=params, expect=Workspace)
    if action == "stop":
        click.echo(f"Stopped workspace {name}")
        return
    if action == "start" and w["state"] == "running" and w["agent_connected"]:
        # A start returns "starting" when it started something; a running workspace is left be.
        click.echo(f"Workspace {name} is already running (agent connected)")
        return
    if not wait:
        click.echo(f"Workspace {name} is {shown(w['state'])}")
        return
    click.echo(f"{'Starting' if action == 'start' else 'Restarting'} workspace {name}...", err=True)
    wait_until_running(client, split_owner(name)[0], params)
    click.echo(f"Workspace {name} is running (agent connected)")


@workspaces.command("start")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it is running.")
def start(name: str, wait: bool) -> None:
    """Start a stopped or failed workspace (local and docker providers)."""
    _lifecycle("start", name, wait)


@workspaces.command("stop")
@click.argument("name")
def stop(name: str) -> None:
    """Stop a workspace: its agent and every process in it end (live SSH sessions too)."""
    _lifecycle("stop", name, False)


@workspaces.command("restart")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until it is running.")
def restart(name: str, wait: bool) -> None:
    """Restart a workspace's agent (local and docker providers)."""
    _lifecycle("restart", name, wait)
