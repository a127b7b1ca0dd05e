"""The host keys the image's sshd will present, read from disk before it answers on port 22.

An image that runs OpenSSH under systemd starts sshd a few seconds after the agent, or later
(``systemctl start ssh`` by hand). Until then the agent serves connections with its built-in
server and reports only that server's host key, so a ``hatchway config-ssh`` run in that window
pins only it, and once sshd answers ssh refuses the "changed" host key until config-ssh runs
again. sshd's public host keys are world-readable files, named by the ``HostKey`` lines of its
config (OpenSSH's three default paths when there are none): reporting them while nothing
answers on port 22 pins both servers' keys from the start, and a switch either way just works.

:func:`host_key_paths` and :func:`public_key_line` are pure; :func:`installed_host_keys` is the
I/O edge (blocking: run it with ``asyncio.to_thread``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from hatchway.agent.diagnostics import SSHD_CONFIG, ConfigError, IncludeLoader, filesystem_loader, walk_config

#: sshd's HostKey default when its config names none (OpenSSH's _PATH_HOST_*_KEY_FILE).
DEFAULT_HOST_KEYS = ("/etc/ssh/ssh_host_rsa_key", "/etc/ssh/ssh_host_ecdsa_key", "/etc/ssh/ssh_host_ed25519_key")
#: Public key types a host key file may hold (certificates and security keys are not host keys
#: that known_hosts pins this way).
KEY_TYPES = frozenset({"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"})
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
#: A public key file is one line; anything much bigger is not one.
MAX_PUB_FILE = 16 * 1024


def host_key_paths(text: str, load_include: IncludeLoader, *, path: str = SSHD_CONFIG) -> list[str]:
    """The private host key files sshd loads, in order: every global ``HostKey``, else the
    defaults. Raises :class:`ConfigError` like :func:`hatchway.agent.diagnostics.walk_config`."""
    named = [args[0] for keyword, args in walk_config(text, load_include, path=path) if keyword == "hostkey" and args]
    paths = named or list(DEFAULT_HOST_KEYS)
    return list(dict.fromkeys(paths))


def public_key_line(text: str) -> str | None:
    """``type base64`` of a ``.pub`` file's key, or None when it holds no host public key."""
    fields = text.strip().split()
    if len(fields) < 2 or "\n" in text.strip() or fields[0] not in KEY_TYPES or not _BASE64.fullmatch(fields[1]):
        return None
    return f"{fields[0]} {fields[1]}"


def installed_host_keys(config_path: str = SSHD_CONFIG) -> list[str]:
    """The public halves of sshd's host keys that exist on disk. Blocking; never raises for
    I/O errors: a missing or unreadable config means the defaults, a missing key is skipped."""
    try:
        text = Path(config_path).read_text(encoding="utf-8", errors="replace")
        paths = host_key_paths(text, filesystem_loader(os.path.dirname(config_path)), path=config_path)
    except (OSError, ConfigError):
        paths = list(DEFAULT_HOST_KEYS)
    keys: list[str] = []
    for private in paths:
        try:
            with open(private + ".pub", "rb") as f:
                raw = f.read(MAX_PUB_FILE + 1)
        except OSError:
            continue
        if len(raw) > MAX_PUB_FILE:
            continue
        line = public_key_line(raw.decode("ascii", errors="replace"))
        if line is not None and line not in keys:
            keys.append(line)
    return keys
