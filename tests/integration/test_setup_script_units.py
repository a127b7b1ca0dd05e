"""``scripts/setup`` as root keeps the Debian packages it installs from starting at the next boot:
policy-rc.d stops their daemons from starting now, but Debian's maintainer scripts still enable
their systemd units, so after a reboot the machine would serve sshd on port 22, PostgreSQL,
nginx and Docker. The script disables again exactly the units that its own ``apt-get install``
enabled, and says so; units enabled before it ran are never touched.

A copy of the real script runs as root from a scratch directory, with a ``PATH`` holding only
shell stubs of ``apt-get``, ``dpkg-query`` and ``systemctl`` (which log their arguments and keep
a pretend list of enabled units in the scratch directory) and links to the few real tools the
script needs, so no real package manager or systemctl can be reached. Its policy-rc.d goes to
the scratch directory (``HATCHWAY_SETUP_POLICY_RC_D``), and ``PYTHON`` is ``false``, so it
stops at making the virtualenv."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.debian_packages import RUNTIME, TESTS_ONLY

pytestmark = [pytest.mark.root, pytest.mark.skipif(os.geteuid() != 0, reason="scripts/setup installs Debian packages only as root")]

REPO = Path(__file__).resolve().parents[2]
REAL_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# Everything scripts/setup runs before the virtualenv, besides the stubs and bash's builtins.
REAL_TOOLS = ["bash", "dirname", "id", "grep", "chmod", "rm", "cat"]

PACKAGES = RUNTIME + TESTS_ONLY
LIST = "list-unit-files --state=enabled --no-legend --no-pager"
INSTALLING = "==> Installing Debian packages: " + " ".join(PACKAGES)
CREATING_VENV = "==> Creating virtualenv .venv"

# Enabled before: the machine's own, and containerd (docker.io's dependency) the developer had.
BEFORE = ["containerd.service", "cron.service", "getty@.service", "remote-fs.target"]
# What Debian's maintainer scripts enable: containerd stays enabled as it was.
ADDED = ["docker.service", "nginx.service", "postgresql.service", "ssh.service", "docker.socket"]
AFTER = ["containerd.service", "cron.service", "docker.service", "getty@.service", "nginx.service",
         "postgresql.service", "ssh.service", "docker.socket", "remote-fs.target"]


def disabled_line(units: list[str]) -> str:
    return ("==> Disabled for the next boot what these packages enabled (Hatchway starts its own daemons): "
            + " ".join(units) + "; to turn one back on: systemctl enable NAME")


STUBS = {
    # Nothing is installed.
    "dpkg-query": """#!/bin/sh
exit 1
""",
    # install: notes whether the policy-rc.d is in place, then "enables" the units.
    "apt-get": """#!/bin/sh
echo "$*" >> "$FAKE/apt-get.log"
case "$1" in
install)
  if [ -x "$HATCHWAY_SETUP_POLICY_RC_D" ]; then cat "$HATCHWAY_SETUP_POLICY_RC_D" > "$FAKE/policy-rc.d-during-install"; fi
  cat "$FAKE/enabled-after-install" > "$FAKE/enabled"
  if [ -e "$FAKE/list-fails-after-install" ]; then : > "$FAKE/list-fails"; fi
  echo "apt-get's chatter"
  exit "$(cat "$FAKE/install-status")"
  ;;
esac
""",
    # Lists "$FAKE/enabled" as systemctl does with --no-legend; disable fails for the units listed
    # in "$FAKE/disable-fails" and is otherwise as talkative as the real one without --quiet.
    "systemctl": """#!/bin/sh
echo "$*" >> "$FAKE/systemctl.log"
case "$1" in
list-unit-files)
  if [ -e "$FAKE/list-fails" ]; then echo "Failed to list unit files: Connection timed out" >&2; exit 1; fi
  while read -r unit; do printf '%s enabled enabled\\n' "$unit"; done < "$FAKE/enabled"
  ;;
disable)
  for unit; do :; done
  while read -r failing; do
    if [ "$failing" = "$unit" ]; then echo "Failed to disable unit: Access denied" >&2; echo "Also on stdout"; exit 1; fi
  done < "$FAKE/disable-fails"
  echo "Synchronizing state of $unit with SysV service script with /lib/systemd/systemd-sysv-install." >&2
  echo "Removed \\"/etc/systemd/system/multi-user.target.wants/$unit\\"."
  ;;
