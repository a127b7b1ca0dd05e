"""Make a ``--cvm`` container's cgroup file systems writable for its systemd, from the host.

Docker mounts them read-only in a container that lacks CAP_SYS_ADMIN, and systemd as PID 1
must write there. The container used to get CAP_SYS_ADMIN so that its start-up shim could
remount them and then drop the capability. But every process Docker started in it with
``docker exec`` (the agent, the built-in server's sessions, the set-up) kept CAP_SYS_ADMIN in its
bounding set, so ``sudo`` in a session gave it back. And code the image chose ran in the shim
while it held the capability: the image's ``LD_PRELOAD`` or its ``/etc/ld.so.preload``. Now the
container never has CAP_SYS_ADMIN. The server, root on the host, remounts the cgroup file systems
while the shim waits (``docker_incontainer.cvm_init``).

``python -I -m hatchway.providers.cgroup_rw PID`` enters PID's mount namespace (only a process
with one thread may) and remounts there. Everything it uses is loaded before it enters.
After that, paths resolve in the container's file system, which the image controls, so the
only paths it touches are the mount points it already has. It ends with ``os._exit``, which
imports nothing more.
"""

from __future__ import annotations

import ctypes
import os
import sys

from hatchway.providers.docker_incontainer import read_only_cgroups

CLONE_NEWNS = 0x00020000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND = 0x2, 0x4, 0x8, 0x20, 0x1000
#: What a remount of each one sets: writable, and as Docker mounted it otherwise.
REMOUNT_FLAGS = MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV | MS_NOEXEC


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -I -m hatchway.providers.cgroup_rw PID", file=sys.stderr)
        return 2
    pid = argv[0]
    with open(f"/proc/{pid}/mountinfo") as fh:  # the mount points as the container sees them
        targets = [point.encode() for point in read_only_cgroups(fh.read())]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
    namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if libc.setns(namespace, CLONE_NEWNS) != 0:
        print(f"cannot enter the container's mount namespace: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    for point in targets:
        if libc.mount(None, point, None, REMOUNT_FLAGS, None) != 0:
            sys.stderr.write(f"cannot make {point.decode()} writable: {os.strerror(ctypes.get_errno())}\n")
            sys.stderr.flush()
            os._exit(1)
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
