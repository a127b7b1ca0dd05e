"""sshd's host keys read from disk before it answers (hatchway.agent.sshd_keys)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hatchway.agent.diagnostics import ConfigError
from hatchway.agent.sshd_keys import DEFAULT_HOST_KEYS, host_key_paths, installed_host_keys, public_key_line

ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd1Zk9uY2VNb3JlVGVzdEtleUZvckhhdGNod2F5QUJD"
EC = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTY="


def no_includes(pattern: str) -> list[tuple[str, str]]:
    raise AssertionError(f"unexpected Include {pattern}")


def test_without_hostkey_lines_sshd_loads_its_three_defaults() -> None:
    assert host_key_paths("Port 22\n# HostKey /etc/ssh/other\n", no_includes) == list(DEFAULT_HOST_KEYS)


def test_hostkey_lines_replace_the_defaults_in_order_and_match_blocks_do_not_count() -> None:
    text = (
        "HostKey /keys/b\n"
        "hostkey=/keys/a\n"
        "HostKey /keys/b\n"  # named twice: loaded once
        "Include extra.conf\n"
        "Match User bob\n"
        "  HostKey /keys/only-for-bob\n"
        "Match all\n"
        'HostKey "/keys/with space"\n'
    )

    def load(pattern: str) -> list[tuple[str, str]]:
        assert pattern == "extra.conf"
        return [("/etc/ssh/extra.conf", "HostKey /keys/included\n")]

    assert host_key_paths(text, load) == ["/keys/b", "/keys/a", "/keys/included", "/keys/with space"]


def test_an_unreadable_include_is_a_config_error() -> None:
    def load(pattern: str) -> list[tuple[str, str]]:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(ConfigError, match="x.conf: Permission denied"):
        host_key_paths("Include x.conf\n", load)


@pytest.mark.parametrize(("text", "expected"), [
    (ED + " root@image\n", ED),
    (EC, EC),
    ("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ== c", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ=="),
    ("ssh-ed25519-cert-v01@openssh.com AAAA", None),  # a certificate is not pinned this way
    ("ssh-ed25519 not$base64", None),
    ("ssh-ed25519", None),
    (ED + "\n" + EC + "\n", None),  # a .pub file holds one key
    ("", None),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n", None),
])
def test_public_key_line(text: str, expected: str | None) -> None:
    assert public_key_line(text) == expected


def test_installed_host_keys_reads_each_existing_pub_file_once(tmp_path: Path) -> None:
    (tmp_path / "a_key.pub").write_text(ED + " root@image\n")
    (tmp_path / "b_key.pub").write_text(EC + "\n")
    (tmp_path / "c_key.pub").write_text("x" * (17 * 1024))  # too big for a public key: skipped
    (tmp_path / "d_key.pub").write_text(ED + "\n")  # the same key again
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "keys.conf").write_text(f"HostKey {tmp_path}/b_key\n")
    config = tmp_path / "sshd_config"
    config.write_text(
        f"HostKey {tmp_path}/a_key\nInclude conf.d/*.conf\nHostKey {tmp_path}/missing_key\n"
        f"HostKey {tmp_path}/c_key\nHostKey {tmp_path}/d_key\n"
    )
    assert installed_host_keys(str(config)) == [ED, EC]
