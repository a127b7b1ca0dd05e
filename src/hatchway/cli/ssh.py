"""``hatchway ssh [SSH OPTIONS] WORKSPACE [COMMAND...]``: OpenSSH with exactly config-ssh's settings.

The arguments are ssh's own, in ssh's own order: options before the workspace (and after it,
until the command or ``--``, where ssh reads them too), then the command. They reach ssh as
given, the workspace replaced by its ``hatchway.NAME`` entry. Read here only to find the
workspace and to refuse what would take the connection around Hatchway or unpin the
workspace's host key, since those settings are the point of the shortcut.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass

import click

from hatchway.cli.common import fail, session_or_fail, split_owner
from hatchway.cli.config_ssh import ALIAS_PREFIX, build_plan

#: ssh's option letters, those that take a value and those that do not (OpenSSH's getopt
#: string, less -P: a flag in older versions, an option with a value in newer ones).
VALUE_OPTIONS = frozenset("BDEFIJLORSWbceilmopw")
FLAGS = frozenset("1246ACGKMNTVXYafgknqstvxy")

#: Options a command line may not give: they would replace the route through ``hatchway proxy``.
REFUSED_OPTIONS = {
    "F": "it would replace the ssh config that takes the connection through Hatchway",
    "J": "it would take the connection around Hatchway's ProxyCommand",
}
#: ``-o`` keywords a command line may not set (ssh takes the first value it reads, and the
#: command line's comes before the config's): the route and the pinned host key of the entry.
REFUSED_KEYWORDS = {
    keyword.lower(): keyword
    for keyword in (
        "ProxyCommand", "ProxyJump", "HostKeyAlias", "StrictHostKeyChecking", "UserKnownHostsFile",
        "GlobalKnownHostsFile", "KnownHostsCommand", "Include",
    )
}

HELP = """Open SSH to WORKSPACE with OpenSSH, through Hatchway, with the settings config-ssh
writes for it (the connection goes through "hatchway proxy", the workspace's host key is
pinned). Anything after WORKSPACE that is not an option is the command to run there.

ssh's own options work as with plain ssh, before WORKSPACE (or after it, before the
command): -v for debug output, -L, -R and -D to forward ports, -A for agent forwarding, -X or
-Y for X11, -N, -T, -t, -o Option=value and the others (see man ssh). "--" ends the options:
"hatchway ssh dev -- -v" runs "-v" in the workspace.

Refused, since they would take the connection around Hatchway or unpin the host key: -F, -J,
and -o ProxyCommand, ProxyJump, HostKeyAlias, StrictHostKeyChecking, UserKnownHostsFile,
GlobalKnownHostsFile, KnownHostsCommand or Include (for those, use plain ssh with a config
of your own).

\b
Examples:
  hatchway ssh dev
  hatchway ssh dev -- make test
  hatchway ssh -v -L 8080:localhost:8080 dev
  hatchway ssh -A -o ServerAliveInterval=5 dev
"""


@dataclass(frozen=True)
class SshArgs:
    """An ``hatchway ssh`` command line split where the workspace is."""

    before: list[str]  # ssh's options (and a "--") before the workspace
    workspace: str
    after: list[str]  # options, "--" and the command, as ssh reads them after the destination


def _options(args: list[str], start: int) -> int:
    """Check ssh's options from ``args[start]`` on, as ssh's getopt reads them (clusters such
    as ``-vA`` or ``-L8080:h:80``, a value in the next argument); the index of the first
    argument that is not an option, or just past a ``--``."""
    i = start
    while i < len(args) and args[i].startswith("-") and args[i] != "-":
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if arg.startswith("--"):
            raise click.UsageError(f"{arg!r} is not an ssh option: ssh's options are single letters (see man ssh)")
        for j, letter in enumerate(arg[1:], 1):
            if letter in FLAGS:
                continue
            if letter not in VALUE_OPTIONS:
                raise click.UsageError(f"-{letter} is not an ssh option (see man ssh)")
            value = arg[j + 1 :]
            if not value:
                if i == len(args):
                    raise click.UsageError(f"ssh's option -{letter} needs a value")
                value = args[i]
                i += 1
            _check(letter, value)
            break
    return i


def _check(letter: str, value: str) -> None:
    """Refuse an option that would undo what makes the connection go through Hatchway."""
    if letter in REFUSED_OPTIONS:
        fail(f"refusing -{letter}: {REFUSED_OPTIONS[letter]}; use plain ssh for that")
    if letter != "o":
        return
    # The keyword as ssh reads it: up to a space or "=", quotes removed; compared ignoring case.
    keyword = re.split(r'[\s="]', value.lstrip().lstrip('"'), maxsplit=1)[0].lower()
    if keyword in REFUSED_KEYWORDS:
        fail(f"refusing -o {REFUSED_KEYWORDS[keyword]}: Hatchway sets it, to take the connection through Hatchway "
             "and check the workspace's pinned host key; use plain ssh for that")


def split_args(args: list[str]) -> SshArgs:
    """Where the workspace is among ``args``, every ssh option checked on the way (see
    :func:`_options`). ssh reads options after its destination too, unless the argument just
    before it was ``--``."""
    i = _options(args, 0)
    if i == len(args):
        raise click.UsageError("name the workspace to connect to")
    before, workspace = args[:i], args[i]
    if before[-1:] != ["--"]:
        _options(args, i + 1)
    return SshArgs(before, workspace, args[i + 1 :])


class _SshCommand(click.Command):
    """Hands its arguments to ssh as they were typed, ``--`` included (click's parser drops
    one); only a leading ``--help``/``-h`` is this command's own."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] and args[0] in ctx.help_option_names:
            return super().parse_args(ctx, args)
        return super().parse_args(ctx, ["--", *args])


@click.command(cls=_SshCommand, help=HELP, options_metavar="[SSH OPTIONS]")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="WORKSPACE [COMMAND]...")
def ssh(args: tuple[str, ...]) -> None:
    """This process becomes ssh (execv): the terminal, signals and exit status are ssh's own."""
    parsed = split_args(list(args))
    name, owner = split_owner(parsed.workspace)
    if owner:
        fail("you can only connect to your own workspaces")
    session = session_or_fail()
    plan, config = build_plan(session)
    alias = ALIAS_PREFIX + name
    if alias in plan.refusals:
        fail(plan.refusals[alias])
    if alias not in (e.alias for e in plan.entries):
        fail(f'no workspace named "{name}" is yours; see "hatchway workspaces list"')
    ssh_bin = shutil.which("ssh")
    if ssh_bin is None:
        fail("OpenSSH's ssh client is not installed; install openssh-client")
    os.execv(ssh_bin, [ssh_bin, "-F", str(config), *parsed.before, alias, *parsed.after])
