"""The Hatchway-managed block of the user's ``~/.ssh/config`` (SPEC 4), and Hatchway's known_hosts.

People are rightly touchy about tools rewriting their ssh config, so the rules are strict:

* Nothing outside the block changes, byte for byte: no whitespace normalisation, no newline
  fixing. The only bytes we add outside the block are our separator blank lines, and
  ``apply_block(x, None)`` takes exactly those away again, so that removing the block restores a
  file to precisely what it was before the block was first added.
* The block goes immediately before the user's first ``Host``/``Match``/``Include`` line, or at
  the end of a file that has none. ssh_config is "first obtained value wins": before the user's
  first host block, our ``Host hatchway.*`` entries beat a later ``Host *`` of theirs. A top-level
  ``Include`` counts as a host block because included files usually bring their own (an included
  ``Host *`` with ``StrictHostKeyChecking no`` would otherwise defeat our pinned host keys); an
  ``Include`` after a ``Host``/``Match`` line belongs to that block and is never a placement point.
  Global options the user put above that point still apply first: that is their explicit choice.
* Every line after a ``Host`` line belongs to that host, so a block with entries ends with
  ``Match all`` (:data:`RESET_LINES`): whatever follows it (the user's Include, global options
  between an Include and their first Host, lines they append below the block) keeps applying to
  every host, exactly as before the block was added.
* No value we write can start a new line or an extra directive: names are checked against narrow
  patterns, paths and argv elements are quoted for both OpenSSH's config tokenizer and the shell
  that runs ``ProxyCommand``, and anything that cannot be represented is refused (ValueError).

Damaged markers: a START without an END, an END without a START, or a START inside a block make
:func:`apply_block` raise ValueError naming the line, because guessing where a hand-edited block
ends could delete the user's own host entries; the CLI shows the message and the user fixes the
file (the person is present, unlike for the agent-side files).

CRLF files: the newline style of the user's content (CRLF if its first line ends in CRLF) is used
for our block and separators; the user's own line ends are never touched. OpenSSH itself strips
the CR, so such a file keeps working.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from hatchway.agent.authorized_keys import validate_public_key

START_MARKER = "# ------------START-HATCHWAY-----------"
END_MARKER = "# ------------END-HATCHWAY------------"
COMMENT_LINE = '# Managed by "hatchway config-ssh"; remove with "hatchway config-ssh --remove".'

CIPHERS = (
    "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
    "aes128-ctr,aes192-ctr,aes256-ctr"
)

#: Closes the last entry of a non-empty block: ``Match all`` applies to every host, so the lines
#: after the block mean what they meant at the top level (``Host *`` would do the same but reads as
#: if we set options for every host).
RESET_LINES = (
    "# Ends the entries above: whatever follows this block applies to every host again.",
    "Match all",
)

#: Lower-cased keywords before which the block is placed (see the module docstring).
PLACEMENT_KEYWORDS = frozenset({"host", "match", "include"})

KNOWN_HOSTS_HEADER = (
    "# Hatchway host keys, pinned from what each workspace agent reports. "
    'Rewritten by "hatchway config-ssh"; do not edit.'
)

_ALIAS_RE = re.compile(r"[A-Za-z0-9._-]+", re.ASCII)
_USER_RE = re.compile(r"[a-z_][a-z0-9_-]*\$?", re.ASCII)
MAX_USER_LEN = 32
MAX_ALIAS_LEN = 255

#: Characters an argv element may contain and still be written bare (unquoted) in ProxyCommand:
#: inert in sh, bash, dash, zsh, fish and csh, and in OpenSSH's config tokenizer. Everything else
#: is quoted.
_SHELL_BARE_RE = re.compile(r"[A-Za-z0-9+:,./_@-]+", re.ASCII)
#: Characters a path may contain and still be written bare in IdentityFile / UserKnownHostsFile.
_PATH_BARE_RE = re.compile(r"[A-Za-z0-9%+:,./_@~-]+", re.ASCII)


@dataclass(frozen=True)
class HostEntry:
    """One workspace as the user's ssh sees it.

    ``proxy_command`` is an argv list (not a shell string) so that quoting is done once, here,
    correctly; ``identity_file`` and ``known_hosts_file`` are absolute paths.
    """

    alias: str
    user: str
    proxy_command: list[str]
    identity_file: str
    known_hosts_file: str
    host_key_alias: str


def _refuse_controls(what: str, value: str) -> None:
    """Refuse characters that could end an ssh_config line or hide in one.

    Newline, CR and NUL would start a new directive; other C0/C1 controls and Unicode line
    separators have no business in a path or a name and only serve to confuse a reader.
    """
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text, not {type(value).__name__}")
    named = {"\n": "a newline", "\r": "a carriage return", "\0": "a NUL character"}
    for ch in value:
        if ch in named:
            raise ValueError(f"{what} {value!r} contains {named[ch]}")
        if ord(ch) < 0x20 or 0x7F <= ord(ch) < 0xA0 or ch in "\u2028\u2029":
            raise ValueError(f"{what} {value!r} contains a control character")
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise ValueError(f"{what} {value!r} is not valid Unicode (lone surrogate)")


def valid_alias(alias: str) -> bool:
    """Whether ``alias`` can be written as a ``Host``/``HostKeyAlias`` name (and a known_hosts host).

    For callers that must leave one unusable name out, with a message of their own, before it
    gets anywhere near the file: :func:`render_entry` and :func:`render_known_hosts` refuse the
    same names with ValueError.
    """
    return isinstance(alias, str) and len(alias) <= MAX_ALIAS_LEN and _ALIAS_RE.fullmatch(alias) is not None


def _check_alias(what: str, alias: str) -> None:
    _refuse_controls(what, alias)
    if not valid_alias(alias):
        raise ValueError(
            f"{what} {alias!r} is not allowed: use only letters, digits, '.', '_' and '-'"
        )


def _check_user(user: str) -> None:
    _refuse_controls("user name", user)
    if not _USER_RE.fullmatch(user) or len(user) > MAX_USER_LEN:
        raise ValueError(
            f"user name {user!r} is not a valid POSIX user name "
            f"([a-z_][a-z0-9_-]*[$]?, at most {MAX_USER_LEN} characters)"
        )


def _escape_percent(text: str) -> str:
    """Double ``%`` because ssh expands ``%h``-style tokens in these options; ``%%`` is ``%``."""
    return text.replace("%", "%%")


def quote_proxy_arg(arg: str) -> str:
    """Quote one argv element of ProxyCommand (before ``%`` escaping).

    ssh runs ProxyCommand as ``exec <string>`` under the user's ``$SHELL -c`` (``/bin/sh`` by
    default), and OpenSSH >= 8.7 also runs the config line through its own tokenizer, rejecting
    it when that tokenizer sees unbalanced quotes. Single quotes are literal in sh, fish and csh,
    and balanced for the tokenizer as long as no backslash precedes a quote; an embedded ``'`` is
    written as ``"'"``. Backslashes are refused: fish, csh and OpenSSH's tokenizer disagree on
    them, so no single spelling is right for everyone.
    """
    _refuse_controls("ProxyCommand argument", arg)
    if "\\" in arg:
        raise ValueError(
            f"ProxyCommand argument {arg!r} contains a backslash, which cannot be quoted "
            "portably for every shell"
        )
    if arg and _SHELL_BARE_RE.fullmatch(arg):
        return arg
    parts = arg.split("'")
    return '"\'"'.join(f"'{part}'" if part else "" for part in parts) or "''"


def proxy_command_string(argv: list[str]) -> str:
    """The ProxyCommand value for ``argv``: each element quoted, then ``%`` doubled."""
    if not argv:
        raise ValueError("ProxyCommand needs at least one argument (the program)")
    return _escape_percent(" ".join(quote_proxy_arg(arg) for arg in argv))


def quote_path(what: str, path: str) -> str:
    """Write a path for IdentityFile / UserKnownHostsFile.

    Bare when it only has inert characters, otherwise in double quotes (OpenSSH's tokenizer keeps
    spaces, ``#``, ``'`` and ``=`` literal inside them, in old and new versions alike). Refused:
    ``"`` and ``\\`` (their escaping differs between OpenSSH versions), ``${`` (OpenSSH expands
    environment variables in these options, with no escape), and relative paths (ssh would
    resolve them against whatever directory it is started from).
    """
    _refuse_controls(what, path)
    if not path.startswith("/"):
        raise ValueError(f"{what} {path!r} must be an absolute path")
    if '"' in path:
        raise ValueError(f"{what} {path!r} contains a double quote, which ssh_config cannot hold")
    if "\\" in path:
        raise ValueError(f"{what} {path!r} contains a backslash, which ssh_config cannot hold")
    if "${" in path:
        raise ValueError(f"{what} {path!r} contains '${{', which ssh would expand")
    escaped = _escape_percent(path)
    if _PATH_BARE_RE.fullmatch(path):
        return escaped
    return f'"{escaped}"'


def render_entry(entry: HostEntry) -> list[str]:
    """The lines (without line ends) of one ``Host`` entry; ValueError for unsafe values."""
    _check_alias("host alias", entry.alias)
    _check_user(entry.user)
    _check_alias("host key alias", entry.host_key_alias)
    proxy = proxy_command_string(list(entry.proxy_command))
    identity = quote_path("identity file", entry.identity_file)
    known_hosts = quote_path("known hosts file", entry.known_hosts_file)
    options = [
        f"HostName {entry.alias}",
        f"User {entry.user}",
        f"ProxyCommand {proxy}",
        f"IdentityFile {identity}",
        "IdentitiesOnly yes",
        f"UserKnownHostsFile {known_hosts}",
        f"HostKeyAlias {entry.host_key_alias}",
        "StrictHostKeyChecking yes",
        "ServerAliveInterval 15",
        "ServerAliveCountMax 4",
        f"Ciphers {CIPHERS}",
        "ConnectTimeout 30",
    ]
    return [f"Host {entry.alias}", *(f"  {option}" for option in options)]


def render_block(entries: list[HostEntry]) -> str:
    """The whole managed block (START line to END line, LF line ends), entries sorted by alias.

    Entries are separated by a blank line for readability, and a non-empty block ends with
    :data:`RESET_LINES` so the last entry does not swallow the lines after the block. Two entries
    with the same alias (ssh compares host names case-insensitively) are refused: ssh would
    silently use only the first.
    """
    ordered = sorted(entries, key=lambda e: e.alias)
    seen: set[str] = set()
    lines = [START_MARKER, COMMENT_LINE]
    for index, entry in enumerate(ordered):
        if entry.alias.lower() in seen:
            raise ValueError(f"host alias {entry.alias!r} appears twice")
        seen.add(entry.alias.lower())
        if index:
            lines.append("")
        lines.extend(render_entry(entry))
    if ordered:
        lines.extend(["", *RESET_LINES])
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Placing the block in an existing file


def _split_lines(text: str) -> list[str]:
    """Split on LF only, keeping terminators: ``"".join`` gives ``text`` back exactly."""
    pieces = text.split("\n")
    out = [piece + "\n" for piece in pieces[:-1]]
    if pieces[-1]:
        out.append(pieces[-1])
    return out


def _bare(line: str) -> str:
    return line.strip(" \t\r\n")


#: What ends a token for OpenSSH's ``strdelim()`` (misc.c): its WHITESPACE, a quote, or ``=``.
_DELIMITER_RE = re.compile('[ \t\r\n"=]')


def _strdelim(text: str) -> tuple[str | None, str]:
    """OpenSSH's ``strdelim()``, which readconf uses for a line's keyword: the first token of
    ``text`` and the rest after it.

    The token ends at a space, tab, CR, LF, ``=`` or ``"``. At a ``"`` the quote is dropped and
    the token goes on to the next ``"`` (spaces and ``=`` included), so ``"Host" *`` is the
    keyword ``Host`` (single quotes are not special here: OpenSSH 9.2 rejects ``'Host'`` as a
    bad option). None for an unmatched quote, where OpenSSH ignores the line.
    """
    found = _DELIMITER_RE.search(text)
    if found is None:
        return text, ""
    cut = found.start()
    if text[cut] == '"':
        close = text.find('"', cut + 1)
        if close < 0:
            return None, ""
        return text[:cut] + text[cut + 1 : close], text[close + 1 :].lstrip(" \t\r\n")
    rest = text[cut + 1 :].lstrip(" \t\r\n")
    if text[cut] != "=" and rest.startswith("="):  # one "=" may follow the blanks
        rest = rest[1:].lstrip(" \t\r\n")
    return text[:cut], rest


def _keyword(line: str) -> str:
    """The lower-cased ssh_config keyword of ``line`` as OpenSSH reads it ("" for blank lines,
    comments and lines it ignores).

    Read with OpenSSH's own tokenizer (:func:`_strdelim`, an empty first token meaning "take the
    next one") rather than a pattern: a quoted ``"Host" *`` that ssh honours but we missed would
    put our block after it, and its options would then override our pinned host keys.
    """
    keyword, rest = _strdelim(line)
    if keyword == "":
        keyword = _strdelim(rest)[0]
    if not keyword or keyword.startswith("#"):
        return ""
    return keyword.lower()


def _newline_of(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def _check_markers(lines: list[str]) -> None:
    """Raise ValueError, naming the line, unless markers form well-ordered START/END pairs."""
    start: int | None = None
    for i, line in enumerate(lines):
        bare = _bare(line)
        if bare == START_MARKER:
            if start is not None:
                raise ValueError(
                    f"line {i + 1}: Hatchway START marker inside the block begun on line "
                    f"{start + 1}; remove the stray marker by hand and retry"
                )
            start = i
        elif bare == END_MARKER:
            if start is None:
                raise ValueError(
                    f"line {i + 1}: Hatchway END marker without a START marker before it; "
                    "remove it by hand and retry"
                )
            start = None
    if start is not None:
        raise ValueError(
            f"line {start + 1}: Hatchway START marker without an END marker; "
            "remove the partial block by hand and retry"
        )


def _find_block(lines: list[str]) -> tuple[int, int] | None:
    """Index range (START, END inclusive) of the first block of marker-checked ``lines``."""
    start: int | None = None
    for i, line in enumerate(lines):
        bare = _bare(line)
        if bare == START_MARKER:
            start = i
        elif bare == END_MARKER and start is not None:
            return start, i
    return None


def _remove_one(lines: list[str], start: int, end: int) -> list[str]:
    """Remove the block at ``start..end`` with the separators :func:`_insert` adds around it."""
    newline = _newline_of(lines[start])
    before = lines[:start]
    after = lines[end + 1 :]
    end_terminated = lines[end].endswith("\n")
    if before and before[-1] == newline:
        before.pop()
    if after and after[0] == newline:
        after.pop(0)
    if not end_terminated and before and before[-1].endswith(newline):
        before[-1] = before[-1][: -len(newline)]
    return before + after


def _strip_blocks(text: str) -> str:
    lines = _split_lines(text)
    _check_markers(lines)
    while (span := _find_block(lines)) is not None:
        lines = _remove_one(lines, *span)
    return "".join(lines)


def _insert(text: str, block: str) -> str:
    """Insert ``block`` (LF-terminated lines) into block-free ``text``.

    Before the first line whose keyword is in :data:`PLACEMENT_KEYWORDS`:
    ``<before><NL><block><NL><rest>`` (the leading separator only when there is something
    before). At the end: ``<text><NL><block>``; when ``text`` lacks a final newline we add one
    and move the missing final newline to the block's END line, so that :func:`_remove_one` can
    tell the two cases apart and restore ``text`` exactly.
    """
    lines = _split_lines(text)
    newline = _newline_of(lines[0]) if lines else "\n"
    block_lines = [line + newline for line in block.split("\n")[:-1]]
    for i, line in enumerate(lines):
        if _keyword(line) in PLACEMENT_KEYWORDS:
            sep = [newline] if i else []
            return "".join([*lines[:i], *sep, *block_lines, newline, *lines[i:]])
    if not lines:
        return "".join(block_lines)
    if lines[-1].endswith("\n"):
        return "".join([*lines, newline, *block_lines])
    block_lines[-1] = block_lines[-1][: -len(newline)]
    return "".join([*lines, newline, newline, *block_lines])


#: Lone surrogates: how an ssh config's bytes that are not UTF-8 are carried in its text
#: (``surrogateescape``). The user's content may hold them; a block we write never does.
_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _check_block(block: str) -> None:
    lines = block.split("\n")
    if (
        not block.endswith("\n")
        or lines[0] != START_MARKER
        or lines[-2] != END_MARKER
        or any(_bare(line) in (START_MARKER, END_MARKER) for line in lines[1:-2])
        or "\r" in block
        or _SURROGATE_RE.search(block)
    ):
        raise ValueError("block must be the output of render_block()")


def apply_block(existing: str, block: str | None) -> str:
    """Return ``existing`` with every managed block removed and, unless ``block`` is None, ``block``
    placed before the first ``Host``/``Match``/``Include`` line (or at the end).

    Guarantees (tested as properties): the user's content is unchanged byte for byte;
    ``apply_block(apply_block(x, b), b) == apply_block(x, b)``; and for a file without a block,
    ``apply_block(apply_block(x, b), None) == x``. Raises ValueError on damaged markers (see the
    module docstring) or a ``block`` that is not one of ours.
    """
    cleaned = _strip_blocks(existing)
    if block is None:
        return cleaned
    _check_block(block)
    return _insert(cleaned, block)


def unified_diff(old: str, new: str, path: str) -> str:
    """A ``diff -u`` style patch from ``old`` to ``new`` for ``--dry-run`` ("" if identical)."""
    old_lines = _split_lines(old)
    new_lines = _split_lines(new)
    marker = "\n\\ No newline at end of file\n"

    def fix(lines: list[str]) -> list[str]:
        if lines and not lines[-1].endswith("\n"):
            lines = [*lines[:-1], lines[-1] + marker]
        return lines

    return "".join(difflib.unified_diff(fix(old_lines), fix(new_lines), fromfile=path, tofile=path))


def render_known_hosts(entries: list[tuple[str, str]]) -> str:
    """Whole content of Hatchway's own known_hosts file.

    One ``<host_key_alias> <type> <base64>`` line per distinct pair, sorted, after a header
    comment. Keys go through the same validator as authorized_keys (a bad key is an error, not a
    line that silently never matches); their comments are dropped since known_hosts has none.
    """
    lines: set[str] = set()
    for alias, key in entries:
        _check_alias("host key alias", alias)
        key_type, data = validate_public_key(key).split(" ", 2)[:2]
        lines.add(f"{alias} {key_type} {data}")
    return "\n".join([KNOWN_HOSTS_HEADER, *sorted(lines)]) + "\n"
