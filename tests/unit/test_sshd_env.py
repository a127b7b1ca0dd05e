"""build_session_env / parse_environment_file: the session environment, without processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatchway.sshd.env import (
    DEFAULT_PATH,
    SessionIdentity,
    build_session_env,
    client_env_accepted,
    parse_environment_file,
    ssh_connection_values,
)

ALICE = SessionIdentity(user="alice", home=Path("/home/alice"), shell="/bin/zsh")
CLIENT = ("203.0.113.7", 51234)
SERVER = ("10.0.0.5", 22)


def build(**kw: object) -> dict[str, str]:
    args: dict[str, object] = {
        "base_env": {},
        "identity": ALICE,
        "client_addr": CLIENT,
        "server_addr": SERVER,
    }
    args.update(kw)
    return build_session_env(**args)  # type: ignore[arg-type]


def test_minimal_non_pty_session_is_exact() -> None:
    assert build() == {
        "USER": "alice",
        "LOGNAME": "alice",
        "HOME": "/home/alice",
        "SHELL": "/bin/zsh",
        "PATH": DEFAULT_PATH,
        "MAIL": "/var/mail/alice",
        "SSH_CLIENT": "203.0.113.7 51234 22",
        "SSH_CONNECTION": "203.0.113.7 51234 10.0.0.5 22",
    }
    assert (
        DEFAULT_PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )


def test_pty_session_adds_term_and_ssh_tty() -> None:
    env = build(term="xterm-256color", tty_path="/dev/pts/3")
    assert env["TERM"] == "xterm-256color"
    assert env["SSH_TTY"] == "/dev/pts/3"


def test_base_env_kept_and_path_taken_from_it() -> None:
    env = build(
        base_env={
            "PATH": "/opt/bin:/usr/bin",
            "GOPATH": "/go",
            "HATCHWAY_USER_NAME": "alice",
        }
    )
    assert env["PATH"] == "/opt/bin:/usr/bin"
    assert env["GOPATH"] == "/go"
    assert env["HATCHWAY_USER_NAME"] == "alice"


def test_fixed_variables_override_base_env() -> None:
    env = build(
        base_env={
            "USER": "root",
            "HOME": "/root",
            "SHELL": "/bin/sh",
            "MAIL": "x",
            "SSH_CLIENT": "x",
        }
    )
    assert (env["USER"], env["HOME"], env["SHELL"], env["MAIL"]) == (
        "alice",
        "/home/alice",
        "/bin/zsh",
        "/var/mail/alice",
    )
    assert env["SSH_CLIENT"] == "203.0.113.7 51234 22"


def test_stale_ssh_tty_from_base_env_dropped_without_pty() -> None:
    assert "SSH_TTY" not in build(base_env={"SSH_TTY": "/dev/pts/9"})


def test_term_from_base_env_kept_without_pty_replaced_with_pty() -> None:
    assert build(base_env={"TERM": "dumb"})["TERM"] == "dumb"
    assert (
        build(base_env={"TERM": "dumb"}, term="vt100", tty_path="/dev/pts/0")["TERM"]
        == "vt100"
    )


def test_an_empty_terminal_type_sets_no_term() -> None:
    """ssh run without TERM (a cron job, an IDE's task) asks for a PTY of type "": sshd then
    sets no TERM, so the image's own TERM, if any, stays."""
    env = build(term="", tty_path="/dev/pts/0")
    assert "TERM" not in env and env["SSH_TTY"] == "/dev/pts/0"
    assert build(base_env={"TERM": "xterm"}, term="", tty_path="/dev/pts/0")["TERM"] == "xterm"


def test_the_command_a_key_replaced_is_in_ssh_original_command() -> None:
    """Set by the server itself, so a client's SetEnv of the same name (accepted or not) never wins."""
    env = build(original_command="rsync --server .", client_env={"SSH_ORIGINAL_COMMAND": "x"},
                accepted_client_env=("SSH_*",))
    assert env["SSH_ORIGINAL_COMMAND"] == "rsync --server ."
    assert "SSH_ORIGINAL_COMMAND" not in build()


def test_unknown_addresses_use_placeholders() -> None:
    env = build(client_addr=None, server_addr=None)
    assert env["SSH_CONNECTION"] == "127.0.0.1 0 127.0.0.1 0"
    assert env["SSH_CLIENT"] == "127.0.0.1 0 0"


def test_ipv6_and_mapped_ipv4_addresses() -> None:
    assert ssh_connection_values(("2001:db8::1", 40000), ("::1", 22)) == (
        "2001:db8::1 40000 ::1 22",
        "2001:db8::1 40000 22",
    )
    assert ssh_connection_values(("::ffff:192.0.2.1", 5), ("::ffff:10.0.0.1", 22)) == (
        "192.0.2.1 5 10.0.0.1 22",
        "192.0.2.1 5 22",
    )


def test_client_env_only_lang_lc_and_accepted() -> None:
    sent = {
        "LANG": "de_DE.UTF-8",
        "LC_ALL": "C",
        "LD_PRELOAD": "/tmp/x.so",
        "EDITOR": "vim",
        "GIT_X": "1",
        "PATH": "/evil",
    }
    env = build(client_env=sent)
    assert env["LANG"] == "de_DE.UTF-8"
    assert env["LC_ALL"] == "C"
    for name in ("LD_PRELOAD", "EDITOR", "GIT_X"):
        assert name not in env
    assert env["PATH"] == DEFAULT_PATH

    env = build(client_env=sent, accepted_client_env=["EDITOR", "GIT_*"])
    assert (env["EDITOR"], env["GIT_X"]) == ("vim", "1")
    assert "LD_PRELOAD" not in env


def test_client_env_cannot_override_identity_even_if_accepted() -> None:
    env = build(
        client_env={"USER": "root", "HOME": "/root"},
        accepted_client_env=["USER", "HOME"],
    )
    assert (env["USER"], env["HOME"]) == ("alice", "/home/alice")


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("LANG", True),
        ("LC_CTYPE", True),
        ("LC_", True),
        ("LANGUAGE", False),
        ("XLC_ALL", False),
        ("lang", False),
    ],
)
def test_client_env_accepted_defaults(name: str, ok: bool) -> None:
    assert client_env_accepted(name) is ok


