"""The tree has no unused imports or variables, undefined names or shadowed definitions
(pyflakes' checks, through ruff, as configured in pyproject.toml): dead code and names that
only fail when their line runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_pyflakes_finds_nothing() -> None:
    try:
        import ruff  # noqa: F401 - only whether it is installed
    except ImportError:
        pytest.fail("ruff is not installed: scripts/setup installs the test dependencies (pip install -e '.[test]')")
    r = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-fix", "--no-cache", "--output-format", "concise", "src", "tests", "bench"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
