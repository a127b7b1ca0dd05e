"""Tests for the managed block of ~/.ssh/authorized_keys.

What matters: the user's own keys survive every rewrite byte for byte, the block is never
duplicated, no input can add a line of its own, and a rewrite is a fixed point.
"""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hatchway.agent import authorized_keys as ak
from hatchway.agent.authorized_keys import (
    COMMENT_LINE,
    END_MARKER,
    START_MARKER,
    managed_keys,
    render,
    validate_public_key,
)

START_B = START_MARKER.encode()
END_B = END_MARKER.encode()
COMMENT_B = COMMENT_LINE.encode()


def _openssh(public_key: object) -> str:
    return public_key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def _s(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _line(blob: bytes, key_type: str, comment: str = "") -> str:
    text = f"{key_type} {base64.b64encode(blob).decode()}"
    return f"{text} {comment}" if comment else text


ED1 = _openssh(ed25519.Ed25519PrivateKey.generate().public_key())
ED2 = _openssh(ed25519.Ed25519PrivateKey.generate().public_key())
ED3 = _openssh(ed25519.Ed25519PrivateKey.generate().public_key())
RSA = _openssh(rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key())
P256 = _openssh(ec.generate_private_key(ec.SECP256R1()).public_key())
P384 = _openssh(ec.generate_private_key(ec.SECP384R1()).public_key())
P521 = _openssh(ec.generate_private_key(ec.SECP521R1()).public_key())
SK_ED = _line(
    _s(b"sk-ssh-ed25519@openssh.com") + _s(bytes(range(32))) + _s(b"ssh:"),
    "sk-ssh-ed25519@openssh.com",
)
SK_EC = _line(
    _s(b"sk-ecdsa-sha2-nistp256@openssh.com")
    + _s(b"nistp256")
    + _s(b"\x04" + bytes(64))
    + _s(b"ssh:"),
    "sk-ecdsa-sha2-nistp256@openssh.com",
)
ALL_KEYS = [ED1, ED2, ED3, RSA, P256, P384, P521, SK_ED, SK_EC]


def key_id(value: object) -> str | None:
    """A test id naming which key a value holds instead of the key, which is made anew in each
    process: pytest-xdist's workers must all collect the same ids."""
    if isinstance(value, str):
        for i, key in enumerate(ALL_KEYS):
            if key.split()[1][:-1] in value:  # a key cut short too
                return f"{key.split()[0]}-{i}"
    return None


def block_of(*keys: str) -> bytes:
    return ("\n".join([START_MARKER, COMMENT_LINE, *keys, END_MARKER]) + "\n").encode()


# ------------------------------------------------------------------------------------------
# validate_public_key


@pytest.mark.parametrize("key", ALL_KEYS, ids=key_id)
def test_every_allowed_type_is_accepted_unchanged(key: str) -> None:
    assert validate_public_key(key) == key
    assert validate_public_key(key + " alice@example.com") == key + " alice@example.com"


def test_whitespace_is_normalised() -> None:
    assert validate_public_key(f"  {ED1}\t  my   laptop key \t") == f"{ED1} my laptop key"


def test_empty_comment_is_dropped() -> None:
    assert validate_public_key(ED1 + "   ") == ED1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (ED1 + "\nssh-ed25519 AAAA evil", "newline"),
        (ED1 + " comment\n", "newline"),
        (ED1 + " comment\r", "carriage return"),
        (ED1 + "\0", "NUL"),
        ("", "empty"),
        ("   ", "empty"),
        ("ssh-ed25519", "no key data"),
        ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "unsupported key type"),
        ("SSH-ED25519 " + ED1.split()[1], "unsupported key type"),
        ("ssh-ed25519-cert-v01@openssh.com " + ED1.split()[1], "unsupported key type"),
        ('command="rm -rf /" ' + ED1, "unsupported key type"),
        ("ssh-ed25519 !!!notbase64!!!", "base64"),
        ("ssh-ed25519 " + ED1.split()[1][:-1], "base64"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIé", "base64"),
        ("ssh-rsa " + ED1.split()[1], "'ssh-ed25519', but the line says 'ssh-rsa'"),
        ("ssh-ed25519 " + RSA.split()[1], "'ssh-rsa', but the line says 'ssh-ed25519'"),
        ("ecdsa-sha2-nistp384 " + P256.split()[1], "but the line says"),
        (_line(_s(b"ssh-ed25519") + _s(bytes(31)), "ssh-ed25519"), "wrong length"),
        (_line(_s(b"ssh-ed25519") + _s(bytes(32)) + b"x", "ssh-ed25519"), "truncated"),
        (_line(_s(b"ssh-ed25519") + _s(bytes(32)) + _s(b""), "ssh-ed25519"), "fields"),
        (_line(_s(b"ssh-ed25519"), "ssh-ed25519"), "fields"),
        (_line(b"", "ssh-ed25519"), "no key data"),
        (_line(struct.pack(">I", 99) + b"ssh", "ssh-ed25519"), "truncated"),
        (
            _line(
                _s(b"ecdsa-sha2-nistp256") + _s(b"nistp384") + _s(b"\x04"), "ecdsa-sha2-nistp256"
            ),
            "wrong curve",
        ),
        (_line(_s(b"ssh-rsa") + _s(b"\x01") + _s(b""), "ssh-rsa"), "empty"),
        ("x" * (ak.MAX_KEY_LINE + 1), "longer"),
    ],
    ids=key_id,
)
def test_bad_keys_are_refused_with_a_reason(bad: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_public_key(bad)


def test_non_text_is_refused() -> None:
    with pytest.raises(ValueError, match="text"):
        validate_public_key(ED1.encode())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("comment", "expected"),
    [
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("a\u2028b", "ab"),
        ("a\u202eb", "ab"),
        ("a\x85b", "ab"),
        ("tab\there", "tab here"),
        ("\x07\x08", ""),
        ("héllo wörld ✓", "héllo wörld ✓"),
        ("# not a comment line", "# not a comment line"),
    ],
)
def test_comment_control_characters_are_stripped(comment: str, expected: str) -> None:
    want = f"{ED1} {expected}" if expected else ED1
    assert validate_public_key(f"{ED1} {comment}") == want


