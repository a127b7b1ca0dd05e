"""What a control-plane backup holds, and which archives are refused before anything is read.

A backup (``hatchway server backup``) is a plain, uncompressed tar of at most three flat
members: ``manifest.json``, ``deployment.secret`` and, for SQLite, ``hatchway.db``. Plain so
that no member can hold more than the archive file itself (no decompression bomb), and so that
a member whose data runs past the end of the file is seen to be truncated from its header
alone. Restore takes nothing else: a backup is only ever made by Hatchway, so any other name, a
link, a path with ``..`` or ``/``, a duplicate or an oversized member means the file is foreign,
damaged or hostile, and is refused before a byte of it is written anywhere.

Pure: no I/O here, so the checks are tested exhaustively (tests/unit/test_backup_format.py).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

from hatchway.server.crypto import SECRET_FILE

FORMAT = "hatchway-backup/1"
MANIFEST = "manifest.json"
DATABASE = "hatchway.db"
SECRET = SECRET_FILE
#: What ``contents`` says: the SQLite database and its secret, or (PostgreSQL) the secret alone.
FULL = "sqlite-database-and-secret"
SECRET_ONLY = "secret-only"
SECRET_ONLY_NOTE = (
    "The deployment secret and this manifest only: the PostgreSQL database is not in this file; "
    "back it up with pg_dump, and keep both together"
)
#: Far beyond what each member can be (a secret is 64 hex digits and a newline).
LIMITS = {MANIFEST: 64 * 1024, SECRET: 1024}
#: Every member a backup can hold.
ALLOWED = (MANIFEST, SECRET, DATABASE)


class BackupError(Exception):
    """A backup or restore cannot go ahead; the message says why and what to do."""


class RefusedArchive(BackupError):
    """The file is not a usable Hatchway backup; nothing was written."""

    def __init__(self, archive: str, reason: str) -> None:
        super().__init__(
            f"{archive} is not a usable Hatchway backup: {reason}; nothing was written. Restore a file "
            "made by hatchway server backup, copied whole (compare its size with the one the backup printed)"
        )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class FileEntry:
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What the backup is: enough to tell, before restoring, what it holds and from when."""

    hatchway_version: str
    schema_revision: str
    created_at: str  # ISO 8601, UTC
    contents: str  # FULL or SECRET_ONLY
    database: str  # "sqlite" or "postgresql"
    users: int
    workspaces: int
    secret_check: str  # hatchway.server.secret_record.check_value of the secret in the backup
    files: dict[str, FileEntry]

    def to_json(self) -> bytes:
        body = {"format": FORMAT, **asdict(self)}
        if not self.holds_database:
            body["note"] = SECRET_ONLY_NOTE
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @property
    def holds_database(self) -> bool:
        return DATABASE in self.files

    def members(self) -> set[str]:
        """The archive's members besides the manifest."""
        return set(self.files)


class _BadField(ValueError):
    """A manifest field (named by the message) that no backup writes: the manifest is hostile or damaged."""


_HEX64 = re.compile(r"[0-9a-f]{64}")
_SHORT = re.compile(r"[!-~]{1,64}")  # printable ASCII without spaces: nothing that can drive a terminal
_MAX_COUNT = 2**63 - 1  # what SQLite and PostgreSQL counts and file sizes fit in


def _hex64(value: object, field: str) -> str:
    """A SHA-256 as hex (compare_digest takes only ASCII strings)."""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _BadField(field)
    return value


def _count(value: object, field: str) -> int:
    """A size or count: a JSON integer (not 1e400, which is a float, infinite), 0 or more."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_COUNT:
        raise _BadField(field)
    return value


def _short(value: object, field: str) -> str:
    if not isinstance(value, str) or not _SHORT.fullmatch(value):
        raise _BadField(field)
    return value


def parse_manifest(archive: str, raw: bytes) -> Manifest:
    """The manifest in ``raw``, or :class:`RefusedArchive` saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise RefusedArchive(archive, f"its {MANIFEST} is not JSON") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        found = body.get("format") if isinstance(body, dict) else None
        raise RefusedArchive(archive, f"its {MANIFEST} is not of format {FORMAT} (it says {found!r})")
    try:
        files = {name: FileEntry(_count(e["size"], "size"), _hex64(e["sha256"], "sha256")) for name, e in body["files"].items()}
        m = Manifest(
            hatchway_version=_short(body["hatchway_version"], "hatchway_version"),
            schema_revision=_short(body["schema_revision"], "schema_revision"),
            created_at=_short(body["created_at"], "created_at"), contents=_short(body["contents"], "contents"),
            database=_short(body["database"], "database"), users=_count(body["users"], "users"),
            workspaces=_count(body["workspaces"], "workspaces"), secret_check=_hex64(body["secret_check"], "secret_check"),
            files=files,
        )
    except _BadField as exc:
        raise RefusedArchive(archive, f"its {MANIFEST} has an invalid {exc}") from None
    except (KeyError, TypeError, AttributeError):
        raise RefusedArchive(archive, f"its {MANIFEST} lacks a field or has one of the wrong type") from None
    expected = {FULL: {DATABASE, SECRET}, SECRET_ONLY: {SECRET}}.get(m.contents)
    if expected is None:
        raise RefusedArchive(archive, f"its {MANIFEST} names unknown contents {m.contents!r}")
    if m.members() != expected:
        raise RefusedArchive(archive, f"its {MANIFEST} lists {sorted(m.members())}, not what a {m.contents} backup holds")
    return m