def test_layering_order_base_client_fixed_key_file() -> None:
    env = build(
        base_env={"LANG": "C.UTF-8", "A": "base", "B": "base", "C": "base"},
        client_env={"LANG": "fr_FR.UTF-8", "LC_X": "client"},
        key_env={"B": "key", "LC_X": "key"},
        user_environment="C=file\nPATH=/file/bin\n",
    )
    assert env["LANG"] == "fr_FR.UTF-8"  # client beats image default
    assert env["LC_X"] == "key"  # authorized_keys environment= beats the client
    assert (env["A"], env["B"], env["C"]) == ("base", "key", "file")
    assert (
        env["PATH"] == "/file/bin"
    )  # ~/.ssh/environment may override anything, as in OpenSSH


def test_environment_file_can_override_lang_from_client() -> None:
    env = build(
        client_env={"LANG": "fr_FR.UTF-8"}, user_environment="LANG=en_US.UTF-8\n"
    )
    assert env["LANG"] == "en_US.UTF-8"


def test_parse_environment_file_openssh_rules() -> None:
    text = (
        "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------\n"
        "# The following has been auto-generated at workspace startup\n"
        "\n"
        "HATCHWAY_USER_EMAIL=alice@example.com\n"
        "   \t LEADING=blanks skipped\n"
        "  # indented comment\n"
        "EQUALS=a=b=c\n"
        "SPACES=  kept  \n"
        'QUOTED="not unquoted"\n'
        "EMPTY=\n"
        "no equals sign here\n"
        "=no name\n"
        "CR=windows\r\n"
        "# ----------------- END HATCHWAY -----------------------\n"
        "LAST=no newline"
    )
    assert parse_environment_file(text) == [
        ("HATCHWAY_USER_EMAIL", "alice@example.com"),
        ("LEADING", "blanks skipped"),
        ("EQUALS", "a=b=c"),
        ("SPACES", "  kept  "),
        ("QUOTED", '"not unquoted"'),
        ("EMPTY", ""),
        ("CR", "windows\r"),
        ("LAST", "no newline"),
    ]


def test_parse_environment_file_later_duplicates_win_in_env() -> None:
    env = build(user_environment="X=1\nX=2\n")
    assert env["X"] == "2"


def test_parse_environment_file_line_limit() -> None:
    text = "".join(f"V{i}=x\n" for i in range(1100))
    parsed = parse_environment_file(text)
    assert len(parsed) == 1000
    assert parsed[-1] == ("V999", "x")


def test_nul_and_bad_names_never_reach_execve() -> None:
    env = build(
        base_env={"GOOD": "1", "BAD\0NAME": "x", "NUL_VALUE": "a\0b", "": "empty"},
        user_environment="FILE_NUL=a\0b\n",
    )
    assert env["GOOD"] == "1"
    for name in ("BAD\0NAME", "NUL_VALUE", "", "FILE_NUL"):
        assert name not in env


def test_missing_environment_file_means_no_file_layer() -> None:
    assert build(user_environment=None) == build()
    assert build(user_environment="") == build()


def test_inputs_not_mutated() -> None:
    base = {"PATH": "/p", "SSH_TTY": "/dev/pts/1"}
    client = {"LANG": "C"}
    build(base_env=base, client_env=client)
    assert base == {"PATH": "/p", "SSH_TTY": "/dev/pts/1"}
    assert client == {"LANG": "C"}


def test_session_identity_current_matches_passwd() -> None:
    import os
    import pwd

    ident = SessionIdentity.current()
    pw = pwd.getpwuid(os.getuid())
    assert ident == SessionIdentity(
        user=pw.pw_name, home=Path(pw.pw_dir), shell=pw.pw_shell or "/bin/sh"
    )
