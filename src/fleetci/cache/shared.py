"""What the engine needs from a store shared by every proxy of a fleet (Redis/Valkey: ``redis_store``).

The shared store sits behind the proxy's own memory/SQLite tiers: a local miss asks it before GitHub,
what the proxy fetches is written to it, a short lock in it coalesces misses across proxies, and a
credential's rate-limit block is written to it so every proxy backs off together. It is a shared
service, so everything in it is sealed with the fleet secret (``Sealer``: ``fleetci.p2p.crypto.FleetKeys``,
handed in from outside, as P2P entries are sealed) and keyed by hashes, never by tokens.

The store never raises to the engine: when it is unreachable it reports ``degraded`` and answers
"nothing shared", so the proxy keeps serving from its own tiers and upstream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from fleetci.cache.store import Entry

SHARED_FORMAT = b"fleetci-entry/1"
# Pushed entries (``CACHE_SHARED_PUSH_BYTES``): ``origin \n key \n value``, the value sealed exactly as
# stored in Redis. Anything longer than the receiver's cap plus this much is refused before it is parsed.
PUSH_OVERHEAD = 256
# Largest value read from the shared store: a stored body is at most 16 MiB (engine.MAX_STORED_BODY)
# plus its sealed headers; anything longer is hostile and is never read whole.
MAX_SHARED_VALUE = 16 * 1024 * 1024 + 256 * 1024


class Sealer(Protocol):
    """Authenticated encryption under the fleet secret, per token scope (``FleetKeys``)."""

    fleet_id: str

    def seal(self, scope: str, plaintext: bytes, aad: bytes) -> bytes: ...
    def open(self, scope: str, sealed: bytes, aad: bytes) -> bytes: ...


class Unsealed(ValueError):
    """A shared value that is not a well-formed entry sealed by this fleet for this key and scope."""


@dataclass(frozen=True)
class SharedLookup:
    """One round trip on a local miss: the shared entry (fresh or not) and a shared rate-limit block."""

    entry: Entry | None = None
    blocked_until: float = 0.0
    reason: str = ""


class SharedStore(Protocol):
    """The engine's view of the shared store; every method swallows the store's own failures."""

    @property
    def state(self) -> str: ...  # "ok" or "degraded"
    async def lookup(self, scope: str, key: str, limit_scope: str) -> SharedLookup: ...
    async def lock(self, key: str) -> bool: ...  # True: we fetch (also when the store is down)
    async def wait_for(self, scope: str, key: str, timeout: float) -> Entry | None: ...
    def publish(self, entry: Entry) -> None: ...  # also releases our lock on the key
    def unlock(self, key: str) -> None: ...
    def share_limit(self, limit_scope: str, blocked_until: float, reason: str) -> None: ...
    def counters(self) -> dict[str, int]: ...
    async def start(self) -> None: ...
    async def close(self) -> None: ...


def _aad(redis_key: str, scope: str) -> bytes:
    """Binds a sealed value to its key and scope: a value copied under another key does not open."""
    return b"fleetci-shared\x00" + redis_key.encode() + b"\x00" + scope.encode()


def seal_entry(sealer: Sealer, redis_key: str, entry: Entry) -> bytes:
    """``format \\n scope \\n sealed(meta-json \\n body)``: the scope id (a salted hash) picks the key."""
    meta: dict[str, Any] = {
        "k": entry.key,
        "t": entry.target,
        "s": entry.status,
        "h": entry.headers,
        "a": entry.stored_at,
        "x": entry.fresh_until,
    }
    plain = json.dumps(meta, separators=(",", ":")).encode() + b"\n" + entry.body
    sealed = sealer.seal(entry.scope, plain, _aad(redis_key, entry.scope))
    return SHARED_FORMAT + b"\n" + entry.scope.encode() + b"\n" + sealed


def open_entry(sealer: Sealer, redis_key: str, key: str, scope: str, raw: bytes) -> Entry:
    """The entry sealed in ``raw``; :class:`Unsealed` for anything else (tampered, foreign, malformed)."""
    fmt, _, rest = raw.partition(b"\n")
    their_scope, _, sealed = rest.partition(b"\n")
    if fmt != SHARED_FORMAT or their_scope != scope.encode():
        raise Unsealed("not an entry of this format and scope")
    try:
        plain = sealer.open(scope, sealed, _aad(redis_key, scope))
    except Exception as exc:  # SealError and whatever a truncated payload provokes
        raise Unsealed(f"does not open under the fleet secret: {exc}") from None
    head, _, body = plain.partition(b"\n")
    try:
        meta = json.loads(head)
        if meta["k"] != key:
            raise Unsealed("sealed for another key")
        stored_at, fresh_until = float(meta["a"]), float(meta["x"])
        headers = tuple((str(k), str(v)) for k, v in meta["h"])
        return Entry.create(
            key, scope, str(meta["t"]), int(meta["s"]), headers, body, fresh_until - stored_at, now=stored_at
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise Unsealed(f"malformed entry: {exc}") from None


def push_message(origin: bytes, key: str, value: bytes) -> bytes:
    """What a proxy PUBLISHes on the fleet's entry channel: its origin token (so it skips its own), the
    entry key and the value sealed as stored (bound to key and scope: the message carries no secret)."""
    return origin + b"\n" + key.encode() + b"\n" + value


def split_push(data: Any, cap: int) -> tuple[bytes, str, bytes]:
    """``(origin, key, value)`` of a pushed message at most ``cap`` + PUSH_OVERHEAD bytes long; the size
    is checked before anything else. :class:`Unsealed` for anything malformed."""
    if not isinstance(data, bytes) or len(data) > cap + PUSH_OVERHEAD:
        raise Unsealed("not a pushed entry within the size cap")
    origin, _, rest = data.partition(b"\n")
    raw_key, _, value = rest.partition(b"\n")
    if not 0 < len(raw_key) <= 128 or not raw_key.isalnum() or not value:
        raise Unsealed("not a pushed entry")
    return origin, raw_key.decode("ascii"), value


def push_scope(value: bytes) -> str:
    """The scope id a pushed ``value`` names (plaintext, not yet authenticated: ``open_push`` checks it);
    :class:`Unsealed` when it names none."""
    _, _, rest = value.partition(b"\n")
    raw_scope = rest.partition(b"\n")[0]
    if not 0 < len(raw_scope) <= 64 or not raw_scope.replace(b"-", b"").isalnum():
        raise Unsealed("not a scope id")
    return raw_scope.decode("ascii")


def open_push(sealer: Sealer, redis_key: str, key: str, value: bytes) -> Entry:
    """The entry a pushed ``value`` seals for ``key`` (its scope is the one it names: it opens only if it
    was sealed for that scope and this key); :class:`Unsealed` otherwise."""
    return open_entry(sealer, redis_key, key, push_scope(value), value)


def seal_limit(sealer: Sealer, redis_key: str, limit_scope: str, blocked_until: float, reason: str) -> bytes:
    plain = json.dumps({"u": blocked_until, "r": reason[:200]}).encode()
    return sealer.seal(limit_scope, plain, _aad(redis_key, limit_scope))


def open_limit(sealer: Sealer, redis_key: str, limit_scope: str, raw: bytes) -> tuple[float, str]:
    try:
        d = json.loads(sealer.open(limit_scope, raw, _aad(redis_key, limit_scope)))
        return float(d["u"]), str(d["r"])[:200]
    except Exception as exc:
        raise Unsealed(f"rate-limit record does not open: {exc}") from None
