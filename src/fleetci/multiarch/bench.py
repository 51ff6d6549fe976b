"""``fleetci bench multiarch``: the same pytest suite natively and under QEMU, in one run.

Every figure is a fresh copy of the bundled sample project, as a CI checkout would be: ``native_s`` is
the host's interpreter, ``emulated_s`` the chroot guest with fleetci's cuts (bytecode compiled natively
on the host), ``emulated_plain_s`` the guest without them. ``rootfs_cold_s`` is an mmdebstrap build,
``rootfs_warm_s`` checking + unpacking the cached archive.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.multiarch.arch import Arch
from fleetci.multiarch.chroot import Guest, require_root
from fleetci.multiarch.rootfs import Progress, ensure_rootfs, remove_tree
from fleetci.multiarch.settings import DEFAULT_MIRROR, MultiarchSettings

SAMPLE = Path(__file__).with_name("sample")
PYTEST = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def fresh_copy(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def bench_multiarch(arch: Arch, cache_dir: Path | None, mirror: str, progress: Progress) -> dict[str, Any]:
    require_root("fleetci bench multiarch")
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-multiarch-") as tmp:
        work = Path(tmp)
        cache = cache_dir or work / "cache"
        base = MultiarchSettings(
            arch=arch,
            python=None,
            backend="chroot",
            project=work / "project",
            cache_dir=cache,
            mirror=mirror,
            packages=(),
            requirements=(),
            image=None,
        )

        # 1. the rootfs: built here (cold) unless the cache dir already has it
        spec_guest = Guest(base, progress)
        existing = spec_guest.spec.archive(base.rootfs_dir).exists()
        progress("rootfs: " + ("reusing the archive in the cache dir" if existing else "cold build"))
        cold = ensure_rootfs(spec_guest.spec, base.rootfs_dir, progress)
        rootfs_cold_s = None if not cold.built else round(cold.seconds, 2)

        # 2. native baseline, measured after the build so both sides see the same machine load:
        # the median of three fresh-checkout runs of the host's interpreter
        samples = []
        for _ in range(3):
            fresh_copy(base.project)
            t0 = time.monotonic()
            native = subprocess.run(
                [sys.executable, *PYTEST[1:]], cwd=base.project, capture_output=True, text=True, check=False
            )
            samples.append(time.monotonic() - t0)
            if native.returncode != 0:
                tail = native.stdout.strip().splitlines()[-1:]
                raise FleetciError(f"the sample suite failed natively: {tail}")
        native_s = sorted(samples)[1]
        progress(f"native runs: {', '.join(f'{x:.2f}' for x in samples)} s")

        def emulated(precompile: bool) -> tuple[float, float, str]:
            settings = dataclasses.replace(base, precompile=precompile)
            fresh_copy(settings.project)
            guest = Guest(settings, progress)
            try:
                t_prepare = time.monotonic()
                guest.prepare()
                warm = time.monotonic() - t_prepare
                guest.precompile()
                t1 = time.monotonic()
                # the suite's own output goes to stderr: stdout is the one JSON object
                rc = guest.exec(
                    ["/bin/sh", "-c", 'uname -m > .machine && exec "$@"', "sh", *PYTEST], stdout=sys.stderr
                )
                took = time.monotonic() - t1 + guest.timings.precompile_s
                machine = (settings.project / ".machine").read_text().strip()
            finally:
                guest.close()
            if rc != 0:
                raise FleetciError(f"the sample suite failed on {arch.name} (exit {rc})")
            return took, warm, machine

        progress(f"emulated run on {arch.name} without bytecode precompiled on the host")
        plain_s, first_prepare_s, _ = emulated(False)
        progress(f"emulated run on {arch.name} with fleetci's cuts")
        emulated_s, warm_s, machine = emulated(True)
        remove_tree(work / "project")
    return {
        "arch": arch.name,
        "guest_machine": machine,
        "suite": spec_guest.suite,
        "native_s": round(native_s, 2),
        "emulated_s": round(emulated_s, 2),
        "emulated_plain_s": round(plain_s, 2),
        "ratio": round(emulated_s / native_s, 2),
        "ratio_plain": round(plain_s / native_s, 2),
        "rootfs_cold_s": rootfs_cold_s,
        "rootfs_warm_s": round(warm_s, 2),
        "rootfs_first_unpack_s": round(first_prepare_s, 2),
        "targets": {"ratio": 6, "rootfs_warm_s": 3},
        "mirror": mirror if mirror != DEFAULT_MIRROR else "deb.debian.org",
    }
