"""Finding Hatchway's managed blocks in a user's file (pure, bytes in, bytes out).

authorized_keys and ~/.ssh/environment share one rule set: markers are recognised with stray
white space or a CR around them, every START…END pair is ours wherever it stands, a stray END
belongs to nobody, and an orphan START ends where the file-specific ``orphan_end`` says. Kept in
one place so the two files can never disagree about what is the user's.
"""

from __future__ import annotations

from collections.abc import Callable


def split_lines(content: bytes) -> list[bytes]:
    """Split on LF only, keeping the terminators, so ``b"".join`` gives ``content`` back.

    Not ``bytes.splitlines``: that also splits on a lone CR, which sshd does not.
    """
    pieces = content.split(b"\n")
    out = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        out.append(pieces[-1])
    return out


def bare(line: bytes) -> bytes:
    """A line as markers are compared: without surrounding blanks, nor the UTF-8 byte-order mark
    an editor may put before a file's first line (the block's START line, usually)."""
    return line.strip(b" \t\r\n").removeprefix(b"\xef\xbb\xbf")


def scan(
    lines: list[bytes], start: bytes, end: bytes, orphan_end: Callable[[list[bytes], int], int]
) -> tuple[list[bytes], list[tuple[int, int]]]:
    """The user's lines (untouched, in order) and the ``(start, stop)`` ranges of our blocks
    (START line included, ``stop`` exclusive)."""
    user: list[bytes] = []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        line = bare(lines[i])
        if line == start:
            close = next((j for j in range(i + 1, len(lines)) if bare(lines[j]) == end), None)
            stop = close + 1 if close is not None else orphan_end(lines, i)
            spans.append((i, stop))
            i = stop
            continue
        if line != end:
            user.append(lines[i])
        i += 1
    return user, spans
