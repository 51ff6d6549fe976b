"""Join a running proxy to the fleet: secret resolution, bootstrap validation, node start, engine wiring.

``fleetci cache serve`` passes :func:`attacher`'s result to ``fleetci.cache.server.serve``; the cache
package never imports this one (``p2p`` implements the cache's ``PeerLink``, not the other way round).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys

from fleetci import gha
from fleetci.cache.api import PeersStatus, ProbeResult
from fleetci.cache.engine import CacheEngine
from fleetci.cache.peering import PeerService
from fleetci.cache.settings import CacheSettings
from fleetci.errors import FleetciError
from fleetci.http import free_port
from fleetci.p2p.crypto import FleetKeys, secret_fingerprint
from fleetci.p2p.messages import Announcement, Claim
from fleetci.p2p.node import PUBLIC_BOOTSTRAP, P2PConfig, P2PError, P2PNode, parse_multiaddr
from fleetci.p2p.probe import probe_peers

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

    def invalidation(prefixes: tuple[str, ...], exact: tuple[str, ...]) -> None:  # a webhook elsewhere
        loop.call_soon_threadsafe(engine.invalidate, prefixes, exact, False)

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
        on_invalidation=invalidation,
        on_lease=engine.answer_lease,
        busy=engine.fetching,
    )
    node.start()
    node.serve_datagrams(loop)  # lease questions between event loops (fleetci.p2p.datagrams)
    log.info("fleet secret fingerprint %s", secret_fingerprint(secret))
    return node


class AttachedNode:
    """A started node as the proxy's endpoints see it (``cache.peering.PeerService``)."""

    def __init__(self, node: P2PNode, engine: CacheEngine) -> None:
        self.node = node
        self.engine = engine
        self.peer_id = node.peer_id

    def status(self, receipts: bool = False) -> PeersStatus:
        node = self.node
        status: PeersStatus = {
            "p2p": "active",
            "peer_id": node.peer_id,
            "addrs": node.addrs,
            "connected": node.connected_peers(),
            "stats": dict(vars(node.stats)),
        }
        if receipts:
            status["receipts"] = dict(node.receipts)
        return status

    async def probe(self) -> ProbeResult:
        return await probe_peers(self.node, self.engine)

    def stop(self) -> None:
        self.node.stop()


def start_peers(
    settings: CacheSettings, engine: CacheEngine, loop: asyncio.AbstractEventLoop
) -> PeerService | str:
    """Start the libp2p node; on any problem say so in one line, keep serving locally, and return the
    reason (the health endpoint reports it to ``fleetci cache verify``)."""
    try:
        node = start_node(settings, engine, loop)
    except ImportError as exc:
        reason = f"it needs 'pip install fleetci[p2p]' ({exc.name} is missing)"
        print(
            f"fleetci: warning: peer-to-peer sharing needs 'pip install fleetci[p2p]' "
            f"({exc.name} is missing); serving locally",
            file=sys.stderr,
            flush=True,
        )
        return reason
    except FleetciError as exc:
        print(
            f"fleetci: warning: peer-to-peer sharing disabled: {exc}; serving locally",
            file=sys.stderr,
            flush=True,
        )
        return str(exc)
    engine.peers = node
    print(
        f"fleetci cache peer {node.peer_id} listening on {', '.join(node.addrs)} "
        f"(fleet topic {node.keys.topic})",
        flush=True,
    )
    return AttachedNode(node, engine)


def attacher(
    settings: CacheSettings,
) -> functools.partial[PeerService | str] | None:
    """What ``fleetci cache serve`` hands the proxy to join the fleet; None when sharing is off."""
    if not settings.enable_p2p:
        return None
    from fleetci.p2p import slim

    slim.install(public_peers=settings.public_bootstrap)  # before anything imports libp2p
    return functools.partial(start_peers, settings)
