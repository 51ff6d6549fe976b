"""Build a P2P node from cache settings: secret resolution, bootstrap validation, engine wiring."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from fleetci import gha
from fleetci.cache.engine import CacheEngine
from fleetci.cache.settings import CacheSettings
from fleetci.http import free_port
from fleetci.p2p.crypto import FleetKeys, secret_fingerprint
from fleetci.p2p.messages import Announcement, Claim
from fleetci.p2p.node import PUBLIC_BOOTSTRAP, P2PConfig, P2PError, P2PNode, parse_multiaddr

log = logging.getLogger("fleetci.p2p")


def fleet_secret(settings: CacheSettings) -> str:
    """FLEETCI_CACHE_SECRET; the seed's fallback (the GitHub token) only when every job shares one token."""
    if settings.secret:
        return settings.secret
    token = os.environ.get("GH_TOKEN") or os.environ.get("GITHUB_TOKEN")
    if token:
        print(
            "fleetci: warning: no FLEETCI_CACHE_SECRET; using the GitHub token as the fleet secret (seed "
            "fallback) — peers only find each other if every job uses the same token",
            file=sys.stderr,
            flush=True,
        )
        return token
    raise P2PError("no fleet secret: set FLEETCI_CACHE_SECRET (action input 'secret') on every runner")


def bootstrap_list(settings: CacheSettings) -> tuple[str, ...]:
    """Valid bootstrap multiaddrs; each malformed one is reported in one line and skipped."""
    good = []
    for addr in settings.bootstrap_peers:
        try:
            parse_multiaddr(addr)
        except ValueError as exc:
            print(f"fleetci: warning: {exc}; skipping it", file=sys.stderr, flush=True)
            continue
        good.append(addr)
    if settings.public_bootstrap:
        good.extend(PUBLIC_BOOTSTRAP)
    return tuple(good)


def start_node(settings: CacheSettings, engine: CacheEngine, loop: asyncio.AbstractEventLoop) -> P2PNode:
    secret = fleet_secret(settings)
    gha.add_mask(secret)
    keys = FleetKeys(secret, settings.fleet)

    def deliver(anns: list[Announcement]) -> None:  # trio thread -> event loop thread
        loop.call_soon_threadsafe(engine.accept_announcements, anns)

    def claims(batch: list[Claim]) -> None:
        loop.call_soon_threadsafe(engine.accept_claims, batch)

    node = P2PNode(
        P2PConfig(
            listen_host=settings.p2p_host,
            # 0: any free port, so several runners (or act jobs) on one machine never collide; peers
            # learn the real address from the registry, peer exchange or `fleetci cache peers`.
            listen_port=settings.listen_port or free_port(settings.p2p_host),
            identity_path=settings.identity_path,
            bootstrap=bootstrap_list(settings),
            registry=settings.peer_registry,
            fetch_timeout=settings.peer_timeout,
        ),
        keys,
        on_announcements=deliver,
        lookup=engine.store.get,
        fresh_entries=engine.store.fresh_entries,
        on_claims=claims,
    )
    node.start()
    log.info("fleet secret fingerprint %s", secret_fingerprint(secret))
    return node
