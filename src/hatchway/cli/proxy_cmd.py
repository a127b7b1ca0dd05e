"""The click face of ``hatchway proxy`` (``--help``, argument errors).

ssh runs the proxy through :func:`hatchway.cli.proxy.fast_main`, which never imports click;
this command is what ``hatchway --help`` lists and what parses unusual arguments.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hatchway.cli.proxy import relay


@click.command()
@click.argument("workspace")
@click.option("--config-dir", "config_path", type=click.Path(path_type=Path), help="Where the login is stored [env HATCHWAY_CONFIG_DIR].")
def proxy(workspace: str, config_path: Path | None) -> None:
    """Relay one SSH connection to WORKSPACE (used as ssh's ProxyCommand)."""
    sys.exit(relay(workspace, config_path))
