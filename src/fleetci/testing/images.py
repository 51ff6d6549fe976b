"""Build ``docker save`` archives without docker: random-content or real-tree layers, legacy or OCI layout.

Tests and the registry benchmark need images of a known size and known digests; each layer is a real
tar so ``docker load`` accepts them too: one file of random bytes (``content="random"``), or, where
compression matters (the benchmark), files of a real directory tree such as this machine's ``/usr``
(``content="rootfs"``: binaries, libraries, text, as a Debian image's layers hold them). Everything
streams through temp files, so a 2 GiB image is built in bounded memory.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1024 * 1024
BIG_FILE = 8 * CHUNK


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


@functools.lru_cache(maxsize=4)
def tree_files(root: str) -> tuple[tuple[str, int], ...]:
    """(path, size) of the regular files under ``root`` readable here, in a stable (sorted) order."""
    found: list[tuple[str, int]] = []
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(top, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if os.path.isfile(path) and not os.path.islink(path) and os.access(path, os.R_OK):
                found.append((path, st.st_size))
    if not found:
        raise ValueError(f"{root} holds no readable files to build layers from")
    return tuple(found)


def _tree_layer(dest: Path, size: int, seed: int, root: str, start: int) -> tuple[str, int]:
    """A layer tar of real files from ``root`` (from file number ``start``) of about ``size`` bytes.

    Every entry is put under ``l<seed>/`` so layers of different images or seeds never share a digest;
    the tree is walked again from its start when it runs out. Returns (diff_id, next start).
    """
    files = tree_files(root)
    chosen: list[str] = []
    total, i = 0, start
    while total < size:
        path, n = files[i % len(files)]
        i += 1
        if n > BIG_FILE:  # keeps layer sizes near the asked ones
            continue
        chosen.append(path.lstrip("/"))
        total += n + 512
    listing = dest.with_suffix(".list")
    listing.write_bytes(b"\0".join(p.encode() for p in chosen) + b"\0")
    proc = subprocess.run(
        [
            "tar", "-C", "/", "-cf", str(dest), "--no-recursion", "--null", "-T", str(listing),
            "--owner=0", "--group=0", "--numeric-owner", "--mtime=@0", "--format=pax",
            f"--transform=s,^,l{seed}/,", "--ignore-failed-read",
        ],
        capture_output=True,
        check=False,
    )  # fmt: skip
    listing.unlink()
    if proc.returncode not in (0, 1) or not dest.is_file():
        raise OSError(f"tar of {root} failed: {proc.stderr.decode(errors='replace').strip()[-200:]}")
    h = hashlib.sha256()
    with dest.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), i


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
    content: str = "random",
    tree: str = "/usr",
) -> BuiltImage:
    """Write a ``docker save``-shaped archive of one image (``layout`` = ``docker`` legacy or ``oci``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="img-", dir=path.parent))
    try:
        layers = []
        start = seed * 7919  # each seed starts somewhere else in the tree
        for i, size in enumerate(layer_sizes):
            lp = work / f"layer{i}.tar"
            if content == "rootfs":
                digest, start = _tree_layer(lp, size, seed * 1000 + i, tree, start)
                layers.append((lp, digest))
            else:
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
