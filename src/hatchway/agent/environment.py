"""The Hatchway-managed section of ``~/.ssh/environment`` (SPEC 3.2).

OpenSSH reads this file (with ``PermitUserEnvironment yes``) as ``NAME=value`` lines with no
quoting at all: the value is everything after the first ``=`` up to the newline. So the only
defence against a variable injecting a second variable (``PATH``, ``LD_PRELOAD``...) is to never
write a name or value that could end a line or be misread. Image variables come from whoever
built the image, so they are treated as untrusted input: unsafe ones are rejected and reported,
never escaped into something that "looks" right.

Section shape (exact)::

    # --------- START HATCHWAY ENVIRONMENT VARIABLES ----------
    # The following has been auto-generated at workspace startup
    # You should not hand-edit this section unless you are deleting it.

    NAME=value
    ...

    # ----------------- END HATCHWAY -----------------------

Rules for existing content (the module is pure: bytes in, bytes out):

* The section always goes to the top. Everything else (content after END, and anything a user
  put before a START that is not on the first line) is kept byte for byte, in order, below it.
* Marker lines are recognised after stripping surrounding spaces, tabs and a trailing CR.
* Every START ... END pair is removed, wherever it is (never duplicated). A stray END without a
  START is our marker gone astray and is dropped.
* An orphan START (its END deleted by hand) is taken to cover the lines of our own shape that
  follow it: our two comment lines, one blank line, the ``NAME=value`` lines with a safe name,
  and one blank line after them. The first line that does not fit that shape (a comment of the
  user's, a second blank line, garbage) ends it and is kept. A user variable directly after our
  variables, with no blank line in between, is indistinguishable from ours and goes with them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hatchway.agent.blocks import bare, scan, split_lines

START_MARKER = "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------"
HEADER_LINES = (
    "# The following has been auto-generated at workspace startup",
    "# You should not hand-edit this section unless you are deleting it.",
)
END_MARKER = "# ----------------- END HATCHWAY -----------------------"

_START_B = START_MARKER.encode("ascii")
_END_B = END_MARKER.encode("ascii")
_HEADER_B = tuple(line.encode("ascii") for line in HEADER_LINES)

#: Largest value written, in UTF-8 bytes. Bigger values are almost certainly a mistake (or an
#: attempt to make every login slow) and exceed what many tools accept in one env entry.
MAX_VALUE_BYTES = 64 * 1024

#: Prefix of the variables Hatchway itself defines; an image may not override those.
RESERVED_PREFIX = "HATCHWAY_"
#: What the SSH server sets for each connection. ~/.ssh/environment is read after them (by
#: OpenSSH and by the built-in server alike), so a fixed value from the image, e.g. a
#: devcontainer's ``ENV SSH_AUTH_SOCK``, would break agent forwarding in every session.
PER_CONNECTION = frozenset({"SSH_AUTH_SOCK", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY"})

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


@dataclass(frozen=True)
class Rejected:
    """A variable that was not written, and why (a sentence fit for a log or the UI)."""

    name: str
    reason: str


def is_safe_name(name: str) -> bool:
    """True when ``name`` is ``[A-Za-z_][A-Za-z0-9_]*`` (ASCII only).

    Anything else could contain ``=`` (shifting where OpenSSH splits name from value), a
    newline, or a character a shell cannot export.
    """
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def check_variable(name: str, value: str) -> str | None:
    """Return why ``NAME=value`` must not be written, or None when it is safe.

    The reason is a human sentence; it shows the name with ``repr`` so that a hostile name cannot
    forge log lines or terminal escapes when the reason is printed.
    """
    if not is_safe_name(name):
        return (
            f"name {name!r} is not a valid environment variable name "
            "(it must match [A-Za-z_][A-Za-z0-9_]*)"
        )
    if not isinstance(value, str):
        return f"value of {name!r} is not text"
    if "\n" in value:
        return "value contains a newline"
    if "\r" in value:
        return "value contains a carriage return"
    if "\0" in value:
        return "value contains a NUL character"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return "value cannot be encoded as UTF-8 (it contains a lone surrogate)"
    if size > MAX_VALUE_BYTES:
        return f"value is {size} bytes long, more than the {MAX_VALUE_BYTES} bytes allowed"
    return None


def build_variables(
    defaults: dict[str, str], image: dict[str, str]
) -> tuple[list[tuple[str, str]], list[Rejected]]:
    """Merge Hatchway's defaults and the image's variables into the list to write.

    Defaults come first, in their given order, then the image's variables in theirs. An image
    variable may not replace a ``HATCHWAY_`` default (those describe the workspace and its owner
    and must be trustworthy); any other default of the same name is replaced by the image's value
    (the image is the more specific source), the variable then taking the image's position. Unsafe
    variables from either source, and the image's values of :data:`PER_CONNECTION` variables, are
    rejected with their reason instead of being written.
    """
    rejected: list[Rejected] = []
    merged: dict[str, str] = {}
    for name, value in defaults.items():
        reason = check_variable(name, value)
        if reason is not None:
            rejected.append(Rejected(name, reason))
        else:
            merged[name] = value
    for name, value in image.items():
        if isinstance(name, str) and name.startswith(RESERVED_PREFIX) and name in defaults:
            rejected.append(
                Rejected(
                    name,
                    f"the image may not override {name!r}: it is set by Hatchway",
                )
            )
            continue
        if name in PER_CONNECTION:
            rejected.append(
                Rejected(name, f"{name} is set by the SSH server for each connection; a value from the image would override it")
            )
            continue
        reason = check_variable(name, value)
        if reason is not None:
            rejected.append(Rejected(name, reason))
            continue
        merged.pop(name, None)
        merged[name] = value
    return list(merged.items()), rejected


def render_section(variables: list[tuple[str, str]]) -> bytes:
    """The managed section alone, START line to END line, LF-terminated, UTF-8.

    Refuses (ValueError) any unsafe variable even though :func:`build_variables` already filters
    them: this is the last place that can stop a line injection, so it does not trust callers.
    """
    for name, value in variables:
        reason = check_variable(name, value)
        if reason is not None:
            raise ValueError(f"refusing to write environment variable {name!r}: {reason}")
    lines = [
        START_MARKER,
        *HEADER_LINES,
        "",
        *(f"{name}={value}" for name, value in variables),
        "",
        END_MARKER,
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _is_our_variable_line(line: bytes) -> bool:
    body = line.rstrip(b"\r\n")
    name, sep, _ = body.partition(b"=")
    return bool(sep) and is_safe_name(name.decode("ascii", "replace"))


def _orphan_end(lines: list[bytes], start: int) -> int:
    """Index just past an orphan section that starts at ``start`` (see module docstring)."""
    i = start + 1
    while i < len(lines) and bare(lines[i]) in _HEADER_B:
        i += 1
    if i < len(lines) and not bare(lines[i]):
        i += 1
    while i < len(lines) and _is_our_variable_line(lines[i]):
        i += 1
    if i < len(lines) and not bare(lines[i]):
        i += 1
    return i


def _scan(lines: list[bytes]) -> tuple[list[bytes], list[tuple[int, int]]]:
    """The user's lines and our blocks' index ranges (see :func:`hatchway.agent.blocks.scan`)."""
    return scan(lines, _START_B, _END_B, _orphan_end)


def user_content(existing: bytes) -> bytes:
    """Everything in ``existing`` outside our sections, byte for byte (kept by :func:`render`)."""
    user, _ = _scan(split_lines(existing))
    return b"".join(user)


def render(existing: bytes, variables: list[tuple[str, str]]) -> bytes:
    """Return the new ``~/.ssh/environment``: our section on top, then the user's content.

    Raises ValueError for any unsafe variable (before producing anything). Idempotent:
    ``render(render(x, v), v) == render(x, v)``.
    """
    return render_section(variables) + user_content(existing)


def parse_section(content: bytes) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of the first managed section of ``content``, in order.

    Reads values the way OpenSSH does (everything after the first ``=``, up to the end of the
    line; a trailing CR from a CRLF editor is dropped since we never write one). Comment, blank and
    malformed lines inside the section are skipped. No section gives an empty list.
    """
    lines = split_lines(content)
    _, spans = _scan(lines)
    if not spans:
        return []
    start, stop = spans[0]
    out: list[tuple[str, str]] = []
    for line in lines[start + 1 : stop]:
        body = line.rstrip(b"\n")
        if body.endswith(b"\r"):
            body = body[:-1]
        stripped = body.lstrip(b" \t")
        if not stripped or stripped.startswith(b"#"):
            continue
        name, sep, value = stripped.partition(b"=")
        if not sep:
            continue
        out.append((name.decode("utf-8", "replace"), value.decode("utf-8", "replace")))
    return out
