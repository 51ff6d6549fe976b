"""Settings for ``fleetci install``: a frozen dataclass, flag > environment > ``install:`` > default.

The request itself (packages, requirement files, verify list) is part of the settings so the composite
action can pass every input as an ``INSTALL_*`` variable, where an empty input simply means "unset".
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.config import (
    Resolver,
    parse_bool,
    parse_count,
    parse_csv,
    parse_seconds,
    parse_timeout,
    section,
)
from fleetci.errors import UsageError

# libp2p 0.8.x on PyPI (checked with `pip download --no-deps libp2p` → 0.8.1 METADATA): it requires
# protobuf>=4.25,<7, pycryptodome, coincurve==21.0.0, fastecdsa==2.3.2, pynacl, trio, multiaddr, py-cid …
# and neither eth-hash nor eth-keys. The seed's protobuf>=3.20,<5 pin only narrows that to 4.25.x.
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "libp2p": {
        "packages": ("libp2p>=0.8,<0.9", "multiformats>=0.3"),
        "verify": ("libp2p", "multiaddr", "google.protobuf", "coincurve", "nacl", "trio", "multiformats"),
    },
}

APT_UPDATE_MODES = ("auto", "always", "never")
NONE: tuple[str, ...] = ()


def parse_list(text: str) -> tuple[str, ...]:
    """Comma- or newline-separated values (action inputs are often multi-line)."""
    return parse_csv(text.replace("\n", ","))


# Debian policy 5.6.1: lowercase letters, digits, '+', '-', '.'; at least two characters, starting with a
# letter or digit. apt-get also takes NAME:ARCH, then =VERSION (policy 5.6.12) or /RELEASE.
APT_PACKAGE = re.compile(
    r"(?P<name>[a-z0-9][a-z0-9+.-]+)"
    r"(?::(?P<arch>[a-z0-9][a-z0-9-]*))?"
    r"(?:=(?P<version>(?:[0-9]+:)?[A-Za-z0-9][A-Za-z0-9.+~-]*)|/(?P<release>[A-Za-z0-9][A-Za-z0-9.+~_-]*))?"
)


def parse_apt_packages(text: str) -> tuple[str, ...]:
    """Validated apt package names: nothing that apt-get would read as an option or a removal."""
    packages = parse_list(text)
    for pkg in packages:
        match = APT_PACKAGE.fullmatch(pkg)
        if match is None:
            raise ValueError(
                f"{pkg!r} is not an apt package name (Debian names are lowercase letters, digits, '+', "
                "'-' and '.', at least 2 characters, starting with a letter or digit; optionally :ARCH and "
                "=VERSION or /RELEASE; separate packages with commas)"
            )
        if match["name"].endswith("-"):
            raise ValueError(f"{pkg!r} is not an apt package name (a trailing '-' asks apt-get to remove it)")
    return packages


def apt_name(spec: str) -> str:
    """The package name of a validated apt request (``libc6:arm64=2.36-9`` -> ``libc6``)."""
    match = APT_PACKAGE.fullmatch(spec)
    return match["name"] if match else spec


def parse_apt_update(text: str) -> str:
    low = text.strip().lower()
    if low not in APT_UPDATE_MODES:
        raise ValueError(f"expected one of {', '.join(APT_UPDATE_MODES)}, got {text!r}")
    return low


def default_python() -> str:
    """The interpreter whose environment pip installs into: ``python3`` on PATH, like a plain ``pip``."""
    return shutil.which("python3") or sys.executable


@dataclass(frozen=True)
class InstallSettings:
    """Everything ``fleetci install`` needs; built once, never re-read from the environment."""

    apt_packages: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    requirements: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()
    project: str = ""
    extras: tuple[str, ...] = ()
    verify: tuple[str, ...] = ()
    preset: str = ""
    python: str = sys.executable
    index_url: str = ""
    extra_index_urls: tuple[str, ...] = ()
    lock_timeout: float = 300.0
    lock_root: Path = Path("/")
    wait_locks: bool = False
    apt_update: str = "auto"
    retries: int = 4
    backoff: float = 1.0
    backoff_max: float = 30.0
    pip_timeout: float = 60.0
    progress_every: float = 5.0
    report: Path | None = None

    def __post_init__(self) -> None:
        """The one check of apt names, whoever builds the settings (the CLI, the action, code, tests)."""
        try:
            parse_apt_packages(",".join(self.apt_packages))
        except ValueError as exc:
            raise UsageError(f"invalid apt package: {exc}") from None

    @property
    def wants_apt(self) -> bool:
        return bool(self.apt_packages) or self.wait_locks

    @property
    def pip_specs(self) -> tuple[str, ...]:
        """Requested pip requirements from flags, the project (with extras) and the preset."""
        specs = list(self.packages)
        if self.project:
            specs.append(f"{self.project}[{','.join(self.extras)}]" if self.extras else self.project)
        if self.preset:
            specs += PRESETS[self.preset]["packages"]
        return tuple(dict.fromkeys(specs))

    @property
    def verify_modules(self) -> tuple[str, ...]:
        mods = list(self.verify)
        if self.preset:
            mods += PRESETS[self.preset]["verify"]
        return tuple(dict.fromkeys(mods))


def install_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> InstallSettings:
    """Build :class:`InstallSettings` from flags, ``INSTALL_*`` variables and the ``install:`` section."""
    r = Resolver(flags, section(config, "install"), env, name="install")
    preset = r.get("preset", "", str, env=("INSTALL_PRESET",)).strip()
    if preset and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    extras = r.get("extras", NONE, parse_list, env=("INSTALL_EXTRAS",))
    project = r.get("project", "", str, env=("INSTALL_PROJECT",)).strip()
    if extras and not project:
        project = "."  # extras name the project's optional dependencies: `-e .[extras]`
    backoff = r.get("backoff", 1.0, parse_seconds, env=("INSTALL_BACKOFF",))
    backoff_max = r.get("backoff_max", 30.0, parse_seconds, env=("INSTALL_BACKOFF_MAX",))
    report = r.get("report", "", str, env=("INSTALL_REPORT",)).strip()
    settings = InstallSettings(
        apt_packages=r.get("apt", NONE, parse_list, env=("INSTALL_APT_PACKAGES",)),  # checked on creation
        packages=r.get("packages", NONE, parse_list, env=("INSTALL_PACKAGES",)),
        requirements=r.get("requirements", NONE, parse_list, env=("INSTALL_REQUIREMENTS",)),
        constraints=r.get("constraints", NONE, parse_list, env=("INSTALL_CONSTRAINTS",)),
        project=project,
        extras=extras,
        verify=r.get("verify", NONE, parse_list, env=("INSTALL_VERIFY",)),
        preset=preset,
        python=r.get("python", default_python(), str, env=("INSTALL_PYTHON",)),
        index_url=r.get("index_url", "", str, env=()),
        extra_index_urls=r.get("extra_index_url", NONE, parse_list, env=()),
        lock_timeout=r.get("lock_timeout", 300.0, parse_seconds, env=("INSTALL_LOCK_TIMEOUT",)),
        lock_root=Path(r.get("lock_root", "/", str, env=("INSTALL_LOCK_ROOT", "FLEETCI_LOCK_ROOT"))),
        wait_locks=r.get("wait_locks", False, parse_bool, env=()),
        apt_update=r.get("apt_update", "auto", parse_apt_update, env=("INSTALL_APT_UPDATE",)),
        retries=r.get("retries", 4, parse_count, env=("INSTALL_RETRIES",)),
        backoff=backoff,
        backoff_max=max(backoff, backoff_max),
        pip_timeout=r.get("pip_timeout", 60.0, parse_timeout, env=("INSTALL_PIP_TIMEOUT",)),
        progress_every=r.get("progress_every", 5.0, parse_seconds, env=("INSTALL_PROGRESS_INTERVAL",)),
        report=Path(report) if report else None,
    )
    r.check_unknown()
    return settings
