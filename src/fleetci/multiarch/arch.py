"""The architectures fleetci can test on, and the names each tool uses for them.

Docker, Debian, QEMU/binfmt and ``uname -m`` all spell the same CPU differently; one table keeps them
in agreement so a typo cannot pick the wrong emulator.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass

from fleetci.errors import UsageError


@dataclass(frozen=True)
class Arch:
    """One target architecture."""

    name: str  # fleetci / matrix name
    debian: str  # dpkg architecture (mmdebstrap --arch)
    platform: str  # docker --platform
    machine: str  # what `uname -m` reports inside the guest
    binfmt: str  # update-binfmts entry (qemu-user-static)
    suites: tuple[str, ...]  # Debian suites that have this architecture, preferred first
    native_runner: str | None  # GitHub-hosted runner label that is this architecture


# Suites: the default first (bookworm), then the others that have the arch. bullseye (Python 3.9) is an
# alternative for --python 3.9; riscv64 entered Debian's main archive only with trixie.
ARCHES: dict[str, Arch] = {
    a.name: a
    for a in (
        Arch(
            "amd64",
            "amd64",
            "linux/amd64",
            "x86_64",
            "qemu-x86_64",
            ("bookworm", "trixie", "bullseye"),
            "ubuntu-latest",
        ),
        Arch(
            "arm64",
            "arm64",
            "linux/arm64",
            "aarch64",
            "qemu-aarch64",
            ("bookworm", "trixie", "bullseye"),
            "ubuntu-24.04-arm",
        ),
        Arch(
            "armv7", "armhf", "linux/arm/v7", "armv7l", "qemu-arm", ("bookworm", "trixie", "bullseye"), None
        ),
        Arch("riscv64", "riscv64", "linux/riscv64", "riscv64", "qemu-riscv64", ("trixie",), None),
    )
}

# Accepted spellings from other tools, mapped to our names.
ALIASES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "arm64/v8": "arm64",
    "armhf": "armv7",
    "arm": "armv7",
    "armv7l": "armv7",
    "arm/v7": "armv7",
    "riscv": "riscv64",
}

# The Python each Debian suite ships (what a chroot guest runs).
SUITE_PYTHON = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}


def parse_arch(text: str) -> Arch:
    """``arm64``, ``aarch64``, ``linux/arm64`` … -> :class:`Arch`; anything else is a usage error."""
    key = text.strip().lower().removeprefix("linux/")
    key = ALIASES.get(key, key)
    if key not in ARCHES:
        raise UsageError(f"unknown architecture {text!r}: expected one of {', '.join(ARCHES)}")
    return ARCHES[key]


def host_arch() -> Arch | None:
    """The architecture of this machine, or None when it is not one we test on."""
    machine = platform.machine().lower()
    for arch in ARCHES.values():
        if arch.machine == machine or (arch.name == "armv7" and machine.startswith("armv7")):
            return arch
    alias = ALIASES.get(machine)
    return ARCHES[alias] if alias else None


def parse_python(text: str) -> str:
    """``3.11`` (major.minor) -> itself; the shape is checked so typos fail before anything starts."""
    parts = text.strip().split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[0]) != 3:
        raise ValueError(f"expected a Python version like 3.11, got {text!r}")
    return f"{int(parts[0])}.{int(parts[1])}"


def parse_suite(text: str) -> str:
    """``bullseye``, ``bookworm`` or ``trixie`` (the suites whose Python fleetci knows)."""
    key = text.strip().lower()
    if key not in SUITE_PYTHON:
        raise ValueError(f"expected one of {', '.join(SUITE_PYTHON)}, got {text!r}")
    return key


def suite_for(arch: Arch, python: str | None, suite: str | None = None) -> str:
    """The Debian suite of ``arch``'s chroot: ``suite`` when given, else the one shipping ``python``.

    No ``python``: the arch's default (first) suite. A Python no suite of the arch ships (3.10, 3.12;
    3.9/3.11 on riscv64) is a usage error naming what there is, as is a ``suite`` without the arch or
    whose Python is not the ``python`` asked for (the guest never runs another Python than asked).
    """
    if suite is not None:
        if suite not in arch.suites:
            have = ", ".join(arch.suites)
            raise UsageError(f"Debian {suite} has no {arch.name} chroot (suites with {arch.name}: {have})")
        if python is not None and SUITE_PYTHON[suite] != python:
            raise UsageError(
                f"Debian {suite} ships Python {SUITE_PYTHON[suite]}, not the requested {python}; "
                "set only one of --suite and --python, or make them agree"
            )
        return suite
    if python is None:
        return arch.suites[0]
    for candidate in arch.suites:
        if SUITE_PYTHON[candidate] == python:
            return candidate
    have = ", ".join(f"{s} has {SUITE_PYTHON[s]}" for s in arch.suites)
    raise UsageError(
        f"no Debian chroot for {arch.name} has Python {python} ({have}); "
        f"use --backend docker (python:{python} image) or one of those versions"
    )
