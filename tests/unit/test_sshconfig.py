"""Tests for the managed block of ~/.ssh/config and Hatchway's known_hosts (SPEC 4).

Three kinds of evidence: exact expected text for the documented shapes; properties over
arbitrary user files and arbitrary values (preservation, reversibility, idempotency, no injected
directive); and the real OpenSSH client and real shells agreeing with what we meant to write.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hatchway import sshconfig
from hatchway.sshconfig import (
    COMMENT_LINE,
    END_MARKER,
    START_MARKER,
    HostEntry,
    apply_block,
    render_block,
    render_known_hosts,
    unified_diff,
)

SSH = "/usr/bin/ssh"
CIPHERS = (
    "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)


def _key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


KEY1, KEY2 = _key(), _key()


def entry(alias: str = "hatchway.dev", **kw: object) -> HostEntry:
    values: dict[str, object] = {
        "alias": alias,
        "user": "alice",
        "proxy_command": [
            "/usr/local/bin/hatchway",
            "proxy",
            "--url",
            "https://hw.example.com",
            alias.removeprefix("hatchway."),
        ],
        "identity_file": "/home/me/.config/hatchway/id_ed25519",
        "known_hosts_file": "/home/me/.config/hatchway/known_hosts",
        "host_key_alias": alias,
    }
    values.update(kw)
    return HostEntry(**values)  # type: ignore[arg-type]


BLOCK = render_block([entry()])


def argv_split(s: str, terminate_on_comment: bool = True) -> list[str]:
    """Python transcription of OpenSSH's misc.c argv_split(), which readconf runs on every line.

    Raises ValueError where OpenSSH reports "invalid quotes".
    """
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        if s[i] in " \t":
            i += 1
            continue
        if terminate_on_comment and s[i] == "#":
            break
        quote = ""
        arg: list[str] = []
        while i < n:
            c = s[i]
            if c == "\\":
                nxt = s[i + 1] if i + 1 < n else ""
                if nxt in ("'", '"', "\\") or (quote == "" and nxt == " "):
                    i += 1
                    arg.append(s[i])
                else:
                    arg.append(c)
            elif quote == "" and c in " \t":
                break
            elif quote == "" and c in "\"'":
                quote = c
            elif quote and c == quote:
                quote = ""
            else:
                arg.append(c)
            i += 1
        if i >= n and quote:
            raise ValueError("invalid quotes")
        out.append("".join(arg))
    return out


EXPECTED_KEYWORDS = [
    "Host",
    "HostName",
    "User",
    "ProxyCommand",
    "IdentityFile",
    "IdentitiesOnly",
    "UserKnownHostsFile",
    "HostKeyAlias",
    "StrictHostKeyChecking",
    "ServerAliveInterval",
    "ServerAliveCountMax",
    "Ciphers",
    "ConnectTimeout",
]


# ------------------------------------------------------------------------------------------
# render_block: exact shape


def test_render_block_exact() -> None:
    assert BLOCK.split("\n") == [
        "# ------------START-HATCHWAY-----------",
        '# Managed by "hatchway config-ssh"; remove with "hatchway config-ssh --remove".',
        "Host hatchway.dev",
        "  HostName hatchway.dev",
        "  User alice",
        "  ProxyCommand /usr/local/bin/hatchway proxy --url https://hw.example.com dev",
        "  IdentityFile /home/me/.config/hatchway/id_ed25519",
        "  IdentitiesOnly yes",
        "  UserKnownHostsFile /home/me/.config/hatchway/known_hosts",
        "  HostKeyAlias hatchway.dev",
        "  StrictHostKeyChecking yes",
        "  ServerAliveInterval 15",
        "  ServerAliveCountMax 4",
        f"  Ciphers {CIPHERS}",
        "  ConnectTimeout 30",
        "",
        "# Ends the entries above: whatever follows this block applies to every host again.",
        "Match all",
        "# ------------END-HATCHWAY------------",
        "",
    ]


def test_entries_sorted_by_alias_and_separated() -> None:
    block = render_block([entry("hatchway.zeta"), entry("hatchway.alpha")])
    hosts = [line for line in block.split("\n") if line.startswith("Host ")]
    assert hosts == ["Host hatchway.alpha", "Host hatchway.zeta"]
    assert "  ConnectTimeout 30\n\nHost hatchway.zeta\n" in block


def test_empty_block() -> None:
    # no Host line in it, so nothing to close: no "Match all" either
    assert render_block([]) == f"{START_MARKER}\n{COMMENT_LINE}\n{END_MARKER}\n"


def test_block_with_entries_ends_with_match_all() -> None:
    for entries in ([entry()], [entry("hatchway.a"), entry("hatchway.b")]):
        lines = render_block(entries).split("\n")
        assert lines[-4:] == [*sshconfig.RESET_LINES, END_MARKER, ""]
        assert lines[-5] == ""


def test_duplicate_alias_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        render_block([entry(), entry()])
    with pytest.raises(ValueError, match="twice"):
        render_block([entry("hatchway.dev"), entry("hatchway.DEV")])


def test_paths_with_spaces_and_percent() -> None:
    block = render_block(
        [
            entry(
                identity_file="/home/my user/100% key",
                known_hosts_file="/home/my user/kh %h",
                proxy_command=["/opt/hw tools/hatchway", "proxy", "--url", "http://x/%41", "dev"],
            )
        ]
    )
    assert '  IdentityFile "/home/my user/100%% key"\n' in block
    assert '  UserKnownHostsFile "/home/my user/kh %%h"\n' in block
    assert "  ProxyCommand '/opt/hw tools/hatchway' proxy --url 'http://x/%%41' dev\n" in block


# ------------------------------------------------------------------------------------------
# quoting


@pytest.mark.parametrize(
    ("arg", "quoted"),
    [
        ("plain", "plain"),
        ("/usr/bin/hatchway", "/usr/bin/hatchway"),
        ("--url", "--url"),
        ("https://user@h:8443/a,b+c", "https://user@h:8443/a,b+c"),
        ("", "''"),
        ("a b", "'a b'"),
        ("it's", "'it'\"'\"'s'"),
        ("'", '"\'"'),
        ("''", '"\'""\'"'),
        ("'a'", "\"'\"'a'\"'\""),
        ('say "hi"', "'say \"hi\"'"),
        ("$HOME", "'$HOME'"),
        ("`id`", "'`id`'"),
        ("a;b", "'a;b'"),
        ("#x", "'#x'"),
        ("~", "'~'"),
        ("a=b", "'a=b'"),
        ("50%", "'50%'"),
        ("*", "'*'"),
        ("{a,b}", "'{a,b}'"),
        ("é", "'é'"),
    ],
)
def test_quote_proxy_arg(arg: str, quoted: str) -> None:
    assert sshconfig.quote_proxy_arg(arg) == quoted


@pytest.mark.parametrize("arg", ["a\nb", "a\rb", "a\0b", "a\\b", "\\", "a\tb", "\x1b[0m", "\u2028"])
def test_quote_proxy_arg_refuses(arg: str) -> None:
    with pytest.raises(ValueError):
        sshconfig.quote_proxy_arg(arg)


def test_proxy_command_doubles_percent_after_quoting() -> None:
    assert sshconfig.proxy_command_string(["a%b", "%h"]) == "'a%%b' '%%h'"


def test_empty_proxy_command_refused() -> None:
    with pytest.raises(ValueError, match="at least one"):
        render_block([entry(proxy_command=[])])


@pytest.mark.parametrize(
    ("path", "written"),
    [
        ("/a/b", "/a/b"),
        ("/a/b%c", "/a/b%%c"),
        ("/a b/c", '"/a b/c"'),
        ("/a/o'brien", '"/a/o\'brien"'),
        ("/a/#x", '"/a/#x"'),
        ("/a/x=y", '"/a/x=y"'),
        ("/a/$x", '"/a/$x"'),
        ("/a/ünï", '"/a/ünï"'),
        ("/a/~x", "/a/~x"),
    ],
)
def test_quote_path(path: str, written: str) -> None:
    assert sshconfig.quote_path("identity file", path) == written
    assert argv_split(written) == [written.strip('"').replace('\\"', '"')]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("relative/key", "absolute"),
        ("~/key", "absolute"),
        ("", "absolute"),
        ('/a"b', "double quote"),
        ("/a\\b", "backslash"),
        ("/a/${HOME}/k", "expand"),
        ("/a\nIdentityFile /evil", "newline"),
        ("/a\r", "carriage return"),
        ("/a\0", "NUL"),
        ("/a\tb", "control"),
        ("/a\x7f", "control"),
        ("/a\udc80", "surrogate"),
    ],
)
def test_quote_path_refuses(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sshconfig.quote_path("identity file", path)


@pytest.mark.parametrize(
    "field, value",
    [
        ("alias", "hatchway.dev\n  ProxyCommand evil"),
        ("alias", "hatchway dev"),
        ("alias", "hatchway.*"),
        ("alias", "!hatchway"),
        ("alias", "a#b"),
        ("alias", ""),
        ("alias", "a%h"),
        ("alias", "ä"),
        ("alias", "a" * 256),
        ("user", "Alice"),
        ("user", "alice bob"),
        ("user", "1alice"),
        ("user", "-oProxyCommand=x"),
        ("user", "alice\nHost *"),
        ("user", "al%ice"),
        ("user", ""),
        ("user", "a" * 33),
        ("user", "a$b"),
        ("host_key_alias", "x y"),
        ("host_key_alias", "x\r\n"),
        ("identity_file", "/a\nb"),
        ("known_hosts_file", '/a"b'),
        ("known_hosts_file", "kh"),
        ("proxy_command", ["/bin/hw", "a\nb"]),
        ("proxy_command", ["/bin/hw", "a\\'b"]),
    ],
)
def test_hostile_values_refused(field: str, value: object) -> None:
    with pytest.raises(ValueError):
        render_block([entry(**{field: value})])


@pytest.mark.parametrize(
    ("alias", "valid"),
    [
        ("hatchway.dev", True),
        ("hatchway.Dev_2-x", True),
        ("a" * 255, True),
        ("a" * 256, False),
        ("hatchway.dév", False),
        ("hatchway.bad name\nHost *", False),
        ("hatchway.a%h", False),
        ("", False),
    ],
)
def test_valid_alias_agrees_with_render_entry(alias: str, valid: bool) -> None:
    assert sshconfig.valid_alias(alias) is valid
    if valid:
        render_block([entry(alias)])
    else:
        with pytest.raises(ValueError):
            render_block([entry(alias)])


@pytest.mark.parametrize("user", ["alice", "_svc", "a-b_c9", "machine$", "a" * 32, "root"])
def test_valid_users(user: str) -> None:
    assert f"  User {user}\n" in render_block([entry(user=user)])


# ------------------------------------------------------------------------------------------
# apply_block: placement


def test_empty_file_gets_just_the_block() -> None:
    assert apply_block("", BLOCK) == BLOCK
    assert apply_block(BLOCK, None) == ""


def test_inserted_before_first_host_with_blank_lines() -> None:
    user = "ServerAliveInterval 60\nHost *\n  User other\n"
    assert apply_block(user, BLOCK) == (
        "ServerAliveInterval 60\n\n" + BLOCK + "\nHost *\n  User other\n"
    )


def test_inserted_before_a_top_level_include() -> None:
    # An included file may hold a `Host *` that would otherwise be read before our entries.
    user = "ServerAliveInterval 60\nInclude conf.d/*\nCompression yes\nHost *\n  User other\n"
    assert apply_block(user, BLOCK) == (
        "ServerAliveInterval 60\n\n"
        + BLOCK
        + "\nInclude conf.d/*\nCompression yes\nHost *\n  User other\n"
    )
    assert apply_block(apply_block(user, BLOCK), None) == user


@pytest.mark.parametrize(
    "include_line",
    [
        "Include x", "include x", "INCLUDE x", "  Include x", "\tInclude\tx", "Include=x", "Include = x",
        "Include x\r", '"Include" x',
    ],
)
def test_include_forms_are_recognised(include_line: str) -> None:
    user = f"# Include in a comment\nIncludes y\nIdentityFile ~/.ssh/include\n{include_line}\nHost a\n"
    before, after = apply_block(user, BLOCK).split(BLOCK)
    assert before == "# Include in a comment\nIncludes y\nIdentityFile ~/.ssh/include\n\n"
    assert after == f"\n{include_line}\nHost a\n"


@pytest.mark.parametrize("opener", ["Host a", "Match host a"])
def test_include_inside_a_host_block_stays_in_that_block(opener: str) -> None:
    # Only the first Host/Match/Include counts, so an Include under a Host is never a placement
    # point: the block goes above the Host and the Include stays where it is, in that Host.
    user = f"Compression yes\n{opener}\n  Include a.conf\nHost b\n  Include b.conf\n"
    assert apply_block(user, BLOCK) == (
        "Compression yes\n\n" + BLOCK + f"\n{opener}\n  Include a.conf\nHost b\n  Include b.conf\n"
    )


def test_host_as_first_line() -> None:
    user = "Host a\n  User b\n"
    assert apply_block(user, BLOCK) == BLOCK + "\n" + user


@pytest.mark.parametrize(
    "host_line",
    [
        "Host x",
        "host x",
        "HOST x",
        "  Host x",
        "\tHost\tx",
        "Host=x",
        "Host = x",
        "Match all",
        "match host x",
        "  MATCH=exec true",
        "Host x\r",
        # OpenSSH's strdelim() drops double quotes around (or inside) the keyword
        '"Host" x',
        '"HOST" x',
        '  "Match" all',
        'Ho"st" x',
        '""Host x',
        '"Host"=x',
        ' = "Host" x',
        "=Host x",
    ],
)
def test_host_and_match_forms_are_recognised(host_line: str) -> None:
    user = f"# comment mentioning Host y\nHostName z\nHostKeyAlias w\n{host_line}\n  User u\n"
    out = apply_block(user, BLOCK)
    before, after = out.split(BLOCK)
    assert before == "# comment mentioning Host y\nHostName z\nHostKeyAlias w\n\n"
    assert after == f"\n{host_line}\n  User u\n"


@pytest.mark.parametrize(
    "line",
    [
        '"#Host" x',  # a quoted comment: OpenSSH ignores the line
        '"Ho"st x',  # the keyword is "Ho"
        '"Host x"',  # the keyword is "Host x"
        '"Host x',  # an unmatched quote: OpenSSH ignores the line
        '"HostName" h',
        "'Host' x",  # single quotes are not OpenSSH's keyword quotes (a bad option for ssh)
    ],
)
def test_quoted_lines_that_are_no_host_line_for_openssh_are_not_placement_points(line: str) -> None:
    user = f"{line}\nHost a\n"
    assert apply_block(user, BLOCK) == f"{line}\n\n" + BLOCK + "\nHost a\n"


def test_no_host_appends_at_end() -> None:
    user = "ServerAliveInterval 60\n"
    assert apply_block(user, BLOCK) == user + "\n" + BLOCK


def test_no_final_newline_appends_and_restores() -> None:
    user = "ServerAliveInterval 60"
    out = apply_block(user, BLOCK)
    assert out == user + "\n\n" + BLOCK[:-1]
    assert apply_block(out, None) == user
    assert apply_block(out, BLOCK) == out


def test_whitespace_only_file() -> None:
    for user in ["\n", "\n\n", "   ", "  \n\t"]:
        out = apply_block(user, BLOCK)
        assert apply_block(out, None) == user
        assert apply_block(out, BLOCK) == out


def test_block_replaced_in_place_of_old_one_and_never_duplicated() -> None:
    user = "Host a\n  User b\n"
    first = apply_block(user, BLOCK)
    other = render_block([entry("hatchway.other")])
    second = apply_block(first, other)
    assert second == other + "\n" + user
    assert second.count(START_MARKER) == 1


def test_block_elsewhere_is_moved_before_first_host() -> None:
    # e.g. the user moved it to the end by hand: it goes back before their Host blocks
    user = "Host a\n  User b\n"
    existing = user + "\n" + BLOCK
    assert apply_block(existing, BLOCK) == BLOCK + "\n" + user
    assert apply_block(existing, None) == user


def test_two_blocks_collapse() -> None:
    existing = BLOCK + "\nHost a\n" + "\n" + BLOCK + "\nHost b\n"
    assert apply_block(existing, BLOCK) == BLOCK + "\nHost a\nHost b\n"


def test_remove_keeps_everything_else_byte_for_byte() -> None:
    user = "# my config \t \n\n\nHost   a  \n\tUser\tb\n\n\n  Host c\r\n  Port 22"
    out = apply_block(user, BLOCK)
    assert apply_block(out, None) == user
    assert apply_block(out, BLOCK) == out


def test_remove_without_block_is_identity() -> None:
    for user in ["", "Host a\n", "x", "\r\n"]:
        assert apply_block(user, None) == user


def test_crlf_file_gets_crlf_block_and_restores() -> None:
    user = "Compression yes\r\n\r\nHost a\r\n  User b\r\n"
    out = apply_block(user, BLOCK)
    assert (
        out
        == "Compression yes\r\n\r\n\r\n" + BLOCK.replace("\n", "\r\n") + "\r\nHost a\r\n  User b\r\n"
    )
    assert apply_block(out, None) == user
    assert apply_block(out, BLOCK) == out
    assert "\n" not in out.replace("\r\n", "")


def test_crlf_without_host_and_without_final_newline() -> None:
    user = "Port 22\r\nUser x"
    out = apply_block(user, BLOCK)
    assert out == "Port 22\r\nUser x\r\n\r\n" + BLOCK.replace("\n", "\r\n")[:-2]
    assert apply_block(out, None) == user


@pytest.mark.parametrize(
    ("existing", "message"),
    [
        (START_MARKER + "\nHost a\n", "START marker without an END"),
        ("Host a\n" + END_MARKER + "\n", "END marker without a START"),
        (START_MARKER + "\n" + START_MARKER + "\n" + END_MARKER + "\n", "inside the block"),
        (BLOCK + "Host a\n" + END_MARKER + "\n", "line 21: Hatchway END marker"),
    ],
)
def test_damaged_markers_are_refused_not_guessed(existing: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        apply_block(existing, BLOCK)
    with pytest.raises(ValueError):
        apply_block(existing, None)


def test_bytes_that_are_not_utf8_outside_the_block_are_kept_exactly() -> None:
    # The CLI decodes the file with surrogateescape, so its Latin-1 comment arrives as lone
    # surrogates and must come back as the same bytes.
    raw = b"# caf\xe9 config\nHost \xe9t\xe9\n  User b\n"
    user = raw.decode("utf-8", "surrogateescape")
    out = apply_block(user, BLOCK)
    assert out.encode("utf-8", "surrogateescape") == b"# caf\xe9 config\n\n" + BLOCK.encode() + b"\nHost \xe9t\xe9\n  User b\n"
    assert apply_block(out, None).encode("utf-8", "surrogateescape") == raw


def test_a_block_holding_bytes_that_are_not_utf8_is_refused() -> None:
    # Only the user's content may carry undecodable bytes; ours must be text through and through.
    with pytest.raises(ValueError, match="render_block"):
        apply_block("", BLOCK.replace("IdentitiesOnly yes", "IdentitiesOnly \udce9"))


@pytest.mark.parametrize("block", ["", "Host x\n", START_MARKER + "\n", BLOCK[:-1], "x\n" + BLOCK])
def test_foreign_block_refused(block: str) -> None:
    with pytest.raises(ValueError, match="render_block"):
        apply_block("", block)


def test_markers_with_whitespace_are_recognised() -> None:
    existing = "  " + START_MARKER + " \nHost old\n" + END_MARKER + "\t\n\nHost a\n"
    assert apply_block(existing, BLOCK) == BLOCK + "\nHost a\n"


# ------------------------------------------------------------------------------------------
# unified_diff and known_hosts


def test_unified_diff() -> None:
    old = "Host a\n"
    new = apply_block(old, BLOCK)
    diff = unified_diff(old, new, "/home/me/.ssh/config")
    lines = diff.split("\n")
    assert lines[0] == "--- /home/me/.ssh/config"
    assert lines[1] == "+++ /home/me/.ssh/config"
    assert "+Host hatchway.dev" in lines
    assert " Host a" in lines
    assert unified_diff(old, old, "x") == ""


def test_unified_diff_marks_missing_final_newline() -> None:
    diff = unified_diff("a", "a\nb\n", "f")
    assert "-a\n\\ No newline at end of file\n" in diff


def test_known_hosts_exact() -> None:
    text = render_known_hosts(
        [
            ("hatchway.b", KEY2 + " comment dropped"),
            ("hatchway.a", KEY1),
            ("hatchway.b", KEY2),
        ]
    )
    lines = text.split("\n")
    assert lines[0].startswith("# ")
    assert lines[1:] == [f"hatchway.a {KEY1}", f"hatchway.b {KEY2}", ""]


def test_known_hosts_empty() -> None:
    assert render_known_hosts([]) == sshconfig.KNOWN_HOSTS_HEADER + "\n"


@pytest.mark.parametrize(
    "pair",
    [
        ("hatchway.a", KEY1 + "\nhatchway.b ssh-ed25519 AAAA"),
        ("hatchway.a", "ssh-dss AAAA"),
        ("hatchway.a,evil", KEY1),
        ("*", KEY1),
        ("a b", KEY1),
        ("@revoked", KEY1),
    ],
)
def test_known_hosts_refuses_bad_input(pair: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        render_known_hosts([pair])


def test_known_hosts_file_is_understood_by_ssh_keygen(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(render_known_hosts([("hatchway.dev", KEY1), ("hatchway.x", KEY2)]))
    found = subprocess.run(
        ["ssh-keygen", "-F", "hatchway.dev", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert KEY1.split()[1] in found and KEY2.split()[1] not in found


# ------------------------------------------------------------------------------------------
# Real shells and the real OpenSSH client

NASTY_ARGS = [
    "plain",
    "",
    "two words",
    "it's",
    "'",
    "''",
    '"',
    '""double""',
    "$HOME ${HOME} $(id) `id`",
    "; && || | & < > >> 2>&1",
    "# not a comment",
    "* ? [a] {a,b} ~ ~root",
    "!x !! ^a",
    "50% %h %% %%%",
    "=x a=b",
    "-o ProxyCommand=evil",
    "trailing space ",
    " leading space",
    "héllo ✓",
    "a\tb".replace("\t", " "),
]


@pytest.mark.parametrize("shell", [s for s in ("/bin/sh", "bash", "dash") if shutil.which(s)])
def test_proxy_command_round_trips_through_real_shell(shell: str) -> None:
    command = sshconfig.proxy_command_string(
        [sys.executable, "-c", "import sys,json;print(json.dumps(sys.argv[1:]))", *NASTY_ARGS]
    )
    # ssh expands %% to % and then runs: $SHELL -c "exec <command>"
    expanded = command.replace("%%", "%")
    result = subprocess.run(
        [shutil.which(shell) or shell, "-c", f"exec {expanded}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(result.stdout) == NASTY_ARGS


FAKE_PROXY = """#!{python}
import json, os, sys
with open(os.environ["HATCHWAY_TEST_ARGV"], "w") as fh:
    json.dump(sys.argv, fh)