def test_non_canonical_base64_is_reencoded() -> None:
    # an RSA-shaped blob whose length leaves "==" padding: the last digit has 4 unused bits
    blob = _s(b"ssh-rsa") + _s(b"\x01\x00\x01") + _s(b"\x00" + bytes(range(1, 129)))
    assert len(blob) % 3 == 1
    data = base64.b64encode(blob).decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    tweaked = data[:-3] + alphabet[alphabet.index(data[-3]) | 1] + "=="
    assert tweaked != data and base64.b64decode(tweaked) == blob
    assert validate_public_key(f"ssh-rsa {tweaked}") == f"ssh-rsa {data}"


def test_one_mebibyte_line_is_refused() -> None:
    with pytest.raises(ValueError, match="longer"):
        validate_public_key(ED1 + " " + "c" * (1 << 20))


near_keys = st.one_of(
    st.text(max_size=80),
    st.tuples(st.text(max_size=8), st.sampled_from(ALL_KEYS), st.text(max_size=30)).map("".join),
)


@settings(max_examples=200, deadline=None)
@given(near_keys)
def test_validator_never_returns_more_than_one_line(text: str) -> None:
    try:
        out = validate_public_key(text)
    except ValueError:
        return
    assert "\n" not in out and "\r" not in out and "\0" not in out
    assert validate_public_key(out) == out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_KEYS), st.text())
def test_any_comment_either_refused_or_cleaned(key: str, comment: str) -> None:
    try:
        out = validate_public_key(f"{key} {comment}")
    except ValueError as exc:
        assert any(c in comment for c in "\n\r\0") or "longer" in str(exc)
        return
    assert out.startswith(key)
    assert out.isprintable()
    assert validate_public_key(out) == out


