"""The environment every built-in-server session starts with (pure: no I/O, no processes).

SPEC §3.4 promises that sessions get "the workspace environment (image env + defaults +
``~/.ssh/environment``)" in login and non-login sessions alike, and that the variables tools
expect from OpenSSH (``SSH_CONNECTION``, ``SSH_CLIENT``, ``SSH_TTY``) are there. We build it the
way OpenSSH's ``do_setup_env`` does with ``PermitUserEnvironment yes``, so a workspace behaves the
same whether port 22 is OpenSSH or us. Layers, later ones win:

1. ``base_env``: image variables + Hatchway defaults, as the agent passes them;
2. variables the client sent (SendEnv/SetEnv), only ``LANG``, ``LC_*`` and names the operator
   accepted (like OpenSSH's ``AcceptEnv``), so a client cannot inject ``LD_PRELOAD``;
3. what sshd itself always sets: USER, LOGNAME, HOME, SHELL, PATH, MAIL, SSH_CLIENT,
   SSH_CONNECTION and, with a PTY only, SSH_TTY and TERM (not an empty one: a client whose own
   TERM is unset sends "", and sshd then sets none), SSH_ORIGINAL_COMMAND when a key's
   ``command="..."`` replaced the client's; then what this session forwards
   (DISPLAY for ``ssh -X``, SSH_AUTH_SOCK for ``ssh -A``), only in the session that asked;
4. ``environment="..."`` options of the authorized_keys line that authenticated;
5. ``~/.ssh/environment`` (the user may override anything, as with OpenSSH).
"""

from __future__ import annotations

import ipaddress
import os
import pwd
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# OpenSSH gives up on an environment file longer than this; we just ignore the excess lines.
MAX_ENVIRONMENT_LINES = 1000
_ALWAYS_ACCEPTED_CLIENT_ENV = ("LANG", "LC_*")
_UNKNOWN_ADDR = ("127.0.0.1", 0)


@dataclass(frozen=True)
class SessionIdentity:
    """Who sessions run as.

    The agent already runs as the workspace user, so this is descriptive (it picks the shell,
    home and the one acceptable SSH user name); nothing here changes uid.
    """

    user: str
    home: Path
    shell: str

    @classmethod
    def current(cls) -> SessionIdentity:
        """The identity of the running process, from the password database like sshd does."""
        pw = pwd.getpwuid(os.getuid())
        # An empty shell field means /bin/sh to login(1) and sshd alike.
        return cls(
            user=pw.pw_name, home=Path(pw.pw_dir), shell=pw.pw_shell or "/bin/sh"
        )


def parse_environment_file(text: str) -> list[tuple[str, str]]:
    """Parse ``~/.ssh/environment`` exactly as OpenSSH's ``read_environment_file`` does.

    Leading blanks are skipped, blank and ``#`` lines ignored, the first ``=`` splits name from
    value, the value is taken verbatim (no quoting, trailing spaces kept), and lines without
    ``=`` are skipped. Entries unusable in an environment (empty name, NUL) are dropped.
    """
    out: list[tuple[str, str]] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        if lineno > MAX_ENVIRONMENT_LINES:
            break
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        if not sep or not _usable(name, value):
            continue
        out.append((name, value))
    return out


def client_env_accepted(name: str, accepted: Iterable[str] = ()) -> bool:
    """Whether a variable the client sent may enter the session (``AcceptEnv`` semantics).

    ``LANG`` and ``LC_*`` always are (OpenSSH distributions ship that default); ``accepted``
    adds names or shell-style patterns the operator configured.
    """
    return any(
        fnmatchcase(name, pat) for pat in (*_ALWAYS_ACCEPTED_CLIENT_ENV, *accepted)
    )


def ipv4_of_mapped(host: str) -> str | None:
    """The IPv4 address an IPv4-mapped IPv6 ``host`` (``::ffff:192.0.2.7``, what a dual-stack
    listener reports for an IPv4 client) stands for, as sshd shows it and matches ``from=``
    against it; None for anything else."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return None


def _addr(addr: tuple[str, int] | None) -> tuple[str, int]:
    """An address as OpenSSH prints it: IPv4-mapped IPv6 shown as IPv4, placeholder if unknown."""
    if not addr:
        return _UNKNOWN_ADDR
    host, port = str(addr[0]), int(addr[1])
    return (ipv4_of_mapped(host) or host or _UNKNOWN_ADDR[0], port)


def ssh_connection_values(
    client_addr: tuple[str, int] | None, server_addr: tuple[str, int] | None
) -> tuple[str, str]:
    """Return ``(SSH_CONNECTION, SSH_CLIENT)`` for the given endpoints."""
    cip, cport = _addr(client_addr)
    sip, sport = _addr(server_addr)
    return f"{cip} {cport} {sip} {sport}", f"{cip} {cport} {sport}"


def build_session_env(
    *,
    base_env: Mapping[str, str],
    identity: SessionIdentity,
    client_addr: tuple[str, int] | None,
    server_addr: tuple[str, int] | None,
    client_env: Mapping[str, str] | None = None,
    accepted_client_env: Iterable[str] = (),
    term: str | None = None,
    tty_path: str | None = None,
    key_env: Mapping[str, str] | None = None,
    user_environment: str | None = None,
    forwarded_env: Mapping[str, str] | None = None,
    original_command: str | None = None,
) -> dict[str, str]:
    """Compute a session's environment; see the module docstring for the layering.

    ``term`` and ``tty_path`` are given only for PTY sessions; ``user_environment`` is the text
    of ``~/.ssh/environment`` (None when absent), already read by the caller off the event loop.
    """
    env: dict[str, str] = dict(base_env)
    # A PTY-less session must not inherit a stale terminal from whoever started the agent.
    env.pop("SSH_TTY", None)

    accepted = tuple(accepted_client_env)
    for name, value in (client_env or {}).items():
        if client_env_accepted(name, accepted):
            env[name] = value

    ssh_connection, ssh_client = ssh_connection_values(client_addr, server_addr)
    env.update(
        USER=identity.user,
        LOGNAME=identity.user,
        HOME=str(identity.home),
        SHELL=identity.shell,
        PATH=base_env.get("PATH") or DEFAULT_PATH,
        MAIL=f"/var/mail/{identity.user}",
        SSH_CLIENT=ssh_client,
        SSH_CONNECTION=ssh_connection,
    )
    if tty_path is not None:
        env["SSH_TTY"] = tty_path
    if term:
        env["TERM"] = term
    if original_command is not None:
        env["SSH_ORIGINAL_COMMAND"] = original_command
    # A session without -A must not get someone else's agent socket (DISPLAY may legitimately
    # come from the image, e.g. a virtual desktop).
    env.pop("SSH_AUTH_SOCK", None)
    env.update(forwarded_env or {})

    env.update(key_env or {})
    if user_environment is not None:
        env.update(parse_environment_file(user_environment))

    return {k: v for k, v in env.items() if _usable(k, v)}


def _usable(name: str, value: str) -> bool:
    """execve cannot carry an empty name, '=' in a name, or NUL anywhere."""
    return bool(name) and "=" not in name and "\0" not in name and "\0" not in value
