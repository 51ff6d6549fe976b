#!/usr/bin/env python3
"""Seed-compatible entry point: ``python3 scripts/safe_install.py [fleetci install arguments]``.

Forwards to ``fleetci install`` (the one on PATH, else this checkout's ``src`` when its dependencies
import), always for the interpreter running this script (``--python``), like the seed's script. With no
arguments it does what the seed did for this repository: install the project itself (``-e .``) and verify
that it imports in a fresh interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    if not argv:
        argv = ["-e", str(ROOT), "--verify", "fleetci"]
    if argv[:1] != ["matrix"] and not any(a == "--python" or a.startswith("--python=") for a in argv):
        argv = [*argv, "--python", sys.executable]
    exe = shutil.which("fleetci")
    if exe:
        return subprocess.call([exe, "install", *argv])
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from fleetci.cli import main as fleetci
    except ImportError as exc:
        print(
            f"safe_install: error: fleetci is not installed ({exc}); "
            f"run: bash {ROOT}/scripts/install_fleetci.sh",
            file=sys.stderr,
        )
        return 1
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    return fleetci(["install", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
