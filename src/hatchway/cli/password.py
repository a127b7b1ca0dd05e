"""``hatchway password``: change your own password.

Interactive use prompts (nothing echoed, the new one twice); scripts pass ``--stdin`` and give
the current and the new password on two lines. Passwords never appear in arguments, where
``ps`` and shell history would show them.
"""

from __future__ import annotations

import sys

import click

from hatchway.cli.common import api, fail, prompt_secret
from hatchway.cli.replies import Revoked

STDIN_FORMAT = "--stdin expects two lines on standard input: your current password, then the new one"


def _line(what: str) -> str:
    line = sys.stdin.readline()
    if not line:
        fail(f"no {what} on standard input; {STDIN_FORMAT}")
    value = line.rstrip("\r\n")
    if not value:
        fail(f"the {what} line is empty; {STDIN_FORMAT}")
    return value


def _read_stdin() -> tuple[str, str]:
    return _line("current password"), _line("new password")


def _prompt() -> tuple[str, str]:
    current = prompt_secret("Current password", advice=STDIN_FORMAT)
    new = prompt_secret("New password (at least 8 characters)", "Repeat new password", advice=STDIN_FORMAT)
    return current, new


@click.command()
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the current and the new password from two lines of standard input.")
def password(from_stdin: bool) -> None:
    """Change your password. Your other sign-in sessions end; this one stays signed in."""
    current, new = _read_stdin() if from_stdin else _prompt()
    out = api().call(
        "PUT", "/users/me/password", {"current_password": current, "new_password": new}, expect=Revoked
    )
    n = out["revoked"]
    click.echo(f"Password changed; signed out {n} other session{'' if n == 1 else 's'} (this one stays signed in)")
