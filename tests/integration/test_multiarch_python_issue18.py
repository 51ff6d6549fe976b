"""``--python 3.9`` on the chroot backend: a real Debian bullseye rootfs (mmdebstrap) with its python3 3.9.

amd64, the host's own architecture: the suite choice is what is under test, not QEMU (test_multiarch.py
runs arm64/armv7 under QEMU, and multi-arch-ci.yml's arm64 x 3.11 entry under act); a
native rootfs builds in well under a minute where a bullseye arm64 one under QEMU took several. The rootfs
goes to the session's shared rootfs cache (support.multiarch), keyed by arch, suite and packages like
every chroot run's.
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

# The interpreter, the release, and that Debian's pytest for that interpreter is there (what the default
# test command of multi-arch-ci.yml needs).
GUEST_SCRIPT = (
    "python3 --version; . /etc/os-release; echo $VERSION_CODENAME; "
    "python3 -c 'import pytest; print(\"pytest\", pytest.__version__)'"
)


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "the chroot backend needs root"
    for tool in ("mmdebstrap", "zstd", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/test.sh installs it)"
    return None


@pytest.mark.timeout(900)  # a cold native bullseye build: mostly downloads, more on a loaded machine
def test_python_3_9_runs_in_a_debian_bullseye_chroot(multiarch_cache: Path, tmp_path: Path) -> None:
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    project = tmp_path / "project"
    project.mkdir()
    argv = fleetci_cmd(
        *run_argv(
            "amd64",
            project,
            "sh",
            "-c",
            GUEST_SCRIPT,
            python="3.9",
            backend="chroot",
            cache_dir=str(multiarch_cache),
        )
    )
    proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split()
    assert lines[:2] == ["Python", lines[1]] and lines[1].startswith("3.9."), proc.stdout
    assert lines[2] == "bullseye", proc.stdout
    assert lines[3] == "pytest", proc.stdout + proc.stderr  # Debian's python3-pytest, for 3.9
    archive = RootfsSpec(ARCHES["amd64"], "bullseye", tuple(sorted(BASE_PACKAGES)), "").archive(
        multiarch_cache / "rootfs"
    )
    assert archive.is_file(), sorted(p.name for p in (multiarch_cache / "rootfs").iterdir())
    assert archive.name in proc.stderr  # built ("later runs reuse …") or reused, and said so
