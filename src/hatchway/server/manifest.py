"""What an agent needs to know about its workspace, built from the rows."""

from __future__ import annotations

from typing import Any

from hatchway.db.models import Workspace


def hatchway_defaults(ws: Workspace, url: str) -> dict[str, str]:
    """The variables Hatchway defines in every workspace (SPEC 3.2), in a stable order.

    ``HATCHWAY_USER_EMAIL`` comes first because SPEC 3.2 gives the section's exact shape with it
    on the first variable line; the rest follow in a fixed order so the file only changes when a
    value does.
    """
    return {
        "HATCHWAY_USER_EMAIL": ws.owner.email,
        "HATCHWAY_USER_NAME": ws.owner.username,
        "HATCHWAY_WORKSPACE_NAME": ws.name,
        "HATCHWAY_WORKSPACE_ID": ws.id,
        "HATCHWAY_PROVIDER_NAME": ws.provider.name,
        "HATCHWAY_URL": url,
    }


def build_manifest(ws: Workspace, url: str) -> dict[str, Any]:
    return {
        "workspace": {"id": ws.id, "name": ws.name},
        "owner": {"username": ws.owner.username, "email": ws.owner.email},
        "provider": {
            "name": ws.provider.name,
            "kind": ws.provider.kind,
            "external_connect": ws.provider.external_connect,
        },
        "authorized_keys": [ws.owner.ssh_public_key],
        "image_env": dict(ws.env or {}),
        "defaults": hatchway_defaults(ws, url),
    }
