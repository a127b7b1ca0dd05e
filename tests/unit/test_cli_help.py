"""Every ``hatchway`` command and option says what it is for in ``--help``.

A newcomer's first look at a command is its help; a blank line next to ``create`` or a bare
``--email TEXT`` leaves them guessing. Walked over the whole command tree, so a new command or
option without help fails here.
"""

from __future__ import annotations

import click
import pytest

from hatchway.cli.main import COMMANDS, cli


def _commands() -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    ctx = click.Context(cli)
    for name in COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        out.append((name, command))
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                out.append((f"{name} {sub}", command.get_command(ctx, sub)))  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize(("path", "command"), _commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_and_option_has_help(path: str, command: click.Command) -> None:
    assert (command.help or command.short_help or "").strip(), f"hatchway {path} has no help text"
    bare = [
        param.opts[0]
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
        and param.opts[0] not in ("--help", "--version")
    ]
    assert bare == [], f"hatchway {path}: options without help: {bare}"
