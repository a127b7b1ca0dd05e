"""The built-in SSH server's persistent host key.

A host key that changes on every agent start trains users to switch host-key checking off
(coder/coder's agent did exactly that). So the key is generated once, stored 0600 in a 0700
directory, and read back on every later start; `hatchway config-ssh` pins it in known_hosts.

This runs once at agent startup, before any connection is served, so plain (blocking) file
I/O is acceptable here; the event-loop-sensitive paths never call it.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import asyncssh

from hatchway.fileutil import ensure_private_dir

log = logging.getLogger("hatchway.sshd")

HOST_KEY_ALGORITHM = "ssh-ed25519"


class HostKeyError(RuntimeError):
    """The stored host key exists but cannot be used.

    We refuse to silently replace it: a new key would make every pinned client report
    "REMOTE HOST IDENTIFICATION HAS CHANGED", which is worse than a clear startup error.
    """


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Return the host key stored at ``path``, creating an Ed25519 key there the first time.

    Creation is race-free: the key is written to a private temp file and hard-linked into
    place, so if two starts race, exactly one key wins and both return that one.
    """
    path = Path(path)
    ensure_private_dir(path.parent)
    try:
        return _load(path)
    except FileNotFoundError:
        pass

    key = asyncssh.generate_private_key(HOST_KEY_ALGORITHM)
    data = key.export_private_key("openssh")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(
                tmp, path
            )  # fails if someone else created it meanwhile: theirs wins
        except FileExistsError:
            log.debug("host key at %s was created concurrently; using that one", path)
            return _load(path)
        _fsync_dir(path.parent)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    log.info("created SSH host key %s (%s)", path, key.get_fingerprint())
    return key


def _load(path: Path) -> asyncssh.SSHKey:
    """Read an existing key, tightening its mode to 0600 if someone loosened it."""
    st = path.stat()  # FileNotFoundError tells the caller to create one
    if st.st_mode & 0o077:
        os.chmod(path, 0o600)
    try:
        return asyncssh.read_private_key(path)
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise HostKeyError(f"cannot use SSH host key {path}: {exc}") from None


def _fsync_dir(path: Path) -> None:
    """Make the new directory entry durable, so a crash cannot lose a key we already handed out."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)
