"""Fleet secret -> topic and per-scope AES-256-GCM keys.

Only nodes that know the fleet secret can read or forge announcements and bodies (GCM authenticates
every byte, header included). Keys are derived per token scope with HKDF, so a body is sealed under the
scope it was fetched with; the scope id on the wire is already a salted hash, never a token.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

NONCE = 12


class SealError(Exception):
    """Authentication failed: wrong secret, tampering, or corruption."""


class FleetKeys:
    def __init__(self, secret: str, fleet: str = "") -> None:
        if not secret:
            raise ValueError("an empty fleet secret would let anyone read and inject entries")
        self._secret = secret.encode("utf-8")
        # A named fleet shares a topic whatever the secret (a node with the wrong secret then still
        # cannot read or inject); unnamed fleets get a topic derived from the secret.
        self.fleet_id = fleet or self._derive(b"fleetci/fleet-id/v1")[:8].hex()

    def _derive(self, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fleetci-p2p-v1", info=info).derive(
            self._secret
        )

    @property
    def topic(self) -> str:
        return f"/fleetci/cache/{self.fleet_id}"

    @lru_cache(maxsize=1024)  # noqa: B019 - one instance per node; the scope set is small
    def _aead(self, scope: str) -> AESGCM:
        return AESGCM(self._derive(b"fleetci/scope/v1/" + scope.encode("utf-8")))

    def seal(self, scope: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead(scope).encrypt(nonce, plaintext, aad)

    def open(self, scope: str, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE + 16:
            raise SealError("sealed payload too short")
        try:
            return self._aead(scope).decrypt(sealed[:NONCE], sealed[NONCE:], aad)
        except InvalidTag as exc:
            raise SealError("authentication failed (wrong fleet secret or tampered payload)") from exc


def secret_fingerprint(secret: str) -> str:
    """Safe to log: tells two operators whether they configured the same secret."""
    return hashlib.sha256(b"fleetci-fp\x00" + secret.encode()).hexdigest()[:12]
