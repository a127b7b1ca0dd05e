"""Writing the manifest into the workspace user's ``~/.ssh`` (SPEC 3.1, 3.2).

This is the I/O edge around the pure renderers in :mod:`hatchway.agent.authorized_keys` and
:mod:`hatchway.agent.environment`. It runs before the agent accepts any SSH connection and again
for every manifest the server pushes (a regenerated key must replace the old one within seconds).

Failure policy: the agent must keep serving even when a write fails (full disk, a read-only
home), because a half-working workspace is better than a dead agent, and the previous file is
still valid. So nothing here raises for I/O errors: each problem is logged and returned as a
diagnostic sentence for the control channel, and :func:`hatchway.fileutil.atomic_write`
guarantees the old file is left intact. Blocking: call :func:`inject` via ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hatchway import fileutil
from hatchway.agent import authorized_keys, environment

log = logging.getLogger("hatchway.agent.inject")

FILE_MODE = 0o600


@dataclass
class InjectionResult:
    """What the injection produced: the variables written (also the built-in server's base
    environment), those rejected, and every problem as a sentence for the server."""

    variables: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[Any] = field(default_factory=list)
    diagnostics: list[str] = field(default_factory=list)
    wrote: list[str] = field(default_factory=list)
    # A file could not be read or written (full disk, read-only home): worth trying again later,
    # unlike a value refused on its merits.
    io_failed: bool = False


def _str_dict(value: Any) -> dict[str, str]:
    """A manifest mapping, tolerating a missing or malformed one (the renderers judge values)."""
    return dict(value) if isinstance(value, Mapping) else {}


def _display(path: Path, home: Path) -> str:
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def _problem(result: InjectionResult, sentence: str, level: int = logging.WARNING) -> None:
    log.log(level, "%s", sentence)
    result.diagnostics.append(sentence)


def _io_problem(result: InjectionResult, sentence: str) -> None:
    result.io_failed = True
    _problem(result, sentence, logging.ERROR)


def _valid_keys(keys: Any, result: InjectionResult) -> list[str]:
    """The manifest's keys that the renderer accepts; each bad one is reported and skipped, so one
    malformed key cannot keep the good ones (or a revocation) out of the file."""
    good: list[str] = []
    for key in keys if isinstance(keys, list) else []:
        try:
            authorized_keys.render(b"", [key])
        except (ValueError, TypeError) as exc:
            _problem(result, f"a public key from the server was not written to ~/.ssh/authorized_keys: {exc}")
            continue
        good.append(key)
    return good


def _sync_file(path: Path, home: Path, render: Any, result: InjectionResult) -> None:
    """Rewrite ``path`` with ``render(existing_bytes)`` when content, mode or owner differ.

    Skipping identical rewrites keeps the file's inode and mtime stable across reconnects (every
    reconnect delivers a manifest) and avoids needless disk writes."""
    shown = _display(path, home)
    try:
        st: os.stat_result | None
        st, existing = fileutil.read_regular(path)
    except FileNotFoundError:
        st, existing = None, b""
    except OSError as exc:
        _io_problem(result, f"could not read {shown}: {exc.strerror or exc}; it was left unchanged")
        return
    try:
        new = render(existing)
    except ValueError as exc:  # the renderers refuse unsafe input as a last line of defence
        _problem(result, f"could not update {shown}: {exc}", logging.ERROR)
        return
    if (
        st is not None
        and new == existing
        and stat.S_IMODE(st.st_mode) == FILE_MODE
        and st.st_uid == os.getuid()
        and stat.S_ISREG(st.st_mode)
    ):
        log.debug("%s is up to date", shown)
        return
    try:
        fileutil.atomic_write(path, new, FILE_MODE)
    except OSError as exc:
        _io_problem(result, f"could not write {shown}: {exc.strerror or exc}; the previous file is left unchanged")
        return
    result.wrote.append(shown)
    log.info("wrote %s", shown)


def _ssh_dir_ready(ssh_dir: Path, home: Path, result: InjectionResult) -> bool:
    """Create ``~/.ssh`` 0700 if it is missing, and tighten it to 0700 if it is ours; False (with
    the reason reported) when the files cannot be written into it.

    It is the person's own directory, so what is in it is none of our business: a ``known_hosts``
    that a Dockerfile's ``ssh-keyscan`` left owned by root must not stop the platform key being
    installed. Only a directory owned by someone else is left alone, with the command that
    fixes it.
    """
    shown = _display(ssh_dir, home)
    not_updated = "authorized_keys and environment were not updated"
    try:
        fileutil.make_private_dir(ssh_dir)
        st = ssh_dir.stat()
    except FileExistsError:
        _io_problem(result, f"{shown} is not a directory; move it aside so it can be created; {not_updated}")
        return False
    except PermissionError:
        me = _user_name(os.getuid())
        _io_problem(
            result,
            f"could not create {shown}: {me} may not write into the home directory {home}; as root, run "
            f"install -d -m 700 -o {me} {ssh_dir}; {not_updated}",
        )
        return False
    except OSError as exc:
        _io_problem(result, f"could not create {shown} with mode 0700: {exc.strerror or exc}; {not_updated}")
        return False
    me = os.getuid()
    if st.st_uid != me:
        if not os.access(ssh_dir, os.W_OK | os.X_OK):
            _io_problem(
                result,
                f"{shown} belongs to {_user_name(st.st_uid)}, and {_user_name(me)} cannot write into it; "
                f"run chown {_user_name(me)}: {ssh_dir} as root; {not_updated}",
            )
            return False
        if st.st_mode & 0o022:
            # Writable to us only through its group or world bits, which StrictModes refuses: the
            # files would be written and then ignored by an sshd on port 22, with no word why.
            _problem(
                result,
                f"{shown} belongs to {_user_name(st.st_uid)} and is writable by group or others: OpenSSH "
                f"(StrictModes) will ignore ~/.ssh/authorized_keys; as root, run chown {_user_name(me)}: "
                f"{ssh_dir} && chmod 700 {ssh_dir}",
            )
        return True
    if stat.S_IMODE(st.st_mode) != 0o700:
        try:
            os.chmod(ssh_dir, 0o700)
        except OSError as exc:
            _problem(result, f"could not set {shown} to mode 0700: {exc.strerror or exc}")
    return True


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _strict_modes(home: Path, result: InjectionResult) -> None:
    """OpenSSH's StrictModes ignores authorized_keys under a group/world-writable home."""
    try:
        st = home.stat()
    except OSError:
        return
    if st.st_mode & 0o022:
        _problem(
            result,
            f"the home directory {home} is writable by group or others: OpenSSH (StrictModes) will "
            f"ignore ~/.ssh/authorized_keys; run chmod go-w {home}",
        )


def inject(manifest: Mapping[str, Any], home: Path) -> InjectionResult:
    """Write ``~/.ssh/authorized_keys`` and ``~/.ssh/environment`` for ``manifest`` under ``home``.

    Never raises for I/O problems (see the module docstring); returns what happened.
    """
    result = InjectionResult()
    variables, rejected = environment.build_variables(
        _str_dict(manifest.get("defaults")), _str_dict(manifest.get("image_env"))
    )
    result.variables, result.rejected = variables, rejected
    for item in rejected:
        _problem(result, f"environment variable {item.name!r} was not written to ~/.ssh/environment: {item.reason}")
    keys = _valid_keys(manifest.get("authorized_keys"), result)

    ssh_dir = home / ".ssh"
    if not _ssh_dir_ready(ssh_dir, home, result):
        return result
    _strict_modes(home, result)
    _sync_file(ssh_dir / "authorized_keys", home, lambda old: authorized_keys.render(old, keys), result)
    _sync_file(ssh_dir / "environment", home, lambda old: environment.render(old, variables), result)
    return result
