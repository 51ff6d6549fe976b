"""File-based peer registry: a directory shared by self-hosted runners (NFS, a host path, a cache volume).

Each node keeps ``<peer-id>.json`` fresh; entries unseen for 30 minutes expire (seed 001). Writes are
atomic (temp file + rename) so a reader never sees half a record.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from fleetci.files import write_atomic

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
