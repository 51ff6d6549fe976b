"""``--engine oci`` (the default): push the planned images with our daemonless OCI client.

Blobs the registry has are skipped, blobs another repository of the project has are mounted, the rest
stream from the archive (chunked uploads resume from ``push-state.json``). A tag that exists with a
different image is left alone unless ``force``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.registry.oci import RegistryClient
from fleetci.registry.plan import STATE_FILE, PushRow, UploadPlan
from fleetci.registry.settings import RegistrySettings
from fleetci.registry.state import PushState

Log = Callable[[str], None]


def _config_digest(manifest: bytes) -> str | None:
    try:
        doc = json.loads(manifest)
        return str(doc["config"]["digest"])
    except (ValueError, KeyError, TypeError):
        return None


def oci_push(
    settings: RegistrySettings,
    directory: Path,
    plan: UploadPlan,
    *,
    force: bool,
    retag_as_latest: bool,
    verbose: bool,
    skip_login: bool,
    log: Log,
) -> list[PushRow]:
    state = PushState(directory / STATE_FILE)
    rows: list[PushRow] = []
    detail: Log = log if verbose else (lambda _m: None)
    with RegistryClient.from_settings(settings, skip_login, detail) as client:
        client.ping()
        for img in plan.images:
            repo = f"{settings.registry_project}/{img.repository}"
            ref = f"{repo}:{img.tag}"
            manifest = img.manifest.encode()
            existing = client.get_manifest(repo, img.tag, push=True)
            if existing is not None and not force:
                if _config_digest(existing[0]) == img.config_digest:
                    state.mark_verified(ref, existing[2])
                    log(f"{ref} already present (same image); skipped")
                    rows.append(PushRow(ref, "present"))
                else:
                    log(f"{ref} exists with a different image; skipped (--force overwrites)")
                    rows.append(PushRow(ref, "skipped: different image exists"))
                continue
            path = directory / img.tarball
            if not path.is_file():
                raise FleetciError(f"{path} is missing; run prepare again")
            if img.tarball_size is not None and path.stat().st_size != img.tarball_size:
                raise FleetciError(f"{path} changed since prepare; run prepare again")
            before = client.counters.blob_bytes_sent
            started = time.monotonic()
            how_count: dict[str, int] = {}
            for i, blob in enumerate(img.blobs, 1):
                sources = [r for r in state.repos_with(blob.digest) if r != repo]
                how = client.push_blob(repo, blob, path, sources, state)
                how_count[how] = how_count.get(how, 0) + 1
                state.blob_done(repo, blob.digest)
                state.save()
                log(f"{ref}: blob {i}/{len(img.blobs)} {blob.digest[:19]} {blob.size / 1e6:.1f} MB {how}")
            digest = client.put_manifest(repo, img.tag, manifest, img.manifest_media_type)
            actual = client.manifest_digest(repo, img.tag)
            if actual != img.manifest_digest:
                raise FleetciError(f"{ref}: registry reports digest {actual}, pushed {img.manifest_digest}")
            state.mark_verified(ref, digest or str(actual))
            if retag_as_latest:
                client.put_manifest(repo, "latest", manifest, img.manifest_media_type)
                log(f"{repo}:latest -> {actual}")
            sent = client.counters.blob_bytes_sent - before
            row = PushRow(ref, "pushed", sent, time.monotonic() - started, how_count)
            log(f"{ref} pushed {actual} ({sent / 1e6:.1f} MB sent in {row.seconds:.1f}s)")
            rows.append(row)
    return rows
