"""Settings for ``fleetci install``: flag > environment > ``install:`` > default.

:class:`InstallOptions` describes each setting once (the CLI's flags, the resolver lookups, the unknown-key
check and the docs table follow from it); :func:`install_settings` builds the frozen
:class:`InstallSettings` the capability runs on. The request itself (packages, requirement files, verify
list) is part of the settings so the composite action can pass every input as an ``INSTALL_*`` variable,
where an empty input simply means "unset".
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fleetci.config import (
    Setting,
    SettingTable,
    parse_bool,
    parse_count,
    parse_csv,
    parse_seconds,
    parse_timeout,
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
PIP_CHECK_MODES = ("auto", "always", "never")
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


def parse_pip_check(text: str) -> str:
    low = text.strip().lower()
    if low not in PIP_CHECK_MODES:
        raise ValueError(f"expected one of {', '.join(PIP_CHECK_MODES)}, got {text!r}")
    return low


def default_python() -> str:
    """The interpreter whose environment pip installs into: ``python3`` on PATH, like a plain ``pip``."""
    return shutil.which("python3") or sys.executable


def stripped(text: str) -> str:
    return text.strip()


class InstallOptions(SettingTable):
    """Every ``fleetci install`` setting, once."""

    section = "install"
    # what to install
    apt = Setting(
        NONE,
        parse_list,
        env=("INSTALL_APT_PACKAGES",),
        help="apt packages, comma-separated, repeatable",
        repeat=True,
        metavar="PKG[,PKG]",
    )
    packages = Setting(
        NONE,
        parse_list,
        env=("INSTALL_PACKAGES",),
        help="pip requirements (the command's PACKAGE arguments)",
        flag=False,
    )
    requirements = Setting(
        NONE,
        parse_list,
        env=("INSTALL_REQUIREMENTS",),
        help="requirements file, repeatable",
        flags=("--requirement", "-r"),
        repeat=True,
        metavar="FILE",
    )
    constraints = Setting(
        NONE,
        parse_list,
        env=("INSTALL_CONSTRAINTS",),
        help="constraints file, repeatable",
        flags=("--constraint", "-c"),
        repeat=True,
        metavar="FILE",
    )
    project = Setting(
        "",
        stripped,
        env=("INSTALL_PROJECT",),
        help="install a local project: -e DIR, or its requirements*.txt if it has no pyproject.toml/setup.*",
        flags=("--project", "-e"),
        metavar="DIR",
    )
    default_project = Setting(
        "",
        stripped,
        env=("INSTALL_DEFAULT_PROJECT",),
        help="the project to install when nothing else is requested (the safe-install action: the checkout)",
        metavar="DIR",
    )
    extras = Setting(
        NONE, parse_list, env=("INSTALL_EXTRAS",), help="extras of the project; implies -e .", metavar="X[,Y]"
    )
    verify = Setting(
        NONE,
        parse_list,
        env=("INSTALL_VERIFY",),
        help="import these in a fresh interpreter and report versions, repeatable",
        repeat=True,
        metavar="MOD[,MOD]",
    )
    preset = Setting("", stripped, env=("INSTALL_PRESET",), help="a known dependency set: libp2p")
    python = Setting(
        "", str, env=("INSTALL_PYTHON",), help="interpreter to install into", doc_default="python3 on PATH"
    )
    index_url = Setting("", str, help="pip index", doc_default="pip's own, e.g. $PIP_INDEX_URL")
    extra_index_url = Setting(NONE, parse_list, help="extra pip index, repeatable", repeat=True)
    # behaviour
    lock_timeout = Setting(
        300.0, parse_seconds, env=("INSTALL_LOCK_TIMEOUT",), help="seconds to wait for apt/dpkg locks"
    )
    lock_root = Setting(
        "/", str, env=("INSTALL_LOCK_ROOT", "FLEETCI_LOCK_ROOT"), help="prefix of the lock paths"
    )
    wait_locks = Setting(
        False, parse_bool, help="wait for the apt/dpkg locks even without --apt", switch=True
    )
    apt_update = Setting(
        "auto", parse_apt_update, env=("INSTALL_APT_UPDATE",), help="auto|always|never: refresh apt lists"
    )
    pip_check = Setting(
        "auto",
        parse_pip_check,
        env=("INSTALL_PIP_CHECK",),
        help="auto|always|never: `pip check` for dependency conflicts (auto: when a project is installed)",
    )
    retries = Setting(4, parse_count, env=("INSTALL_RETRIES",), help="retries after a transient failure")
    backoff = Setting(
        1.0, parse_seconds, env=("INSTALL_BACKOFF",), help="first retry delay in seconds, doubled each time"
    )
    backoff_max = Setting(30.0, parse_seconds, env=("INSTALL_BACKOFF_MAX",), help="longest retry delay")
    pip_timeout = Setting(
        60.0, parse_timeout, env=("INSTALL_PIP_TIMEOUT",), help="pip's socket timeout in seconds"
    )
    progress_every = Setting(
        5.0, parse_seconds, env=("INSTALL_PROGRESS_INTERVAL",), help="seconds between lock-wait lines"
    )
    report = Setting("", stripped, env=("INSTALL_REPORT",), help="write the JSON report here", metavar="FILE")


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
    pip_check: str = "auto"
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
    def wants_anything(self) -> bool:
        return self.wants_apt or bool(self.pip_specs or self.requirements or self.verify_modules)

    @property
    def runs_pip_check(self) -> bool:
        return self.pip_check == "always" or (self.pip_check == "auto" and bool(self.project))

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
    o = InstallOptions
    r = o.resolver(flags, config, env)
    preset = r.value(o.preset)
    if preset and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    extras = r.value(o.extras)
    project = r.value(o.project)
    if extras and not project:
        project = "."  # extras name the project's optional dependencies: `-e .[extras]`
    backoff = r.value(o.backoff)
    report = r.value(o.report)
    settings = InstallSettings(
        apt_packages=r.value(o.apt),  # checked on creation
        packages=r.value(o.packages),
        requirements=r.value(o.requirements),
        constraints=r.value(o.constraints),
        project=project,
        extras=extras,
        verify=r.value(o.verify),
        preset=preset,
        python=r.value(o.python) or default_python(),
        index_url=r.value(o.index_url),
        extra_index_urls=r.value(o.extra_index_url),
        lock_timeout=r.value(o.lock_timeout),
        lock_root=Path(r.value(o.lock_root)),
        wait_locks=r.value(o.wait_locks),
        apt_update=r.value(o.apt_update),
        pip_check=r.value(o.pip_check),
        retries=r.value(o.retries),
        backoff=backoff,
        backoff_max=max(backoff, r.value(o.backoff_max)),
        pip_timeout=r.value(o.pip_timeout),
        progress_every=r.value(o.progress_every),
        report=Path(report) if report else None,
    )
    default_project = r.value(o.default_project)
    r.check_unknown()
    if default_project and not settings.wants_anything:
        # a plain repository: install the project itself (then pip check, then import its packages)
        settings = replace(settings, project=default_project)
    return settings
