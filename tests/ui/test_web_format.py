"""The UI's pure helpers: how values read, and which redirects are allowed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from hatchway.server.web import format as fmt
from hatchway.server.web.base import safe_next


@pytest.mark.parametrize(
    ("n", "text"),
    [(None, "—"), (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (180_000, "175.8 KB"), (5 * 1024**3, "5.0 GB")],
)
def test_human_bytes(n: int | None, text: str) -> None:
    assert fmt.human_bytes(n) == text


@pytest.mark.parametrize(
    ("s", "text"),
    [(None, "—"), (0.2, "<1s"), (59.4, "59s"), (61, "1m 01s"), (3600 * 2 + 60 * 5, "2h 05m"), (86400 * 3 + 3600, "3d 1h")],
)
def test_human_duration(s: float | None, text: str) -> None:
    assert fmt.human_duration(s) == text


def test_source_text() -> None:
    assert fmt.source_text("127.0.0.1 40222") == "127.0.0.1:40222"
    assert fmt.source_text("::1 40222") == "[::1]:40222"
    assert fmt.source_text("unknown") == "unknown"
    assert fmt.source_text(None) == "—"


def test_detail_text() -> None:
    assert fmt.detail_text({"external_connect": {"old": True, "new": False}}) == "external connect: on → off"
    assert fmt.detail_text({"old": "member", "new": "site-manager"}) == "member → site-manager"
    assert fmt.detail_text({"role": "member", "first_user": True}) == "role: member; first user: on"
    assert fmt.detail_text({}) == ""


def test_ssh_mode_text() -> None:
    ws = SimpleNamespace(external_connect=True, ssh_mode="openssh", ssh_server_version="OpenSSH_9.2p1")
    assert fmt.ssh_mode_text(ws) == "openssh (OpenSSH_9.2p1)"
    ws.ssh_server_version = "dropbear_2022.83"  # another SSH-2 server on port 22 is not called OpenSSH
    assert fmt.ssh_mode_text(ws) == "SSH server on port 22 (dropbear_2022.83)"
    ws.ssh_server_version = None
    assert fmt.ssh_mode_text(ws) == "openssh (unknown version)"
    ws.ssh_mode = "built-in"
    assert fmt.ssh_mode_text(ws) == "built-in"
    ws.ssh_mode = None
    assert fmt.ssh_mode_text(ws) == "not reported yet"
    ws.external_connect = False
    assert fmt.ssh_mode_text(ws) == "SSH disabled by a site manager"


def test_ago() -> None:
    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert fmt.ago(None) == "never"
    assert fmt.ago(now - timedelta(seconds=3), now) == "just now"
    assert fmt.ago(now - timedelta(minutes=5), now) == "5 min ago"
    assert fmt.ago(now - timedelta(days=1), now) == "1 day ago"
    assert fmt.ago(now - timedelta(days=90), now) == "2024-10-04"


@pytest.mark.parametrize(
    ("client", "text"),
    [
        (None, "Unknown client"),
        ("hatchway-cli/0.1.0 (laptop.example)", "hatchway CLI 0.1.0 on laptop.example"),
        ("hatchway-cli/0.1.0", "hatchway CLI 0.1.0"),
        ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36",
         "Chrome 156 on Linux"),
        (("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 "
          "Safari/537.36 Edg/131.0.2903.86"), "Edge 131 on Windows"),
        ("Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:140.0) Gecko/20100101 Firefox/140.0", "Firefox 140 on Linux"),
        (("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_6) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 "
          "Safari/605.1.15"), "Safari 18 on macOS"),
        (("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/18.1 Mobile/15E148 Safari/604.1"), "Safari 18 on iOS"),
        ("curl/8.5.0", "curl/8.5.0"),
    ],
)
def test_client_text(client: str | None, text: str) -> None:
    assert fmt.client_text(client) == text


def test_until() -> None:
    now = datetime(2025, 1, 2, 12, 0, tzinfo=UTC)
    assert fmt.until(None) == "never"
    assert fmt.until(now - timedelta(seconds=1), now) == "expired"
    assert fmt.until(now, now) == "expired"
    assert fmt.until(now + timedelta(seconds=30), now) == "in under a minute"
    assert fmt.until(now + timedelta(minutes=5), now) == "in 5 min"
    assert fmt.until(now + timedelta(hours=7), now) == "in 7 h"
    assert fmt.until(now + timedelta(days=1), now) == "in 1 day"
    assert fmt.until(now + timedelta(days=13, hours=23), now) == "in 13 days"


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("/account/key", "/account/key"),
        ("/manage/audit?user=bob", "/manage/audit?user=bob"),
        ("//evil.example.com/", "/workspaces"),
        ("https://evil.example.com/", "/workspaces"),
        ("/\\evil.example.com", "/workspaces"),
        ("", "/workspaces"),
        (None, "/workspaces"),
    ],
)
def test_sign_in_redirects_only_to_this_site(value: str | None, target: str) -> None:
    assert safe_next(value) == target


@pytest.mark.parametrize(
    ("value", "html", "plain"),
    [
        ("plain <text> é 日本", "plain <text> é 日本", "plain <text> é 日本"),  # as is: Jinja escapes it
        (None, "", ""),
        ("a\u202eb<", 'a<span class="unseen" title="invisible character U+202E">&lt;U+202E&gt;</span>b&lt;',
         "a<U+202E>b<"),
        ("\u200b\t\u2028\ufeff\u00ad", None, "<U+200B><U+0009><U+2028><U+FEFF><U+00AD>"),
    ],
)
def test_revealed_shows_invisible_characters_as_code_points(value: str | None, html: str | None, plain: str) -> None:
    if html is not None:
        assert str(fmt.revealed(value)) == html
    assert fmt.revealed(value, markup=False) == plain
