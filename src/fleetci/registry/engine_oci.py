"""``--engine oci`` (the default): push the planned images with our daemonless OCI client.

Blobs the registry has are skipped, blobs another repository of the project has are mounted, the rest
stream from the archive, ``--parallel`` of them at once (chunked uploads resume from
``push-state.json``). Uncompressed layers are compressed on the way (``--compression``, gzip by default,
as docker push does); the manifest then names the compressed blobs, while the config, and so the image's
diff IDs, stay as built. The compressed digest of each layer is remembered in ``layer-digests.json``, so
a later push of the same layer asks the registry for it without compressing it again. A tag that exists
with a different image is left alone unless ``force``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.registry.archive import DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST, Blob
from fleetci.registry.compress import UNCOMPRESSED_LAYERS, CompressedStream, codec, cpu_threads
from fleetci.registry.oci import RegistryClient, UploadStopped
from fleetci.registry.plan import STATE_FILE, PushRow, UploadPlan
from fleetci.registry.settings import RegistrySettings
from fleetci.registry.state import LayerDigests, PushState

Log = Callable[[str], None]
LAYER_DIGESTS = "layer-digests.json"
SIGNAL_CHECK_S = 0.2  # how often the main thread wakes while blobs upload (to see Ctrl-C/SIGTERM)
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_TO_OCI = {
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    DOCKER_GZIP: "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.container.image.v1+json": OCI_CONFIG,
}


def _config_digest(manifest: bytes) -> str | None:
    try:
        doc = json.loads(manifest)
        return str(doc["config"]["digest"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class BlobsPushed:
    """What :func:`push_blobs` did: how each blob got there, and the compressed stand-ins of layers."""

    how: dict[str, int] = field(default_factory=dict)
    compressed: dict[str, tuple[str, str, int]] = field(
        default_factory=dict
    )  # diff ID -> (type, digest, size)


def push_blobs(
    client: RegistryClient,
    repo: str,
    blobs: Sequence[Blob],
    archive: Path,
    *,
    state: PushState | None,
    layers: LayerDigests,
    compression: str,
    parallel: int,
    log: Log,
    level: int = 0,
) -> BlobsPushed:
    """Make every blob exist in ``repo``, ``parallel`` at once; uncompressed layers go compressed."""
    unique = list({b.digest: b for b in blobs}.values())  # an image may repeat a layer (empty ones)
    workers = max(1, min(parallel, len(unique)))
    # gzip streams share one pool of a thread per core (each may use them all: the last layer of a push
    # gets every core); zstd's own workers are split among the streams in flight
    split = max(
        1, cpu_threads() // min(workers, sum(b.media_type in UNCOMPRESSED_LAYERS for b in unique) or 1)
    )
    result = BlobsPushed()
    lock = threading.Lock()
    failed = threading.Event()
    done = [0]

    def one(blob: Blob) -> None:
        if failed.is_set():
            return
        c = codec(compression, level) if blob.media_type in UNCOMPRESSED_LAYERS else None
        if c is None:
            sources = [r for r in state.repos_with(blob.digest) if r != repo] if state else []
            how = client.push_blob(repo, blob, archive, sources, state, failed)
            digest, size = blob.digest, blob.size
        else:
            known = layers.get(blob.digest, c.identity)
            how = ""
            if known is not None:
                digest, size = known
                sources = [r for r in state.repos_with(digest) if r != repo] if state else []
                if client.blob_exists(repo, digest):
                    client.counters.add("blobs_skipped")
                    how = "skipped"
                elif any(client.mount_blob(repo, digest, src) for src in sources):
                    how = "mounted"
            if not how:
                digest, size = client.push_compressed(
                    repo,
                    f"{blob.digest}+{c.identity}",
                    lambda: CompressedStream(
                        archive,
                        blob.offset,
                        blob.size,
                        c,
                        cpu_threads() if c.name == "gzip" else split,
                        blob.digest,
                    ),
                    state,
                    failed,
                )
                layers.put(blob.digest, c.identity, digest, size)
                how = f"{c.name} uploaded"
            with lock:
                result.compressed[blob.digest] = (c.media_type(blob.media_type), digest, size)
        if state is not None:
            state.blob_done(repo, digest)
            state.save()
        with lock:
            result.how[how] = result.how.get(how, 0) + 1
            done[0] += 1
            n = done[0]
        ratio = f", {size / blob.size:.0%} of {blob.size / 1e6:.1f} MB" if size != blob.size else ""
        log(f"{repo}: blob {n}/{len(unique)} {digest[:19]} {size / 1e6:.1f} MB{ratio} {how}")

    def guarded(blob: Blob) -> None:
        try:
            one(blob)
        except UploadStopped as exc:
            log(str(exc))  # where the stopped upload stands (the next push resumes it)
            raise
        except BaseException:
            failed.set()  # queued blobs are not started; those in flight stop before their next chunk
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="push")
    try:
        futures = [pool.submit(guarded, b) for b in unique]
        pending = set(futures)
        # short waits: a signal may land on a worker thread, and Python runs its handler (Ctrl-C's
        # KeyboardInterrupt) only when the main thread wakes up
        while pending and not failed.is_set():
            pending = wait(pending, timeout=SIGNAL_CHECK_S, return_when=FIRST_EXCEPTION).not_done
    except BaseException:  # Ctrl-C / SIGTERM in the main thread: the same stop as a failed blob
        failed.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=failed.is_set())
    errors = [f.exception() for f in futures if not f.cancelled()]
    # the blob that failed first, not the uploads it stopped
    first = next((e for e in errors if e is not None and not isinstance(e, UploadStopped)), None)
    first = first or next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return result


def final_manifest(
    manifest: bytes, media_type: str, compressed: dict[str, tuple[str, str, int]]
) -> tuple[bytes, str]:
    """The manifest to PUT: each uncompressed layer replaced by its compressed blob (config unchanged).

    A docker v2 manifest stays one (``…rootfs.diff.tar.gzip``) for gzip; zstd has no docker media type,
    so such a manifest becomes an OCI manifest (``…layer.v1.tar+zstd``), as skopeo converts it.
    """
    if not compressed:
        return manifest, media_type
    try:
        doc = json.loads(manifest)
        for layer in doc["layers"]:
            if layer["digest"] in compressed:
                layer["mediaType"], layer["digest"], layer["size"] = compressed[layer["digest"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FleetciError(
            f"the planned manifest is not an image manifest ({exc}); run prepare again"
        ) from None
    if media_type == DOCKER_MANIFEST and any(t.endswith("+zstd") for t, _, _ in compressed.values()):
        media_type = OCI_MANIFEST
        doc["mediaType"] = OCI_MANIFEST
        for desc in [doc["config"], *doc["layers"]]:
            desc["mediaType"] = DOCKER_TO_OCI.get(desc["mediaType"], desc["mediaType"])
    return json.dumps(doc, separators=(",", ":")).encode(), media_type


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
    layers = LayerDigests(settings.downloads_dir / LAYER_DIGESTS)
    rows: list[PushRow] = []
    detail: Log = log if verbose else (lambda _m: None)
    with RegistryClient.from_settings(settings, skip_login, detail) as client:
        client.ping()
        for img in plan.images:
            repo = f"{settings.registry_project}/{img.repository}"
            ref = f"{repo}:{img.tag}"
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
            pushed = push_blobs(
                client,
                repo,
                img.blobs,
                path,
                state=state,
                layers=layers,
                compression=settings.compression,
                level=settings.compression_level,
                parallel=settings.parallel,
                log=log,
            )
            manifest, media_type = final_manifest(
                img.manifest.encode(), img.manifest_media_type, pushed.compressed
            )
            expected = "sha256:" + hashlib.sha256(manifest).hexdigest()
            digest = client.put_manifest(repo, img.tag, manifest, media_type)
            actual = client.manifest_digest(repo, img.tag)
            if actual != expected:
                raise FleetciError(f"{ref}: registry reports digest {actual}, pushed {expected}")
            state.mark_verified(ref, digest or str(actual))
            if retag_as_latest:
                client.put_manifest(repo, "latest", manifest, media_type)
                log(f"{repo}:latest -> {actual}")
            sent = client.counters.blob_bytes_sent - before
            row = PushRow(ref, "pushed", sent, time.monotonic() - started, pushed.how)
            log(f"{ref} pushed {actual} ({sent / 1e6:.1f} MB sent in {row.seconds:.1f}s)")
            rows.append(row)
    return rows
