"""Helpers shared by the multiarch unit and integration tests."""

from __future__ import annotations

from pathlib import Path


def run_argv(arch: str, project: Path, *command: str, **options: str) -> list[str]:
    """``multiarch run --arch ARCH --project DIR [--option VALUE …] -- COMMAND …``."""
    flags = [x for key, value in options.items() for x in (f"--{key.replace('_', '-')}", value)]
    return ["multiarch", "run", "--arch", arch, "--project", str(project), *flags, "--", *command]
