"""The sshd_config of a local workspace started with ``--openssh`` (pure).

It carries the settings of the documented example image (SPEC 6) so that the agent's port-22
forwarding path behaves on one machine exactly as it would in such an image:
``PermitUserEnvironment yes`` (so ``~/.ssh/environment`` is applied), X11 forwarding on and not
bound to localhost, keys only. Everything else is narrowed to this one workspace: only its user
may log in, only on the namespace's own loopback, with its own host key.
"""

from __future__ import annotations

SFTP_SERVER = "/usr/lib/openssh/sftp-server"


def render_sshd_config(*, host_key: str, allow_user: str, port: int = 22, sftp_server: str = SFTP_SERVER) -> str:
    """The whole file. ``UsePAM no`` keeps PAM's session modules (motd, systemd, /etc/environment)
    out of the picture; the account's password field is ``*`` (no password, not locked), which
    sshd without PAM accepts for key logins."""
    for value in (host_key, allow_user, sftp_server):
        if any(c.isspace() or c in "\"'#" for c in value) or not value:
            raise ValueError(f"unsafe value for sshd_config: {value!r}")
    lines = [
        "# Written by Hatchway for this workspace; rewritten at every start.",
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        "ListenAddress ::1",
        f"HostKey {host_key}",
        "PidFile none",
        "UsePAM no",
        "PermitRootLogin no",
        f"AllowUsers {allow_user}",
        "PubkeyAuthentication yes",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitUserEnvironment yes",
        "X11Forwarding yes",
        "X11UseLocalhost no",
        "AllowTcpForwarding yes",
        "AllowAgentForwarding yes",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
        f"Subsystem sftp {sftp_server}",
        "",
    ]
    return "\n".join(lines)
