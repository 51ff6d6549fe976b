"""``fleetci bench registry``: our daemonless push vs ``skopeo copy`` of the same archive, same registry.

Each push runs in a child process so its peak RSS (``wait4`` rusage) is the pusher's own. The figures:
first-push throughput of both tools, blob bytes a re-push and a retag send (both should be 0), and the
peak RSS while pushing a 2 GiB image (bounded memory: layers are streamed, never held).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError

LAYER_MB = 64


def _layers(size_mb: int) -> list[int]:
    total = size_mb * 1024 * 1024
    sizes = [LAYER_MB * 1024 * 1024] * (total // (LAYER_MB * 1024 * 1024))
    if total % (LAYER_MB * 1024 * 1024):
        sizes.append(total % (LAYER_MB * 1024 * 1024))
    return sizes


def _run_child(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of a child process, measured with wait4."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_parts: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    out_parts.append(out)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise FleetciError(f"{Path(argv[0]).name} failed during the benchmark: {tail}")
    return seconds, usage.ru_maxrss / 1024.0, "".join(out_parts)


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetci.registry.bench", *args]


def child_push(plan_path: str, registry: str, repo: str, tag: str, chunk_mb: str) -> dict[str, Any]:
    """Push one prepared image (plan entry) with the library; prints counters as JSON."""
    from fleetci.registry.archive import Blob
    from fleetci.registry.oci import RegistryClient

    plan = json.loads(Path(plan_path).read_text())
    with RegistryClient(registry, chunk_size=int(chunk_mb) * 1024 * 1024) as client:
        for b in plan["blobs"]:
            client.push_blob(repo, Blob.from_json(b), Path(plan["tarball"]))
        client.put_manifest(repo, tag, plan["manifest"].encode(), plan["media_type"])
        return {"blob_bytes_sent": client.counters.blob_bytes_sent}


def child_retag(registry: str, repo: str, src: str, dst: str) -> dict[str, Any]:
    from fleetci.registry.oci import RegistryClient

    with RegistryClient(registry) as client:
        got = client.get_manifest(repo, src)
        if got is None:
            raise FleetciError(f"{repo}:{src} is missing")
        client.put_manifest(repo, dst, got[0], got[1])
        return {"blob_bytes_sent": client.counters.blob_bytes_sent}


def _prepare(path: Path, out: Path) -> tuple[int, float]:
    from fleetci.registry.archive import DockerArchive, verify_image

    started = time.monotonic()
    archive = DockerArchive(path)
    image = verify_image(archive, archive.images()[0])
    out.write_text(
        json.dumps(
            {
                "tarball": str(path),
                "blobs": [b.to_json() for b in image.blobs],
                "manifest": image.manifest.decode(),
                "media_type": image.media_type,
            }
        )
    )
    return image.size, time.monotonic() - started


def bench_registry(
    size_mb: int = 512,
    rss_size_mb: int = 2048,
    chunk_mb: int = 128,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from fleetci.testing.images import write_docker_archive
    from fleetci.testing.registry import no_auth_registry

    say = progress or (lambda _m: None)
    if shutil.which("skopeo") is None:
        raise FleetciError("the benchmark needs skopeo (apt-get install skopeo)")
    root = Path(tempfile.mkdtemp(prefix="fleetci-bench-registry-", dir=workdir))
    reg = no_auth_registry(root / "registry")
    try:
        say(f"building a {size_mb} MiB image (legacy docker save layout, {LAYER_MB} MiB layers)")
        img = write_docker_archive(root / "image.tar", "bench/presto:bench-linux-amd64", _layers(size_mb))
        size, prepare_s = _prepare(img.path, root / "plan.json")
        reg.start()
        say("skopeo copy docker-archive -> registry (baseline)")
        skopeo_s, skopeo_rss, _ = _run_child(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                f"docker-archive:{img.path}",
                f"docker://{reg.host}/bench/skopeo:v1",
            ]
        )
        say(f"skopeo: {size / 1e6 / skopeo_s:.1f} MB/s; fleetci push")
        push_s, push_rss, out = _run_child(
            _child_argv("push", str(root / "plan.json"), reg.url, "bench/fleetci", "v1", str(chunk_mb))
        )
        first = json.loads(out)
        _, _, out = _run_child(
            _child_argv("push", str(root / "plan.json"), reg.url, "bench/fleetci", "v1", str(chunk_mb))
        )
        repush = json.loads(out)
        _, _, out = _run_child(_child_argv("retag", reg.url, "bench/fleetci", "v1", "latest"))
        retag = json.loads(out)
        img.path.unlink()
        say(f"building a {rss_size_mb} MiB image for the memory measurement")
        big = write_docker_archive(
            root / "big.tar", "bench/big:bench-linux-amd64", _layers(rss_size_mb), seed=2
        )
        big_size, _ = _prepare(big.path, root / "big-plan.json")
        say("fleetci push of the big image (peak RSS)")
        big_s, big_rss, _ = _run_child(
            _child_argv("push", str(root / "big-plan.json"), reg.url, "bench/big", "v1", str(chunk_mb))
        )
        push_mb_s = size / 1e6 / push_s
        skopeo_mb_s = size / 1e6 / skopeo_s
        return {
            "size_mb": size_mb,
            "image_bytes": size,
            "push_mb_s": round(push_mb_s, 1),
            "skopeo_mb_s": round(skopeo_mb_s, 1),
            "ratio": round(push_mb_s / skopeo_mb_s, 2),
            "first_push_blob_bytes": first["blob_bytes_sent"],
            "repush_blob_bytes": repush["blob_bytes_sent"],
            "retag_blob_bytes": retag["blob_bytes_sent"],
            "peak_rss_mb": round(big_rss, 1),
            "peak_rss_image_mb": round(big_size / 1024 / 1024),
            "big_push_mb_s": round(big_size / 1e6 / big_s, 1),
            "push_rss_mb": round(push_rss, 1),
            "skopeo_rss_mb": round(skopeo_rss, 1),
            "prepare_verify_s": round(prepare_s, 2),
            "chunk_mb": chunk_mb,
            "targets": {
                "ratio": ">= 1.0",
                "repush_blob_bytes": 0,
                "retag_blob_bytes": 0,
                "peak_rss_mb": "<= 200",
            },
        }
    finally:
        reg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _main(argv: list[str]) -> int:
    verb, *rest = argv
    result = child_push(*rest) if verb == "push" else child_retag(*rest)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
