"""Peer-to-peer sharing of the API cache between runners (libp2p, extra ``[p2p]``).

The names below load on first use (PEP 562): a proxy on a shared store imports ``fleetci.p2p.backend``
and ``fleetci.p2p.crypto`` only, not discovery or the message codec.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fleetci.p2p.crypto import FleetKeys, SealError
    from fleetci.p2p.discovery import PeerRecord, PeerRegistry
    from fleetci.p2p.messages import Announcement

__all__ = ["Announcement", "FleetKeys", "PeerRecord", "PeerRegistry", "SealError"]
_HOME = {
    "Announcement": "messages",
    "FleetKeys": "crypto",
    "PeerRecord": "discovery",
    "PeerRegistry": "discovery",
    "SealError": "crypto",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"fleetci.p2p.{_HOME[name]}"), name)
