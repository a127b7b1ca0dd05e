"""``hatchway config-ssh``: one Host entry per reachable workspace in ~/.ssh/config.

Everything outside Hatchway's managed block is the user's and is kept byte for byte; the block
goes before the user's first Host/Match so a ``Host *`` of theirs cannot override it; host keys
are pinned from what the agents reported, never ``StrictHostKeyChecking no``.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from hatchway.cli.common import ApiClient, fail, session_or_fail
from hatchway.cli.keys import default_key_path, download_key
from hatchway.cli.session import StoredSession, config_dir
from hatchway.fileutil import atomic_write, ensure_private_dir
from hatchway.agent.authorized_keys import validate_public_key
from hatchway.sshconfig import HostEntry, apply_block, render_block, render_entry, render_known_hosts, unified_diff

ALIAS_PREFIX = "hatchway."


def hatchway_argv() -> list[str]:
    """How ssh should start us: an absolute path, independent of ssh's PATH."""
    me = Path(sys.argv[0])
    if me.name == "hatchway" and me.exists():
        return [str(me.absolute())]
    found = shutil.which("hatchway")
    if found:
        return [str(Path(found).absolute())]
    return [sys.executable, "-m", "hatchway"]


@dataclass
class Plan:
    entries: list[HostEntry] = field(default_factory=list)
    known_hosts: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    disabled: int = 0


def plan_entries(
    workspaces: list[dict[str, Any]], key_path: Path, known_hosts_path: Path, proxy_argv: list[str]
) -> Plan:
    """Decide which workspaces get an entry and why the others do not (pure)."""
    plan = Plan()
    for ws in workspaces:
        alias = ALIAS_PREFIX + ws["name"]
        # Pinning is not access: keep every reported host key, so an entry written earlier (or
        # by another run) still verifies the moment SSH is switched back on.
        for key in ws.get("host_keys") or []:
            try:
                plan.known_hosts.append((alias, validate_public_key(key)))
            except ValueError:
                pass
        if not ws["external_connect"]:
            plan.disabled += 1
            plan.warnings.append(
                f'SSH is not enabled for workspace provider "{ws["provider"]}": left out {alias} '
                "(External Connect is off; ask a site manager if you need it)"
            )
            continue
        if not ws.get("os_user") or not ws.get("host_keys"):
            plan.warnings.append(
                f"left out {alias}: its agent has not connected yet, so its user and host key are "
                'unknown; start the agent, then run "hatchway config-ssh" again'
            )
            continue
        entry = HostEntry(
            alias=alias,
            user=ws["os_user"],
            proxy_command=[*proxy_argv, ws["name"]],
            identity_file=str(key_path),
            known_hosts_file=str(known_hosts_path),
            host_key_alias=alias,
        )
        try:
            # One workspace with an unusable report must not break everyone else's entries.
            render_entry(entry)
            for key in ws["host_keys"]:
                validate_public_key(key)
        except ValueError as exc:
            plan.warnings.append(f"left out {alias}: {exc}")
            continue
        plan.entries.append(entry)
    return plan


def ensure_key(client: ApiClient, path: Path) -> None:
    """Download the platform key when missing or stale (regenerated elsewhere)."""
    current = client.call("GET", "/users/me/key")["public_key"].split()[:2]
    pub = path.with_name(path.name + ".pub")
    try:
        on_disk = pub.read_text().split()[:2] if path.exists() else None
    except FileNotFoundError:
        on_disk = None
    if on_disk != current:
        download_key(client, path)
        click.echo(f"Downloaded your Hatchway SSH key to {path}", err=True)


def proxy_argv_for(session_dir: Path) -> list[str]:
    argv = [*hatchway_argv(), "proxy"]
    default = Path.home() / ".config" / "hatchway"
    if session_dir.absolute() != default.absolute():
        argv += ["--config-dir", str(session_dir.absolute())]
    return argv


def build_plan(session: StoredSession) -> tuple[Plan, Path]:
    """Fetch workspaces, make sure the key is on disk, and plan the entries."""
    client = ApiClient(session.url, session.token)
    key_path = default_key_path(session.url).absolute()
    ensure_key(client, key_path)
    sdir = config_dir()
    ensure_private_dir(sdir)
    known = sdir / "known_hosts"
    workspaces = client.call("GET", "/workspaces")
    plan = plan_entries(workspaces, key_path, known.absolute(), proxy_argv_for(sdir))
    atomic_write(known, render_known_hosts(plan.known_hosts).encode(), 0o600)
    return plan, sdir


def write_standalone(plan: Plan, sdir: Path) -> Path:
    """The same entries as a complete file of their own, for ``ssh -F`` and ``hatchway ssh``."""
    path = sdir / "ssh_config"
    atomic_write(path, render_block(plan.entries).encode(), 0o600)
    return path


@click.command("config-ssh")
@click.option("--ssh-config", "ssh_config", type=click.Path(path_type=Path), default=None, help="The ssh config file to edit [default ~/.ssh/config].")
@click.option("--dry-run", is_flag=True, help="Show the change as a diff and write nothing.")
@click.option("--remove", is_flag=True, help="Remove Hatchway's block from the ssh config.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def config_ssh(ssh_config: Path | None, dry_run: bool, remove: bool, yes: bool) -> None:
    """Write Host entries for your workspaces into your ssh config."""
    path = (ssh_config or Path.home() / ".ssh" / "config").expanduser().absolute()
    try:
        existing = path.read_bytes().decode("utf-8")  # bytes: keep the user's CRLFs as they are
    except FileNotFoundError:
        existing = ""
    except UnicodeDecodeError:
        fail(f"{path} is not valid UTF-8; fix or move it, then run config-ssh again")
    plan = None
    if not remove:
        plan, sdir = build_plan(session_or_fail())
        write_standalone(plan, sdir)
        for warning in plan.warnings:
            click.echo(f"hatchway: {warning}", err=True)
    try:
        new = apply_block(existing, None if plan is None else render_block(plan.entries))
    except ValueError as exc:
        fail(f"cannot update {path}: {exc}; fix the Hatchway markers by hand, then run config-ssh again")
    if new == existing:
        click.echo(f"{path} is up to date")
    elif dry_run:
        click.echo(unified_diff(existing, new, str(path)), nl=False)
        return
    else:
        if not yes and sys.stdin.isatty():
            click.echo(unified_diff(existing, new, str(path)), nl=False)
            click.confirm(f"Write these changes to {path}?", abort=True)
        if not path.parent.exists():
            ensure_private_dir(path.parent)
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
        atomic_write(path, new.encode(), mode)
        if remove:
            click.echo(f"Removed Hatchway's block from {path}")
    if plan is None:
        return
    if plan.entries:
        names = ", ".join(e.alias for e in plan.entries)
        click.echo(f"You can now run: ssh {plan.entries[0].alias}   (configured: {names})")
    elif plan.disabled and not plan.entries:
        fail("SSH is disabled or not available for any workspaces in your deployment")
    else:
        click.echo("No workspaces to configure yet; create one with: hatchway workspaces create NAME")
