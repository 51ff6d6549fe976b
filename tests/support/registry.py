"""Registry-sync helpers and fixtures shared by the registry unit and integration tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetci.cli import main
from fleetci.testing.docker_registry import (
    RegistryProcess,
    no_auth_registry,
)

OWNER, REPO = "octo-org", "api"


PROJECT = "hercules/veloxtesting"


TAG = "presto-92865fbce0d2-velox-65797d572e0a-linux-amd64"


GL_TAG = "presto-92865fbce0d2-velox-65797d572e0a"


GITLAB_TOKEN = "glpat-emulatorWriteToken000"


Fleetci = Callable[..., subprocess.CompletedProcess[str]]


def in_process(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Fleetci:
    """``fleetci ARGS…`` in this process (``fleetci.cli.main``), answered like ``run_fleetci``'s child.

    The environment is cleaned as ``clean_env`` cleans a child's; the exit code, stdout and stderr come back
    as a CompletedProcess, so ``one_line_error`` reads them the same way. For checks of parsing, settings
    and one-line errors; a test that needs a process of its own (signals, kills) uses ``run_fleetci``.
    """
    for name in list(os.environ):
        if name.startswith(("CACHE_", "FLEETCI_", "GITHUB_", "GH_")):
            monkeypatch.delenv(name)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        capsys.readouterr()  # what earlier steps printed is not this command's
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["fleetci", *args], code, out, err)

    return run


@pytest.fixture
def fleetci(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Fleetci:
    return in_process(monkeypatch, capsys)


def gh_args(emulator: Any) -> list[str]:
    return ["--repo", f"{OWNER}/{REPO}", "--api-url", emulator.url, "--limit", "10"]


@pytest.fixture
def plain_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    reg = no_auth_registry(tmp_path / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


def push_argv(downloads: Path, url: str, *extra: str) -> list[str]:
    """``fleetci registry push`` of TAG in 1 MiB chunks to the registry at ``url`` (no login)."""
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
        *extra,
    ]
