"""Ed25519 keys: workers sign artifacts, the master signs the repository index; both kept as PEM files."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fleetci.errors import FleetciError
from fleetci.files import tighten, write_private


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The private key at ``path``; created (mode 0600) on first use so a restart keeps the identity.

    A key file an older version left group- or world-readable is tightened to 0600.
    """
    if path.exists():
        tighten(path)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise FleetciError(f"key file {path} is not a PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise FleetciError(f"key file {path} does not hold an ed25519 key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(path, pem)
    return key


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise FleetciError(f"not a base64 ed25519 public key: {text[:60]!r}") from exc


def artifact_message(package: str, filename: str, sha256: str) -> bytes:
    """What a worker signs: binds the digest to the package and file name, so a signature cannot be reused."""
    return f"fleetci-artifact\0{package}\0{filename}\0{sha256}".encode()


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode()


def verify(public: Ed25519PublicKey | str, message: bytes, signature: str) -> bool:
    pub = parse_public(public) if isinstance(public, str) else public
    try:
        pub.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    """Tokens are 256-bit random values, so a plain SHA-256 suffices to store them (no key stretching)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(token), stored_hash)
