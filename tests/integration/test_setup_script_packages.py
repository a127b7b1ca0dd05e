"""What ``scripts/setup`` installs from Debian: the README's two commands start on a fresh Debian
12 machine, whose ``python3`` cannot make a virtualenv until ``python3-venv`` is installed
("ensurepip is not available"), so both lists must bring it in.

The script is run for real, from a copy in a scratch directory and as a user other than root:
it then names every package it would install and stops at making the virtualenv (``PYTHON`` is
``false``), so nothing is installed and the clone's ``.venv`` is never touched."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.debian_packages import RUNTIME, TESTS_ONLY

REPO = Path(__file__).resolve().parents[2]

NOT_ROOT = "==> Not root: skipping Debian packages ("


@pytest.fixture
def scratch_copy() -> Iterator[Path]:
    """``<scratch>/scripts/setup``, readable by the unprivileged user the script runs as."""
    top = Path(tempfile.mkdtemp(prefix="hatchway-setup-"))
    try:
        (top / "scripts").mkdir()
        shutil.copy2(REPO / "scripts" / "setup", top / "scripts" / "setup")
        for path in (top, top / "scripts"):
            path.chmod(0o755)
        yield top / "scripts" / "setup"
    finally:
        shutil.rmtree(top)


def packages_named(setup: Path, *args: str) -> list[str]:
    as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "PYTHON": "false"}
    done = subprocess.run([*as_user, str(setup), *args], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1  # at "$PYTHON -m venv", after the packages were named
    lines = [line.replace("\x1b[1m", "").replace("\x1b[0m", "") for line in done.stderr.splitlines()]
    named = [line for line in lines if line.startswith(NOT_ROOT)]
    assert len(named) == 1, done.stderr
    assert named[0].endswith("); tests needing them say so")
    return named[0][len(NOT_ROOT):].split(")")[0].split()


def test_runtime_install_brings_python3_venv(scratch_copy: Path) -> None:
    assert packages_named(scratch_copy, "--runtime") == RUNTIME


def test_full_install_is_the_runtime_one_plus_the_tests_packages(scratch_copy: Path) -> None:
    assert packages_named(scratch_copy) == RUNTIME + TESTS_ONLY
