"""Content addressing of cache entries (seed name ``ContentHasher``), over the p2p layer's one CID code.

A CID here is CIDv1, raw codec, sha2-256, multibase base32 — exactly what peers announce for an entry's
body and check every received body against (``fleetci.cache.store.cid_of``). ``bytes`` are hashed as
they are (an entry's body), ``str`` as UTF-8, anything else as canonical JSON (sorted keys, no spaces),
so equal data has one CID whatever its key order.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fleetci.cache.store import cid_of


def canonical_bytes(data: Any) -> bytes:
    """The bytes a CID is computed over: bytes unchanged, str as UTF-8, other JSON values canonically."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if isinstance(data, str):
        return data.encode("utf-8")
    try:
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot hash {type(data).__name__}: not bytes, str or a JSON value ({exc})") from exc
    return text.encode("utf-8")


class ContentHasher:
    """Seed 004: ``hash_content(data)`` -> CID string; ``verify_hash(data, cid)`` -> bool."""

    @staticmethod
    def hash_content(data: Any) -> str:
        return cid_of(canonical_bytes(data))

    @staticmethod
    def verify_hash(data: Any, cid: str) -> bool:
        """True when ``data`` has the content address ``cid``; False for other data or a malformed CID."""
        if not isinstance(cid, str):
            return False
        try:
            actual = ContentHasher.hash_content(data)
        except TypeError:
            return False
        return hmac.compare_digest(actual.encode("ascii"), cid.encode("ascii", "replace"))


__all__ = ["ContentHasher", "canonical_bytes"]
