"""The Hatchway-managed block of ``~/.ssh/authorized_keys``.

The agent rewrites this file at every workspace start (and whenever the owner's key is
regenerated), so the code that produces the new content has to be beyond reproach: it must never
lose a key the user added by hand, never let a value it writes smuggle in an extra line (an extra
line in authorized_keys is an extra way in), and never let a revoked platform key survive a
rewrite. It is therefore pure: bytes in, bytes out; the agent does the (atomic) writing.

File shape produced by :func:`render`::

    # ------------START-HATCHWAY-KEYS------------
    # Managed by the Hatchway agent; your own keys go outside this block.
    ssh-ed25519 AAAA... comment
    # ------------END-HATCHWAY-KEYS--------------
    <the user's content, byte for byte>

Rules for content that does not look like our own output (documented here because they decide
what survives a rewrite):

* Marker lines are recognised after stripping surrounding spaces, tabs and a trailing CR, so a
  file that went through a CRLF editor is still understood. Everything else is compared as bytes;
  the user's part is never decoded, so non-UTF-8 bytes, CRLF line ends and a missing final newline
  all survive untouched.
* A START ... END pair is a block wherever it sits; every such pair is removed (a file that some
  earlier bug left with two blocks ends up with one), the new block goes to the top.
* An END line with no START before it is one of our markers gone astray: it is dropped.
* An orphan START (no END after it, e.g. the END line was deleted by hand) is treated as a block
  that ends at the first line that is neither our comment line nor a plain public-key line
  (``type base64 [comment]`` that :func:`validate_public_key` accepts). Key lines directly
  following an orphan START are therefore considered ours and dropped: this is deliberate, since
  keeping them could keep a revoked platform key authorised. Anything else (options-prefixed
  keys, other comments, blank lines, garbage) ends the block and is kept as the user's.
"""

from __future__ import annotations

import base64
import binascii
import struct
import unicodedata

from hatchway.agent.blocks import bare, scan, split_lines

START_MARKER = "# ------------START-HATCHWAY-KEYS------------"
END_MARKER = "# ------------END-HATCHWAY-KEYS--------------"
COMMENT_LINE = "# Managed by the Hatchway agent; your own keys go outside this block."

_START_B = START_MARKER.encode("ascii")
_END_B = END_MARKER.encode("ascii")
_COMMENT_B = COMMENT_LINE.encode("ascii")

#: Longest public-key line we accept. A 16384-bit RSA key (OpenSSH's maximum) is under 3 KiB of
#: base64; anything much larger is not a key and would only bloat a security-sensitive file.
MAX_KEY_LINE = 8192

#: How each allowed key type's wire blob is laid out, so that a line is only accepted when its
#: data really is such a key: (names of the length-prefixed fields after the type string, the
#: curve name the ``curve`` field must carry, the exact length of the ``pk`` field).
_KEY_LAYOUTS: dict[str, tuple[tuple[str, ...], bytes | None, int | None]] = {
    "ssh-ed25519": (("pk",), None, 32),
    "ssh-rsa": (("e", "n"), None, None),
    "ecdsa-sha2-nistp256": (("curve", "q"), b"nistp256", None),
    "ecdsa-sha2-nistp384": (("curve", "q"), b"nistp384", None),
    "ecdsa-sha2-nistp521": (("curve", "q"), b"nistp521", None),
    "sk-ssh-ed25519@openssh.com": (("pk", "application"), None, 32),
    "sk-ecdsa-sha2-nistp256@openssh.com": (("curve", "q", "application"), b"nistp256", None),
}

ALLOWED_KEY_TYPES: frozenset[str] = frozenset(_KEY_LAYOUTS)


def _read_ssh_strings(blob: bytes) -> list[bytes]:
    """Split an SSH wire blob into its length-prefixed fields.

    Why: checking only a prefix would accept a blob with trailing junk or a truncated key; sshd
    would then reject the line at login time, far away from the place that wrote it.
    """
    fields: list[bytes] = []
    pos = 0
    while pos < len(blob):
        if len(blob) - pos < 4:
            raise ValueError("key data is truncated (incomplete length field)")
        (length,) = struct.unpack(">I", blob[pos : pos + 4])
        pos += 4
        if length > len(blob) - pos:
            raise ValueError("key data is truncated (field longer than the data)")
        fields.append(blob[pos : pos + length])
        pos += length
    return fields


def _check_blob(key_type: str, blob: bytes) -> None:
    """Raise ValueError unless ``blob`` is a well-formed public key of ``key_type``."""
    fields = _read_ssh_strings(blob)
    if not fields:
        raise ValueError("key data is empty")
    embedded = fields[0]
    if embedded != key_type.encode("ascii"):
        shown = embedded[:64].decode("ascii", "backslashreplace")
        raise ValueError(f"key data is for type {shown!r}, but the line says {key_type!r}")
    names, curve, last_len = _KEY_LAYOUTS[key_type]
    rest = fields[1:]
    if len(rest) != len(names):
        raise ValueError(
            f"key data for {key_type!r} has {len(rest)} fields after the type, "
            f"expected {len(names)}"
        )
    if curve is not None and rest[0] != curve:
        raise ValueError(f"key data for {key_type!r} names the wrong curve")
    if last_len is not None and len(rest[names.index("pk")]) != last_len:
        raise ValueError(f"key data for {key_type!r} has a public key of the wrong length")
    for name, value in zip(names, rest, strict=True):
        if name in ("e", "n", "q") and not value:
            raise ValueError(f"key data for {key_type!r} has an empty {name!r} field")


