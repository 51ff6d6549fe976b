"""Helpers shared by the multiarch unit and integration tests, and the session's rootfs cache (a plugin)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def run_argv(arch: str, project: Path, *command: str, **options: str) -> list[str]:
    """``multiarch run --arch ARCH --project DIR [--option VALUE …] -- COMMAND …``."""
    flags = [x for key, value in options.items() for x in (f"--{key.replace('_', '-')}", value)]
    return ["multiarch", "run", "--arch", arch, "--project", str(project), *flags, "--", *command]


@pytest.fixture(scope="session")
def multiarch_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rootfs cache for every test module of the session (test_multiarch.py's, the issue-18 Python
    3.9 chroot's): a cold mmdebstrap build takes minutes under QEMU, so each rootfs is built at most once
    a session. FLEETCI_TEST_MULTIARCH_CACHE keeps it between sessions."""
    keep = os.environ.get("FLEETCI_TEST_MULTIARCH_CACHE")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        return Path(keep)
    return tmp_path_factory.mktemp("multiarch-cache")
