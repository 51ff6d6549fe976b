"""``fleetci matrix``: a GitHub Actions job matrix over architectures × Python versions.

Each entry says where to run (``runner``) and how (``backend``): natively where GitHub has a runner of
that architecture (with ``--prefer-native``), else under QEMU on ``ubuntu-latest`` — in a Debian chroot
when Debian ships that Python, else in a ``python:X.Y`` container.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypedDict

from fleetci import gha
from fleetci.errors import UsageError
from fleetci.multiarch.arch import ARCHES, SUITE_PYTHON, parse_arch, parse_python

QEMU_RUNNER = "ubuntu-latest"


class MatrixJob(TypedDict):
    """One ``include`` entry of the matrix JSON, as a workflow's ``matrix.*`` expressions read it."""

    arch: str
    python: str
    runner: str
    backend: str
    emulated: bool


@dataclass(frozen=True)
class MatrixEntry:
    arch: str
    python: str
    runner: str
    backend: str
    emulated: bool

    def as_dict(self) -> MatrixJob:
        return MatrixJob(
            arch=self.arch,
            python=self.python,
            runner=self.runner,
            backend=self.backend,
            emulated=self.emulated,
        )


def parse_excludes(items: list[str]) -> list[tuple[str, str | None]]:
    """``armv7:3.9`` (one combination) or ``riscv64`` (every Python of an arch); comma-separated too."""
    out: list[tuple[str, str | None]] = []
    for item in items:
        for part in (p.strip() for p in item.split(",") if p.strip()):
            arch, _, py = part.partition(":")
            try:
                python = parse_python(py) if py else None
            except ValueError as exc:
                raise UsageError(f"invalid --exclude {part!r}: {exc}") from None
            out.append((parse_arch(arch).name, python))
    return out


def build_matrix(
    arches: list[str], pythons: list[str], prefer_native: bool = False, excludes: list[str] | None = None
) -> list[MatrixEntry]:
    """The matrix entries, or a UsageError naming the first impossible combination and why."""
    if not arches:
        raise UsageError("--arch needs at least one architecture (amd64, arm64, armv7, riscv64)")
    if not pythons:
        raise UsageError("--python needs at least one version such as 3.11")
    archs = list(dict.fromkeys(parse_arch(a).name for a in arches))
    pys: list[str] = []
    for p in pythons:
        try:
            pys.append(parse_python(p))
        except ValueError as exc:
            raise UsageError(f"invalid --python: {exc}") from None
    pys = list(dict.fromkeys(pys))
    drops = parse_excludes(excludes or [])
    for dropped, py in drops:
        if dropped not in archs or (py is not None and py not in pys):
            shown = f"{dropped}:{py}" if py else dropped
            raise UsageError(f"--exclude {shown} matches nothing in the matrix")
    entries: list[MatrixEntry] = []
    for name in archs:
        target = ARCHES[name]
        for py in pys:
            if (name, py) in drops or (name, None) in drops:
                continue
            chroot_pythons = {SUITE_PYTHON[s] for s in target.suites}
            if name == "amd64" or (prefer_native and target.native_runner):
                entries.append(MatrixEntry(name, py, target.native_runner or QEMU_RUNNER, "native", False))
            elif name == "riscv64" and py not in chroot_pythons:
                raise UsageError(
                    f"impossible combination riscv64 × Python {py}: riscv64 runs only in a Debian trixie "
                    f"chroot, whose Python is {SUITE_PYTHON['trixie']} (use --exclude riscv64 or "
                    f"--python {SUITE_PYTHON['trixie']})"
                )
            else:
                backend = "chroot" if py in chroot_pythons else "docker"
                entries.append(MatrixEntry(name, py, QEMU_RUNNER, backend, True))
    if not entries:
        raise UsageError("the matrix is empty after --exclude")
    return entries


def matrix_json(entries: list[MatrixEntry]) -> str:
    """``{"include": [...]}`` on one line: what ``strategy.matrix: ${{ fromJSON(...) }}`` reads."""
    return json.dumps({"include": [e.as_dict() for e in entries]}, separators=(",", ":"))


def matrix_summary(entries: list[MatrixEntry]) -> str:
    rows = [[e.arch, e.python, e.runner, e.backend] for e in entries]
    return "### fleetci matrix\n\n" + gha.markdown_table(["arch", "python", "runner", "backend"], rows)
