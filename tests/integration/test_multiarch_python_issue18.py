"""``--python 3.9`` on the chroot backend: a real Debian bullseye arm64 rootfs (mmdebstrap, QEMU).

The rootfs goes to the same cache as tests/integration/test_multiarch.py (FLEETCI_TEST_MULTIARCH_CACHE
when set, so CI builds it once), keyed by arch, suite and packages like every chroot run's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fleetci.multiarch.arch import ARCHES
from fleetci.multiarch.rootfs import RootfsSpec
from fleetci.multiarch.settings import BASE_PACKAGES
from support import clean_env, fleetci_cmd
from support.multiarch import run_argv


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "the chroot backend needs root"
    for tool in ("mmdebstrap", "qemu-aarch64-static", "update-binfmts", "zstd", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/test.sh installs it)"
    return None


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keep = os.environ.get("FLEETCI_TEST_MULTIARCH_CACHE")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("multiarch-cache")


@pytest.mark.timeout(1500)  # a cold bullseye build under QEMU: minutes, more on a loaded machine
def test_python_3_9_runs_in_a_debian_bullseye_arm64_chroot(cache_dir: Path, tmp_path: Path) -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    project = tmp_path / "project"
    project.mkdir()
    argv = fleetci_cmd(
        *run_argv(
            "arm64",
            project,
            "sh",
            "-c",
            "python3 --version; uname -m; . /etc/os-release; echo $VERSION_CODENAME",
            python="3.9",
            backend="chroot",
            cache_dir=str(cache_dir),
        )
    )
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=1440)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    assert lines[:2] == ["Python", lines[1]] and lines[1].startswith("3.9."), proc.stdout
    assert lines[2:] == ["aarch64", "bullseye"], proc.stdout
    archive = RootfsSpec(ARCHES["arm64"], "bullseye", tuple(sorted(BASE_PACKAGES)), "").archive(
        cache_dir / "rootfs"
    )
    assert archive.is_file(), sorted(p.name for p in (cache_dir / "rootfs").iterdir())
    assert archive.name in proc.stderr  # built ("later runs reuse …") or reused, and said so
