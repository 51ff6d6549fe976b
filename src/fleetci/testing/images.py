"""Build ``docker save`` archives without docker: random-content layers, legacy or OCI layout.

Tests and the registry benchmark need images of a known size and known digests; each layer is a real
tar (one file of random bytes) so ``docker load`` accepts them too. Everything streams through temp
files, so a 2 GiB image is built in bounded memory.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1024 * 1024


@dataclass
class BuiltImage:
    path: Path
    repo_tag: str
    config_digest: str
    layer_digests: list[str] = field(default_factory=list)
    size: int = 0


def _random_layer(dest: Path, size: int, seed: int) -> str:
    """A layer tar with one file of ``size`` random bytes; returns its sha256 digest (the diff_id)."""
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        payload = Path(tmp) / "payload"
        with payload.open("wb") as fh:
            left = size
            while left > 0:
                n = min(CHUNK, left)
                fh.write(rng.randbytes(n))
                left -= n
        with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"data/blob-{seed}.bin")
            info.size = size
            info.mtime = 0
            with payload.open("rb") as src:
                tar.addfile(info, src)
    h = hashlib.sha256()
    with dest.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_docker_archive(
    path: Path,
    repo_tag: str,
    layer_sizes: list[int],
    *,
    layout: str = "docker",
    seed: int = 1,
    compress: bool = False,
    architecture: str = "amd64",
) -> BuiltImage:
    """Write a ``docker save``-shaped archive of one image (``layout`` = ``docker`` legacy or ``oci``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="img-", dir=path.parent))
    try:
        layers = []
        for i, size in enumerate(layer_sizes):
            lp = work / f"layer{i}.tar"
            layers.append((lp, _random_layer(lp, size, seed * 1000 + i)))
        config = {
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": ["/bin/true"], "Labels": {"fleetci.test.seed": str(seed)}},
            "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
            "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
        }
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        config_hex = hashlib.sha256(config_bytes).hexdigest()
        plain = path if not compress else work / "archive.tar"
        with tarfile.open(plain, "w", format=tarfile.PAX_FORMAT) as tar:
            if layout == "docker":
                names = []
                for i, (lp, digest) in enumerate(layers):
                    layer_id = hashlib.sha256(f"{digest}{i}".encode()).hexdigest()
                    tar.add(lp, f"{layer_id}/layer.tar")
                    _add_bytes(tar, f"{layer_id}/VERSION", b"1.0")
                    names.append(f"{layer_id}/layer.tar")
                _add_bytes(tar, f"{config_hex}.json", config_bytes)
                manifest = [{"Config": f"{config_hex}.json", "RepoTags": [repo_tag], "Layers": names}]
                _add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
            elif layout == "oci":
                descs = []
                for lp, digest in layers:
                    tar.add(lp, f"blobs/sha256/{digest.split(':', 1)[1]}")
                    descs.append(
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": digest,
                            "size": lp.stat().st_size,
                        }
                    )
                _add_bytes(tar, f"blobs/sha256/{config_hex}", config_bytes)
                manifest_doc = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": f"sha256:{config_hex}",
                        "size": len(config_bytes),
                    },
                    "layers": descs,
                }
                mbytes = json.dumps(manifest_doc, indent=2).encode()
                mhex = hashlib.sha256(mbytes).hexdigest()
                _add_bytes(tar, f"blobs/sha256/{mhex}", mbytes)
                index = {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [
                        {
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": f"sha256:{mhex}",
                            "size": len(mbytes),
                            "annotations": {
                                "io.containerd.image.name": repo_tag,
                                "org.opencontainers.image.ref.name": repo_tag.rsplit(":", 1)[-1],
                            },
                        }
                    ],
                }
                _add_bytes(tar, "index.json", json.dumps(index).encode())
                _add_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                legacy = [
                    {
                        "Config": f"blobs/sha256/{config_hex}",
                        "RepoTags": [repo_tag],
                        "Layers": [f"blobs/sha256/{d.split(':', 1)[1]}" for _, d in layers],
                    }
                ]
                _add_bytes(tar, "manifest.json", json.dumps(legacy).encode())
            else:
                raise ValueError(f"unknown layout {layout!r}")
        if compress:
            with plain.open("rb") as src, gzip.open(path, "wb", compresslevel=1) as dst:
                shutil.copyfileobj(src, dst, CHUNK)
        return BuiltImage(
            path,
            repo_tag,
            f"sha256:{config_hex}",
            [d for _, d in layers],
            sum(lp.stat().st_size for lp, _ in layers) + len(config_bytes),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
