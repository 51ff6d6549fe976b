"""Registry-sync helpers and fixtures shared by the registry unit and integration tests."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from fleetci.testing.docker_registry import (
    RegistryProcess,
    no_auth_registry,
    registry_binary,
)
from fleetci.testing.dockerd import DockerDaemon, DockerdUnavailable
from support import run_fleetci

OWNER, REPO = "octo-org", "api"


PROJECT = "hercules/veloxtesting"


TAG = "presto-92865fbce0d2-velox-65797d572e0a-linux-amd64"


GL_TAG = "presto-92865fbce0d2-velox-65797d572e0a"


GITLAB_TOKEN = "glpat-emulatorWriteToken000"


needs_registry = pytest.mark.skipif(
    registry_binary() is None or shutil.which("skopeo") is None,
    reason="docker-registry and skopeo are installed by scripts/test.sh (apt)",
)


def gh_args(emulator: Any) -> list[str]:
    return ["--repo", f"{OWNER}/{REPO}", "--api-url", emulator.url, "--limit", "10"]


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    reg = no_auth_registry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


def push_argv(
    downloads: Path, url: str, *extra: str, compression: str = "none", parallel: int = 1
) -> list[str]:
    """``fleetci registry push`` of TAG in 1 MiB chunks to the registry at ``url`` (no login).

    Uncompressed unless asked (``--compression none``): the tests that count bytes against the archive's
    blobs and compare manifest digests with the plan's read the archive's own blobs. One blob at a time
    unless asked: those tests kill the push in its first blob (the layer) and count what a rerun sends.
    """
    return [
        "registry",
        "push",
        TAG,
        "--downloads-dir",
        str(downloads),
        "--registry",
        url,
        "--registry-project",
        PROJECT,
        "--yes",
        "--chunk-mb",
        "1",
        "--skip-login",
        "--compression",
        compression,
        "--parallel",
        str(parallel),
        *extra,
    ]


def push_again(
    downloads: Path, url: str, env: Mapping[str, str] | None = None, compression: str = "none"
) -> subprocess.CompletedProcess[str]:
    """The interrupted push of :func:`push_argv` run again, ``--verbose``; it must succeed."""
    rerun = run_fleetci(*push_argv(downloads, url, "--verbose", compression=compression), env=env)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


@pytest.fixture
def dockerd(plain_registry: RegistryProcess, tmp_path: Path) -> Iterator[DockerDaemon]:
    """A private dockerd that trusts the no-auth registry over plain HTTP; skips with dockerd's own reason."""
    daemon = DockerDaemon(tmp_path / "dockerd", insecure_registries=[plain_registry.host])
    try:
        daemon.start()
    except DockerdUnavailable as exc:
        pytest.skip(f"dockerd cannot run here: {exc}")
    try:
        yield daemon
    finally:
        daemon.stop()
