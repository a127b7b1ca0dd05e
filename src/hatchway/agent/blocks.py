"""Finding Hatchway's managed blocks in a user's file (pure, bytes in, bytes out).

authorized_keys and ~/.ssh/environment share one rule set: markers are recognised with stray
white space or a CR around them, every START…END pair with no other marker between is ours
wherever it stands, a stray END belongs to nobody, and an orphan START (one followed by another
START, or by no marker at all) ends where the file-specific ``orphan_end`` says. Kept in
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
    (START line included, ``stop`` exclusive).

    A START is closed by the next marker only if that marker is an END. When another START comes
    first, the earlier one is an orphan: pairing it with a later END would swallow the person's
    lines in between. Each line is looked at a fixed number of times, so a file of thousands of
    unclosed STARTs costs no more than any other file of its size.
    """
    bares = [bare(line) for line in lines]
    following = _next_markers(bares, start, end)
    user: list[bytes] = []
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(lines):
        if bares[i] == start:
            close = following[i]
            stop = close + 1 if close < len(lines) and bares[close] == end else orphan_end(lines, i)
            spans.append((i, stop))
            i = stop
            continue
        if bares[i] != end:
            user.append(lines[i])
        i += 1
    return user, spans


def _next_markers(bares: list[bytes], start: bytes, end: bytes) -> list[int]:
    """For each line, the index of the first START or END line after it (``len`` if none)."""
    following = [0] * len(bares)
    nearest = len(bares)
    for i in range(len(bares) - 1, -1, -1):
        following[i] = nearest
        if bares[i] == start or bares[i] == end:
            nearest = i
    return following
