"""Where config-ssh and ``hatchway keys`` keep the platform key (one file per deployment).

Two deployments on one host (different ports) used to share ``~/.ssh/hatchway_<host>`` and
overwrite each other's key; the port is now part of the name, and a key an older release
downloaded under the host-only name keeps being used while it is this account's current key.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from hatchway.cli.keys import (
    choose_key_path,
    default_key_path,
    holds_key,
    key_file_name,
    legacy_key_file_name,
)


def _public_key() -> str:
    return (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://hw.example.com", "hatchway_hw.example.com"),
        ("https://hw.example.com/", "hatchway_hw.example.com"),
        ("https://hw.example.com:443", "hatchway_hw.example.com"),
        ("http://hw.example.com:80", "hatchway_hw.example.com"),
        ("HTTPS://HW.example.com:443", "hatchway_hw.example.com"),
        ("https://hw.example.com:8443", "hatchway_hw.example.com_8443"),
        ("http://hw.example.com:443", "hatchway_hw.example.com_443"),
        ("http://127.0.0.1:7411", "hatchway_127.0.0.1_7411"),
        ("http://127.0.0.1:7412", "hatchway_127.0.0.1_7412"),
        ("http://[::1]:7411", "hatchway___1_7411"),
        ("http://127.0.0.1:notaport", "hatchway_127.0.0.1"),
    ],
)
def test_key_file_name(url: str, name: str) -> None:
    assert key_file_name(url) == name


def test_two_ports_on_one_host_get_two_files() -> None:
    assert default_key_path("http://127.0.0.1:7411") != default_key_path("http://127.0.0.1:7412")


def test_legacy_name_only_where_the_name_changed() -> None:
    assert legacy_key_file_name("http://127.0.0.1:7411") == "hatchway_127.0.0.1"
    assert legacy_key_file_name("https://hw.example.com") is None
    assert legacy_key_file_name("https://hw.example.com:443") is None


@pytest.fixture
def ssh_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    d = tmp_path / ".ssh"
    d.mkdir(mode=0o700)
    return d


def _key_files(path: Path, public_key: str) -> None:
    path.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n...\n")
    path.with_name(path.name + ".pub").write_text(public_key + "\n")


URL = "http://127.0.0.1:7411"


def test_fresh_install_uses_the_new_name(ssh_dir: Path) -> None:
    assert choose_key_path(URL, _public_key()) == ssh_dir / "hatchway_127.0.0.1_7411"


def test_upgrade_keeps_using_an_old_file_holding_this_accounts_key(ssh_dir: Path) -> None:
    key = _public_key()
    _key_files(ssh_dir / "hatchway_127.0.0.1", key + " bob@hatchway")  # comment differs: same key
    assert choose_key_path(URL, key) == ssh_dir / "hatchway_127.0.0.1"


def test_an_old_file_with_another_key_is_left_alone(ssh_dir: Path) -> None:
    # another deployment's key (the collision this fixes), or a stale one: never ours to write
    _key_files(ssh_dir / "hatchway_127.0.0.1", _public_key())
    assert choose_key_path(URL, _public_key()) == ssh_dir / "hatchway_127.0.0.1_7411"


def test_an_old_pub_without_its_private_key_is_not_used(ssh_dir: Path) -> None:
    key = _public_key()
    (ssh_dir / "hatchway_127.0.0.1.pub").write_text(key + "\n")
    assert choose_key_path(URL, key) == ssh_dir / "hatchway_127.0.0.1_7411"


def test_the_new_name_wins_once_it_exists(ssh_dir: Path) -> None:
    key = _public_key()
    _key_files(ssh_dir / "hatchway_127.0.0.1", key)
    _key_files(ssh_dir / "hatchway_127.0.0.1_7411", _public_key())  # stale: config-ssh refreshes it
    assert choose_key_path(URL, key) == ssh_dir / "hatchway_127.0.0.1_7411"


def test_default_port_has_a_single_name(ssh_dir: Path) -> None:
    key = _public_key()
    assert choose_key_path("https://hw.example.com", key) == ssh_dir / "hatchway_hw.example.com"


def test_holds_key(ssh_dir: Path) -> None:
    key = _public_key()
    path = ssh_dir / "k"
    assert not holds_key(path, key)
    _key_files(path, key)
    assert holds_key(path, key)
    assert not holds_key(path, _public_key())
    path.with_name("k.pub").write_bytes(b"\xff\xfe not text")
    assert not holds_key(path, key)
