"""What the cache needs from a peer-to-peer layer, and what travels through it.

The cache never imports a transport: ``fleetci.p2p`` implements :class:`PeerLink` (libp2p) and
``fleetci.bench.fleet`` a simulated one, and both hand the engine :class:`Announcement` and
:class:`Claim` records. Imports point one way: ``p2p`` -> ``cache``.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Protocol

from fleetci.cache.api import PeersStatus, ProbeResult
from fleetci.cache.store import Entry

INLINE_MAX = 32 * 1024  # bodies up to this size ride in the announcement itself


@dataclass(frozen=True)
class Announcement:
    """What a peer says it holds: enough to fetch, verify and serve the entry."""

    key: str
    scope: str
    target: str
    cid: str
    etag: str | None
    last_modified: str | None
    status: int
    headers: tuple[tuple[str, str], ...]
    stored_at: float
    fresh_until: float
    size: int
    peer: str
    body: bytes | None = None

    @classmethod
    def of(cls, entry: Entry, peer: str, inline: bool = True) -> Announcement:
        return cls(
            key=entry.key,
            scope=entry.scope,
            target=entry.target,
            cid=entry.cid(),
            etag=entry.etag,
            last_modified=entry.last_modified,
            status=entry.status,
            headers=entry.headers,
            stored_at=entry.stored_at,
            fresh_until=entry.fresh_until,
            size=len(entry.body),
            peer=peer,
            body=entry.body if inline and len(entry.body) <= INLINE_MAX else None,
        )

    def to_entry(self, body: bytes) -> Entry:
        """The entry as the announcing peer stored it; the caller has checked ``body`` against the CID."""
        return Entry.create(
            self.key,
            self.scope,
            self.target,
            self.status,
            self.headers,
            body,
            self.fresh_until - self.stored_at,
            now=self.stored_at,
        )


# A key owner's answers to a lease question (issue 16; the wire letters of fleetci.p2p's lease line):
# granted; wait (another node is fetching it, its announcement will come); granted, but a fresh copy
# was stored or announced lately (look in the fleet first, then fetch: never wait for an announcement
# that was made already).
LEASE_GRANTED, LEASE_WAIT, LEASE_FRESH = "g", "w", "h"


@dataclass(frozen=True)
class Claim:
    """A peer is fetching ``key`` upstream right now (``release``: it gave up without an entry)."""

    key: str
    scope: str
    peer: str
    release: bool = False
    sent_at: float = 0.0  # the claimant's clock: propagation statistics only


class PeerLink(Protocol):
    """What the engine needs from the peer-to-peer layer (``fleetci.p2p.node.P2PNode``)."""

    peer_id: str

    def announce(self, entry: Entry) -> None: ...
    def claim(self, scope: str, key: str, release: bool = False) -> None: ...
    def fetch(self, ann: Announcement) -> concurrent.futures.Future[bytes | None]: ...
    def connected_peers(self) -> list[str]: ...


class PeerService(Protocol):
    """A peer-to-peer node attached to a running proxy, as its endpoints and its shutdown see it."""

    peer_id: str

    def status(self, receipts: bool = False) -> PeersStatus: ...
    async def probe(self) -> ProbeResult: ...
    def stop(self) -> None: ...
