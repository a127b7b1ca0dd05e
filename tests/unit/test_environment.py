"""Tests for the managed section of ~/.ssh/environment (SPEC 3.2).

The format has no quoting, so the tests concentrate on two things: nothing a name or value holds
can become a second line (OpenSSH would read it as another variable), and the user's part of the
file survives every rewrite byte for byte.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.agent import environment as env
from hatchway.agent.environment import (
    END_MARKER,
    HEADER_LINES,
    START_MARKER,
    Rejected,
    build_variables,
    check_variable,
    is_safe_name,
    parse_section,
    render,
)

START_B = START_MARKER.encode()
END_B = END_MARKER.encode()

DEFAULTS = {
    "HATCHWAY_USER_NAME": "alice",
    "HATCHWAY_USER_EMAIL": "alice@example.com",
    "HATCHWAY_WORKSPACE_NAME": "dev",
    "HATCHWAY_WORKSPACE_ID": "0f8e6d1c",
    "HATCHWAY_PROVIDER_NAME": "local",
    "HATCHWAY_URL": "https://hatchway.example.com",
}


def section(*pairs: tuple[str, str]) -> bytes:
    return env.render_section(list(pairs))


def openssh_reads(content: bytes) -> dict[bytes, bytes]:
    """What OpenSSH's read_environment_file() would set from ``content`` (session.c logic)."""
    out: dict[bytes, bytes] = {}
    for raw in content.split(b"\n"):
        line = raw.lstrip(b" \t")
        if not line or line.startswith(b"#"):
            continue
        name, sep, value = line.partition(b"=")
        if sep:
            out[name] = value
    return out


# ------------------------------------------------------------------------------------------
# exact shape


def test_exact_section_shape() -> None:
    out = render(b"", [("HATCHWAY_USER_EMAIL", "alice@example.com"), ("EDITOR", "vim")])
    assert out.decode().split("\n") == [
        "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------",
        "# The following has been auto-generated at workspace startup",
        "# You should not hand-edit this section unless you are deleting it.",
        "",
        "HATCHWAY_USER_EMAIL=alice@example.com",
        "EDITOR=vim",
        "",
        "# ----------------- END HATCHWAY -----------------------",
        "",
    ]


def test_section_without_variables() -> None:
    assert render(b"", []) == (
        f"{START_MARKER}\n{HEADER_LINES[0]}\n{HEADER_LINES[1]}\n\n\n{END_MARKER}\n".encode()
    )
    assert parse_section(render(b"", [])) == []


def test_values_are_written_verbatim_and_utf8() -> None:
    pairs = [
        ("A", ""),
        ("B", "a=b=c"),
        ("C", "  spaces around  "),
        ("D", "# not a comment"),
        ("E", "'quoted' \"double\" $HOME `cmd` ; | & \\"),
        ("F", "héllo ✓ 日本"),
        ("G", "tab\there"),
        ("H", "50%"),
    ]
    out = render(b"", pairs)
    assert "F=héllo ✓ 日本\n".encode() in out
    assert b"C=  spaces around  \n" in out
    assert parse_section(out) == pairs
    assert openssh_reads(out) == {n.encode(): v.encode() for n, v in pairs}


# ------------------------------------------------------------------------------------------
# user content


@pytest.mark.parametrize(
    "user",
    [
        b"",
        b"FOO=bar\n",
        b"FOO=bar",
        b"\n\n",
        b"A=1\r\nB=2\r\n",
        b"\xff\xfeinvalid=\x80\n",
        b"# my notes\n  X=1\n",
        b"lone\rcr",
    ],
)
def test_file_without_markers_is_kept_below_section(user: bytes) -> None:
    out = render(user, [("HATCHWAY_URL", "u")])
    assert out == section(("HATCHWAY_URL", "u")) + user
    assert render(out, [("HATCHWAY_URL", "u")]) == out


def test_content_after_end_is_preserved_across_restarts() -> None:
    first = render(b"MINE=1\n", [("HATCHWAY_URL", "old")])
    edited = first + b"ADDED_LATER=2"
    second = render(edited, [("HATCHWAY_URL", "new")])
    assert second == section(("HATCHWAY_URL", "new")) + b"MINE=1\nADDED_LATER=2"
    assert parse_section(second) == [("HATCHWAY_URL", "new")]


def test_misplaced_section_moves_to_top_keeping_surrounding_content() -> None:
    existing = b"BEFORE=1\n# note\n" + section(("OLD", "x")) + b"AFTER=2\n"
    assert (
        render(existing, [("NEW", "y")]) == section(("NEW", "y")) + b"BEFORE=1\n# note\nAFTER=2\n"
    )


