"""The backup's manifest and the member checks restore makes before reading anything
(hatchway.server.backup_format): what a backup holds round-trips, and every member a backup
cannot hold is refused with its reason."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from collections.abc import Iterator

import pytest

from hatchway.server.backup_format import (
    DATABASE, FORMAT, FULL, MANIFEST, SECRET, SECRET_ONLY, SECRET_ONLY_NOTE, FileEntry, Manifest, RefusedArchive,
    check_digest, check_matches_manifest, check_members, parse_manifest, sha256,
)

ARCHIVE = "/backups/b.tar"


def refused(reason: str) -> str:
    return (
        f"{ARCHIVE} is not a usable Hatchway backup: {reason}; nothing was written. Restore a file made by hatchway "
        "server backup, copied whole (compare its size with the one the backup printed)"
    )


def manifest(contents: str = FULL) -> Manifest:
    files = {SECRET: FileEntry(65, "a" * 64)}
    if contents == FULL:
        files[DATABASE] = FileEntry(4096, "b" * 64)
    return Manifest("0.1.0", "0007", "2026-01-02T03:04:05Z", contents, "sqlite" if contents == FULL else "postgresql",
                    3, 1, "c" * 64, files)


def member(name: str, size: int = 10, kind: bytes = tarfile.REGTYPE, link: str = "", offset: int = 512) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.offset_data = size, kind, link, offset
    return info


def test_a_full_manifest_round_trips_and_says_what_it_holds() -> None:
    m = manifest()
    body = json.loads(m.to_json())
    assert body == {
        "format": FORMAT, "hatchway_version": "0.1.0", "schema_revision": "0007", "created_at": "2026-01-02T03:04:05Z",
        "contents": FULL, "database": "sqlite", "users": 3, "workspaces": 1, "secret_check": "c" * 64,
        "files": {SECRET: {"size": 65, "sha256": "a" * 64}, DATABASE: {"size": 4096, "sha256": "b" * 64}},
    }
    assert parse_manifest(ARCHIVE, m.to_json()) == m


def test_a_secret_only_manifest_is_labelled_as_such() -> None:
    m = manifest(SECRET_ONLY)
    body = json.loads(m.to_json())
    assert body["note"] == SECRET_ONLY_NOTE and body["contents"] == "secret-only" and set(body["files"]) == {SECRET}
    assert "pg_dump" in SECRET_ONLY_NOTE
    assert parse_manifest(ARCHIVE, m.to_json()) == m


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe", f"its {MANIFEST} is not JSON"),
    (b"[1, 2]", f"its {MANIFEST} is not of format {FORMAT} (it says None)"),
    (json.dumps({"format": "tarball/9"}).encode(), f"its {MANIFEST} is not of format {FORMAT} (it says 'tarball/9')"),
    (json.dumps({"format": FORMAT, "files": {}}).encode(), f"its {MANIFEST} lacks a field or has one of the wrong type"),
])
def test_a_manifest_that_is_not_ours_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(RefusedArchive) as exc:
        parse_manifest(ARCHIVE, raw)
    assert str(exc.value) == refused(reason)


def with_field(path: tuple[str, ...], value: object) -> bytes:
    body = json.loads(manifest().to_json())
    at = body
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value
    return json.dumps(body).encode().replace(b'"INF"', b"1e400")


@pytest.mark.parametrize(("path", "value", "field"), [
    (("files", SECRET, "sha256"), "\u00e9" * 64, "sha256"),  # compare_digest raised TypeError on non-ASCII
    (("files", SECRET, "sha256"), "A" * 64, "sha256"),
    (("files", DATABASE, "sha256"), "b" * 63, "sha256"),
    (("secret_check", ), "c" * 65, "secret_check"),
    (("users", ), "INF", "users"),  # 1e400: int() raised OverflowError
    (("workspaces", ), -1, "workspaces"),
    (("files", DATABASE, "size"), -4096, "size"),
    (("files", DATABASE, "size"), 4096.5, "size"),
    (("users", ), True, "users"),
    (("hatchway_version", ), "0.1\x1b]0;owned\x07", "hatchway_version"),
    (("schema_revision", ), "", "schema_revision"),
    (("schema_revision", ), "7" * 65, "schema_revision"),
])
def test_a_manifest_field_no_backup_writes_is_refused(path: tuple[str, ...], value: object, field: str) -> None:
    with pytest.raises(RefusedArchive) as exc:
        parse_manifest(ARCHIVE, with_field(path, value))
    assert str(exc.value) == refused(f"its {MANIFEST} has an invalid {field}")


def test_a_manifest_must_list_what_its_contents_hold() -> None:
    body = json.loads(manifest().to_json())
    body["contents"] = "everything"
    with pytest.raises(RefusedArchive) as exc:
        parse_manifest(ARCHIVE, json.dumps(body).encode())
    assert str(exc.value) == refused(f"its {MANIFEST} names unknown contents 'everything'")
    body["contents"] = SECRET_ONLY  # but lists the database too
    with pytest.raises(RefusedArchive) as exc:
        parse_manifest(ARCHIVE, json.dumps(body).encode())
    assert str(exc.value) == refused(f"its {MANIFEST} lists ['deployment.secret', 'hatchway.db'], not what a secret-only backup holds")


def test_the_members_of_a_backup_pass() -> None:
    check_members(ARCHIVE, [member(MANIFEST), member(SECRET, offset=1536), member(DATABASE, 4096, offset=2560)], 8192)


@pytest.mark.parametrize(("members", "reason"), [
    ([member("/etc/cron.d/x")], "member '/etc/cron.d/x' has an absolute path"),
    ([member("../../root/.ssh/authorized_keys")], "member '../../root/.ssh/authorized_keys' points outside the archive ('..')"),
    ([member("a/../../x")], "member 'a/../../x' points outside the archive ('..')"),
    ([member(DATABASE, kind=tarfile.SYMTYPE, link="/etc/shadow")], "member 'hatchway.db' is a link to '/etc/shadow'"),
    ([member(SECRET, kind=tarfile.LNKTYPE, link=MANIFEST)], "member 'deployment.secret' is a link to 'manifest.json'"),
    ([member("dev", kind=tarfile.CHRTYPE)], "member 'dev' is not a regular file"),
    ([member("sub", kind=tarfile.DIRTYPE)], "member 'sub' is not a regular file"),
    ([member("workspaces/x")], "member 'workspaces/x' is not part of a Hatchway backup"),
    ([member(MANIFEST), member(MANIFEST, offset=2048)], "member 'manifest.json' appears twice"),
    ([member(SECRET, 5000)], "member 'deployment.secret' is 5000 bytes, more than it can be (at most 1024)"),
    ([member(MANIFEST, 10**9)], "member 'manifest.json' is 1000000000 bytes, more than it can be (at most 65536)"),
    ([member(DATABASE, 10**12)], "member 'hatchway.db' is cut off (the file ends before its 1000000000000 bytes do)"),
    ([member(SECRET)], "it has no manifest.json"),
    ([], "it has no manifest.json"),
    ([member(MANIFEST), member(SECRET, -1024, offset=1024)], "member 'deployment.secret' has a negative size (-1024)"),
    ([member(MANIFEST, 600, offset=1024), member(SECRET, offset=512)],
     "member 'deployment.secret' does not come after 'manifest.json' (its header was crafted to make a tar reader go back)"),
    ([member(MANIFEST, 0, offset=512), member(SECRET, offset=512)],
     "member 'deployment.secret' does not come after 'manifest.json' (its header was crafted to make a tar reader go back)"),
])
def test_a_member_a_backup_cannot_hold_is_refused(members: list[tarfile.TarInfo], reason: str) -> None:
    with pytest.raises(RefusedArchive) as exc:
        check_members(ARCHIVE, members, 8192)
    assert str(exc.value) == refused(reason)


def test_the_archive_must_hold_what_its_manifest_lists() -> None:
    m = manifest()
    check_matches_manifest(ARCHIVE, m, [member(MANIFEST), member(SECRET, 65), member(DATABASE, 4096)])
    with pytest.raises(RefusedArchive) as exc:
        check_matches_manifest(ARCHIVE, m, [member(MANIFEST), member(SECRET, 65)])
    assert str(exc.value) == refused("it holds ['deployment.secret'] but its manifest.json lists ['deployment.secret', 'hatchway.db']")
    with pytest.raises(RefusedArchive) as exc:
        check_matches_manifest(ARCHIVE, m, [member(MANIFEST), member(SECRET, 65), member(DATABASE, 4095)])
    assert str(exc.value) == refused("hatchway.db is 4095 bytes but its manifest.json says 4096")


def test_a_member_that_does_not_match_its_checksum_is_refused() -> None:
    m = manifest()
    check_digest(ARCHIVE, m, SECRET, "a" * 64)
    with pytest.raises(RefusedArchive) as exc:
        check_digest(ARCHIVE, m, DATABASE, sha256(b"something else"))
    assert str(exc.value) == refused("hatchway.db does not match its checksum in manifest.json (it was altered or damaged)")


def test_members_read_from_a_real_tar_carry_the_offsets_the_checks_use() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, b"{}"), (SECRET, b"ab" * 32 + b"\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(whole), mode="r:") as tar:
        members = tar.getmembers()
    check_members(ARCHIVE, members, len(whole))
    with pytest.raises(RefusedArchive) as exc:  # the same headers in a file cut inside the secret's data
        check_members(ARCHIVE, members, members[1].offset_data + 10)
    assert str(exc.value) == refused("member 'deployment.secret' is cut off (the file ends before its 65 bytes do)")


def test_members_are_taken_one_at_a_time_and_an_endless_archive_is_refused_after_four() -> None:
    taken: list[str] = []

    def endless() -> Iterator[tarfile.TarInfo]:
        for n in itertools.count():
            name = (MANIFEST, SECRET, DATABASE, SECRET)[min(n, 3)]
            taken.append(name)
            yield member(name, offset=512 + 1024 * n)

    with pytest.raises(RefusedArchive) as exc:
        check_members(ARCHIVE, endless(), 1 << 20)
    assert str(exc.value) == refused("member 'deployment.secret' appears twice")
    assert taken == [MANIFEST, SECRET, DATABASE, SECRET]
