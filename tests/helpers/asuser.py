"""A real ``hatchway server`` run as an unprivileged throwaway Unix user (tests run as root).

The test's Python (and so the server's) may live where such a user cannot go (``/root`` is 0700
on this machine). The server is therefore started the way the local provider starts a workspace
as root: ``unshare --mount`` and the provider's own launcher, which passes through, in that
private mount namespace only, the directories on the way to the interpreter and the code, then
drops to the user and ``exec``s the server. Nothing else of the machine changes, and the server
process is the one started (its pid is ``proc.pid``), so stopping it works as usual.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from hatchway.providers.local import NSLAUNCH, _mode_of, _passthrough_targets, launcher_env
from hatchway.providers.nslaunch import passthrough_plan
from tests.helpers.netns import TempUser
from tests.helpers.server import HATCHWAY, RunningServer


class UserServer(RunningServer):
    """``RunningServer`` as ``user``, with its data dir in the user's home."""

    def __init__(self, user: TempUser, extra_env: dict[str, str] | None = None) -> None:
        super().__init__(user.home / "data", extra_env=extra_env)
        self.user = user

    def spawn(self, log: Any) -> subprocess.Popen[bytes]:
        server_argv = self.argv()
        targets = _passthrough_targets(self.user.home) + [str(Path(HATCHWAY).parent), str(Path(sys.prefix).resolve())]
        plan = {
            "passthrough": passthrough_plan(targets, _mode_of),
            "sshd_config": None,
            "sshd": "",
            "uid": self.user.uid,
            "gid": int(subprocess.run(["id", "-g", self.user.name], capture_output=True, text=True, check=True).stdout),
            "user": self.user.name,
            "home": str(self.user.home),
            "argv": server_argv,
        }
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "HOME": str(self.user.home),
            "USER": self.user.name,
            "LOGNAME": self.user.name,
            **self.extra_env,
        }
        return subprocess.Popen(
            ["unshare", "--mount", "--", *NSLAUNCH], stdout=log, stderr=log, env=launcher_env(plan, env), cwd="/",
        )
