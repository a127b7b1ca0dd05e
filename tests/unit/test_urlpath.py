"""Names as URL path segments: whatever a person types, the server decodes back exactly that, and
no name can end the path, walk to another resource, or make the URL invalid."""

from __future__ import annotations

from urllib.parse import unquote

import httpx
import pytest

from hatchway.cli.proxy import stream_url
from hatchway.cli.urlpath import routable, segment

NAMES = ["dev", "dev#x", "?x", "#", "de%76", "a\nb", "a\tb", "..", ".", "...", "a/../b", "é", "a b", "~x", ""]


@pytest.mark.parametrize("name", NAMES)
def test_the_server_decodes_exactly_the_name(name: str) -> None:
    url = httpx.Client(base_url="http://h").build_request("GET", f"/api/v1/workspaces/{segment(name)}/stop").url
    head, _, tail = url.raw_path.decode("ascii").rpartition("/")
    assert tail == "stop" and (url.query, url.fragment) == (b"", "")
    assert head.startswith("/api/v1/workspaces/")
    assert unquote(head.removeprefix("/api/v1/workspaces/")) == name


def test_exact_encodings() -> None:
    assert [segment(n) for n in ("dev", "dev#x", "?x", "de%76", "a\nb", "..", ".", "...", "a/b", "é")] == [
        "dev", "dev%23x", "%3Fx", "de%2576", "a%0Ab", "%2E%2E", "%2E", "...", "a%2Fb", "%C3%A9",
    ]


def test_bytes_that_are_not_utf8_are_sent_as_those_bytes() -> None:
    assert segment("a\udcff") == "a%FF"  # how Python decodes the argv byte 0xff


def test_routable() -> None:
    assert [routable(n) for n in ("dev", "..", "#", "", "a/b", "/")] == [True, True, True, False, False, False]


def test_the_proxy_stream_url_uses_the_same_encoding() -> None:
    assert stream_url("https://h/base", "..") == "wss://h/base/api/v1/workspaces/%2E%2E/ssh"
    assert stream_url("http://h", "bob#x/dev\udcff") == "ws://h/api/v1/workspaces/dev%FF/ssh?owner=bob%23x"


def test_text_that_is_not_utf8_is_refused_before_sending_and_a_password_is_never_echoed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from hatchway.cli.common import ApiClient

    client = ApiClient("http://127.0.0.1:9")  # nothing listens there: the refusal comes first
    for body, params, said in (
        ({"username": "bob", "password": "s3cret\udcff"}, None, "the password"),
        (None, {"owner": "b\udcffb"}, 'owner "b\\xffb"'),
        ({"name": "ok", "env": {"K\udcff": "v"}}, None, 'env "K\\xff"'),
    ):
        with pytest.raises(SystemExit) as info:
            client.call("POST", "/users", body, params)
        assert info.value.code == 1
        assert capsys.readouterr().err == (
            f"hatchway: {said} is not valid UTF-8, and the API takes only UTF-8 text; "
            "give it in UTF-8 (check your terminal's or script's encoding)\n"
        )