# ------------------------------------------------------------------------------------------
# render: exact shape


def test_render_on_empty_file_is_exactly_the_block() -> None:
    out = render(b"", [ED1, RSA + " bob@laptop"])
    assert out.split(b"\n") == [
        b"# ------------START-HATCHWAY-KEYS------------",
        b"# Managed by the Hatchway agent; your own keys go outside this block.",
        ED1.encode(),
        (RSA + " bob@laptop").encode(),
        b"# ------------END-HATCHWAY-KEYS--------------",
        b"",
    ]


def test_empty_key_list_still_writes_the_block() -> None:
    assert render(b"", []) == block_of()
    assert render(b"ssh-ed25519 mine\n", []) == block_of() + b"ssh-ed25519 mine\n"
    assert managed_keys(render(b"", [])) == []


def test_duplicate_keys_are_written_once() -> None:
    out = render(b"", [ED1, ED1 + " other comment", ED2])
    assert managed_keys(out) == [ED1, ED2]


def test_any_bad_key_fails_the_whole_render() -> None:
    with pytest.raises(ValueError):
        render(b"user\n", [ED1, ED1 + "\nssh-ed25519 AAAA injected"])


# ------------------------------------------------------------------------------------------
# render: user content


@pytest.mark.parametrize(
    "user",
    [
        b"",
        b"ssh-ed25519 AAAA mine\n",
        b"ssh-ed25519 AAAA no-final-newline",
        b"\n\n\n",
        b"key1\r\nkey2\r\n",
        b'from="10.0.0.0/8",no-pty ssh-rsa AAAA x\n# comment\n\n',
        b"\xff\xfe invalid utf-8 \x80\n\xc3\x28\n",
        b"\0binary\0\n",
        b"   leading spaces\n\ttab\n",
        b"a\rb\rc",
    ],
)
def test_file_without_block_keeps_everything_below_it(user: bytes) -> None:
    out = render(user, [ED1])
    assert out == block_of(ED1) + user
    assert render(out, [ED1]) == out


def test_block_in_the_middle_moves_to_top_and_user_lines_stay_in_order() -> None:
    existing = b"before1\nbefore2\n" + block_of(ED2) + b"after1\nafter2"
    assert render(existing, [ED1]) == block_of(ED1) + b"before1\nbefore2\nafter1\nafter2"


def test_block_at_end_without_final_newline() -> None:
    existing = b"mine\n" + block_of(ED2)[:-1]
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\n"


def test_old_key_is_revoked_by_rerender() -> None:
    first = render(b"mine\n", [ED1])
    second = render(first, [ED2])
    assert managed_keys(second) == [ED2]
    assert ED1.encode() not in second
    assert second.endswith(b"mine\n")


def test_two_blocks_collapse_into_one() -> None:
    existing = block_of(ED1) + b"u1\n" + block_of(ED2) + b"u2\n"
    out = render(existing, [ED3])
    assert out == block_of(ED3) + b"u1\nu2\n"
    assert out.count(START_B) == 1 and out.count(END_B) == 1


def test_crlf_markers_are_recognised() -> None:
    crlf_block = block_of(ED2).replace(b"\n", b"\r\n")
    existing = b"mine\r\n" + crlf_block + b"other\r\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\r\nother\r\n"


def test_markers_with_surrounding_whitespace_are_recognised() -> None:
    existing = b"  " + START_B + b"  \n" + ED2.encode() + b"\n\t" + END_B + b"\t\nmine\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\n"


def test_stray_end_marker_is_dropped() -> None:
    existing = b"mine\n" + END_B + b"\nmore\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\nmore\n"


