"""Make sure the kernel hands foreign ELF binaries to QEMU (binfmt_misc + qemu-user-static).

The handlers must be registered with the ``F`` (fix-binary) flag: the kernel then opens the emulator
once at registration, so it works inside a chroot or container that has no QEMU of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.multiarch.arch import Arch

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")


def handler_state(arch: Arch, binfmt_dir: Path = BINFMT_DIR) -> dict[str, str] | None:
    """The registered handler's fields (enabled, interpreter, flags), or None when not registered."""
    entry = binfmt_dir / arch.binfmt
    try:
        lines = entry.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    state: dict[str, str] = {}
    for line in lines:
        if line in ("enabled", "disabled"):
            state["status"] = line
        else:
            key, _, value = line.partition(" ")
            state[key.rstrip(":")] = value
    return state


def ensure_binfmt(arch: Arch, binfmt_dir: Path = BINFMT_DIR) -> None:
    """Register and enable the QEMU handler for ``arch`` or fail with what to install / fix."""
    state = handler_state(arch, binfmt_dir)
    if state and state.get("status") == "enabled":
        _check_fix_binary(arch, state)
        return
    if os.geteuid() != 0:
        raise FleetciError(
            f"binfmt handler {arch.binfmt} is not enabled and registering it needs root "
            f"(sudo update-binfmts --enable {arch.binfmt})"
        )
    if not (binfmt_dir / "register").exists():
        proc = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt_dir)], capture_output=True, text=True
        )
        # Another process (binfmt-support's service, a parallel job) may mount it between the check
        # and our mount: "already mounted" with ``register`` present is success, not an error.
        if proc.returncode != 0 and not (binfmt_dir / "register").exists():
            raise FleetciError(
                f"binfmt unavailable: cannot mount binfmt_misc at {binfmt_dir}: "
                f"{proc.stderr.strip() or 'mount failed'} (a container needs --privileged)"
            )
    if not shutil.which("update-binfmts") or not shutil.which(f"{arch.binfmt}-static"):
        raise FleetciError(
            f"binfmt unavailable: no QEMU for {arch.name} (apt-get install qemu-user-static binfmt-support)"
        )
    proc = subprocess.run(["update-binfmts", "--enable", arch.binfmt], capture_output=True, text=True)
    state = handler_state(arch, binfmt_dir)
    if proc.returncode != 0 or not state or state.get("status") != "enabled":
        reason = (proc.stderr.strip().splitlines() or ["handler did not appear"])[-1]
        raise FleetciError(f"binfmt unavailable: update-binfmts --enable {arch.binfmt} failed: {reason}")
    _check_fix_binary(arch, state)


def _check_fix_binary(arch: Arch, state: dict[str, str]) -> None:
    if "F" not in state.get("flags", ""):
        raise FleetciError(
            f"binfmt handler {arch.binfmt} lacks the F (fix-binary) flag, so QEMU is not found inside a "
            "chroot; re-register it from qemu-user-static (update-binfmts --disable/--enable "
            f"{arch.binfmt})"
        )
