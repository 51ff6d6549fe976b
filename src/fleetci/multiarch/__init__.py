"""Run a project's test suite on amd64, arm64, armv7 and riscv64: natively, in docker, or in a chroot.

The chroot backend needs no docker daemon (it works on arm64 hosts where docker-based actions break):
QEMU through binfmt_misc, a minimal Debian rootfs built once with mmdebstrap and cached as .tar.zst.
"""

from __future__ import annotations

from fleetci.multiarch.arch import ARCHES, Arch, host_arch, parse_arch
from fleetci.multiarch.matrix import MatrixEntry, build_matrix
from fleetci.multiarch.runner import RunResult, run
from fleetci.multiarch.settings import MultiarchSettings, multiarch_settings

__all__ = [
    "ARCHES",
    "Arch",
    "MatrixEntry",
    "MultiarchSettings",
    "RunResult",
    "build_matrix",
    "host_arch",
    "multiarch_settings",
    "parse_arch",
    "run",
]
