"""The CLI's stored login: one small JSON file under the config dir, mode 0600.

Kept free of heavy imports: ``hatchway proxy`` reads it on every SSH connection.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

SESSION_FILE = "session.json"


def config_dir(override: str | os.PathLike[str] | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("HATCHWAY_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".config" / "hatchway"


@dataclass(frozen=True)
class StoredSession:
    url: str
    token: str
    username: str


#: The most of session.json that is read; it holds three short strings.
SESSION_MAX = 64 * 1024


class NotLoggedIn(Exception):
    """No usable stored session; ``problem`` says why the file could not be read, if it exists."""

    def __init__(self, problem: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem

    def __str__(self) -> str:
        if self.problem:
            return (f"cannot read your saved session: {self.problem}; then log in again: "
                    "hatchway login URL --username NAME --password-stdin")
        return "you are not logged in; run: hatchway login URL --username NAME --password-stdin"


def load_session(directory: Path | None = None) -> StoredSession:
    from hatchway.fileutil import FileTooLargeError, NotRegularFileError, read_regular  # cheap: see fileutil

    path = (directory or config_dir()) / SESSION_FILE
    try:
        data = json.loads(read_regular(path, SESSION_MAX)[1])
        return StoredSession(url=data["url"], token=data["token"], username=data["username"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        raise NotLoggedIn() from None
    except OSError as exc:  # a FIFO, a device, a huge file, no permission: say so, never hang on it
        said = str(exc) if isinstance(exc, (NotRegularFileError, FileTooLargeError)) else f"{path}: {exc.strerror or exc}"
        raise NotLoggedIn(said) from None


def save_session(session: StoredSession, directory: Path | None = None) -> Path:
    from hatchway.fileutil import (  # not on the proxy's path
        atomic_write,
        make_private_dir,
    )

    # Created 0700 when missing; an existing one (HATCHWAY_CONFIG_DIR may name any folder) keeps
    # its mode, and session.json is 0600 by itself.
    d = make_private_dir(directory or config_dir(), parents=True)
    path = d / SESSION_FILE
    body = json.dumps({"url": session.url, "token": session.token, "username": session.username}, indent=2)
    atomic_write(path, (body + "\n").encode(), 0o600)
    return path


def clear_session(directory: Path | None = None) -> bool:
    try:
        ((directory or config_dir()) / SESSION_FILE).unlink()
        return True
    except FileNotFoundError:
        return False
