"""The ``hatchway`` command.

Subcommands are imported only when invoked, so ``hatchway proxy`` (run by ssh for every
connection) does not pay for the server's or the API client's imports. ``hatchway proxy`` is
dispatched before click is even imported (click alone costs about 30 ms of every ``ssh``); any
argument it does not recognise falls through to click.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import click

COMMANDS = {
    "server": "hatchway.cli.server_cmd:server",
    "agent": "hatchway.cli.agent_cmd:agent",
    "login": "hatchway.cli.login:login",
    "logout": "hatchway.cli.login:logout",
    "whoami": "hatchway.cli.login:whoami",
    "password": "hatchway.cli.password:password",
    "users": "hatchway.cli.users:users",
    "keys": "hatchway.cli.keys:keys",
    "sessions": "hatchway.cli.sessions:sessions",
    "providers": "hatchway.cli.providers:providers",
    "workspaces": "hatchway.cli.workspaces:workspaces",
    "audit": "hatchway.cli.audit:audit",
    "proxy": "hatchway.cli.proxy_cmd:proxy",
    "config-ssh": "hatchway.cli.config_ssh:config_ssh",
    "ssh": "hatchway.cli.ssh:ssh",
}


def _build_cli() -> click.Group:
    import importlib

    import click

    from hatchway import __version__

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

    return cli


def __getattr__(name: str) -> Any:
    """``hatchway.cli.main.cli``, the click group, built (and click imported) on first use."""
    if name == "cli":
        group = _build_cli()
        globals()["cli"] = group
        return group
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["proxy"]:
        from hatchway.cli.proxy import fast_main

        status = fast_main(argv[1:])
        if status is not None:
            sys.exit(status)
    __getattr__("cli")(prog_name="hatchway")
