"""Finding peers before and while a node runs.

File-based peer registry: a directory shared by self-hosted runners (NFS, a host path, a cache volume).
Each node keeps ``<peer-id>.json`` fresh; entries unseen for 30 minutes expire (seed 001). Writes are
atomic (temp file + rename) so a reader never sees half a record.

:func:`init_peer` and :func:`discover_peers` are ``fleetci cache peers init|discover`` (and the seed's
``p2p_peer_bootstrap.sh``): a runner's identity and address before its proxy starts, and the others'.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fleetci import gha
from fleetci.cache.settings import CacheSettings
from fleetci.errors import FleetciError
from fleetci.files import write_atomic
from fleetci.http import primary_ip
from fleetci.p2p.identity import load_identity, peer_id_for

EXPIRY_S = 30 * 60


@dataclass(frozen=True)
class PeerRecord:
    peer_id: str
    addrs: tuple[str, ...]
    updated: float


class PeerRegistry:
    def __init__(self, root: Path, expiry: float = EXPIRY_S) -> None:
        self.root = root
        self.expiry = expiry

    def register(self, peer_id: str, addrs: list[str] | tuple[str, ...]) -> Path:
        record = json.dumps({"peer_id": peer_id, "addrs": list(addrs), "updated": time.time()})
        # Public (addresses only) and read by other runners, which may run as other users.
        return write_atomic(self.root / f"{peer_id}.json", record, durable=False, mode=0o644)

    def remove(self, peer_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.root / f"{peer_id}.json").unlink()

    def active(self, now: float | None = None) -> list[PeerRecord]:
        """Live records; expired ones are deleted, unreadable ones skipped."""
        now = time.time() if now is None else now
        out: list[PeerRecord] = []
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*.json")):
            try:
                d = json.loads(path.read_text())
                rec = PeerRecord(str(d["peer_id"]), tuple(str(a) for a in d["addrs"]), float(d["updated"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if now - rec.updated > self.expiry:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out.append(rec)
        return out


@dataclass(frozen=True)
class PeerAddress:
    """This runner's peer ID and the multiaddr other runners dial."""

    peer_id: str
    addr: str


def init_peer(settings: CacheSettings) -> PeerAddress:
    """Create (or read) this runner's identity, register it, and export it for the steps that follow."""
    peer_id = peer_id_for(load_identity(settings.identity_path))
    host = settings.p2p_host if settings.p2p_host not in ("0.0.0.0", "") else primary_ip()
    addr = f"/ip4/{host}/tcp/{settings.listen_port}/p2p/{peer_id}"
    if settings.peer_registry is not None:
        PeerRegistry(settings.peer_registry).register(peer_id, [addr])
    gha.set_output("peer-id", peer_id)
    gha.set_env("CACHE_ENABLE_P2P", "true")
    gha.set_env("CACHE_LISTEN_PORT", str(settings.listen_port))
    return PeerAddress(peer_id, addr)


def discover_peers(settings: CacheSettings) -> list[str]:
    """Other runners' addresses from the registry, exported as CACHE_BOOTSTRAP_PEERS when there are any."""
    if settings.peer_registry is None:
        raise FleetciError(
            "no peer registry: set CACHE_PEER_REGISTRY (or --peer-registry) to a shared directory"
        )
    own = peer_id_for(load_identity(settings.identity_path)) if settings.identity_path.exists() else ""
    addrs = [a for rec in registered(settings) if rec.peer_id != own for a in rec.addrs]
    if addrs:
        gha.set_env("CACHE_BOOTSTRAP_PEERS", ",".join(addrs))
    return addrs


def registered(settings: CacheSettings) -> list[PeerRecord]:
    """The live records of the shared registry (none without one)."""
    return PeerRegistry(settings.peer_registry).active() if settings.peer_registry is not None else []
