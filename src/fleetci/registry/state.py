"""Files that make syncing resumable and safe: atomic JSON state, the daemon lock, per-tag push state.

All of it is private (0600 files in 0700 directories, via ``fleetci.files``): push state holds upload
session URLs, and the directories hold the downloaded images.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.files import tighten, touch_private, write_private


def write_json_atomic(path: Path, data: Any) -> None:
    """Write-then-rename, 0600 in a 0700 directory: a crash leaves the old file or the new one.

    State files hold upload session URLs (whose signed state lets anyone go on writing the upload)."""
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    """Parse a state file (tightening one an older version left group/world readable)."""
    tighten(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FleetciError(f"{what} {path} does not exist") from None
    except (OSError, ValueError) as exc:
        raise FleetciError(f"{what} {path} is corrupt: {exc}") from exc


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
        self.data: dict[str, Any] = {"uploads": {}, "blobs": {}, "verified": {}}
        if path.exists():
            loaded = read_json(path, "push state")
            if isinstance(loaded, dict):
                for key in self.data:
                    if isinstance(loaded.get(key), dict):
                        self.data[key] = loaded[key]

    def save(self) -> None:
        write_json_atomic(self.path, self.data)

    # UploadState protocol (oci.RegistryClient)
    def upload_session(self, repo: str, digest: str) -> tuple[str, int] | None:
        entry = self.data["uploads"].get(f"{repo}@{digest}")
        if not isinstance(entry, dict):
            return None
        return str(entry["location"]), int(entry["offset"])

    def save_upload(self, repo: str, digest: str, location: str, offset: int) -> None:
        self.data["uploads"][f"{repo}@{digest}"] = {"location": location, "offset": offset}
        self.save()

    def forget_upload(self, repo: str, digest: str) -> None:
        if self.data["uploads"].pop(f"{repo}@{digest}", None) is not None:
            self.save()

    def blob_done(self, repo: str, digest: str) -> None:
        repos = self.data["blobs"].setdefault(digest, [])
        if repo not in repos:
            repos.append(repo)

    def repos_with(self, digest: str) -> list[str]:
        return list(self.data["blobs"].get(digest, []))

    def mark_verified(self, ref: str, digest: str) -> None:
        self.data["verified"][ref] = {"digest": digest, "at": int(time.time())}
        self.save()

    def verified(self, ref: str) -> str | None:
        entry = self.data["verified"].get(ref)
        return str(entry["digest"]) if isinstance(entry, dict) else None
