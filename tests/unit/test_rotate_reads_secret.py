"""rotate-secret reads the data dir's secret as the server does (crypto.parse_deployment_secret):
a file that holds none is a refusal naming it, never a ValueError traceback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hatchway.server.rotate import RotationError, rotate_secret


@pytest.mark.parametrize("text", ["not a secret\n", "abcd\n", "zz" * 32 + "\n"])
def test_a_secret_file_that_holds_no_secret_is_refused(tmp_path: Path, text: str) -> None:
    secret = tmp_path / "deployment.secret"
    secret.write_text(text)
    with pytest.raises(RotationError) as exc:
        asyncio.run(rotate_secret(tmp_path, f"sqlite:///{tmp_path / 'hatchway.db'}"))
    assert str(exc.value) == f"{secret}: the deployment secret must be at least 32 bytes of hex; nothing was changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deployment.secret"]  # no database made, nothing rotated
