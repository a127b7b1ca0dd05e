"""tests/conftest.py keeps the MACHINE_WIDE modules on one xdist worker, one after the other; every
other module runs beside them. A module left off that list would meet their Unix users,
namespaces and iptables rules, so the helpers that make those may only be used from it."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import MACHINE_WIDE

ROOT = Path(__file__).resolve().parents[2]
#: The helpers that change the machine: namespaces and users, iptables, the Docker engine, and
#: running commands as another Unix user.
MACHINE_HELPERS = re.compile(r"^\s*(?:from tests\.helpers(?:\.| import .*\b)|import tests\.helpers\.)(netns|packetdrop|docker|asuser)\b",
                             re.MULTILINE)


def test_every_machine_wide_module_exists() -> None:
    assert sorted(m for m in MACHINE_WIDE if not (ROOT / m).is_file()) == []


def test_only_machine_wide_modules_use_the_helpers_that_change_the_machine() -> None:
    users = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("test_*.py")
             if MACHINE_HELPERS.search(p.read_text())}
    assert "tests/e2e/test_docker_workspaces.py" in users  # the pattern finds what it is for
    assert sorted(users - MACHINE_WIDE) == []
