"""The install report's shape: what ``--report`` writes and ``fleetci install matrix`` reads.

TypedDicts rather than classes: the report is JSON (``schema fleetci.install/1``), read back from other
runners' artifacts, so the types describe the dicts that travel instead of wrapping them.
"""

from __future__ import annotations

from typing import TypedDict


class PackageEntry(TypedDict):
    """One requested apt package or pip requirement."""

    name: str
    requested: str
    installed: str | None
    attempts: int  # every apt-get / pip run that included it (bulk + one by one)
    retries: int
    duration_s: float
    phase: str  # "bulk", "individual" or "apt"
    ok: bool
    error: str | None
    kind: str  # "pip" or "apt"


class VerifyEntry(TypedDict):
    """One module imported in a fresh interpreter after the installs."""

    module: str
    ok: bool
    distribution: str | None
    version: str | None
    error: str | None


class CheckEntry(TypedDict):
    """``pip check`` of the target environment after the installs: conflicts and missing requirements."""

    ok: bool
    problems: list[str]  # pip's lines, e.g. "beta 2.0 has requirement alpha>=2, but you have alpha 1.0."


class AptEntry(TypedDict):
    lock_wait_s: float
    updated: bool


class PlatformInfo(TypedDict, total=False):
    """Facts about the target interpreter (read from it, so any of them may be missing)."""

    machine: str
    python: str
    implementation: str
    libc: str
    executable: str
    arch: str
    system: str


class _Report(TypedDict):
    schema: str
    started: str
    packages: list[PackageEntry]
    verify: list[VerifyEntry]
    failed: list[str]
    ok: bool
    duration_s: float


class InstallReport(_Report, total=False):
    """The whole report; ``apt`` only when apt ran, ``check`` only when ``pip check`` ran, ``platform``
    only when someone reads the report."""

    apt: AptEntry
    check: CheckEntry
    platform: PlatformInfo
