"""The proxy's shared store (``CACHE_BACKEND``), sealed with the fleet's keys as peer-to-peer entries are.

It lives here, not in ``fleetci.cache``, because the sealing is the peer layer's (``FleetKeys``) and
imports point one way, ``p2p`` -> ``cache``; ``fleetci cache serve`` hands the result to
``fleetci.cache.server.serve``.
"""

from __future__ import annotations

from fleetci import gha
from fleetci.cache.settings import CacheSettings
from fleetci.cache.shared import SharedStore
from fleetci.errors import UsageError
from fleetci.http import redact_url


def shared_store(settings: CacheSettings) -> SharedStore | None:
    """The shared store ``settings`` ask for, not connected yet (``serve`` starts it); None for local."""
    if not settings.backend:
        return None
    if not settings.secret:
        raise UsageError(
            f"CACHE_BACKEND={redact_url(settings.backend)} needs FLEETCI_CACHE_SECRET: entries in a shared "
            "store are sealed with the fleet secret"
        )
    try:
        from fleetci.cache.redis_store import RedisStore
        from fleetci.p2p.crypto import FleetKeys

        keys = FleetKeys(settings.secret, settings.fleet, lean=True)  # pycryptodome: ~6 MB less RSS
    except ImportError as exc:
        raise UsageError(
            f"CACHE_BACKEND=redis needs 'pip install fleetci[redis]' ({exc.name} is missing)"
        ) from None
    gha.add_mask(settings.secret)
    if settings.redis_password:
        gha.add_mask(settings.redis_password)
    return RedisStore(
        settings.backend,
        settings.redis_password,
        keys,
        max_stale=settings.max_stale,
        lock_ms=int(settings.claim_wait * 1000),
        push_bytes=settings.shared_push_bytes,
    )