"""


def _ssh_g(config: Path, host: str = "hatchway.dev") -> dict[str, list[str]]:
    result = subprocess.run(
        [SSH, "-G", "-F", str(config), host],
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    values: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        values.setdefault(key, []).append(value)
    return values


needs_ssh = pytest.mark.skipif(not os.access(SSH, os.X_OK), reason="OpenSSH client not installed")


@pytest.fixture
def odd_dir(tmp_path: Path) -> Path:
    d = tmp_path / "dir with spaces 100% it's #1"
    d.mkdir()
    return d


def _odd_entry(d: Path, proxy: list[str] | None = None) -> HostEntry:
    return entry(
        user="alice",
        proxy_command=proxy or [str(d / "fake hatchway"), "proxy", "--url", "http://h/%h", "dev"],
        identity_file=str(d / "id %d key"),
        known_hosts_file=str(d / "known %h hosts"),
        host_key_alias="hatchway.dev",
    )


@needs_ssh
def test_ssh_dash_g_parses_block_and_ours_beats_later_host_star(
    tmp_path: Path, odd_dir: Path
) -> None:
    user_config = "Host *\n  User other\n  StrictHostKeyChecking no\n  IdentityFile /other\n"
    config = tmp_path / "config"
    config.write_text(apply_block(user_config, render_block([_odd_entry(odd_dir)])))
    config.chmod(0o600)
    got = _ssh_g(config)
    assert got["user"] == ["alice"]
    assert got["hostname"] == ["hatchway.dev"]
    assert got["hostkeyalias"] == ["hatchway.dev"]
    assert got["stricthostkeychecking"] == ["true"]
    assert got["identitiesonly"] == ["yes"]
    # ssh -G shows IdentityFile before %-expansion and UserKnownHostsFile after it
    assert got["identityfile"][0] == str(odd_dir / "id %d key").replace("%", "%%")
    assert got["userknownhostsfile"] == [str(odd_dir / "known %h hosts")]
    assert got["proxycommand"] == [
        sshconfig.proxy_command_string(
            [str(odd_dir / "fake hatchway"), "proxy", "--url", "http://h/%h", "dev"]
        )
    ]
    assert got["serveraliveinterval"] == ["15"]
    assert got["serveralivecountmax"] == ["4"]
    assert got["connecttimeout"] == ["30"]
    assert got["ciphers"] == [CIPHERS]
    # and the user's Host * still applies to everything else
    assert _ssh_g(config, "elsewhere.example")["user"] == ["other"]


@needs_ssh
def test_ssh_dash_g_with_crlf_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_bytes(apply_block("Host *\r\n  User other\r\n", BLOCK).encode())
    assert _ssh_g(config)["user"] == ["alice"]


INSECURE_INCLUDE = (
    "Host *\n  User someone\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
)


@needs_ssh
def test_ssh_dash_g_ours_beats_an_included_host_star(tmp_path: Path) -> None:
    """The audit's case: an Include above the first Host brings a `Host *` that would switch off
    our pinned host keys if it were read before our entries."""
    included = tmp_path / "included.conf"
    included.write_text(INSECURE_INCLUDE)
    user_config = f"Include {included}\nCompression yes\nHost other\n  Port 2222\n"
    config = tmp_path / "config"
    config.write_text(apply_block(user_config, BLOCK))
    ours = _ssh_g(config)
    assert ours["user"] == ["alice"]
    assert ours["stricthostkeychecking"] == ["true"]
    assert ours["userknownhostsfile"] == ["/home/me/.config/hatchway/known_hosts"]
    # The user's Include and the global line after it still apply to every other host (our
    # block ends with `Match all`, so its last entry does not swallow them) and, after our
    # values, to ours.
    theirs = _ssh_g(config, "elsewhere.example")
    assert theirs["user"] == ["someone"]
    assert theirs["stricthostkeychecking"] == ["false"]
    assert theirs["compression"] == ["yes"]
    assert ours["compression"] == ["yes"]
    assert _ssh_g(config, "other")["port"] == ["2222"]


@needs_ssh
@pytest.mark.parametrize("opener", ['"Host" *', '"Match" all', 'Ho"st" *'])
def test_ssh_dash_g_ours_beats_a_quoted_host_star(tmp_path: Path, opener: str) -> None:
    """OpenSSH honours a double-quoted keyword: placed after such a section, our entries would
    get its StrictHostKeyChecking and known_hosts file instead of the pinned ones."""
    config = tmp_path / "config"
    config.write_text(apply_block(f"{opener}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n", BLOCK))
    ours = _ssh_g(config)
    assert ours["stricthostkeychecking"] == ["true"]
    assert ours["userknownhostsfile"] == ["/home/me/.config/hatchway/known_hosts"]
    assert _ssh_g(config, "elsewhere.example")["stricthostkeychecking"] == ["false"]


@needs_ssh
def test_ssh_dash_g_lines_appended_below_the_block_stay_global(tmp_path: Path) -> None:
    # A file without Host lines gets the block at its end; a person who later appends global
    # options below it must not find them silently scoped to our last workspace.
    config = tmp_path / "config"
    config.write_text(apply_block("Compression yes\n", BLOCK) + "User appended\nPort 2200\n")
    assert _ssh_g(config, "elsewhere.example")["user"] == ["appended"]
    assert _ssh_g(config, "elsewhere.example")["port"] == ["2200"]
    assert _ssh_g(config)["user"] == ["alice"]


@needs_ssh
@pytest.mark.parametrize("shell", [s for s in ("/bin/sh", "bash", "dash") if shutil.which(s)])
def test_real_ssh_runs_proxy_command_with_exact_argv(
    tmp_path: Path, odd_dir: Path, shell: str
) -> None:
    fake = odd_dir / "fake hatchway"
    fake.write_text(FAKE_PROXY.format(python=sys.executable))
    fake.chmod(0o755)
    argv = [str(fake), "proxy", "--url", "http://h:1/50%h?q='x'&y=\"z\"", *NASTY_ARGS]
    config = tmp_path / "config"
    config.write_text(
        apply_block("Host *\n  User other\n", render_block([_odd_entry(odd_dir, argv)]))
    )
    record = tmp_path / "argv.json"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "HATCHWAY_TEST_ARGV": str(record),
        "SHELL": shutil.which(shell) or shell,
    }
    result = subprocess.run(
        [SSH, "-v", "-F", str(config), "-o", "BatchMode=yes", "hatchway.dev", "true"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    # the fake proxy exits without speaking SSH, so ssh fails after running it
    assert result.returncode != 0
    assert json.loads(record.read_text()) == argv
    assert f"identity file {odd_dir / 'id %d key'} " in result.stderr


# ------------------------------------------------------------------------------------------
# Properties

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIG_LINES = [
    "Host a",
    "  host b c",
    "Host=x",
    "\tMatch all",
    "MATCH host y",
    "  User u",
    "IdentityFile ~/.ssh/id",
    "Include conf.d/*",
    "# Host commented",
    "",
    "   ",
    "HostName h",
    "Hosts",
    '"Host" q',
    '"Ho"st q',
    '"#Host" q',
    '"Include x',
]
text_line = st.text(
    alphabet=st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=25
)
ending = st.sampled_from(["\n", "\r\n"])


def _has_marker(text: str) -> bool:
    return any(line.strip(" \t\r\n") in (START_MARKER, END_MARKER) for line in text.split("\n"))


@st.composite
def user_config(draw: st.DrawFn) -> str:
    """Block-free config text: ssh_config-ish and arbitrary lines, LF/CRLF, maybe unterminated."""
    lines = st.one_of(st.sampled_from(CONFIG_LINES), text_line)
    body = draw(st.lists(st.tuples(lines, ending), max_size=10))
    out = "".join(line + end for line, end in body)
    if draw(st.booleans()):
        out += draw(text_line)
    assume(not _has_marker(out))
    return out


alias_st = st.from_regex(r"\Ahatchway\.[a-z0-9-]{1,8}\Z")
safe_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\\\u2028\u2029"
    ),
    max_size=15,
)
entries_st = st.lists(
    st.builds(
        lambda alias, args, path: entry(
            alias,
            proxy_command=["/bin/hw", *args],
            identity_file="/" + path.replace('"', "").replace("${", "$"),
        ),
        alias_st,
        st.lists(safe_text, max_size=3),
        safe_text,
    ),
    max_size=3,
    unique_by=lambda e: e.alias,
)


def _first_host_index(lines: list[str]) -> int | None:
    """The first line that starts a host block or may bring some (a top-level Include)."""
    for i, line in enumerate(lines):
        if sshconfig._keyword(line) in ("host", "match", "include"):
            return i
    return None


@FAST
@given(user_config(), entries_st)
def test_prop_apply_then_remove_restores_exactly(user: str, entries: list[HostEntry]) -> None:
    block = render_block(entries)
    applied = apply_block(user, block)
    assert apply_block(applied, None) == user
    assert apply_block(applied, block) == applied
    assert applied.count(START_MARKER) == 1 and applied.count(END_MARKER) == 1
    # the block text itself is in there, in the file's newline style
    newline = "\r\n" if user.split("\n", 1)[0].endswith("\r") and "\n" in user else "\n"
    converted = block.replace("\n", newline)
    assert converted in applied or converted[: -len(newline)] in applied


@FAST
@given(user_config(), entries_st)
def test_prop_block_precedes_every_user_host_line(user: str, entries: list[HostEntry]) -> None:
    applied = apply_block(user, render_block(entries))
    lines = applied.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip(" \t\r") == START_MARKER)
    end = next(i for i, line in enumerate(lines) if line.strip(" \t\r") == END_MARKER)
    user_lines = lines[:start] + lines[end + 1 :]
    host_before = _first_host_index(lines[:start])
    assert host_before is None
    # if the user has a Host/Match/Include line at all, the block sits right above the first one
    if _first_host_index(user_lines) is not None:
        after = lines[end + 1 :]
        assert after[0].strip("\r") == ""
        assert sshconfig._keyword(after[1]) in ("host", "match", "include")
    # and whatever follows the block is back at every-host scope
    if entries:
        assert lines[end - 1].strip("\r") == "Match all"


@FAST
@given(user_config(), user_config(), entries_st, entries_st)
def test_prop_existing_block_anywhere_is_replaced(
    before: str, after: str, old: list[HostEntry], new: list[HostEntry]
) -> None:
    if before and not before.endswith("\n"):
        before += "\n"
    existing = before + render_block(old) + after
    new_block = render_block(new)
    result = apply_block(existing, new_block)
    assert result == apply_block(apply_block(existing, None), new_block)
    assert apply_block(result, new_block) == result
    assert result.count(START_MARKER) == 1
    removed = apply_block(existing, None)
    assert not _has_marker(removed)
    # nothing of the user's was lost: their lines survive in order (separators aside)
    kept = [line for line in removed.split("\n") if line.strip("\r")]
    original = [line for line in (before + after).split("\n") if line.strip("\r")]
    assert kept == original


SHELL_SPECIALS = list(" \t'\"$`;#%*?~!&|<>(){}[]=^,@:+-./")
proxy_arg = st.text(
    alphabet=st.one_of(
        st.sampled_from(SHELL_SPECIALS),
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\\"),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(proxy_arg, min_size=1, max_size=5))
def test_prop_proxy_command_quoting(argv: list[str]) -> None:
    try:
        command = sshconfig.proxy_command_string(argv)
    except ValueError:
        assert any(
            ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029" for a in argv for c in a
        )
        return
    line = f"  ProxyCommand {command}"
    assert "\n" not in line and "\r" not in line
    argv_split(line)  # OpenSSH's tokenizer accepts the line (no "invalid quotes")
    expanded = command.replace("%%", "%")
    assert "%" not in command.replace("%%", "")
    assert shlex.split(expanded) == argv  # what a POSIX shell will pass to the program


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20))
def test_prop_paths_are_one_token_or_refused(tail: str) -> None:
    path = "/" + tail
    try:
        written = sshconfig.quote_path("identity file", path)
    except ValueError:
        return
    tokens = argv_split(f"IdentityFile {written}")
    assert tokens == ["IdentityFile", path.replace("%", "%%")]


hostile = st.one_of(
    st.text(max_size=15),
    st.text(alphabet=st.sampled_from([*SHELL_SPECIALS, "\n", "\r", "\0", "a", "%"]), max_size=8),
    st.sampled_from(["x\nHost *", "x\r\nUser root", "a b", "#", '"', "'", "%h", "\0", "=x"]),
)
FIELDS = ["alias", "user", "identity_file", "known_hosts_file", "host_key_alias", "proxy_command"]


@st.composite
def one_hostile_field(draw: st.DrawFn) -> HostEntry:
    """A valid entry with one field (or one ProxyCommand argument) replaced by hostile text."""
    field = draw(st.sampled_from(FIELDS))
    value: object = draw(hostile)
    if field in ("identity_file", "known_hosts_file"):
        value = "/" + str(value)
    elif field == "proxy_command":
        value = ["/bin/hw", "proxy", value]
    return entry(**{field: value})


@settings(max_examples=300, deadline=None)
@given(one_hostile_field())
def test_prop_no_value_can_add_a_line_or_directive(hostile_entry: HostEntry) -> None:
    try:
        block = render_block([hostile_entry])
    except ValueError:
        return
    lines = block.split("\n")
    assert len(lines) == 2 + len(EXPECTED_KEYWORDS) + 3 + 2
    assert lines[-5:] == ["", *sshconfig.RESET_LINES, END_MARKER, ""]
    entry_lines = lines[2:-5]
    keywords = [argv_split(line)[0] for line in entry_lines]
    assert keywords == EXPECTED_KEYWORDS
    for line in entry_lines[1:]:
        assert line.startswith("  ") and not line.startswith("   ")
    # each single-valued option is exactly one token after OpenSSH's tokenisation
    for line in entry_lines:
        tokens = argv_split(line)
        if tokens[0] != "ProxyCommand":
            assert len(tokens) == 2, line
    # and ProxyCommand gives back exactly the intended argv
    proxy = next(line for line in lines if line.startswith("  ProxyCommand "))
    command = proxy.removeprefix("  ProxyCommand ")
    assert shlex.split(command.replace("%%", "%")) == hostile_entry.proxy_command
