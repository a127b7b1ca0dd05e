"""The CLI's stored session (session.json), which ``hatchway proxy`` reads for every SSH
connection: what it says when the file is missing, damaged or not a file at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hatchway.cli.session import NotLoggedIn, StoredSession, load_session, save_session

LOGIN = "hatchway login URL --username NAME --password-stdin"


def test_a_saved_session_reads_back(tmp_path: Path) -> None:
    session = StoredSession(url="http://127.0.0.1:7080", token="hws_x", username="bob")
    path = save_session(session, tmp_path / "cfg")
    assert path == tmp_path / "cfg" / "session.json"
    assert load_session(tmp_path / "cfg") == session


@pytest.mark.parametrize("content", [None, b"", b"{", b"[]", b'{"url": "u"}', b"\xff\xfe"])
def test_a_missing_or_damaged_session_means_not_logged_in(tmp_path: Path, content: bytes | None) -> None:
    if content is not None:
        (tmp_path / "session.json").write_bytes(content)
    with pytest.raises(NotLoggedIn) as caught:
        load_session(tmp_path)
    assert str(caught.value) == f"you are not logged in; run: {LOGIN}"


def test_a_fifo_in_place_of_the_session_is_refused_at_once(tmp_path: Path) -> None:
    """Nobody writes into it: reading it used to hang every ssh that ran hatchway proxy."""
    os.mkfifo(tmp_path / "session.json")
    with pytest.raises(NotLoggedIn) as caught:
        load_session(tmp_path)
    assert str(caught.value) == (
        f"cannot read your saved session: {tmp_path}/session.json is a named pipe (FIFO), not a regular file; "
        f"replace it with a regular file; then log in again: {LOGIN}"
    )


def test_a_session_linked_to_an_endless_device_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "session.json").symlink_to("/dev/zero")
    with pytest.raises(NotLoggedIn, match=r"session.json is a character device, not a regular file"):
        load_session(tmp_path)


def test_an_oversized_session_file_is_refused_with_its_limit(tmp_path: Path) -> None:
    (tmp_path / "session.json").write_bytes(b" " * (64 * 1024 + 1))
    with pytest.raises(NotLoggedIn) as caught:
        load_session(tmp_path)
    assert str(caught.value) == (
        f"cannot read your saved session: {tmp_path}/session.json is larger than 64 KiB; trim it to what is "
        f"needed; then log in again: {LOGIN}"
    )


def test_the_proxy_reads_its_session_without_the_writing_half_of_fileutil(tmp_path: Path) -> None:
    """tempfile (and the random and shutil it pulls in) cost the proxy milliseconds per ssh."""
    code = (
        "import sys; from pathlib import Path; import hatchway.cli.proxy\n"
        "from hatchway.cli.session import load_session, NotLoggedIn\n"
        f"try: load_session(Path({str(tmp_path)!r}))\nexcept NotLoggedIn: pass\n"
        "print('tempfile' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "False\n"
