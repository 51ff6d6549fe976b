"""End-to-end check: an entry goes out by gossip and comes back from each peer over the fetch protocol."""

from __future__ import annotations

import asyncio
import contextlib
import os

from fleetci.cache.api import ProbeResult
from fleetci.cache.engine import CacheEngine
from fleetci.cache.peering import Announcement
from fleetci.cache.store import Entry
from fleetci.p2p.node import P2PNode
from fleetci.wait import WaitTimeout, wait_until_async

PROBE_SCOPE = "fleetci-probe"  # no token can map here: token scopes are 32 hex digits


async def probe_peers(node: P2PNode, engine: CacheEngine, wait: float = 5.0) -> ProbeResult:
    body = os.urandom(48)
    key = "probe-" + os.urandom(16).hex()
    entry = Entry.create(
        key,
        PROBE_SCOPE,
        "/_fleetci/probe",
        200,
        (("Content-Type", "application/octet-stream"),),
        body,
        ttl=120,
    )
    engine.store.put(entry)
    node.announce(entry)
    peers = node.connected_peers()
    shared: list[str] = []
    pending = set(peers)

    async def everyone_has_it() -> bool:
        for peer in list(pending):
            got = await asyncio.wrap_future(node.fetch(Announcement.of(entry, peer, inline=False)))
            if got == body:
                shared.append(peer)
                pending.discard(peer)
        return not pending

    if pending:
        await asyncio.sleep(0.2)  # gossip first: a fetch before the announcement lands only fails
        with contextlib.suppress(WaitTimeout):  # peers that never answered are left out, not an error
            await wait_until_async(
                everyone_has_it, timeout=wait - 0.2, what="every peer to share the entry", interval=0.2
            )
    engine.store.delete(key)
    return {"peer_id": node.peer_id, "connected": peers, "shared_with": sorted(shared), "cid": entry.cid()}
