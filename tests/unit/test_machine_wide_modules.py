"""The modules tests/conftest.py keeps on one xdist worker must exist: a renamed one would
silently run beside the others and meet their Unix users and namespaces."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import MACHINE_WIDE

ROOT = Path(__file__).resolve().parents[2]


def test_every_machine_wide_module_exists() -> None:
    assert sorted(m for m in MACHINE_WIDE if not (ROOT / m).is_file()) == []
