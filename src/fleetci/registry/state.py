"""Files that make syncing resumable and safe: the daemon lock and state, per-tag push state.

All of it is private and written atomically (``fleetci.files.write_json``: 0600 files in 0700
directories): push state holds upload session URLs (whose signed state lets anyone go on writing the
upload), and the directories hold the downloaded images.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.files import move_aside, read_json, touch_private, write_json


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an flock on ``path`` for the block; a second holder fails at once with the first one's pid."""
    touch_private(path)
    fh = path.open("a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            raise FleetciError(
                f"another daemon holds {path} (pid {holder}); only one may run at a time"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        fh.close()


class PushState:
    """``<tag dir>/push-state.json``: chunked upload sessions, blobs known per repository, verified tags."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # parallel blob uploads save their sessions through one state
        self.data: dict[str, Any] = {"uploads": {}, "blobs": {}, "verified": {}}
        if path.exists():
            loaded = read_json(path, "push state")
            if isinstance(loaded, dict):
                for key in self.data:
                    if isinstance(loaded.get(key), dict):
                        self.data[key] = loaded[key]

    def save(self) -> None:
        with self._lock:
            write_json(self.path, self.data)

    # UploadState protocol (oci.RegistryClient)
    def upload_session(self, repo: str, digest: str) -> tuple[str, int] | None:
        entry = self.data["uploads"].get(f"{repo}@{digest}")
        if not isinstance(entry, dict):
            return None
        return str(entry["location"]), int(entry["offset"])

    def save_upload(self, repo: str, digest: str, location: str, offset: int) -> None:
        with self._lock:
            self.data["uploads"][f"{repo}@{digest}"] = {"location": location, "offset": offset}
            self.save()

    def forget_upload(self, repo: str, digest: str) -> None:
        with self._lock:
            if self.data["uploads"].pop(f"{repo}@{digest}", None) is not None:
                self.save()

    def blob_done(self, repo: str, digest: str) -> None:
        with self._lock:
            repos = self.data["blobs"].setdefault(digest, [])
            if repo not in repos:
                repos.append(repo)

    def repos_with(self, digest: str) -> list[str]:
        return list(self.data["blobs"].get(digest, []))

    def mark_verified(self, ref: str, digest: str) -> None:
        with self._lock:
            self.data["verified"][ref] = {"digest": digest, "at": int(time.time())}
            self.save()

    def verified(self, ref: str) -> str | None:
        entry = self.data["verified"].get(ref)
        return str(entry["digest"]) if isinstance(entry, dict) else None


class LayerDigests:
    """``<downloads>/layer-digests.json``: the compressed digest of each uncompressed layer, per codec.

    ``{diff_id: {codec identity: {"digest", "size"}}}``. A later push of the same layer (a re-push, the
    next build sharing its base layers, another image of the plan) asks the registry for that digest
    (HEAD, or a mount from a repository that has it) instead of compressing the layer again. Kept across
    tags on purpose (``clean`` removes tag directories, not this file); it holds digests only.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {}
        if path is not None and path.exists():
            try:
                loaded = read_json(path, "layer digests")
            except FleetciError:
                move_aside(path)  # only a cache: start afresh, keep the bad file for a look
                loaded = {}
            if isinstance(loaded, dict):
                self.data = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    def get(self, diff_id: str, identity: str) -> tuple[str, int] | None:
        with self._lock:
            entry = self.data.get(diff_id, {}).get(identity)
        if not isinstance(entry, dict):
            return None
        try:
            return str(entry["digest"]), int(entry["size"])
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, diff_id: str, identity: str, digest: str, size: int) -> None:
        with self._lock:
            self.data.setdefault(diff_id, {})[identity] = {"digest": digest, "size": size}
            if self.path is not None:
                write_json(self.path, self.data)


@dataclass
class TagEntry:
    """What the daemon knows of one image tag: the run it came from and how its last sync went."""

    run_id: int | None = None
    started_at: int | None = None
    status: str | None = None  # "pushed" | "failed"
    error: str | None = None
    finished_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at,
            "status": self.status,
            "error": self.error,
            "finished_at": self.finished_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TagEntry:
        def number(key: str) -> int | None:
            value = data.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        def text(key: str) -> str | None:
            value = data.get(key)
            return value if isinstance(value, str) else None

        return cls(
            number("run_id"), number("started_at"), text("status"), text("error"), number("finished_at")
        )


@dataclass
class DaemonState:
    """``<downloads>/daemon-state.json``: every tag the daemon worked on, and how many cycles it ran."""

    tags: dict[str, TagEntry] = field(default_factory=dict)
    cycles: int = 0
    last_cycle: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"tags": {t: e.to_json() for t, e in self.tags.items()}, "cycles": self.cycles}
        if self.last_cycle is not None:
            data["last_cycle"] = self.last_cycle
        return data

    @classmethod
    def from_json(cls, data: Any) -> DaemonState | None:
        """None for a document that is not a daemon state (the daemon then starts afresh)."""
        if not isinstance(data, dict) or not isinstance(data.get("tags"), dict):
            return None
        cycles, last = data.get("cycles", 0), data.get("last_cycle")
        return cls(
            tags={str(t): TagEntry.from_json(e) for t, e in data["tags"].items() if isinstance(e, dict)},
            cycles=cycles if isinstance(cycles, int) and not isinstance(cycles, bool) else 0,
            last_cycle=last if isinstance(last, int) and not isinstance(last, bool) else None,
        )

    def pushed(self) -> list[str]:
        return sorted(t for t, e in self.tags.items() if e.status == "pushed")

    def save(self, path: Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: Path, log: Callable[[str], None]) -> DaemonState:
        """The saved state; a corrupt file is moved aside (and named in the log), never lost."""
        if not path.exists():
            return cls()
        try:
            loaded = read_json(path, "daemon state")
        except FleetciError:
            bad = move_aside(path)
            if bad is not None:
                log(f"daemon state was corrupt; kept it as {bad.name} and started fresh")
            return cls()
        return cls.from_json(loaded) or cls()
