"""Settings for ``fleetci multiarch``: flag > environment > ``multiarch:`` config section > default.

:class:`MultiarchOptions` describes each setting once (flags, ``MULTIARCH_*`` variables named after the
action's inputs, config keys, defaults); :func:`multiarch_settings` builds the frozen
:class:`MultiarchSettings` a run uses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.config import Setting, SettingTable, default_cache_dir, parse_bool, parse_csv
from fleetci.errors import UsageError
from fleetci.install.settings import parse_apt_packages
from fleetci.multiarch.arch import Arch, parse_arch, parse_python, parse_suite, suite_for

BACKENDS = ("auto", "native", "docker", "chroot")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The guest's base packages: an interpreter, pytest and pip from Debian (installed natively by dpkg into
# the image, with bytecode compiled once at build time), and CA certificates for pip.
BASE_PACKAGES = ("python3", "python3-pip", "python3-pytest", "ca-certificates")


def _backend(text: str) -> str:
    if text not in BACKENDS:
        raise ValueError(f"expected one of {', '.join(BACKENDS)}, got {text!r}")
    return text


def _optional_python(text: str) -> str | None:
    return parse_python(text) if text.strip() else None


def _optional_suite(text: str) -> str | None:
    return parse_suite(text) if text.strip() else None


class MultiarchOptions(SettingTable):
    """Every ``fleetci multiarch run`` setting, once."""

    section = "multiarch"
    arch = Setting(
        "", str, env=("MULTIARCH_ARCH",), help="amd64, arm64, armv7 or riscv64", doc_default="required"
    )
    python = Setting(
        None,
        _optional_python,
        env=("MULTIARCH_PYTHON",),
        help="Python X.Y in the guest",
        doc_default="the guest's own",
    )
    suite = Setting(
        None,
        _optional_suite,
        env=("MULTIARCH_SUITE",),
        help="Debian suite of the chroot rootfs: bullseye (Python 3.9), bookworm (3.11) or trixie (3.13)",
        doc_default="the one shipping --python, else bookworm (riscv64: trixie)",
    )
    backend = Setting("auto", _backend, env=("MULTIARCH_BACKEND",), help="auto, native, docker or chroot")
    project = Setting(
        "",
        str,
        env=("MULTIARCH_PROJECT",),
        help="project directory, mounted at /project",
        doc_default="the current directory",
    )
    cache_dir = Setting(
        "",
        str,
        env=("MULTIARCH_CACHE_DIR",),
        help="rootfs and pip caches",
        doc_default="~/.cache/fleetci/multiarch",
    )
    mirror = Setting(DEFAULT_MIRROR, str, env=("MULTIARCH_MIRROR",), help="Debian mirror for rootfs builds")
    packages = Setting(
        tuple[str, ...](),
        parse_apt_packages,
        env=("MULTIARCH_PACKAGES",),
        help="extra Debian packages in the rootfs, comma-separated",
    )
    requirements = Setting(
        tuple[str, ...](),
        parse_csv,
        env=("MULTIARCH_REQUIREMENTS",),
        help="requirements files to pip install in the guest, comma-separated",
    )
    image = Setting("", str, env=("MULTIARCH_IMAGE",), help="docker image", doc_default="python:X.Y")
    precompile = Setting(
        True,
        parse_bool,
        env=("MULTIARCH_PRECOMPILE",),
        help="compile the project's bytecode natively when the host's Python is the guest's",
        flag=False,
    )


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
    suite: str | None = None  # explicit Debian suite for the chroot backend (None: chosen by python)

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
    o = MultiarchOptions
    r = o.resolver(flags, config, env)
    arch_name = r.value(o.arch)
    if not arch_name:
        raise UsageError("--arch is required (amd64, arm64, armv7 or riscv64)")
    arch = parse_arch(arch_name)
    python = r.value(o.python)
    suite = r.value(o.suite)
    if suite is not None:
        suite_for(arch, python, suite)  # a suite without the arch, or with another Python: usage error now
    project = Path(r.value(o.project) or os.getcwd()).expanduser()
    if not project.is_dir():
        raise UsageError(f"project directory {project} does not exist")
    cache_dir = Path(r.value(o.cache_dir) or str(default_cache_dir() / "multiarch")).expanduser()
    mirror = r.value(o.mirror).rstrip("/")
    if not mirror.startswith(("http://", "https://", "file:/")):
        raise UsageError(f"invalid mirror {mirror!r}: expected an http(s):// or file:/ URL")
    listed: tuple[str, ...] = r.value(o.requirements)
    requirements = tuple(p if p.is_absolute() else project / p for p in map(Path, listed))
    for req in requirements:
        if not req.is_file():
            raise UsageError(f"requirements file {req} does not exist")
        if project.resolve() not in req.resolve().parents:
            raise UsageError(f"requirements file {req} must be inside the project {project}")
    settings = MultiarchSettings(
        arch=arch,
        python=python,
        backend=r.value(o.backend),
        project=project.resolve(),
        cache_dir=cache_dir,
        mirror=mirror,
        packages=r.value(o.packages),
        requirements=requirements,
        image=r.value(o.image) or None,
        precompile=r.value(o.precompile),
        suite=suite,
    )
    r.check_unknown()
    return settings
