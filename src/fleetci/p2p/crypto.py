"""Fleet secret -> topic and per-scope AES-256-GCM keys.

Only nodes that know the fleet secret can read or forge announcements and bodies (GCM authenticates
every byte, header included). Keys are derived per token scope with HKDF, so a body is sealed under the
scope it was fetched with; the scope id on the wire is already a salted hash, never a token.

Two well-kept implementations of the same standard constructions, byte for byte (HKDF-SHA256 of RFC 5869;
``nonce || ciphertext || 16-byte tag``; tests/unit/test_p2p.py checks that each opens what the other
sealed): ``cryptography`` for a libp2p node, which loads it anyway, and pycryptodome (``lean=True``) for
a proxy on a shared store, where ``cryptography``'s extension, which carries its own OpenSSL, would add
~9 MB to every proxy's RSS against pycryptodome's ~1.6 MB on its ctypes binding (issue 16: a proxy
within 50 MB). Neither is imported before a key is made.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from collections.abc import Callable
from functools import lru_cache

NONCE = 12
TAG = 16
SALT = b"fleetci-p2p-v1"


class SealError(Exception):
    """Authentication failed: wrong secret, tampering, or corruption."""


# (key, nonce, data, aad) -> sealed body + tag / plaintext; opening raises on a wrong tag
Cipher = Callable[[bytes, bytes, bytes, bytes], bytes]


def _with_cryptography(secret: bytes) -> tuple[Callable[[bytes], bytes], Cipher, Cipher]:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def derive(info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=SALT, info=info).derive(secret)

    def seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return AESGCM(key).encrypt(nonce, data, aad)

    def open_(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        try:
            return AESGCM(key).decrypt(nonce, data, aad)
        except InvalidTag as exc:
            raise SealError("authentication failed (wrong fleet secret or tampered payload)") from exc

    return derive, seal, open_


class _NoCffiOnThisThread:
    """Refuses ``import cffi`` on a thread that is loading pycryptodome's binding, and on no other.

    The previous way, ``sys.modules["cffi"] = None`` for the duration of that import, said "cffi is not
    installed" to *every* thread: a webhook or p2p thread importing cffi in that window failed. A finder
    asks per thread; it is put first on ``sys.meta_path`` once and never removed (removing an entry while
    another thread walks the list could make that thread skip a finder; inserting one cannot).
    """

    def __init__(self) -> None:
        self.refusing = threading.local()

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> None:
        if (fullname == "cffi" or fullname.startswith("cffi.")) and getattr(self.refusing, "on", False):
            raise ModuleNotFoundError("cffi left out for pycryptodome's ctypes binding", name=fullname)
        return None


_NO_CFFI = _NoCffiOnThisThread()
_LOAD_LOCK = threading.Lock()


def _load_pycryptodome() -> None:
    """Import pycryptodome on its ctypes binding. It binds its C code through cffi whenever cffi is
    importable (``cryptography`` installs it), and cffi parses the C declarations with pycparser at
    import: ~1.8 MB of RSS for the same C functions its ctypes binding calls. The choice is made once, by
    ``Crypto.Util._raw_api`` (a private module: tests/unit/test_p2p_crypto.py checks its ``backend``, so a
    pycryptodome that decides otherwise fails the suite); with cffi already loaded by someone else it
    costs nothing more to use it. Only this thread is refused cffi, and only for this import."""
    with _LOAD_LOCK:
        if "Crypto.Util._raw_api" in sys.modules or "cffi" in sys.modules:
            return
        if _NO_CFFI not in sys.meta_path:
            sys.meta_path.insert(0, _NO_CFFI)
        _NO_CFFI.refusing.on = True
        try:
            import Crypto.Util._raw_api  # noqa: F401
        finally:
            _NO_CFFI.refusing.on = False


def _with_pycryptodome(secret: bytes) -> tuple[Callable[[bytes], bytes], Cipher, Cipher]:
    _load_pycryptodome()
    from Crypto.Cipher import AES
    from Crypto.Hash import SHA256
    from Crypto.Protocol.KDF import HKDF

    def derive(info: bytes) -> bytes:
        key = HKDF(secret, 32, SALT, SHA256, context=info)
        return key if isinstance(key, bytes) else key[0]  # one key asked for: bytes, never a list

    def seal(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG)
        cipher.update(aad)
        body, tag = cipher.encrypt_and_digest(data)
        return body + tag

    def open_(key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=TAG)
        cipher.update(aad)
        try:
            return cipher.decrypt_and_verify(data[:-TAG], data[-TAG:])
        except ValueError as exc:  # pycryptodome's "MAC check failed"
            raise SealError("authentication failed (wrong fleet secret or tampered payload)") from exc

    return derive, seal, open_


class FleetKeys:
    def __init__(self, secret: str, fleet: str = "", lean: bool = False) -> None:
        """``lean``: pycryptodome instead of ``cryptography`` (the same bytes; see the module doc)."""
        if not secret:
            raise ValueError("an empty fleet secret would let anyone read and inject entries")
        self._derive, self._seal, self._open = (_with_pycryptodome if lean else _with_cryptography)(
            secret.encode("utf-8")
        )
        # A named fleet shares a topic whatever the secret (a node with the wrong secret then still
        # cannot read or inject); unnamed fleets get a topic derived from the secret.
        self.fleet_id = fleet or self._derive(b"fleetci/fleet-id/v1")[:8].hex()

    @property
    def topic(self) -> str:
        return f"/fleetci/cache/{self.fleet_id}"

    @lru_cache(maxsize=1024)  # noqa: B019 - one instance per node; the scope set is small
    def _key(self, scope: str) -> bytes:
        return self._derive(b"fleetci/scope/v1/" + scope.encode("utf-8"))

    def seal(self, scope: str, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._seal(self._key(scope), nonce, plaintext, aad)

    def open(self, scope: str, sealed: bytes, aad: bytes) -> bytes:
        if len(sealed) < NONCE + TAG:
            raise SealError("sealed payload too short")
        return self._open(self._key(scope), sealed[:NONCE], sealed[NONCE:], aad)


def secret_fingerprint(secret: str) -> str:
    """Safe to log: tells two operators whether they configured the same secret."""
    return hashlib.sha256(b"fleetci-fp\x00" + secret.encode()).hexdigest()[:12]