def check_members(archive: str, members: Iterable[tarfile.TarInfo], archive_size: int) -> list[tarfile.TarInfo]:
    """The members, each checked before the next is taken from ``members`` (read them lazily: see
    hatchway.server.restore); :class:`RefusedArchive` for any a backup cannot hold, and a missing manifest.

    ``archive_size`` is the file's size: a member whose data would end beyond it was cut off
    (or its header lies about its size). A negative size, or data that does not start after the
    previous member's, is a header crafted to send a tar reader back to an earlier header
    (forever, in the tarfile of Python before 3.12.12/3.13.6: CVE-2025-8194)."""
    seen: list[tarfile.TarInfo] = []
    for m in members:  # at most 4 are read: a 4th is a duplicate or a foreign name, refused
        _check_member(archive, m, seen[-1] if seen else None, {s.name for s in seen}, archive_size)
        seen.append(m)
    if MANIFEST not in {m.name for m in seen}:
        raise RefusedArchive(archive, f"it has no {MANIFEST}")
    return seen


def _check_member(archive: str, m: tarfile.TarInfo, previous: tarfile.TarInfo | None, seen: set[str],
                  archive_size: int) -> None:
    name = m.name
    if name.startswith("/"):
        raise RefusedArchive(archive, f"member {name!r} has an absolute path")
    if ".." in name.split("/"):
        raise RefusedArchive(archive, f"member {name!r} points outside the archive ('..')")
    if m.issym() or m.islnk():
        raise RefusedArchive(archive, f"member {name!r} is a link to {m.linkname!r}")
    if not m.isreg():
        raise RefusedArchive(archive, f"member {name!r} is not a regular file")
    if name not in ALLOWED:
        raise RefusedArchive(archive, f"member {name!r} is not part of a Hatchway backup")
    if name in seen:
        raise RefusedArchive(archive, f"member {name!r} appears twice")
    if m.size < 0:
        raise RefusedArchive(archive, f"member {name!r} has a negative size ({m.size})")
    if previous is not None and m.offset_data <= previous.offset_data + previous.size:
        raise RefusedArchive(archive, f"member {name!r} does not come after {previous.name!r} (its header was "
                                      "crafted to make a tar reader go back)")
    limit = LIMITS.get(name)
    if limit is not None and m.size > limit:
        raise RefusedArchive(archive, f"member {name!r} is {m.size} bytes, more than it can be (at most {limit})")
    if m.offset_data + m.size > archive_size:
        raise RefusedArchive(archive, f"member {name!r} is cut off (the file ends before its {m.size} bytes do)")


def check_matches_manifest(archive: str, manifest: Manifest, members: Sequence[tarfile.TarInfo]) -> None:
    """The archive holds exactly what its manifest lists, at the sizes it lists."""
    present = {m.name: m.size for m in members if m.name != MANIFEST}
    if set(present) != manifest.members():
        raise RefusedArchive(archive, f"it holds {sorted(present)} but its {MANIFEST} lists {sorted(manifest.members())}")
    for name, size in present.items():
        if size != manifest.files[name].size:
            raise RefusedArchive(archive, f"{name} is {size} bytes but its {MANIFEST} says {manifest.files[name].size}")


def check_digest(archive: str, manifest: Manifest, name: str, digest: str) -> None:
    if not hmac.compare_digest(digest, manifest.files[name].sha256):
        raise RefusedArchive(archive, f"{name} does not match its checksum in {MANIFEST} (it was altered or damaged)")
