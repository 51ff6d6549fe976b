"""End-to-end check: an entry goes out by gossip and comes back from each peer over the fetch protocol."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fleetci.cache.engine import CacheEngine
from fleetci.cache.store import Entry
from fleetci.p2p.messages import Announcement

PROBE_SCOPE = "fleetci-probe"  # no token can map here: token scopes are 32 hex digits


async def probe_peers(node: Any, engine: CacheEngine, wait: float = 5.0) -> dict[str, Any]:
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
    deadline = time.monotonic() + wait
    pending = set(peers)
    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        for peer in list(pending):
            got = await asyncio.wrap_future(node.fetch(Announcement.of(entry, peer, inline=False)))
            if got == body:
                shared.append(peer)
                pending.discard(peer)
    engine.store.delete(key)
    return {"peer_id": node.peer_id, "connected": peers, "shared_with": sorted(shared), "cid": entry.cid()}
