"""Who owns a session's terminal device, and who may write to it, as sshd sets it.

sshd's ``pty_setowner`` makes the terminal the user's, with group ``tty`` and mode 0620, so
``write``/``wall`` (setgid tty) can reach the user and ``mesg`` works; without a ``tty`` group it
is the user's primary group and 0600. The kernel's default (devpts ``mode=``/``gid=`` mount
options, often ``mode=600`` in containers) is not what a login shows under sshd, so it is set
explicitly. sshd runs as root and cannot fail here; the agent runs as the workspace user, who
may not be allowed to give the device to group ``tty``: then it stays as it is (0620 for the
user's own group would let that whole group write to the terminal).
"""

from __future__ import annotations

import grp
import logging
import os
import stat

log = logging.getLogger("hatchway.sshd")

TTY_GROUP = "tty"


def set_pty_owner(path: str) -> None:
    """Give the terminal device at ``path`` sshd's owner, group and mode. Blocking (a group
    lookup may ask NSS): run it in a thread."""
    uid = os.getuid()
    try:
        gid, mode = grp.getgrnam(TTY_GROUP).gr_gid, 0o620
    except KeyError:
        gid, mode = os.getgid(), 0o600
    st = os.stat(path)
    try:
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(path, uid, gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)
    except OSError as exc:
        log.debug("%s left as mode %o group %d: %s", path, stat.S_IMODE(st.st_mode), st.st_gid,
                  exc.strerror or exc)