def test_two_sections_collapse_into_one() -> None:
    existing = section(("A", "1")) + b"MID=1\n" + section(("B", "2")) + b"END=1\n"
    out = render(existing, [("C", "3")])
    assert out == section(("C", "3")) + b"MID=1\nEND=1\n"
    assert out.count(START_B) == 1


def test_crlf_section_is_recognised() -> None:
    existing = section(("A", "1")).replace(b"\n", b"\r\n") + b"MINE=1\r\n"
    assert render(existing, [("A", "2")]) == section(("A", "2")) + b"MINE=1\r\n"
    assert parse_section(existing) == [("A", "1")]


def test_stray_end_is_dropped() -> None:
    assert render(b"X=1\n" + END_B + b"\nY=2\n", []) == section() + b"X=1\nY=2\n"


def test_orphan_start_takes_only_our_shape() -> None:
    # END deleted by hand: START, header, blank, our vars, blank -> ours; the rest is the user's.
    existing = (
        b"TOP=1\n"
        + START_B
        + b"\n"
        + "\n".join(HEADER_LINES).encode()
        + b"\n\nHATCHWAY_URL=old\nOTHER=old\n\n# user notes\nMINE=1\n"
    )
    out = render(existing, [("HATCHWAY_URL", "new")])
    assert out == section(("HATCHWAY_URL", "new")) + b"TOP=1\n# user notes\nMINE=1\n"
    assert render(out, [("HATCHWAY_URL", "new")]) == out


def test_orphan_start_stops_at_unsafe_line() -> None:
    existing = START_B + b"\nA=1\nnot a variable\nB=2\n"
    assert render(existing, []) == section() + b"not a variable\nB=2\n"


def test_a_second_start_before_end_keeps_the_lines_between() -> None:
    """The first section lost its END: it is an orphan, and the user's lines after its shape stay
    even though a later, complete section follows."""
    existing = START_B + b"\nA=1\n# mine\nMINE=1\n" + section(("A", "1")) + b"LAST=1\n"
    out = render(existing, [("A", "2")])
    assert out == section(("A", "2")) + b"# mine\nMINE=1\nLAST=1\n"
    assert render(out, [("A", "2")]) == out


def test_orphan_start_at_end_of_file() -> None:
    assert render(b"MINE=1\n" + START_B, []) == section() + b"MINE=1\n"


def test_hand_edits_inside_section_are_replaced() -> None:
    existing = section(("A", "1")).replace(b"A=1\n", b"A=1\nHAND=edit\n") + b"MINE=1\n"
    assert parse_section(existing) == [("A", "1"), ("HAND", "edit")]
    assert render(existing, [("A", "1")]) == section(("A", "1")) + b"MINE=1\n"


def test_parse_section_of_file_without_section() -> None:
    assert parse_section(b"") == []
    assert parse_section(b"A=1\n") == []


def test_parse_section_skips_malformed_lines() -> None:
    content = START_B + b"\n# c\n\ngarbage\n  A=1\nB=\xff\n" + END_B + b"\n"
    assert parse_section(content) == [("A", "1"), ("B", "\ufffd")]


# ------------------------------------------------------------------------------------------
# names and values


@pytest.mark.parametrize("name", ["A", "_", "a_b", "HATCHWAY_URL", "X1", "_9"])
def test_safe_names(name: str) -> None:
    assert is_safe_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "1A",
        "A-B",
        "A B",
        "A=B",
        "A\n",
        "A\nB",
        "Ä",
        "A\u0660",  # Arabic-Indic digit: \d would match it, ASCII-only must not
        "ﬁ",
        "A\0",
        "$A",
        "A.B",
        " A",
        "#A",
    ],
)
def test_unsafe_names(name: str) -> None:
    assert not is_safe_name(name)
    reason = check_variable(name, "v")
    assert reason is not None and repr(name) in reason


def test_non_string_name_is_unsafe() -> None:
    assert not is_safe_name(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\nINJECTED=1", "value contains a newline"),
        ("a\r", "value contains a carriage return"),
        ("a\0b", "value contains a NUL character"),
        ("\udcff", "value cannot be encoded as UTF-8 (it contains a lone surrogate)"),
        ("x" * (1 << 20), "value is 1048576 bytes long, more than the 65536 bytes allowed"),
        ("é" * 32769, "value is 65538 bytes long, more than the 65536 bytes allowed"),
    ],
)
def test_unsafe_values(value: str, reason: str) -> None:
    assert check_variable("NAME", value) == reason
    with pytest.raises(ValueError, match="refusing to write environment variable 'NAME'"):
        render(b"", [("NAME", value)])


