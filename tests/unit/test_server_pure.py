"""Pure server pieces: names, settings, throttle, crypto."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from hatchway import names
from hatchway.db.engine import normalize_url
from hatchway.server import crypto
from hatchway.server.settings import Settings, parse_listen
from hatchway.server.throttle import KNOWN_SOURCES, PER_SOURCE, LoginThrottle


@pytest.mark.parametrize("name", ["a", "dev", "web-1", "a" * 63, "0x"])
def test_good_workspace_names(name: str) -> None:
    assert names.check_workspace_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "-a", "a-", "a" * 64, "a b", "a\nb", "a_b", "é", "a/b", "a%", "a;b", "a\x00"])
def test_bad_workspace_names(name: str) -> None:
    with pytest.raises(ValueError) as exc:
        names.check_workspace_name(name)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("name", ["alice", "a1", "bob-smith", "x_y"])
def test_good_usernames(name: str) -> None:
    assert names.check_username(name) == name


@pytest.mark.parametrize("name", ["", "1a", "Alice", "a" * 33, "root\n", "a b", "a$"])
def test_bad_usernames(name: str) -> None:
    with pytest.raises(ValueError):
        names.check_username(name)


def test_me_cannot_be_the_name_of_a_new_user() -> None:
    """/api/v1/users/me/… is the signed-in user: a user named "me" could never be addressed."""
    from pydantic import ValidationError

    from hatchway.server.api.schemas import FirstUserIn, UserCreateIn

    assert names.check_username("me") == "me"  # an existing name still resolves (ssh me/dev)
    with pytest.raises(ValueError, match='^the username "me" is reserved \\(/api/v1/users/me is the signed-in user\\); choose another$'):
        names.check_new_username("me")
    assert names.check_new_username("mei") == "mei"
    for schema in (FirstUserIn, UserCreateIn):
        with pytest.raises(ValidationError, match='the username "me" is reserved'):
            schema(username="me", email="me@example.com", password="a long enough password")


@pytest.mark.parametrize("env,fragment", [
    ({"1A": "x"}, "invalid environment variable name"),
    ({"A-B": "x"}, "invalid environment variable name"),
    ({"A": "x\ny"}, "newline or NUL"),
    ({"A": "x\ry"}, "newline or NUL"),
    ({"A": "x\x00"}, "newline or NUL"),
    ({"A": "x" * (64 * 1024 + 1)}, "longer than"),
    ({"A": "\udcff"}, "not valid UTF-8"),
])
def test_bad_env(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        names.check_env(env)


def test_env_assignment_keeps_everything_after_the_first_equals() -> None:
    assert names.parse_env_assignment("A=b=c d") == ("A", "b=c d")
    with pytest.raises(ValueError, match="expected NAME=value"):
        names.parse_env_assignment("nothing")


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:7080") == ("127.0.0.1", 7080)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("7080", "host:", ":80", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_settings_url() -> None:
    s = Settings(data_dir=Path("/x"), db_url="sqlite://", listen_host="::1", listen_port=9)
    assert s.url == "http://[::1]:9"
    assert Settings(data_dir=Path("/x"), db_url="", access_url="https://hw.example.com/").url == "https://hw.example.com"


def test_db_urls_map_to_async_drivers() -> None:
    assert normalize_url("sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert normalize_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    with pytest.raises(ValueError, match="unsupported database URL"):
        normalize_url("mysql://h/db")


def test_throttle_window() -> None:
    now = [0.0]
    t = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for _ in range(3):
        assert t.retry_after("bob", "1.2.3.4") == 0
        t.failed("bob", "1.2.3.4")
    assert t.retry_after("bob", "1.2.3.4") == pytest.approx(60)
    assert t.retry_after("bob", "5.6.7.8") == 0, "another source still has its own allowance"
    assert t.retry_after("carol", "1.2.3.4") == 0
    now[0] = 61
    assert t.retry_after("bob", "1.2.3.4") == 0


def test_one_address_trying_name_after_name_is_stopped_but_not_for_users_who_signed_in_from_it() -> None:
    now = [0.0]
    t = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    t.succeeded("bob", "1.2.3.4")
    for i in range(3 * PER_SOURCE):  # each made-up name fails once: no per-name cap applies
        assert t.retry_after(f"made-up-{i}", "1.2.3.4") == 0
        t.failed(f"made-up-{i}", "1.2.3.4")
    assert t.retry_after("another-made-up", "1.2.3.4") == pytest.approx(60)
    assert t.retry_after("carol", "1.2.3.4") == pytest.approx(60)
    assert t.retry_after("bob", "1.2.3.4") == 0, "bob signed in from there before"
    assert t.retry_after("carol", "5.6.7.8") == 0, "other addresses are not held"
    now[0] = 61
    assert t.retry_after("carol", "1.2.3.4") == 0


def test_throttle_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    t = LoginThrottle(limit=3, window_s=60, clock=lambda: now[0])
    for i in range(1000):
        t.failed(f"name-{i}", f"10.0.{i // 256}.{i % 256}")
    assert t.counts_held() == 3000  # per name and address, per name, per address
    now[0] = 61
    t.failed("late", "192.0.2.1")  # the first failure after a window sweeps what expired
    assert t.counts_held() == 3
    monkeypatch.setattr("hatchway.server.throttle.MAX_KEYS", 100)
    for i in range(1000):
        t.failed(f"flood-{i}", "192.0.2.9")
    assert t.counts_held() == 100
    assert t.retry_after("anyone", "192.0.2.9") > 0, "the flooding address's count is the one kept"


def test_a_distributed_guesser_does_not_lock_the_user_out_of_addresses_they_signed_in_from() -> None:
    t = LoginThrottle(limit=2, window_s=60, clock=lambda: 0.0)
    for i in range(KNOWN_SOURCES + 1):  # the oldest of these is forgotten
        t.succeeded("bob", f"192.0.2.{i}")
    for i in range(20):
        t.failed("bob", f"10.0.0.{i}")
    assert t.retry_after("bob", "10.9.9.9") > 0  # a stranger is still capped
    assert t.retry_after("carol", "10.9.9.9") == 0  # and only for bob
    assert t.retry_after("bob", f"192.0.2.{KNOWN_SOURCES}") == 0  # bob from home gets in
    assert t.retry_after("bob", "192.0.2.0") > 0  # not from an address long forgotten
    t.failed("bob", "192.0.2.1")
    t.failed("bob", "192.0.2.1")
    assert t.retry_after("bob", "192.0.2.1") > 0  # a known address has its own cap


def test_throttle_caps_a_distributed_guesser() -> None:
    t = LoginThrottle(limit=2, window_s=60, clock=lambda: 0.0)
    for i in range(8):
        t.failed("bob", f"10.0.0.{i}")
    assert t.retry_after("bob", "10.9.9.9") > 0


def test_deployment_secret_is_created_once_and_private(tmp_path: Path) -> None:
    os.umask(0o022)
    s1 = crypto.load_or_create_deployment_secret(tmp_path)
    assert stat.S_IMODE((tmp_path / crypto.SECRET_FILE).stat().st_mode) == 0o600
    assert crypto.load_or_create_deployment_secret(tmp_path) == s1
    assert len(s1) == 32


def test_sealed_values_are_bound_to_secret_and_context() -> None:
    box = crypto.SecretBox(b"k" * 32)
    sealed = box.seal(b"private key", "user-key:1")
    assert b"private key" not in sealed.encode()
    assert box.open(sealed, "user-key:1") == b"private key"
    with pytest.raises(InvalidTag):
        box.open(sealed, "user-key:2")
    with pytest.raises(InvalidTag):
        crypto.SecretBox(b"j" * 32).open(sealed, "user-key:1")


def test_tokens_are_stored_as_hashes() -> None:
    token, digest = crypto.new_token("hws_")
    assert token.startswith("hws_") and len(token) > 40
    assert digest == hashlib.sha256(token.encode()).hexdigest() != token


def test_passwords_use_argon2id() -> None:
    h = crypto.hash_password("pw-123456")
    assert h.startswith("$argon2id$")
    assert crypto.verify_password(h, "pw-123456")
    assert not crypto.verify_password(h, "pw-123457")
    assert not crypto.verify_password("garbage", "x")


def test_generated_keys_are_openssh_ed25519(tmp_path: Path) -> None:
    pair = crypto.generate_ssh_keypair("hatchway-bob")
    path = tmp_path / "k"
    path.write_bytes(pair.private_key_pem)
    path.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == pair.public_key.split()[:2]
    assert pair.public_key.endswith(" hatchway-bob")
    listed = subprocess.run(["ssh-keygen", "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    assert listed.split()[1] == pair.fingerprint
    blob = base64.b64decode(pair.public_key.split()[1])
    assert blob[4:15] == b"ssh-ed25519"
