"""Swagger UI's licence and NOTICE, and the licences of the libraries its bundle holds, ship inside
hatchway (fastapi-swagger carries none of them), so an installed server can serve them next to
Swagger UI's files, as Apache-2.0 and those licences ask. The bundle's notices are those of one
bundle: the installed one must still be it."""

from __future__ import annotations

import hashlib
from importlib.resources import files

from hatchway.server.swagger_files import installed

#: The Apache License 2.0 as apache.org/licenses/LICENSE-2.0.txt has it.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"
#: swagger-ui-dist 5.34.0's swagger-ui-bundle.js.LICENSE.txt, and the bundle it belongs to.
BUNDLE_NOTICES_SHA256 = "e5a4792feaa5332dfba37f1d7adf84308b93b4f2d8da0569a9f48a3cb61c969b"
BUNDLE_SHA256 = "3f6abf70480db7e07914df4c98a77385f22ea585eaf457a3e6415ba0eae2d167"


def test_the_packaged_licence_is_the_apache_2_0_text() -> None:
    text = files("hatchway.server").joinpath("swagger_ui/LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    assert text.splitlines()[1:3] == [b"                                 Apache License", b"                           Version 2.0, January 2004"]


def test_the_packaged_notice_is_swagger_uis() -> None:
    notice = files("hatchway.server").joinpath("swagger_ui/NOTICE").read_bytes()
    assert notice == b"swagger-ui\nCopyright 2020-2021 SmartBear Software Inc.\n"


def test_the_packaged_bundle_notices_are_those_of_the_installed_bundle() -> None:
    notices = files("hatchway.server").joinpath("swagger_ui/swagger-ui-bundle.js.LICENSE.txt").read_bytes()
    assert hashlib.sha256(notices).hexdigest() == BUNDLE_NOTICES_SHA256
    bundle = installed()["swagger-ui-bundle.js"].read_bytes()
    # A fastapi-swagger with another Swagger UI needs that bundle's notices (swagger-ui-dist on npm).
    assert hashlib.sha256(bundle).hexdigest() == BUNDLE_SHA256
    assert bundle.startswith(b"/*! For license information please see swagger-ui-bundle.js.LICENSE.txt */\n")
