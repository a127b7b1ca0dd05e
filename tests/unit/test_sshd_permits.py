"""permitopen/permitlisten on authorized_keys lines as sshd reads and applies them, and the
option reading the built-in server does beside asyncssh's."""

from __future__ import annotations

import asyncssh
import pytest

from hatchway.sshd.authkeys import option_pairs, parse_authorized_keys
from hatchway.sshd.permits import PERMIT_LISTEN, PERMIT_OPEN, listen_permitted, open_permitted, parse_listen


@pytest.mark.parametrize(("value", "permit"), [
    ("8080", ("*", 8080)),  # a bare port: any listen host
    ("*", ("*", None)),
    ("localhost:*", ("localhost", None)),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:22", ("::1", 22)),
    ("[::1]/22", ("::1", 22)),
    ("host:22", ("host", 22)),
    (":80", ("", 80)),
    ("*.example.com:443", ("*.example.com", 443)),
])
def test_permitlisten_values(value: str, permit: tuple[str, int | None]) -> None:
    assert parse_listen(value) == permit


@pytest.mark.parametrize(("value", "error"), [
    ("[::1]", "invalid permitlisten '[::1]': expected [host:]port"),
    ("[::1]x:80", "invalid permitlisten '[::1]x:80': expected [host:]port"),
    ("", "invalid permitlisten '': the port must be 1-65535 or *"),
    ("x:0", "invalid permitlisten 'x:0': the port must be 1-65535 or *"),
    ("x:65536", "invalid permitlisten 'x:65536': the port must be 1-65535 or *"),
    ("x:http", "invalid permitlisten 'x:http': the port must be 1-65535 or *"),
    ("host/22", "invalid permitlisten 'host/22': the port must be 1-65535 or *"),  # no ":": a bare "port"
])
def test_permitlisten_values_sshd_rejects(value: str, error: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_listen(value)
    assert str(info.value) == error


def test_listen_matching() -> None:
    permits = (("127.0.0.1", 8080), ("localhost", None), ("*.lan", 22))
    assert listen_permitted(None, "0.0.0.0", 1)  # no permitlisten: not limited
    assert listen_permitted(permits, "127.0.0.1", 8080)
    assert not listen_permitted(permits, "127.0.0.1", 8081)
    assert not listen_permitted(permits, "127.0.0.1", 0)  # "any free port" needs *
    assert listen_permitted(permits, "localhost", 0)
    assert listen_permitted(permits, "LocalHost", 9)  # the client's host, lower-cased
    assert not listen_permitted(permits, "", 8080)  # -R *:8080 asks for ""
    assert listen_permitted(permits, "box.lan", 22) and not listen_permitted(permits, "box.lan.evil", 22)
    assert listen_permitted((("*", 8080),), "", 8080) and listen_permitted((("127.0.0.?", None),), "127.0.0.9", 1)
    assert not listen_permitted((), "localhost", 1)


def test_open_matching() -> None:
    permits = (("127.0.0.1", 80), ("db", None), ("*", 5432))
    assert open_permitted(None, "anything", 1)
    assert open_permitted(permits, "127.0.0.1", 80) and not open_permitted(permits, "localhost", 80)
    assert open_permitted(permits, "db", 1) and not open_permitted(permits, "DB", 1)  # literal, as sshd
    assert open_permitted(permits, "anywhere", 5432) and not open_permitted(permits, "anywhere", 5433)
    assert not open_permitted(permits, "127.0.0.?", 80)  # no patterns


def test_option_pairs() -> None:
    assert option_pairs("ssh-ed25519 AAAA comment=x") == []
    line = r'no-pty,from="10.0.0.0/8,!10.1.2.3",command="echo \"a, b\" c",FROM=x ssh-ed25519 AAAA from=y'
    assert option_pairs(line) == [("from", "10.0.0.0/8,!10.1.2.3"), ("command", 'echo "a, b" c'), ("FROM", "x")]


def _pub() -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return key.convert_to_public(), key.export_public_key().decode().strip()


def test_a_keys_permits_as_the_server_gets_them() -> None:
    k1, l1 = _pub()
    k2, l2 = _pub()
    keys = parse_authorized_keys(f'permitlisten="8080",permitlisten="localhost:*",permitopen="*:22" {l1}\n{l2}\n')
    assert keys is not None
    assert keys.validate(k1, "", "") == {PERMIT_LISTEN: (("*", 8080), ("localhost", None)), PERMIT_OPEN: (("*", 22),)}
    assert keys.validate(k2, "", "") == {}


@pytest.mark.parametrize("options", [
    'permitlisten="127.0.0.1:0"',
    'permitopen="db:0"',
    'permitopen="db:70000"',
])
def test_a_line_sshd_would_read_otherwise_is_not_used(options: str, caplog: pytest.LogCaptureFixture) -> None:
    k1, l1 = _pub()
    _, l2 = _pub()
    keys = parse_authorized_keys(f"{options} {l1}\n{l2}\n", f"test-{options}", client_ip="10.1.1.1")
    assert keys is not None and keys.validate(k1, "", "") is None
    assert len([r for r in caplog.records if r.getMessage().startswith(f"test-{options} line 1 ignored: ")]) == 1


def test_from_uses_the_connections_address_not_asyncssh_s() -> None:
    k1, l1 = _pub()
    text = f'from="192.0.2.0/24,!192.0.2.66" {l1}\n'
    for client_ip, accepted in (("192.0.2.7", True), ("192.0.2.66", False), ("127.0.0.1", False)):
        keys = parse_authorized_keys(text, client_ip=client_ip)
        assert keys is not None
        # what asyncssh passes (the stream's own peer) does not count
        assert (keys.validate(k1, "192.0.2.7", "192.0.2.7") is not None) is accepted, client_ip
    assert parse_authorized_keys(text, client_ip=None) is None  # no address: the line is not used


def test_from_matches_an_ipv4_client_of_a_dual_stack_server_as_ipv4() -> None:
    """A server listening on :: sees an IPv4 client as ::ffff:a.b.c.d; sshd matches it as a.b.c.d."""
    k1, l1 = _pub()
    for pattern, client_ip, accepted in (
        ("192.0.2.0/24", "::ffff:192.0.2.7", True),
        ("192.0.2.7", "::ffff:192.0.2.7", True),
        ("192.0.2.7", "::ffff:192.0.2.8", False),
        ("2001:db8::/32", "2001:db8::7", True),  # other IPv6 addresses stay as they are
    ):
        keys = parse_authorized_keys(f'from="{pattern}" {l1}\n', client_ip=client_ip)
        assert keys is not None
        assert (keys.validate(k1, "", "") is not None) is accepted, (pattern, client_ip)


@pytest.mark.parametrize("client_ip", [None, "", "testclient", "127.0.0.1 9", "::ffff:zz"])
def test_a_from_line_is_not_used_when_the_clients_address_is_unknown_or_not_an_address(
    client_ip: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """asyncssh would fail the whole connection on matching from= against a non-address."""
    k1, l1 = _pub()
    k2, l2 = _pub()
    keys = parse_authorized_keys(f'from="*" {l1}\n{l2}\n', "test-from", client_ip=client_ip)
    assert keys is not None
    assert keys.validate(k1, "", "") is None and keys.validate(k2, "", "") == {}
    assert "test-from line 1 not used for this connection" in caplog.text
