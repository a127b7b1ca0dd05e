"""Swagger UI's files are found by name wherever the installed fastapi-swagger keeps them, and a
release without them is refused with a message naming it and what to do."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest

from hatchway.server.swagger_files import ASSETS, SwaggerUIMissing, installed, locate


def test_the_installed_release_holds_every_file_the_page_loads() -> None:
    package = Path(str(files("fastapi_swagger")))
    found = installed()
    assert sorted(found) == sorted(ASSETS)
    for name, path in found.items():
        assert path.name == name and path.is_relative_to(package) and path.stat().st_size > 0


def test_files_are_found_at_any_depth_the_nearest_copy_first(tmp_path: Path) -> None:
    (tmp_path / "dist" / "legacy").mkdir(parents=True)
    (tmp_path / "dist" / "swagger-ui.css").write_text("new")
    (tmp_path / "dist" / "legacy" / "swagger-ui.css").write_text("old")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "swagger-ui-bundle.js").write_text("js")
    (tmp_path / "favicon-32x32.png").mkdir()  # a directory is not the file
    (tmp_path / "a" / "favicon-32x32.png").write_bytes(b"png")
    assert locate(tmp_path, ASSETS, "fastapi-swagger 9.9") == {
        "swagger-ui-bundle.js": tmp_path / "a" / "b" / "c" / "swagger-ui-bundle.js",
        "swagger-ui.css": tmp_path / "dist" / "swagger-ui.css",
        "favicon-32x32.png": tmp_path / "a" / "favicon-32x32.png",
    }


def test_a_release_without_them_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "swagger-ui.css").write_text("")
    with pytest.raises(SwaggerUIMissing) as raised:
        locate(tmp_path, ASSETS, "fastapi-swagger 0.9.1")
    assert str(raised.value) == (
        f"fastapi-swagger 0.9.1 (in {tmp_path}) has no swagger-ui-bundle.js, favicon-32x32.png: Swagger UI's "
        "files, which the API docs page /api/v1/docs serves, are missing; reinstall it (pip install "
        "--force-reinstall fastapi-swagger), or, if this release no longer ships them, install the release before it"
    )

