"""Settings for ``fleetci multiarch``: flag > environment > ``multiarch:`` config section > default."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.config import Resolver, default_cache_dir, parse_bool, parse_csv, section
from fleetci.errors import UsageError
from fleetci.install.settings import parse_apt_packages
from fleetci.multiarch.arch import Arch, parse_arch, parse_python

BACKENDS = ("auto", "native", "docker", "chroot")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The guest's base packages: an interpreter, pytest and pip from Debian (installed natively by dpkg into
# the image, with bytecode compiled once at build time), and CA certificates for pip.
BASE_PACKAGES = ("python3", "python3-pip", "python3-pytest", "ca-certificates")


def _backend(text: str) -> str:
    if text not in BACKENDS:
        raise ValueError(f"expected one of {', '.join(BACKENDS)}, got {text!r}")
    return text


@dataclass(frozen=True)
class MultiarchSettings:
    """Everything one ``fleetci multiarch run`` needs, resolved once at start-up."""

    arch: Arch
    python: str | None
    backend: str
    project: Path
    cache_dir: Path
    mirror: str
    packages: tuple[str, ...]
    requirements: tuple[Path, ...]
    image: str | None
    precompile: bool = True

    @property
    def rootfs_dir(self) -> Path:
        return self.cache_dir / "rootfs"

    @property
    def all_packages(self) -> tuple[str, ...]:
        return tuple(sorted(set(BASE_PACKAGES) | set(self.packages)))


def multiarch_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> MultiarchSettings:
    """Build :class:`MultiarchSettings`; environment names follow the action's inputs (MULTIARCH_*)."""
    r = Resolver(flags, section(config, "multiarch"), env, name="multiarch")
    arch_name = r.get("arch", "", str, env=("MULTIARCH_ARCH",))
    if not arch_name:
        raise UsageError("--arch is required (amd64, arm64, armv7 or riscv64)")
    arch = parse_arch(arch_name)
    python = r.get("python", None, _optional_python, env=("MULTIARCH_PYTHON",))
    project = Path(r.get("project", os.getcwd(), str, env=("MULTIARCH_PROJECT",))).expanduser()
    if not project.is_dir():
        raise UsageError(f"project directory {project} does not exist")
    cache_dir = Path(
        r.get("cache_dir", str(default_cache_dir() / "multiarch"), str, env=("MULTIARCH_CACHE_DIR",))
    ).expanduser()
    mirror = r.get("mirror", DEFAULT_MIRROR, str, env=("MULTIARCH_MIRROR",)).rstrip("/")
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise UsageError(f"invalid mirror {mirror!r}: expected an http(s):// or file:/ URL")
    requirements = tuple(
        (p if p.is_absolute() else project / p)
        for p in map(
            Path, r.get("requirements", tuple[str, ...](), parse_csv, env=("MULTIARCH_REQUIREMENTS",))
        )
    )
    for req in requirements:
        if not req.is_file():
            raise UsageError(f"requirements file {req} does not exist")
        if project.resolve() not in req.resolve().parents:
            raise UsageError(f"requirements file {req} must be inside the project {project}")
    image = r.get("image", "", str, env=("MULTIARCH_IMAGE",)) or None
    settings = MultiarchSettings(
        arch=arch,
        python=python,
        backend=r.get("backend", "auto", _backend, env=("MULTIARCH_BACKEND",)),
        project=project.resolve(),
        cache_dir=cache_dir,
        mirror=mirror,
        packages=r.get("packages", tuple[str, ...](), parse_apt_packages, env=("MULTIARCH_PACKAGES",)),
        requirements=requirements,
        image=image,
        precompile=r.get("precompile", True, parse_bool, env=("MULTIARCH_PRECOMPILE",)),
    )
    r.check_unknown()
    return settings


def _optional_python(text: str) -> str | None:
    return parse_python(text) if text.strip() else None
