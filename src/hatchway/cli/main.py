"""The ``hatchway`` command.

Subcommands are imported only when invoked, so ``hatchway proxy`` (run by ssh for every
connection) does not pay for the server's or the API client's imports.
"""

from __future__ import annotations

import importlib

import click

from hatchway import __version__

COMMANDS = {
    "server": "hatchway.cli.server_cmd:server",
    "agent": "hatchway.cli.agent_cmd:agent",
    "login": "hatchway.cli.login:login",
    "logout": "hatchway.cli.login:logout",
    "whoami": "hatchway.cli.login:whoami",
    "users": "hatchway.cli.users:users",
    "keys": "hatchway.cli.keys:keys",
    "providers": "hatchway.cli.providers:providers",
    "workspaces": "hatchway.cli.workspaces:workspaces",
    "audit": "hatchway.cli.audit:audit",
    "proxy": "hatchway.cli.proxy:proxy",
    "config-ssh": "hatchway.cli.config_ssh:config_ssh",
    "ssh": "hatchway.cli.ssh:ssh",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hatchway")
def cli() -> None:
    """Hatchway: SSH access to your development workspaces with plain OpenSSH."""


def main() -> None:
    cli(prog_name="hatchway")
