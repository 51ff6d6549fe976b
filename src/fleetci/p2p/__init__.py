"""Peer-to-peer sharing of the API cache between runners (libp2p, extra ``[p2p]``)."""

from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.discovery import PeerRecord, PeerRegistry
from fleetci.p2p.messages import Announcement

__all__ = ["Announcement", "FleetKeys", "PeerRecord", "PeerRegistry", "SealError"]
