"""Secrets at rest: the deployment secret, sealed private keys, hashed tokens and passwords.

Tokens are 256-bit random strings, so a plain SHA-256 is enough to store them (nothing to
brute-force) and lets the server look them up by hash. Passwords are people's, so they get
Argon2id. Users' private keys must be given back to their owners, so they are encrypted with a
key derived from the deployment secret rather than hashed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hatchway.fileutil import atomic_write

SECRET_FILE = "deployment.secret"
_SEAL_PREFIX = "v1:"

_hasher = PasswordHasher()  # Argon2id with the library's current recommended parameters


def load_or_create_deployment_secret(data_dir: Path) -> bytes:
    """Read the deployment secret, creating it (0600) on first start."""
    path = data_dir / SECRET_FILE
    if (data_dir / (SECRET_FILE + ".new")).exists():
        raise ValueError(
            f"{path}.new exists: a secret rotation was interrupted; run "
            f"'hatchway server rotate-secret --data-dir {data_dir}' again to finish it"
        )
    try:
        raw = path.read_text().strip()
    except FileNotFoundError:
        raw = secrets.token_hex(32)
        atomic_write(path, (raw + "\n").encode(), 0o600)
    if (path.stat().st_mode & 0o777) != 0o600:
        os.chmod(path, 0o600)
    return parse_deployment_secret(raw, path)


def parse_deployment_secret(text: str, where: Path) -> bytes:
    """The secret a ``deployment.secret`` file's ``text`` holds; ValueError naming ``where`` when
    it holds none (a truncated or hand-edited file must not become a weaker secret)."""
    try:
        secret = bytes.fromhex(text.strip())
    except ValueError:
        secret = b""
    if len(secret) < 32:
        raise ValueError(f"{where}: the deployment secret must be at least 32 bytes of hex")
    return secret


def derive_key(deployment_secret: bytes, purpose: bytes) -> bytes:
    """A key of its own for each ``purpose``, from the deployment secret (one key's leak gives
    away neither the secret nor the others)."""
    return hmac.new(deployment_secret, b"hatchway/" + purpose, hashlib.sha256).digest()


class SecretBox:
    """AES-256-GCM sealing with a key derived from the deployment secret."""

    def __init__(self, deployment_secret: bytes) -> None:
        key = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=None, info=b"hatchway/seal/v1"
        ).derive(deployment_secret)
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> str:
        """Encrypt ``plaintext``, bound to ``context`` (e.g. the user id) so a sealed value
        copied onto another row does not decrypt."""
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, plaintext, context.encode())
        return _SEAL_PREFIX + base64.b64encode(nonce + ct).decode()

    def open(self, sealed: str, context: str) -> bytes:
        if not sealed.startswith(_SEAL_PREFIX):
            raise ValueError("unknown sealed value format")
        blob = base64.b64decode(sealed[len(_SEAL_PREFIX):])
        return self._aead.decrypt(blob[:12], blob[12:], context.encode())


def new_token(prefix: str) -> tuple[str, str]:
    """A fresh bearer token and the hash the server stores instead of it."""
    token = prefix + secrets.token_urlsafe(32)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


# A fixed hash to verify against when the user does not exist, so a login for an unknown
# name costs the same time as a wrong password and does not reveal which names exist.
DUMMY_PASSWORD_HASH = _hasher.hash("hatchway-timing-equaliser")


@dataclass(frozen=True)
class KeyPair:
    public_key: str  # OpenSSH one-line form
    private_key_pem: bytes  # OpenSSH private key format
    fingerprint: str  # SHA256:… as ssh-keygen -l prints it


def generate_ssh_keypair(comment: str) -> KeyPair:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return KeyPair(f"{public} {comment}", private, fingerprint(public))


def fingerprint(public_key_line: str) -> str:
    blob = base64.b64decode(public_key_line.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"