def _clean_comment(comment: str) -> str:
    """Make a key comment safe to store: drop invisible/control characters, squeeze spaces.

    Why: the comment is purely informational, so refusing a key over it would lock a user out
    for nothing; but control characters (terminal escapes, bidi overrides, Unicode line
    separators) must not reach a file people ``cat``, nor any tool that splits on them.
    """
    kept = [
        ch
        for ch in comment
        if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn") or ch == "\t"
    ]
    return " ".join("".join(kept).split())


def validate_public_key(line: str) -> str:
    """Return ``line`` as a normalised single-line OpenSSH public key ``type base64 [comment]``.

    Raises ValueError with a message a person can act on when the line is not a single public
    key of an allowed type. Checks, in order: type and size, newline/CR/NUL (these would let one
    "key" become several authorized_keys lines), the key type, strict base64, and that the
    decoded blob is a well-formed key of the type the line claims. The comment is cleaned (see
    :func:`_clean_comment`) rather than refused; whitespace between fields is normalised to one
    space and the base64 is re-encoded canonically.
    """
    if not isinstance(line, str):
        raise ValueError(f"public key must be text, not {type(line).__name__}")
    for ch, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\0", "a NUL byte")):
        if ch in line:
            raise ValueError(f"public key contains {what}; it must be a single line")
    if len(line) > MAX_KEY_LINE:
        raise ValueError(f"public key line is longer than {MAX_KEY_LINE} characters")
    parts = line.strip(" \t").split(None, 2)
    if not parts:
        raise ValueError("public key is empty")
    key_type = parts[0]
    if key_type not in ALLOWED_KEY_TYPES:
        shown = key_type[:64]
        raise ValueError(
            f"unsupported key type {shown!r} (allowed: {', '.join(sorted(ALLOWED_KEY_TYPES))})"
        )
    if len(parts) < 2:
        raise ValueError(f"public key of type {key_type!r} has no key data")
    data = parts[1]
    if not data.isascii():
        raise ValueError("key data is not valid base64 (non-ASCII characters)")
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"key data is not valid base64 ({exc})") from None
    _check_blob(key_type, blob)
    canonical = base64.b64encode(blob).decode("ascii")
    comment = _clean_comment(parts[2]) if len(parts) > 2 else ""
    return f"{key_type} {canonical} {comment}" if comment else f"{key_type} {canonical}"


def _is_key_line(line: bytes) -> bool:
    try:
        validate_public_key(line.decode("utf-8").rstrip("\r\n"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


def _orphan_end(lines: list[bytes], start: int) -> int:
    """Index just past an orphan block starting at ``start`` (see module docstring)."""
    i = start + 1
    while i < len(lines) and (bare(lines[i]) == _COMMENT_B or _is_key_line(lines[i])):
        i += 1
    return i


def _blocks(lines: list[bytes]) -> tuple[list[bytes], list[tuple[int, int]]]:
    """The user's lines and our blocks' index ranges (see :func:`hatchway.agent.blocks.scan`)."""
    return scan(lines, _START_B, _END_B, _orphan_end)


def _normalise_keys(keys: list[str]) -> list[str]:
    """Validate every key and drop repeats of the same key (same type and data), first wins."""
    out: list[str] = []
    seen: set[str] = set()
    for key in keys:
        norm = validate_public_key(key)
        ident = " ".join(norm.split(" ", 2)[:2])
        if ident not in seen:
            seen.add(ident)
            out.append(norm)
    return out


def render_block(keys: list[str]) -> bytes:
    """The managed block alone (START line to END line, LF-terminated) for ``keys``."""
    lines = [START_MARKER, COMMENT_LINE, *_normalise_keys(keys), END_MARKER]
    return ("\n".join(lines) + "\n").encode("utf-8")


def render(existing: bytes, keys: list[str]) -> bytes:
    """Return the new authorized_keys content: our block on top, then the user's content.

    Every key is validated first (ValueError for any bad one, before anything is produced), so a
    caller can never write a partly-correct file. The user's content is everything outside
    previous blocks, byte for byte (see module docstring for the treatment of damaged markers).
    An empty ``keys`` still writes the (empty) block, so its presence tells the user where
    Hatchway's keys go. ``render(render(x, k), k) == render(x, k)``.
    """
    block = render_block(keys)
    user, _ = _blocks(split_lines(existing))
    return block + b"".join(user)


def user_content(existing: bytes) -> bytes:
    """Everything in ``existing`` that is not ours, byte for byte (what :func:`render` keeps)."""
    user, _ = _blocks(split_lines(existing))
    return b"".join(user)


def managed_keys(content: bytes) -> list[str]:
    """The keys in the first managed block of ``content``, normalised, in file order.

    Lines in the block that are not valid keys (our comment, anything hand-edited in) are
    skipped. No block gives an empty list.
    """
    lines = split_lines(content)
    _, spans = _blocks(lines)
    if not spans:
        return []
    start, stop = spans[0]
    keys: list[str] = []
    for line in lines[start + 1 : stop]:
        text = bare(line)
        if text in (_END_B, _COMMENT_B) or not text:
            continue
        try:
            keys.append(validate_public_key(line.decode("utf-8").rstrip("\r\n")))
        except (UnicodeDecodeError, ValueError):
            continue
    return keys
