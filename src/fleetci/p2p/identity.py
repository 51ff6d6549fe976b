"""A runner's peer identity (an ed25519 seed kept in CACHE_DIR) and the multiaddrs peers dial.

Used by the node (``p2p/node.py``) and by discovery before any node runs (``fleetci cache peers init``).
libp2p is imported only when a peer ID is computed or an address parsed.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.files import tighten, write_private

log = logging.getLogger("fleetci.p2p")


class P2PError(FleetciError):
    """Peer-to-peer sharing could not start (the proxy keeps serving locally)."""


def load_identity(path: Path) -> bytes:
    """The node's ed25519 seed: created once, kept 0600 in CACHE_DIR, so the peer ID survives restarts."""
    try:
        seed = path.read_bytes()
        if len(seed) == 32:
            tighten(path)  # an older version may have left it wider
            return seed
        log.warning("identity file %s is damaged; creating a new peer identity", path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise P2PError(f"cannot read peer identity {path}: {exc.strerror or exc}") from exc
    seed = secrets.token_bytes(32)
    try:
        write_private(path, seed)
    except OSError as exc:
        raise P2PError(f"cannot write peer identity {path}: {exc.strerror or exc}") from exc
    return seed


def peer_id_for(seed: bytes) -> str:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    return str(ID.from_pubkey(create_new_key_pair(seed).public_key).pretty())


def parse_multiaddr(text: str) -> Any:
    """A dialable ``/ip4/…/tcp/…/p2p/<id>`` multiaddr, or ValueError with the reason."""
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    try:
        return info_from_p2p_addr(multiaddr.Multiaddr(text.strip()))
    except Exception as exc:  # the library raises several unrelated types for bad input
        raise ValueError(f"invalid peer multiaddr {text.strip()!r}: {exc}") from None