def test_orphan_start_swallows_only_our_lines() -> None:
    # END deleted by hand: the old platform key must not survive, the user's lines must.
    existing = (
        b"top\n" + START_B + b"\n" + COMMENT_B + b"\n" + ED2.encode() + b"\n"
        b'from="1.2.3.4" ' + ED3.encode() + b"\n# mine\n" + ED3.encode() + b"\n"
    )
    out = render(existing, [ED1])
    assert out == (
        block_of(ED1)
        + b"top\n"
        + b'from="1.2.3.4" '
        + ED3.encode()
        + b"\n# mine\n"
        + ED3.encode()
        + b"\n"
    )
    assert render(out, [ED1]) == out


def test_a_second_start_before_end_keeps_the_lines_between() -> None:
    """START, our key, the user's comment and key, START, END: the first START is an orphan; its
    END was deleted by hand. Pairing it with the later END would delete the user's lines."""
    existing = (
        START_B + b"\n" + ED2.encode() + b"\n# my laptop\n" + ED3.encode() + b"\n" + block_of(ED2) + b"mine\n"
    )
    out = render(existing, [ED1])
    assert out == block_of(ED1) + b"# my laptop\n" + ED3.encode() + b"\nmine\n"
    assert render(out, [ED1]) == out


def test_nested_starts_and_ends_leave_no_old_key_and_keep_the_rest() -> None:
    existing = START_B + b"\n" + block_of(ED2) + END_B + b"\nmine\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\n"


def test_thousands_of_unclosed_starts_are_scanned_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each START used to search to the end of the file for an END: 16 000 of them took ten
    seconds of the agent's start-up. Counted in marker comparisons, not timed."""
    from hatchway.agent import blocks

    calls = 0
    real_bare = blocks.bare

    def counting_bare(line: bytes) -> bytes:
        nonlocal calls
        calls += 1
        return real_bare(line)

    monkeypatch.setattr(blocks, "bare", counting_bare)
    lines = 4000
    out = render((START_B + b"\n# x\n") * lines + b"mine\n", [ED1])
    assert out == block_of(ED1) + b"# x\n" * lines + b"mine\n"
    assert calls <= 2 * lines + 1


def test_orphan_start_stops_at_blank_line() -> None:
    existing = START_B + b"\n" + ED2.encode() + b"\n\n" + ED3.encode() + b" mine\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"\n" + ED3.encode() + b" mine\n"


def test_orphan_start_at_end_of_file() -> None:
    assert render(b"mine\n" + START_B, [ED1]) == block_of(ED1) + b"mine\n"


def test_our_comment_line_outside_a_block_is_user_content() -> None:
    existing = COMMENT_B + b"\n"
    assert render(existing, [ED1]) == block_of(ED1) + existing


def test_text_inside_block_is_ours() -> None:
    existing = block_of(ED2, "hand edited line") + b"mine\n"
    assert render(existing, [ED1]) == block_of(ED1) + b"mine\n"


# ------------------------------------------------------------------------------------------
# managed_keys


def test_managed_keys_reads_back() -> None:
    out = render(b"ssh-ed25519 AAAA mine\n", [ED1 + " a", RSA, P521 + " c"])
    assert managed_keys(out) == [ED1 + " a", RSA, P521 + " c"]


def test_managed_keys_without_block() -> None:
    assert managed_keys(b"") == []
    assert managed_keys(ED1.encode() + b"\n") == []


def test_managed_keys_skips_junk_and_reads_crlf() -> None:
    content = block_of(ED1, "junk", "", "# note", ED2).replace(b"\n", b"\r\n")
    assert managed_keys(b"\xff\n" + content) == [ED1, ED2]


def test_managed_keys_of_orphan_block() -> None:
    assert managed_keys(START_B + b"\n" + ED1.encode() + b"\nmine\n") == [ED1]


# ------------------------------------------------------------------------------------------
# Properties

MARKERISH = [
    START_B,
    END_B,
    COMMENT_B,
    b"  " + START_B + b"\r",
    END_B + b" ",
    ED1.encode(),
    ED2.encode() + b" c",
    b"",
    b"# comment",
    b"\xff\xfe",
]

