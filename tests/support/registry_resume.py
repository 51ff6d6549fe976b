"""Helpers and fixtures shared by the resumable-push unit and integration tests."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetci.registry.plan import UploadPlan
from fleetci.registry.settings import registry_settings
from fleetci.registry.sync import prepare
from fleetci.testing.docker_registry import RegistryProcess
from fleetci.testing.images import write_docker_archive
from support.registry import TAG


@pytest.fixture
def registry(plain_registry: RegistryProcess) -> RegistryProcess:
    """The real registry without auth (test_registry's fixture), under the name this module reads best."""
    return plain_registry


@dataclass
class Prepared:
    downloads: Path
    plan: UploadPlan
    total: int  # blob bytes of the image (layer + config)

    @property
    def state_file(self) -> Path:
        return self.downloads / TAG / "push-state.json"

    @property
    def manifest_digest(self) -> str:
        return self.plan.images[0].manifest_digest


def prepared(tmp_path: Path, layers: list[int]) -> Prepared:
    """A downloaded artifact (zip of a ``docker save`` tarball + metadata.json), prepared for push."""
    downloads = tmp_path / "downloads"
    art = downloads / TAG / "artifacts"
    art.mkdir(parents=True)
    built = write_docker_archive(
        tmp_path / "img" / "presto-coordinator.tar", f"presto-coordinator:{TAG}", layers
    )
    with zipfile.ZipFile(art / "presto-images.zip", "w") as zf:
        zf.write(built.path, built.path.name)
    (downloads / TAG / "metadata.json").write_text(json.dumps({"image_tag": TAG, "run": {"run_id": 1}}))
    plan = prepare(registry_settings({"downloads_dir": str(downloads)}, {}, {}), TAG, log=lambda _m: None)
    return Prepared(downloads, plan, sum(b.size for b in plan.images[0].blobs))
