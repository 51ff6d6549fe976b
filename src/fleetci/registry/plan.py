"""The upload plan (``upload-plan.json``) and a push's result rows: what ``prepare``, the two push engines
(``engine_oci``, ``engine_docker``) and ``clean`` share.

Imports point one way: ``sync`` -> ``engine_oci`` / ``engine_docker`` -> ``plan`` -> ``archive``; nothing
here imports the verbs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.files import read_json
from fleetci.registry.archive import Blob

PLAN_FILE = "upload-plan.json"
META_FILE = "metadata.json"
STATE_FILE = "push-state.json"


@dataclass(frozen=True)
class PlannedImage:
    """One image of the plan: where its bytes are, where it goes, and the digests to check it by."""

    tarball: str  # relative to the tag directory
    tarball_size: int | None  # None in plans written before the size was recorded
    source: str  # the RepoTag inside the archive
    repository: str  # inside the registry project: x86/presto-coordinator
    tag: str
    manifest: str
    manifest_media_type: str
    manifest_digest: str
    config_digest: str
    blobs: tuple[Blob, ...]
    size: int

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "tarball": self.tarball,
            "source": self.source,
            "repository": self.repository,
            "tag": self.tag,
            "manifest": self.manifest,
            "manifest_media_type": self.manifest_media_type,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "blobs": [b.to_json() for b in self.blobs],
            "size": self.size,
        }
        if self.tarball_size is not None:
            data["tarball_size"] = self.tarball_size
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PlannedImage:
        """KeyError/TypeError/ValueError for an entry that is not one of ours."""
        size = data.get("tarball_size")
        return cls(
            tarball=str(data["tarball"]),
            tarball_size=None if size is None else int(size),
            source=str(data["source"]),
            repository=str(data["repository"]),
            tag=str(data["tag"]),
            manifest=str(data["manifest"]),
            manifest_media_type=str(data["manifest_media_type"]),
            manifest_digest=str(data["manifest_digest"]),
            config_digest=str(data["config_digest"]),
            blobs=tuple(Blob.from_json(b) for b in data["blobs"]),
            size=int(data["size"]),
        )


@dataclass(frozen=True)
class UploadPlan:
    """``<downloads>/<tag>/upload-plan.json``: written by ``prepare``, read by ``push`` and ``clean``."""

    image_tag: str
    gitlab_tag: str
    arch_dir: str
    run_id: int | None
    images: tuple[PlannedImage, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "image_tag": self.image_tag,
            "gitlab_tag": self.gitlab_tag,
            "arch_dir": self.arch_dir,
            "run_id": self.run_id,
            "images": [i.to_json() for i in self.images],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> UploadPlan:
        run_id = data.get("run_id")
        return cls(
            image_tag=str(data.get("image_tag", "")),
            gitlab_tag=str(data.get("gitlab_tag", "")),
            arch_dir=str(data.get("arch_dir", "")),
            run_id=run_id if isinstance(run_id, int) and not isinstance(run_id, bool) else None,
            images=tuple(PlannedImage.from_json(i) for i in data["images"]),
        )


def load_plan(directory: Path) -> UploadPlan:
    """The plan of a tag directory; one-line errors when it is missing or not one of ours."""
    path = directory / PLAN_FILE
    data = read_json(path, "upload plan (run 'fleetci registry prepare' first):")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise FleetciError(f"upload plan {path} is corrupt (no image list)")
    try:
        return UploadPlan.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        reason = f"missing {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise FleetciError(f"upload plan {path} is corrupt ({reason})") from None


@dataclass
class PushRow:
    """What happened to one image of a push (printed, and a row of the step summary)."""

    ref: str
    result: str
    bytes_sent: int = 0
    seconds: float = 0.0
    blobs: dict[str, int] = field(default_factory=dict)