plain_line = st.binary(max_size=40).filter(lambda b: b"\n" not in b)
line_st = st.one_of(plain_line, st.sampled_from(MARKERISH))
ending_st = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def any_file(draw: st.DrawFn, lines: st.SearchStrategy[bytes] = line_st) -> bytes:
    """Files made of lines (some of them marker-like), with LF/CRLF ends, maybe unterminated."""
    body = draw(st.lists(st.tuples(lines, ending_st), max_size=12))
    out = b"".join(line + end for line, end in body)
    if draw(st.booleans()):
        out += draw(plain_line)
    return out


def _has_marker(content: bytes) -> bool:
    return any(line.strip(b" \t\r\n") in (START_B, END_B) for line in content.split(b"\n"))


user_file = any_file(plain_line).filter(lambda b: not _has_marker(b))
keys_st = st.lists(
    st.tuples(st.sampled_from(ALL_KEYS), st.text(max_size=20)).map(lambda kc: f"{kc[0]} {kc[1]}"),
    max_size=5,
).filter(lambda keys: not any(c in k for k in keys for c in "\n\r\0"))


def _expected_keys(keys: list[str]) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for key in keys:
        norm = validate_public_key(key)
        ident = " ".join(norm.split()[:2])
        if ident not in seen:
            seen.add(ident)
            out.append(norm)
    return out


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(user_file, keys_st)
def test_prop_file_without_markers_is_kept_below_the_block(user: bytes, keys: list[str]) -> None:
    out = render(user, keys)
    assert out.endswith(user)
    assert out[: len(out) - len(user)] == ak.render_block(keys)


@FAST
@given(user_file, user_file, keys_st, keys_st)
def test_prop_existing_block_is_replaced_and_user_content_kept(
    before: bytes, after: bytes, old: list[str], new: list[str]
) -> None:
    if before and not before.endswith(b"\n"):
        before += b"\n"
    existing = before + ak.render_block(old) + after
    out = render(existing, new)
    assert out == ak.render_block(new) + before + after
    assert managed_keys(out) == _expected_keys(new)


@FAST
@given(any_file(), keys_st)
def test_prop_render_is_idempotent_and_has_one_block(existing: bytes, keys: list[str]) -> None:
    once = render(existing, keys)
    assert render(once, keys) == once
    assert once.count(START_B) == 1
    assert once.count(END_B) == 1
    assert managed_keys(once) == _expected_keys(keys)
    # the user's part is exactly what user_content() says, and it only shrinks by our lines
    assert once == ak.render_block(keys) + ak.user_content(existing)


@FAST
@given(any_file(), keys_st)
def test_prop_user_lines_are_a_subsequence_of_the_original(
    existing: bytes, keys: list[str]
) -> None:
    kept = ak.user_content(existing).split(b"\n")
    original = iter(existing.split(b"\n"))
    # every kept line appears in the original, in order (nothing invented, nothing reordered)
    for line in kept[:-1]:
        assert any(line == candidate for candidate in original)


@FAST
@given(st.lists(st.text(max_size=60), max_size=4))
def test_prop_no_key_input_can_add_a_line(keys: list[str]) -> None:
    try:
        out = render(b"", keys)
    except ValueError:
        return
    valid = _expected_keys(keys)
    assert out.count(b"\n") == 3 + len(valid)
    assert managed_keys(out) == valid


def test_a_byte_order_mark_before_the_block_does_not_keep_a_revoked_key() -> None:
    """An editor's UTF-8 BOM before the START line: the block is still ours, replaced, not kept
    as the user's (which kept the old key after a regeneration)."""
    old_key = validate_public_key(ED1)
    new_key = validate_public_key(ED2)
    first = render(b"", [old_key])
    rewritten = render(b"\xef\xbb\xbf" + first, [new_key])
    assert managed_keys(rewritten) == [new_key]
    assert old_key.split()[1].encode() not in rewritten
    assert rewritten.count(START_B) == 1
