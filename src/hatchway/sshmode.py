"""How people are told what serves SSH in a workspace: the CLI and the web UI say the same."""

from __future__ import annotations


def port22_server_text(version: str | None) -> str:
    """The SSH server on the workspace's own port 22 that connections are forwarded to.

    The agent forwards to any SSH-2 server there; only OpenSSH is called "openssh". Another
    (Dropbear, say) is named by its own version string, so nobody goes looking for the
    sshd_config or the diagnostics an OpenSSH would have."""
    if not version:
        return "openssh (unknown version)"
    if version.startswith("OpenSSH_"):
        return f"openssh ({version})"
    return f"SSH server on port 22 ({version})"