esac
""",
}


@dataclass
class Run:
    status: int
    stdout: str
    steps: list[str]  # stderr, lines without the bold escapes
    apt_get: list[str]
    systemctl: list[str] | None  # None: never called
    policy_rc_d_during_install: str | None


class Scratch:
    def __init__(self, top: Path) -> None:
        self.top = top
        self.fake = top / "fake"
        self.stubs = top / "stubs"
        self.tools = top / "tools"

    def run(self, *, enabled_before: list[str], enabled_after: list[str], systemctl: bool = True,
            disable_fails: tuple[str, ...] = (), list_fails: str = "", install_status: int = 0) -> Run:
        shutil.rmtree(self.fake, ignore_errors=True)
        shutil.rmtree(self.stubs, ignore_errors=True)
        self.fake.mkdir()
        self.stubs.mkdir()
        (self.fake / "enabled").write_text("".join(u + "\n" for u in enabled_before))
        (self.fake / "enabled-after-install").write_text("".join(u + "\n" for u in enabled_after))
        (self.fake / "disable-fails").write_text("".join(u + "\n" for u in disable_fails))
        (self.fake / "install-status").write_text(f"{install_status}\n")
        if list_fails == "always":
            (self.fake / "list-fails").touch()
        elif list_fails == "after install":
            (self.fake / "list-fails-after-install").touch()
        for name, text in STUBS.items():
            if name == "systemctl" and not systemctl:
                continue
            (self.stubs / name).write_text(text)
            (self.stubs / name).chmod(0o755)
        policy_rc_d = self.top / "policy-rc.d"
        env = {
            "PATH": f"{self.stubs}:{self.tools}",
            "HOME": "/nonexistent",
            "PYTHON": "false",
            "FAKE": str(self.fake),
            "HATCHWAY_SETUP_POLICY_RC_D": str(policy_rc_d),
        }
        real_before = _state(REAL_POLICY_RC_D)
        done = subprocess.run([str(self.top / "scripts" / "setup")], capture_output=True, text=True, env=env, timeout=60)
        assert _state(REAL_POLICY_RC_D) == real_before
        assert not policy_rc_d.exists()  # removed on exit
        assert not (self.top / ".venv").exists()

        def log(name: str) -> list[str] | None:
            path = self.fake / f"{name}.log"
            return path.read_text().splitlines() if path.exists() else None

        during = self.fake / "policy-rc.d-during-install"
        return Run(
            status=done.returncode,
            stdout=done.stdout,
            steps=[line.replace("\x1b[1m", "").replace("\x1b[0m", "") for line in done.stderr.splitlines()],
            apt_get=log("apt-get") or [],
            systemctl=log("systemctl"),
            policy_rc_d_during_install=during.read_text() if during.exists() else None,
        )


def _state(path: Path) -> tuple[bytes, int] | None:
    """The content and mtime of ``path``, or None when it does not exist."""
    try:
        return path.read_bytes(), path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


@pytest.fixture
def scratch() -> Iterator[Scratch]:
    top = Path(tempfile.mkdtemp(prefix="hatchway-setup-units-"))
    try:
        (top / "scripts").mkdir()
        shutil.copy2(REPO / "scripts" / "setup", top / "scripts" / "setup")
        (top / "tools").mkdir()
        for tool in REAL_TOOLS:
            real = shutil.which(tool, path="/usr/bin:/bin")
            assert real is not None, tool
            (top / "tools" / tool).symlink_to(real)
        yield Scratch(top)
    finally:
        shutil.rmtree(top)


INSTALL = f"install -y -qq --no-install-recommends {' '.join(PACKAGES)}"


def test_disables_exactly_the_units_its_install_enabled(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=AFTER)
    assert run.status == 1  # at "$PYTHON -m venv", after the packages
    assert run.apt_get == ["update -qq", INSTALL]
    assert run.policy_rc_d_during_install == "#!/bin/sh\nexit 101\n"
    assert run.systemctl == [LIST, LIST] + [f"disable --quiet {unit}" for unit in ADDED]
    assert run.steps == [INSTALLING, disabled_line(ADDED), CREATING_VENV]
    assert run.stdout == ""


def test_without_systemctl_nothing_is_disabled_or_said(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=AFTER, systemctl=False)
    assert run.status == 1
    assert run.apt_get == ["update -qq", INSTALL]
    assert run.systemctl is None
    assert run.steps == [INSTALLING, CREATING_VENV]
    assert run.stdout == ""


def test_a_failed_disable_warns_and_the_setup_goes_on(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=AFTER, disable_fails=("nginx.service",))
    assert run.status == 1  # still reached the virtualenv
    assert run.systemctl == [LIST, LIST] + [f"disable --quiet {unit}" for unit in ADDED]
    assert run.steps == [
        INSTALLING,
        "==> Warning: systemctl disable nginx.service failed (status 1: Failed to disable unit: Access denied Also on stdout);"
        " it will start at the next boot",
        disabled_line(["docker.service", "postgresql.service", "ssh.service", "docker.socket"]),
        CREATING_VENV,
    ]
    assert run.stdout == ""


def test_nothing_newly_enabled_nothing_disabled(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=BEFORE)
    assert run.status == 1
    assert run.systemctl == [LIST, LIST]
    assert run.steps == [INSTALLING, CREATING_VENV]


def test_no_unit_enabled_before_at_all(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=[], enabled_after=["ssh.service"])
    assert run.status == 1
    assert run.systemctl == [LIST, LIST, "disable --quiet ssh.service"]
    assert run.steps == [INSTALLING, disabled_line(["ssh.service"]), CREATING_VENV]


def test_units_are_not_listed_before_the_install_nothing_is_disabled(scratch: Scratch) -> None:
    """Without the list from before, every enabled unit would look new: none is touched."""
    run = scratch.run(enabled_before=BEFORE, enabled_after=AFTER, list_fails="always")
    assert run.status == 1
    assert run.apt_get == ["update -qq", INSTALL]
    assert run.systemctl == [LIST]
    assert run.steps == [
        INSTALLING,
        "==> Warning: could not list the enabled systemd units; what these packages enable will start at the next boot",
        CREATING_VENV,
    ]


def test_units_are_not_listed_after_the_install_nothing_is_disabled(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=AFTER, list_fails="after install")
    assert run.status == 1
    assert run.systemctl == [LIST, LIST]
    assert run.steps == [
        INSTALLING,
        "==> Warning: could not list the enabled systemd units after installing; what these packages enabled will start"
        " at the next boot",
        CREATING_VENV,
    ]


def test_a_failed_install_still_disables_what_it_enabled_then_fails(scratch: Scratch) -> None:
    run = scratch.run(enabled_before=BEFORE, enabled_after=BEFORE + ["ssh.service"], install_status=100)
    assert run.status == 100  # apt-get's, before the virtualenv
    assert run.systemctl == [LIST, LIST, "disable --quiet ssh.service"]
    assert run.steps == [INSTALLING, disabled_line(["ssh.service"])]