def test_largest_allowed_value() -> None:
    value = "x" * env.MAX_VALUE_BYTES
    assert check_variable("BIG", value) is None
    assert parse_section(render(b"", [("BIG", value)])) == [("BIG", value)]


def test_non_string_value_is_unsafe() -> None:
    assert check_variable("A", b"x") is not None  # type: ignore[arg-type]


def test_render_refuses_unsafe_name_directly() -> None:
    with pytest.raises(ValueError, match="'A\\\\nB'"):
        render(b"", [("A\nB", "v")])
    with pytest.raises(ValueError):
        render(b"", [("OK", "v"), ("LD_PRELOAD=/evil.so\nX", "v")])


def test_reason_escapes_hostile_name_for_logs() -> None:
    name = "X\n2024-01-01 INFO forged log line\x1b[2J"
    reason = check_variable(name, "v")
    assert reason is not None
    assert "\n" not in reason and "\x1b" not in reason


# ------------------------------------------------------------------------------------------
# build_variables


def test_defaults_first_then_image_in_order() -> None:
    variables, rejected = build_variables(DEFAULTS, {"PATH": "/usr/bin", "LANG": "C.UTF-8"})
    assert variables == [*DEFAULTS.items(), ("PATH", "/usr/bin"), ("LANG", "C.UTF-8")]
    assert rejected == []


def test_image_may_not_override_hatchway_defaults() -> None:
    variables, rejected = build_variables(
        DEFAULTS, {"HATCHWAY_USER_EMAIL": "mallory@evil.example", "EDITOR": "vi"}
    )
    assert dict(variables)["HATCHWAY_USER_EMAIL"] == "alice@example.com"
    assert variables[-1] == ("EDITOR", "vi")
    assert rejected == [
        Rejected(
            "HATCHWAY_USER_EMAIL",
            "the image may not override 'HATCHWAY_USER_EMAIL': it is set by Hatchway",
        )
    ]


def test_image_may_not_pin_what_the_ssh_server_sets_per_connection() -> None:
    """A devcontainer image's ENV SSH_AUTH_SOCK in ~/.ssh/environment would break ssh -A."""
    image = {"SSH_AUTH_SOCK": "/tmp/agent.sock", "SSH_CONNECTION": "x", "SSH_CLIENT": "y", "SSH_TTY": "/dev/pts/9",
             "SSH_ASKPASS": "/usr/bin/ksshaskpass"}
    variables, rejected = build_variables(DEFAULTS, image)
    assert variables == [*DEFAULTS.items(), ("SSH_ASKPASS", "/usr/bin/ksshaskpass")]
    assert [r.name for r in rejected] == ["SSH_AUTH_SOCK", "SSH_CONNECTION", "SSH_CLIENT", "SSH_TTY"]
    assert rejected[0].reason == (
        "SSH_AUTH_SOCK is set by the SSH server for each connection; a value from the image would override it"
    )


def test_image_may_define_other_hatchway_names() -> None:
    variables, rejected = build_variables(DEFAULTS, {"HATCHWAY_EXTRA": "1"})
    assert variables[-1] == ("HATCHWAY_EXTRA", "1") and rejected == []


def test_image_overrides_non_hatchway_default() -> None:
    variables, rejected = build_variables({"A": "1", "LANG": "C", "B": "2"}, {"LANG": "en_US"})
    assert variables == [("A", "1"), ("B", "2"), ("LANG", "en_US")]
    assert rejected == []


def test_unsafe_image_value_keeps_the_default() -> None:
    variables, rejected = build_variables({"LANG": "C"}, {"LANG": "x\ny"})
    assert variables == [("LANG", "C")]
    assert rejected == [Rejected("LANG", "value contains a newline")]


def test_unsafe_variables_are_reported_not_written() -> None:
    image = {
        "GOOD": "1",
        "BAD NAME": "1",
        "NL": "a\nHATCHWAY_USER_EMAIL=mallory",
        "NUL": "\0",
        "HUGE": "x" * (1 << 20),
        "LATER": "2",
    }
    variables, rejected = build_variables(DEFAULTS, image)
    assert variables == [*DEFAULTS.items(), ("GOOD", "1"), ("LATER", "2")]
    assert [r.name for r in rejected] == ["BAD NAME", "NL", "NUL", "HUGE"]
    assert rejected[1].reason == "value contains a newline"
    assert "'BAD NAME'" in rejected[0].reason
    out = render(b"", variables)
    assert openssh_reads(out)[b"HATCHWAY_USER_EMAIL"] == b"alice@example.com"


