"""The agent's control-protocol helpers: URLs, dial fields, status messages."""

from __future__ import annotations

import json

import pytest

from hatchway.agent import protocol as p


@pytest.mark.parametrize(
    "given, expected",
    [
        ("http://127.0.0.1:7080", "http://127.0.0.1:7080"),
        ("https://hatchway.example.com/", "https://hatchway.example.com"),
        (" https://example.com/prefix/ ", "https://example.com/prefix"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert p.normalize_url(given) == expected


@pytest.mark.parametrize("bad", ["ws://x", "example.com", "http://", "http://x/?a=1", "ftp://x"])
def test_normalize_url_refuses(bad: str) -> None:
    with pytest.raises(p.URLError):
        p.normalize_url(bad)


def test_ws_urls() -> None:
    assert p.ws_url("http://h:1", p.CONTROL_PATH) == "ws://h:1/api/v1/agent/control"
    assert p.ws_url("https://h/pre", p.CONTROL_PATH) == "wss://h/pre/api/v1/agent/control"
    assert p.stream_url("https://h", "ab12cd34") == "wss://h/api/v1/agent/streams/ab12cd34"


@pytest.mark.parametrize(
    "value, ok",
    [("0123456789abcdef0123456789abcdef", True), ("ABCDEF12", True), ("../../x", False), ("ab", False),
     ("ab12cd34/../x", False), (None, False), (123, False), ("a" * 129, False)],
)
def test_valid_stream_id(value: object, ok: bool) -> None:
    assert p.valid_stream_id(value) is ok


@pytest.mark.parametrize(
    "value, expected",
    [("203.0.113.7 51234", ("203.0.113.7", 51234)), ("::1 22", ("::1", 22)), ("x", None), ("1.2.3.4 -1", None),
     ("1.2.3.4 70000", None), (None, None), ("bad\nhost 1", None)],
)
def test_parse_client(value: object, expected: tuple[str, int] | None) -> None:
    assert p.parse_client(value) == expected


def test_hello_and_report_carry_every_field() -> None:
    st = p.Status("0.1.0", "dev", "openssh", "OpenSSH_9.2p1", ("ssh-ed25519 AAAA",), ("d1",))
    fields = {"version": "0.1.0", "os_user": "dev", "ssh_mode": "openssh", "ssh_server_version": "OpenSSH_9.2p1",
              "host_keys": ["ssh-ed25519 AAAA"], "diagnostics": ["d1"]}
    assert json.loads(p.hello(st)) == {"type": "hello", **fields}
    assert json.loads(p.report(st)) == {"type": "report", **fields}


def test_stream_header() -> None:
    assert json.loads(p.stream_header("built-in")) == {"mode": "built-in"}
    assert json.loads(p.stream_header("openssh", "SSH-2.0-OpenSSH_9.2p1")) == {
        "mode": "openssh", "version": "SSH-2.0-OpenSSH_9.2p1"}


def test_trim_diagnostics_dedupes_shortens_and_announces_overflow() -> None:
    assert p.trim_diagnostics(["a", "b", "a"]) == ("a", "b")
    long = p.trim_diagnostics(["x" * 600])[0]
    assert len(long) == 500 and long.endswith("…")
    many = p.trim_diagnostics([f"d{i}" for i in range(25)])
    assert len(many) == 20
    assert many[-1] == "... and 6 more problems; see the agent's log"
    assert many[:19] == tuple(f"d{i}" for i in range(19))


@pytest.mark.parametrize("raw", [b"{}", "not json", "[1]", '{"type": 3}', "{}", "[" * 200000 + "]" * 200000])
def test_parse_message_rejects_non_messages(raw: str | bytes) -> None:
    assert p.parse_message(raw) is None


def test_parse_message() -> None:
    assert p.parse_message('{"type": "dial", "stream": "ab"}') == {"type": "dial", "stream": "ab"}
