"""CLI tables show server values as they are: never as rich markup, never as terminal control."""

from __future__ import annotations

import pytest

from hatchway.cli.common import print_table
from hatchway.cli.workspaces import ssh_mode_text
from hatchway.names import shown


def test_markup_in_values_is_shown_verbatim_and_cannot_break_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["USER", "EMAIL"], [["carol", "c[/]@example.com"], ["[bold]dave", "[red]d@example.com[/red]"]])
    assert [line.rstrip() for line in capsys.readouterr().out.splitlines()] == [
        "USER        EMAIL",
        "carol       c[/]@example.com",
        "[bold]dave  [red]d@example.com[/red]",
    ]


def test_terminal_control_from_the_server_is_shown_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["MODE"], [["\x1b]0;PWNED\x07\x1b[31mRED"], ["two\nlines"]])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert [line.rstrip() for line in out.splitlines()] == ["MODE", "\\x1b]0;PWNED\\x07\\x1b[31mRED", "two\\nlines"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("plain", "plain"), ("tab\there", "tab\\there"), ("nul\x00", "nul\\x00"), ("é ünïcode", "é ünïcode"),
     ("\u202eevil", "\\u202eevil"), ("\x9b31m", "\\x9b31m")],
)
def test_shown(text: str, expected: str) -> None:
    assert shown(text) == expected


def test_the_ssh_column_names_the_port_22_server_as_the_ui_does() -> None:
    base = {"external_connect": True, "ssh_mode": "openssh"}
    assert ssh_mode_text({**base, "ssh_server_version": "OpenSSH_9.2p1 Debian-2+deb12u3"}) == (
        "openssh (OpenSSH_9.2p1 Debian-2+deb12u3)"
    )
    assert ssh_mode_text({**base, "ssh_server_version": "dropbear_2022.83"}) == "SSH server on port 22 (dropbear_2022.83)"
    assert ssh_mode_text({**base, "ssh_mode": "built-in"}) == "built-in"