def test_unsafe_default_is_rejected_too() -> None:
    variables, rejected = build_variables({"HATCHWAY_USER_NAME": "a\nb"}, {})
    assert variables == [] and rejected[0].name == "HATCHWAY_USER_NAME"


# ------------------------------------------------------------------------------------------
# Properties

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

safe_name = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,12}\Z")
any_name = st.one_of(safe_name, st.text(max_size=12))
any_value = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30),
    st.sampled_from(["a\nb", "x\r", "\0", "=\n=", "# c", "\u2028", "\udc80"]),
)
plain_line = st.binary(max_size=30).filter(lambda b: b"\n" not in b)
MARKERISH = [START_B, END_B, b" " + START_B + b"\r", *(h.encode() for h in HEADER_LINES), b"A=1"]


@st.composite
def any_file(draw: st.DrawFn, with_markers: bool = True) -> bytes:
    lines = st.one_of(plain_line, st.sampled_from(MARKERISH)) if with_markers else plain_line
    body = draw(st.lists(st.tuples(lines, st.sampled_from([b"\n", b"\r\n"])), max_size=10))
    out = b"".join(line + end for line, end in body)
    if draw(st.booleans()):
        out += draw(plain_line)
    return out


def _has_marker(content: bytes) -> bool:
    return any(line.strip(b" \t\r\n") in (START_B, END_B) for line in content.split(b"\n"))


user_file = any_file(with_markers=False).filter(lambda b: not _has_marker(b))
safe_vars = st.lists(
    st.tuples(safe_name, st.text(max_size=20)).filter(lambda p: check_variable(*p) is None),
    max_size=6,
)


@FAST
@given(st.lists(st.tuples(any_name, any_value), max_size=5))
def test_prop_no_name_or_value_can_add_a_line(pairs: list[tuple[str, str]]) -> None:
    unsafe = [p for p in pairs if check_variable(*p) is not None]
    if unsafe:
        with pytest.raises(ValueError):
            render(b"", pairs)
        return
    out = render(b"", pairs)
    assert out.count(b"\n") == 6 + len(pairs)
    assert parse_section(out) == pairs
    # what OpenSSH would read is exactly our variables (last one wins on duplicates)
    assert openssh_reads(out) == {n.encode(): v.encode() for n, v in pairs}


@FAST
@given(
    st.dictionaries(any_name, any_value, max_size=5),
    st.dictionaries(any_name, any_value, max_size=5),
)
def test_prop_build_variables_output_is_always_renderable(
    defaults: dict[str, str], image: dict[str, str]
) -> None:
    variables, rejected = build_variables(defaults, image)
    out = render(b"", variables)  # never raises
    assert parse_section(out) == variables
    names = [n for n, _ in variables]
    assert len(names) == len(set(names))
    for name, value in variables:
        from_image = name in image and image[name] == value
        assert from_image or defaults.get(name) == value
        if name.startswith("HATCHWAY_") and name in defaults:
            assert value == defaults[name]
    for item in rejected:
        assert "\n" not in item.reason and item.name in {**defaults, **image}


@FAST
@given(user_file, safe_vars)
def test_prop_file_without_markers_is_kept_below(user: bytes, pairs: list[tuple[str, str]]) -> None:
    out = render(user, pairs)
    assert out == env.render_section(pairs) + user


@FAST
@given(user_file, user_file, safe_vars, safe_vars)
def test_prop_section_is_replaced_and_user_content_kept(
    before: bytes, after: bytes, old: list[tuple[str, str]], new: list[tuple[str, str]]
) -> None:
    if before and not before.endswith(b"\n"):
        before += b"\n"
    out = render(before + env.render_section(old) + after, new)
    assert out == env.render_section(new) + before + after
    assert parse_section(out) == new


@FAST
@given(any_file(), safe_vars)
def test_prop_render_is_idempotent(existing: bytes, pairs: list[tuple[str, str]]) -> None:
    once = render(existing, pairs)
    assert render(once, pairs) == once
    assert once.count(START_B) == 1 and once.count(END_B) == 1
    assert parse_section(once) == pairs
    assert once == env.render_section(pairs) + env.user_content(existing)
