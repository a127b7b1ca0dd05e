"""Startup injection on a real (temporary) HOME: modes, preservation, rejection, full disk."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hatchway.agent.inject import inject

KEY1 = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip() + " hatchway-alice"
KEY2 = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip() + " hatchway-alice"
USER_KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh").decode().strip() + " me@laptop"

DEFAULTS = {
    "HATCHWAY_USER_NAME": "alice",
    "HATCHWAY_USER_EMAIL": "alice@example.com",
    "HATCHWAY_WORKSPACE_NAME": "dev",
    "HATCHWAY_WORKSPACE_ID": "w1",
    "HATCHWAY_PROVIDER_NAME": "byo",
    "HATCHWAY_URL": "http://127.0.0.1:7080",
}

AK_BLOCK = (
    "# ------------START-HATCHWAY-KEYS------------\n"
    "# Managed by the Hatchway agent; your own keys go outside this block.\n"
    "{keys}"
    "# ------------END-HATCHWAY-KEYS--------------\n"
)

ENV_SECTION = (
    "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------\n"
    "# The following has been auto-generated at workspace startup\n"
    "# You should not hand-edit this section unless you are deleting it.\n"
    "\n"
    "{lines}"
    "\n"
    "# ----------------- END HATCHWAY -----------------------\n"
)


def manifest(keys: list[str] | None = None, image_env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "workspace": {"id": "w1", "name": "dev"},
        "owner": {"username": "alice", "email": "alice@example.com"},
        "provider": {"name": "byo", "kind": "manual", "external_connect": True},
        "authorized_keys": [KEY1] if keys is None else keys,
        "image_env": {"FOO": "bar"} if image_env is None else image_env,
        "defaults": DEFAULTS,
    }


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def default_lines(extra: str = "FOO=bar\n") -> str:
    return "".join(f"{k}={v}\n" for k, v in DEFAULTS.items()) + extra


def test_fresh_home_gets_exact_files_and_modes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    result = inject(manifest(), home)
    assert result.diagnostics == []
    assert result.wrote == ["~/.ssh/authorized_keys", "~/.ssh/environment"]
    assert mode(home / ".ssh") == 0o700
    ak, env = home / ".ssh" / "authorized_keys", home / ".ssh" / "environment"
    assert mode(ak) == 0o600 and mode(env) == 0o600
    assert ak.stat().st_uid == os.getuid() and env.stat().st_uid == os.getuid()
    assert ak.read_text() == AK_BLOCK.format(keys=KEY1 + "\n")
    assert env.read_text() == ENV_SECTION.format(lines=default_lines())
    assert result.variables == [*DEFAULTS.items(), ("FOO", "bar")]


def test_user_content_is_preserved_byte_for_byte_and_modes_are_fixed(tmp_path: Path) -> None:
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o755)
    os.chmod(ssh, 0o755)
    user_ak = f"{USER_KEY}\r\n# my comment \xe9\n".encode("latin-1") + b"no-newline-at-end"
    (ssh / "authorized_keys").write_bytes(user_ak)
    os.chmod(ssh / "authorized_keys", 0o644)
    user_env = b"MY_VAR=keep me \n# note\n"
    (ssh / "environment").write_bytes(user_env)

    result = inject(manifest(), tmp_path)
    assert result.diagnostics == []
    assert mode(ssh) == 0o700
    assert mode(ssh / "authorized_keys") == 0o600
    assert (ssh / "authorized_keys").read_bytes() == AK_BLOCK.format(keys=KEY1 + "\n").encode() + user_ak
    assert (ssh / "environment").read_bytes() == ENV_SECTION.format(lines=default_lines()).encode() + user_env


def test_regenerated_key_replaces_the_old_one_and_identical_rewrites_are_skipped(tmp_path: Path) -> None:
    inject(manifest([KEY1]), tmp_path)
    ak = tmp_path / ".ssh" / "authorized_keys"
    inode = ak.stat().st_ino
    again = inject(manifest([KEY1]), tmp_path)
    assert again.wrote == [] and ak.stat().st_ino == inode  # unchanged manifest: no rewrite

    result = inject(manifest([KEY2]), tmp_path)
    assert result.wrote == ["~/.ssh/authorized_keys"]
    text = ak.read_text()
    assert KEY2 in text and KEY1.split()[1] not in text


def test_unsafe_variables_are_rejected_logged_and_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    image = {"GOOD": "1", "BAD-NAME": "x", "INJECT": "a\nPATH=/evil", "HATCHWAY_USER_NAME": "mallory"}
    with caplog.at_level(logging.WARNING, logger="hatchway.agent"):
        result = inject(manifest(image_env=image), tmp_path)
    env = (tmp_path / ".ssh" / "environment").read_text()
    assert env == ENV_SECTION.format(lines=default_lines("GOOD=1\n"))
    assert "/evil" not in env and "mallory" not in env
    assert sorted(r.name for r in result.rejected) == ["BAD-NAME", "HATCHWAY_USER_NAME", "INJECT"]
    assert len(result.diagnostics) == 3
    for name in ("BAD-NAME", "INJECT", "HATCHWAY_USER_NAME"):
        matching = [d for d in result.diagnostics if d.startswith(f"environment variable {name!r} was not written")]
        assert len(matching) == 1, result.diagnostics
        assert any(name in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert "value contains a newline" in next(d for d in result.diagnostics if "'INJECT'" in d)
    assert result.variables == [*DEFAULTS.items(), ("GOOD", "1")]


def test_a_malformed_key_is_reported_and_the_good_ones_still_written(tmp_path: Path) -> None:
    result = inject(manifest([KEY1, "ssh-ed25519 not-base64!", KEY1 + "\nssh-rsa AAAA evil"]), tmp_path)
    assert (tmp_path / ".ssh" / "authorized_keys").read_text() == AK_BLOCK.format(keys=KEY1 + "\n")
    assert len(result.diagnostics) == 2
    assert all(d.startswith("a public key from the server was not written") for d in result.diagnostics)


def test_full_disk_leaves_the_old_files_intact_and_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    inject(manifest([KEY1], {"FOO": "bar"}), tmp_path)
    ssh = tmp_path / ".ssh"
    old_ak, old_env = (ssh / "authorized_keys").read_bytes(), (ssh / "environment").read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # Fail inside atomic_write, after the temp file was written: the realistic place for ENOSPC.
    monkeypatch.setattr(os, "fsync", no_space)
    with caplog.at_level(logging.ERROR, logger="hatchway.agent"):
        result = inject(manifest([KEY2], {"FOO": "baz"}), tmp_path)
    monkeypatch.undo()

    assert (ssh / "authorized_keys").read_bytes() == old_ak
    assert (ssh / "environment").read_bytes() == old_env
    assert sorted(os.listdir(ssh)) == ["authorized_keys", "environment"]  # no temp files left
    assert result.diagnostics == [
        "could not write ~/.ssh/authorized_keys: No space left on device; the previous file is left unchanged",
        "could not write ~/.ssh/environment: No space left on device; the previous file is left unchanged",
    ]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == result.diagnostics
    assert result.wrote == []

    # The agent keeps running: the next manifest, with space again, is written.
    result = inject(manifest([KEY2], {"FOO": "baz"}), tmp_path)
    assert result.diagnostics == []
    assert KEY2 in (ssh / "authorized_keys").read_text()
    assert "FOO=baz\n" in (ssh / "environment").read_text()


def test_unwritable_ssh_dir_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / ".ssh").write_text("a file where the directory should be")
    result = inject(manifest(), tmp_path)
    assert result.diagnostics == [
        "~/.ssh is not a directory; move it aside so it can be created; authorized_keys and environment were not updated"
    ]
    assert result.variables == [*DEFAULTS.items(), ("FOO", "bar")]  # the built-in server still gets them


def test_group_writable_home_is_reported_for_strict_modes(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o775)
    result = inject(manifest(), tmp_path)
    assert result.diagnostics == [
        (f"the home directory {tmp_path} is writable by group or others: OpenSSH (StrictModes) will ignore "
        f"~/.ssh/authorized_keys; run chmod go-w {tmp_path}")
    ]
    assert (tmp_path / ".ssh" / "authorized_keys").exists()


# ---- ~/.ssh of the person's own making (the agent runs as them, not as root) -------------------

NOBODY = 65534


@pytest.fixture
def nobody_home() -> Any:
    """A home owned by uid 65534, in a directory that uid can reach (pytest's tmp_path is under a
    root-only 0700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("switching to another uid needs root")
    base = Path(tempfile.mkdtemp(prefix="hw-inject-"))
    try:
        os.chmod(base, 0o755)
        home = base / "home"
        home.mkdir(mode=0o755)
        os.chown(home, NOBODY, NOBODY)
        yield home
    finally:
        shutil.rmtree(base)


def _inject_as(uid: int, home: Path) -> dict[str, Any]:
    """Run inject() in a forked child that has dropped to ``uid``, as the agent runs in a workspace."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            result = inject(manifest(), home)
            payload = json.dumps({"diagnostics": result.diagnostics, "wrote": result.wrote}).encode()
        except BaseException as exc:  # noqa: BLE001 - anything goes back to the test
            payload = json.dumps({"error": repr(exc)}).encode()
        os.write(write_end, payload)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_root_owned_known_hosts_in_ssh_does_not_stop_injection(nobody_home: Path) -> None:
    """A Dockerfile's RUN ssh-keyscan >> ~/.ssh/known_hosts leaves it owned by root in a 0755
    ~/.ssh. It is the person's directory: the platform key and the environment go in all the same."""
    ssh = nobody_home / ".ssh"
    ssh.mkdir(mode=0o755)
    os.chown(ssh, NOBODY, NOBODY)
    (ssh / "known_hosts").write_text("github.com ssh-ed25519 AAAA\n")
    out = _inject_as(NOBODY, nobody_home)
    assert out == {"diagnostics": [], "wrote": ["~/.ssh/authorized_keys", "~/.ssh/environment"]}
    assert (ssh / "authorized_keys").read_text() == AK_BLOCK.format(keys=KEY1 + "\n")
    assert (ssh / "authorized_keys").stat().st_uid == NOBODY
    assert mode(ssh) == 0o700
    assert (ssh / "known_hosts").read_text() == "github.com ssh-ed25519 AAAA\n"
    assert (ssh / "known_hosts").stat().st_uid == 0


def test_an_ssh_dir_owned_by_root_is_reported_with_the_command_that_fixes_it(nobody_home: Path) -> None:
    ssh = nobody_home / ".ssh"
    ssh.mkdir(mode=0o755)
    out = _inject_as(NOBODY, nobody_home)
    assert out == {
        "diagnostics": [
            f"~/.ssh belongs to root, and nobody cannot write into it; run chown nobody: {ssh} as root; "
            "authorized_keys and environment were not updated"
        ],
        "wrote": [],
    }
    assert sorted(ssh.iterdir()) == []


def test_a_shared_writable_ssh_dir_of_someone_else_is_reported_for_strict_modes(nobody_home: Path) -> None:
    """A Dockerfile's ``mkdir -m 777 ~/.ssh`` as root: the files go in, but OpenSSH's StrictModes
    refuses a ~/.ssh that others may write into, so the agent says so instead of staying silent."""
    ssh = nobody_home / ".ssh"
    ssh.mkdir()
    os.chmod(ssh, 0o777)
    out = _inject_as(NOBODY, nobody_home)
    assert out == {
        "diagnostics": [
            f"~/.ssh belongs to root and is writable by group or others: OpenSSH (StrictModes) will ignore "
            f"~/.ssh/authorized_keys; as root, run chown nobody: {ssh} && chmod 700 {ssh}"
        ],
        "wrote": ["~/.ssh/authorized_keys", "~/.ssh/environment"],
    }
    assert (ssh / "authorized_keys").stat().st_uid == NOBODY


def test_a_home_the_user_cannot_write_into_is_reported_with_the_command_that_fixes_it(nobody_home: Path) -> None:
    os.chown(nobody_home, 0, 0)  # an image that made the home as root and never gave it away
    out = _inject_as(NOBODY, nobody_home)
    assert out == {
        "diagnostics": [
            f"could not create ~/.ssh: nobody may not write into the home directory {nobody_home}; as root, run "
            f"install -d -m 700 -o nobody {nobody_home}/.ssh; authorized_keys and environment were not updated"
        ],
        "wrote": [],
    }


def test_a_fifo_or_endless_device_in_place_of_a_file_is_reported_and_the_other_file_written(tmp_path: Path) -> None:
    """A FIFO used to hang the agent before it served any SSH, and a link to /dev/zero ran it out
    of memory. Both are reported and left as they are; the other file is still written."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir(mode=0o700)
    os.mkfifo(ssh / "environment")
    (ssh / "authorized_keys").symlink_to("/dev/zero")
    result = inject(manifest(), tmp_path)
    assert result.diagnostics == [
        f"could not read ~/.ssh/authorized_keys: {ssh}/authorized_keys is a character device, not a regular file; "
        "replace it with a regular file; it was left unchanged",
        f"could not read ~/.ssh/environment: {ssh}/environment is a named pipe (FIFO), not a regular file; "
        "replace it with a regular file; it was left unchanged",
    ]
    assert result.io_failed
    os.unlink(ssh / "environment")
    result = inject(manifest(), tmp_path)
    assert result.wrote == ["~/.ssh/environment"]
    assert os.readlink(ssh / "authorized_keys") == "/dev/zero"
