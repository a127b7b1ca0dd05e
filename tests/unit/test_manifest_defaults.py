"""The manifest's Hatchway defaults, rendered as the agent writes them (SPEC 3.2)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from hatchway.agent.environment import build_variables, render
from hatchway.server.manifest import hatchway_defaults


def test_defaults_render_in_the_specs_exact_shape_email_first() -> None:
    """SPEC 3.2 shows the section with ``HATCHWAY_USER_EMAIL`` on its first variable line."""
    ws: Any = SimpleNamespace(
        id="ws1",
        name="dev",
        owner=SimpleNamespace(username="alice", email="alice@example.com"),
        provider=SimpleNamespace(name="local"),
    )
    variables, rejected = build_variables(hatchway_defaults(cast(Any, ws), "https://hw.example"), {"EDITOR": "vim"})
    assert rejected == []
    assert render(b"", variables).decode().split("\n") == [
        "# --------- START HATCHWAY ENVIRONMENT VARIABLES ----------",
        "# The following has been auto-generated at workspace startup",
        "# You should not hand-edit this section unless you are deleting it.",
        "",
        "HATCHWAY_USER_EMAIL=alice@example.com",
        "HATCHWAY_USER_NAME=alice",
        "HATCHWAY_WORKSPACE_NAME=dev",
        "HATCHWAY_WORKSPACE_ID=ws1",
        "HATCHWAY_PROVIDER_NAME=local",
        "HATCHWAY_URL=https://hw.example",
        "EDITOR=vim",
        "",
        "# ----------------- END HATCHWAY -----------------------",
        "",
    ]
