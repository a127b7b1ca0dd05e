"""``hatchway ssh WORKSPACE [-- CMD...]``: OpenSSH with exactly config-ssh's settings."""

from __future__ import annotations

import os
import shutil

import click

from hatchway.cli.common import fail, session_or_fail, split_owner
from hatchway.cli.config_ssh import ALIAS_PREFIX, build_plan, write_standalone


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("workspace")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def ssh(workspace: str, command: tuple[str, ...]) -> None:
    """Open SSH to WORKSPACE (plain OpenSSH underneath; extra arguments run as a command)."""
    name, owner = split_owner(workspace)
    if owner:
        fail("you can only connect to your own workspaces")
    session = session_or_fail()
    plan, sdir = build_plan(session)
    alias = ALIAS_PREFIX + name
    if alias in plan.refusals:
        fail(plan.refusals[alias])
    if alias not in (e.alias for e in plan.entries):
        fail(f'no workspace named "{name}" is yours; see "hatchway workspaces list"')
    config = write_standalone(plan, sdir)
    ssh_bin = shutil.which("ssh")
    if ssh_bin is None:
        fail("OpenSSH's ssh client is not installed; install openssh-client")
    args = [ssh_bin, "-F", str(config), alias, *command]
    os.execv(ssh_bin, args)
