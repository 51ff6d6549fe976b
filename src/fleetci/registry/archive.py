"""Read ``docker save`` archives without a daemon: the legacy layout and Docker >= 25's OCI layout.

Blobs are never loaded: each is an (offset, size) window into the uncompressed tar, streamed from disk
when pushed. Gzipped archives are decompressed to a plain tar once (``gunzip_to``), as skopeo needs too.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import posixpath
import shutil
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from fleetci.errors import FleetciError
from fleetci.files import partial

READ_CHUNK = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST)
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class Member:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Blob:
    """One blob as a window into the archive file."""

    digest: str
    size: int
    media_type: str
    member: str
    offset: int

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "size": self.size,
            "media_type": self.media_type,
            "member": self.member,
            "offset": self.offset,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Blob:
        return cls(
            str(data["digest"]),
            int(data["size"]),
            str(data["media_type"]),
            str(data["member"]),
            int(data["offset"]),
        )


@dataclass
class Image:
    """An image found in an archive: its tags, its blobs and the manifest we will PUT."""

    repo_tags: list[str]
    config: Blob
    layers: list[Blob]
    manifest: bytes
    media_type: str
    layout: str  # "docker" (legacy) or "oci"
    extra_blobs: list[Blob] = field(default_factory=list)

    @property
    def manifest_digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    @property
    def blobs(self) -> list[Blob]:
        return [*self.layers, self.config]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)


def is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == GZIP_MAGIC


def gunzip_to(src: Path, dest: Path, progress: Callable[[int], None] | None = None) -> None:
    """Decompress ``src`` into ``dest`` in bounded memory; a truncated or corrupt gzip is a clear error."""
    with partial(dest) as tmp:
        try:
            with gzip.open(src, "rb") as fin, tmp.open("wb") as fout:
                done = 0
                while chunk := fin.read(READ_CHUNK):
                    fout.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done)
        except (OSError, EOFError, zlib.error) as exc:
            raise FleetciError(f"{src} is not a valid gzip file: {exc}") from exc


def read_window(fh: BinaryIO, offset: int, size: int, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    """Yield ``size`` bytes from ``offset`` in chunks: the only way blob bytes leave the disk."""
    fh.seek(offset)
    left = size
    while left > 0:
        data = fh.read(min(chunk, left))
        if not data:
            raise FleetciError(f"{getattr(fh, 'name', 'archive')} ended early (truncated)")
        left -= len(data)
        yield data


def sha256_window(path: Path, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for data in read_window(fh, offset, size):
            h.update(data)
    return "sha256:" + h.hexdigest()


def media_type_of(path: Path, offset: int, size: int) -> str:
    with path.open("rb") as fh:
        fh.seek(offset)
        head = fh.read(4) if size >= 4 else b""
    if head[:2] == GZIP_MAGIC:
        return "application/vnd.oci.image.layer.v1.tar+gzip"
    if head == ZSTD_MAGIC:
        return "application/vnd.oci.image.layer.v1.tar+zstd"
    return "application/vnd.oci.image.layer.v1.tar"


class DockerArchive:
    """Index of one uncompressed ``docker save`` tar: member windows plus the images it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise FleetciError(f"{path} does not exist")
        if is_gzip(path):
            raise FleetciError(f"{path} is gzipped; run 'fleetci registry prepare' (it decompresses) first")
        self.members = self._index()

    def _index(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        links: dict[str, str] = {}
        try:
            with tarfile.open(self.path, "r:") as tar:
                for info in tar:
                    name = posixpath.normpath(info.name.lstrip("./")) if info.name not in (".", "./") else "."
                    if info.isreg():
                        members[name] = Member(name, info.offset_data, info.size)
                    elif info.issym():
                        links[name] = posixpath.normpath(
                            posixpath.join(posixpath.dirname(name), info.linkname)
                        )
                    elif info.islnk():
                        links[name] = posixpath.normpath(info.linkname.lstrip("./"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise FleetciError(f"{self.path} is not a valid tar archive: {exc}") from exc
        end = self.path.stat().st_size
        for m in members.values():
            if m.offset + m.size > end:
                raise FleetciError(f"{self.path} is truncated: {m.name} runs past the end of the file")
        for name, target in links.items():
            seen = 0
            while target in links and seen < 16:
                target, seen = links[target], seen + 1
            if target in members:
                members[name] = Member(name, members[target].offset, members[target].size)
        return members

    def read(self, name: str, limit: int = 64 * 1024 * 1024) -> bytes:
        m = self.member(name)
        if m.size > limit:
            raise FleetciError(f"{self.path}: {name} is {m.size} bytes, too large for metadata")
        with self.path.open("rb") as fh:
            return b"".join(read_window(fh, m.offset, m.size))

    def member(self, name: str) -> Member:
        m = self.members.get(posixpath.normpath(name.lstrip("./")))
        if m is None:
            raise FleetciError(f"{self.path} has no {name} (not a complete docker save archive)")
        return m

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except ValueError as exc:
            raise FleetciError(f"{self.path}: {name} is not valid JSON: {exc}") from exc

    def blob(self, name: str, digest: str, media_type: str) -> Blob:
        m = self.member(name)
        return Blob(digest, m.size, media_type, m.name, m.offset)

    # -- layouts ---------------------------------------------------------------------------------------

    def images(self) -> list[Image]:
        """Every image in the archive; OCI layout when index.json is present, else the legacy layout."""
        if "index.json" in self.members and "oci-layout" in self.members:
            return self._oci_images()
        if "manifest.json" in self.members:
            return self._legacy_images()
        raise FleetciError(f"{self.path} is not a docker save archive (no manifest.json or index.json)")

    def _legacy_images(self) -> list[Image]:
        entries = self.read_json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise FleetciError(f"{self.path}: manifest.json lists no images")
        images = []
        for entry in entries:
            try:
                config_name = str(entry["Config"])
                layer_names = [str(x) for x in entry["Layers"]]
                tags = [str(t) for t in (entry.get("RepoTags") or [])]
            except (KeyError, TypeError) as exc:
                raise FleetciError(f"{self.path}: manifest.json entry is malformed ({exc})") from exc
            hex_id = posixpath.basename(config_name).removesuffix(".json")
            config = self.blob(config_name, f"sha256:{hex_id}", OCI_CONFIG)
            layers = []
            for name in layer_names:
                m = self.member(name)
                layers.append(
                    Blob(
                        self._digest_from_name(name) or "",
                        m.size,
                        media_type_of(self.path, m.offset, m.size),
                        m.name,
                        m.offset,
                    )
                )
            images.append(Image(tags, config, layers, b"", OCI_MANIFEST, "docker"))
        return images

    @staticmethod
    def _digest_from_name(name: str) -> str | None:
        """Docker >= 25 names legacy entries ``blobs/sha256/<hex>``: the name is the digest."""
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "blobs" and len(parts[2]) == 64:
            return f"{parts[1]}:{parts[2]}"
        return None

    def _oci_images(self) -> list[Image]:
        index = self.read_json("index.json")
        images = []
        for desc in index.get("manifests") or []:
            tags = []
            ann = desc.get("annotations") or {}
            ref = ann.get("io.containerd.image.name") or ann.get("org.opencontainers.image.ref.name")
            if ref:
                tags.append(str(ref))
            images.append(self._oci_image(desc, tags))
        if not images:
            raise FleetciError(f"{self.path}: index.json lists no images")
        if all(not i.repo_tags for i in images) and "manifest.json" in self.members:
            legacy = self.read_json("manifest.json")
            if isinstance(legacy, list) and len(legacy) == len(images):
                for img, entry in zip(images, legacy, strict=True):
                    img.repo_tags = [str(t) for t in (entry.get("RepoTags") or [])]
        return images

    def _blob_path(self, digest: str) -> str:
        algo, _, hexdigest = digest.partition(":")
        return f"blobs/{algo}/{hexdigest}"

    def _oci_image(self, desc: dict[str, Any], tags: list[str], depth: int = 0) -> Image:
        digest = str(desc.get("digest", ""))
        media_type = str(desc.get("mediaType") or OCI_MANIFEST)
        raw = self.read(self._blob_path(digest))
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise FleetciError(f"{self.path}: manifest {digest} is not valid JSON") from exc
        media_type = str(doc.get("mediaType") or media_type)
        if media_type in INDEX_TYPES or "manifests" in doc:
            # a multi-platform index: push the first image manifest (docker save writes one platform)
            if depth > 2 or not doc.get("manifests"):
                raise FleetciError(f"{self.path}: image index {digest} has no usable manifest")
            return self._oci_image(doc["manifests"][0], tags, depth + 1)
        cfg = doc.get("config") or {}
        config = self.blob(
            self._blob_path(str(cfg.get("digest"))), str(cfg.get("digest")), str(cfg.get("mediaType"))
        )
        layers = [
            self.blob(self._blob_path(str(layer["digest"])), str(layer["digest"]), str(layer["mediaType"]))
            for layer in doc.get("layers") or []
        ]
        return Image(tags, config, layers, raw, media_type, "oci")


def oci_manifest(config: Blob, layers: list[Blob]) -> bytes:
    """The OCI image manifest for a legacy archive's image (deterministic bytes, so digests are stable)."""
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": b.media_type, "digest": b.digest, "size": b.size} for b in layers],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def verify_image(
    archive: DockerArchive, image: Image, progress: Callable[[str], None] | None = None
) -> Image:
    """Hash every blob; fill in legacy layer digests, check them against the config, build the manifest.

    Raises FleetciError on the first mismatch (a corrupt or tampered archive) naming the member.
    """
    path = archive.path
    cfg_digest = sha256_window(path, image.config.offset, image.config.size)
    if cfg_digest != image.config.digest:
        raise FleetciError(
            f"digest mismatch in {path.name}: config {image.config.member} hashes to {cfg_digest}, "
            f"expected {image.config.digest}"
        )
    try:
        config_doc = json.loads(archive.read(image.config.member))
        diff_ids = list((config_doc.get("rootfs") or {}).get("diff_ids") or [])
    except (ValueError, AttributeError) as exc:
        raise FleetciError(f"{path.name}: image config {image.config.member} is not valid JSON") from exc
    layers = []
    for i, layer in enumerate(image.layers):
        if progress is not None:
            progress(f"verify {path.name} layer {i + 1}/{len(image.layers)} ({layer.size / 1e6:.1f} MB)")
        actual = sha256_window(path, layer.offset, layer.size)
        expected = layer.digest or None
        if expected is None and layer.media_type.endswith(".tar") and i < len(diff_ids):
            expected = str(diff_ids[i])
        if expected is not None and actual != expected:
            raise FleetciError(
                f"digest mismatch in {path.name}: layer {layer.member} hashes to {actual}, "
                f"expected {expected}"
            )
        if image.layout == "docker" and layer.media_type.endswith(".tar") and i < len(diff_ids):  # noqa: SIM102
            if actual != diff_ids[i]:
                raise FleetciError(
                    f"digest mismatch in {path.name}: layer {layer.member} hashes to {actual}, "
                    f"config says {diff_ids[i]}"
                )
        layers.append(Blob(actual, layer.size, layer.media_type, layer.member, layer.offset))
    if image.layout == "docker" and len(diff_ids) != len(layers):
        raise FleetciError(f"{path.name}: config lists {len(diff_ids)} layers, manifest.json {len(layers)}")
    manifest = image.manifest if image.layout == "oci" else oci_manifest(image.config, layers)
    return Image(image.repo_tags, image.config, layers, manifest, image.media_type, image.layout)


def copy_file(src: BinaryIO, dest: Path) -> None:
    with partial(dest) as tmp, tmp.open("wb") as out:
        shutil.copyfileobj(src, out, READ_CHUNK)
