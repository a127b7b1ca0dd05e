"""Where Swagger UI's files for ``/api/v1/docs`` are on this machine.

They come from the fastapi-swagger package, whose layout is its own business (0.4 keeps them in
``fastapi_swagger/resources``), so they are looked for by name anywhere inside the installed
package, once, when the server starts. The names are Swagger UI's own (its ``dist`` directory's),
the same since Swagger UI 3. A release that no longer ships one of them gets a message naming that
release (logged at start, and on the docs page), rather than a silently blank page.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

from hatchway.server.errors import API_DOCS

PACKAGE = "fastapi-swagger"
MODULE = "fastapi_swagger"
#: The files of Swagger UI's distribution that the docs page loads.
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")


class SwaggerUIMissing(RuntimeError):
    """The installed fastapi-swagger does not hold Swagger UI's files the docs page needs."""


def locate(root: Path, names: Sequence[str], release: str) -> dict[str, Path]:
    """Each of ``names`` as found in ``root`` or below, for ``release`` (e.g. "fastapi-swagger
    0.4.64", for the error). Should a release ship more than one copy, the one nearest ``root``
    is taken, the same one every time."""
    found: dict[str, Path] = {}
    for name in names:
        copies = sorted((p for p in root.rglob(name) if p.is_file()), key=lambda p: (len(p.parts), str(p)))
        if copies:
            found[name] = copies[0]
    missing = [name for name in names if name not in found]
    if missing:
        raise SwaggerUIMissing(
            f"{release} (in {root}) has no {', '.join(missing)}: Swagger UI's files, which the API docs "
            f"page {API_DOCS} serves, are missing; reinstall it (pip install --force-reinstall "
            f"{PACKAGE}), or, if this release no longer ships them, install the release before it"
        )
    return found


def installed() -> dict[str, Path]:
    """Swagger UI's files (``ASSETS``) in the installed fastapi-swagger, by name. The package is
    found, not imported: its own code (a FastAPI app of its own) is not needed, and a release
    whose import fails here must cost the docs page only."""
    spec = find_spec(MODULE)
    try:
        release = f"{PACKAGE} {metadata.version(PACKAGE)}"
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(MODULE)
        root = Path(spec.submodule_search_locations[0])
    except (metadata.PackageNotFoundError, ModuleNotFoundError):
        raise SwaggerUIMissing(
            f"{PACKAGE} is not installed: it holds Swagger UI's files, which the API docs page "
            f"{API_DOCS} serves; install hatchway's dependencies again (pip install {PACKAGE})"
        ) from None
    return locate(root, ASSETS, release)
