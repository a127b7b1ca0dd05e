"""Swagger UI's licence and NOTICE ship inside hatchway (fastapi-swagger carries neither), so an
installed server can serve them next to Swagger UI's files, as Apache-2.0 asks."""

from __future__ import annotations

import hashlib
from importlib.resources import files

#: The Apache License 2.0 as apache.org/licenses/LICENSE-2.0.txt has it.
APACHE_2_0_SHA256 = "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30"


def test_the_packaged_licence_is_the_apache_2_0_text() -> None:
    text = files("hatchway.server").joinpath("swagger_ui/LICENSE").read_bytes()
    assert hashlib.sha256(text).hexdigest() == APACHE_2_0_SHA256
    assert text.splitlines()[1:3] == [b"                                 Apache License", b"                           Version 2.0, January 2004"]


def test_the_packaged_notice_is_swagger_uis() -> None:
    notice = files("hatchway.server").joinpath("swagger_ui/NOTICE").read_bytes()
    assert notice == b"swagger-ui\nCopyright 2020-2021 SmartBear Software Inc.\n"
