"""Reading ``~/.ssh/authorized_keys`` for the built-in server.

The file is re-read for every connection (off the event loop): when the platform key is
regenerated the agent rewrites it, and the old key must stop working for the next connection,
not after an agent restart. Parsing is per line and tolerant like OpenSSH's: one line the user
mistyped outside the managed block must not lock everybody out, so it is skipped and reported.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import asyncssh

from hatchway.fileutil import read_regular

log = logging.getLogger("hatchway.sshd")


def parse_authorized_keys(
    text: str, source: str = "authorized_keys"
) -> asyncssh.SSHAuthorizedKeys | None:
    """Parse authorized_keys text; None when it holds no usable entry.

    asyncssh's own loader rejects the whole file on one bad option, hence the per-line check
    (a key is a few hundred bytes; parsing it twice costs microseconds).
    """
    good: list[str] = []
    # Lines end at LF only, as OpenSSH reads them. str.splitlines() (asyncssh's too) also ends
    # one at U+2028, a form feed or a lone CR, and would make an option-restricted key's comment
    # a key of its own: a line holding one is not used (changing it could change its options).
    for lineno, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if len(line.splitlines()) > 1:
            _warn_once(source, lineno, "a line separator other than a newline inside the line")
            continue
        try:
            asyncssh.import_authorized_keys(line)  # raises for an unusable line
        except (ValueError, asyncssh.KeyImportError) as exc:
            reason = (
                "unrecognized key" if str(exc) == "No valid entries found" else str(exc)
            )
            _warn_once(source, lineno, reason)
            continue
        good.append(line)
    return asyncssh.import_authorized_keys("\n".join(good)) if good else None


def load_authorized_keys(path: Path) -> asyncssh.SSHAuthorizedKeys | None:
    """Read and parse ``path``. Blocking: call it through ``asyncio.to_thread``."""
    try:
        text = read_regular(path)[1].decode("utf-8", errors="replace")
    except FileNotFoundError:
        log.debug("no authorized_keys at %s: refusing every key", path)
        return None
    except OSError as exc:
        log.warning("cannot read %s: %s; refusing every key", path, exc.strerror or exc)
        return None
    return parse_authorized_keys(text, str(path))


@functools.lru_cache(maxsize=256)
def _warn_once(source: str, lineno: int, reason: str) -> None:
    """Report a bad line once, not on every connection (the file is re-read each time)."""
    log.warning("%s line %d ignored: %s", source, lineno, reason)
