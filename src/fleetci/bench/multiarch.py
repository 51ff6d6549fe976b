"""``fleetci bench multiarch``: the same pytest suite natively and under QEMU, in one run.

Every figure is a fresh copy of the bundled sample project, as a CI checkout would be: ``native_s`` is
the host's interpreter, ``emulated_s`` the chroot guest with fleetci's host-side precompile (bytecode
and pytest's rewritten test modules compiled natively), ``emulated_plain_s`` the guest without it.
Each is the median of ``ROUNDS`` runs taken interleaved (native, plain, cuts, native, …) so that the
load of a shared machine falls on all three alike; each emulated run gets a fresh guest (overlay), as a
CI job would. Only the suite's own command is timed (plus the host-side precompile for ``emulated_s``);
the guest's ``uname -m`` is asked separately. ``*_cpu_s`` are the CPU seconds of the same runs (the
emulator's, the host interpreter's), less sensitive to other processes than wall time.
``rootfs_cold_s`` is an mmdebstrap build, ``rootfs_warm_s`` checking the cached archive and mounting
the guest (median), ``rootfs_first_unpack_s`` the first guest of the run (unpacks the shared tree once
per machine).
"""

from __future__ import annotations

import dataclasses
import resource
import shutil
import statistics
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

SAMPLE = Path(__file__).parent.parent / "multiarch" / "sample"
PYTEST = ["python3", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
ROUNDS = 3


def fresh_copy(dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclasses.dataclass
class Sample:
    wall: float
    cpu: float
    prepare: float = 0.0


def median(samples: list[Sample], attr: str) -> float:
    return float(statistics.median(getattr(s, attr) for s in samples))


def runs(samples: list[Sample]) -> list[float]:
    return [round(s.wall, 2) for s in samples]


def bench_multiarch(
    arch: Arch, cache_dir: Path | None, mirror: str, progress: Progress, rounds: int = ROUNDS
) -> dict[str, Any]:
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

        # 2. the suite natively (the host's interpreter), measured after the build so that every side
        # sees the same machine load
        def native() -> Sample:
            fresh_copy(base.project)
            c0, t0 = cpu_seconds(), time.monotonic()
            proc = subprocess.run(
                [sys.executable, *PYTEST[1:]], cwd=base.project, capture_output=True, text=True, check=False
            )
            sample = Sample(time.monotonic() - t0, cpu_seconds() - c0)
            if proc.returncode != 0:
                tail = proc.stdout.strip().splitlines()[-1:]
                raise FleetciError(f"the sample suite failed natively: {tail}")
            return sample

        # 3. the suite in a fresh guest, with or without fleetci's cuts (the host-side precompile is
        # part of the timed figure: a CI run pays for it too)
        machine = ""

        def emulated(precompile: bool) -> Sample:
            nonlocal machine
            settings = dataclasses.replace(base, precompile=precompile)
            fresh_copy(settings.project)
            guest = Guest(settings, progress)
            try:
                t_prepare = time.monotonic()
                guest.prepare()
                prepare = time.monotonic() - t_prepare
                c0, t0 = cpu_seconds(), time.monotonic()
                guest.precompile(PYTEST)
                # the suite's own output goes to stderr: stdout is the one JSON object
                rc = guest.exec(PYTEST, stdout=sys.stderr)
                sample = Sample(time.monotonic() - t0, cpu_seconds() - c0, prepare)
                if rc == 0 and not machine:
                    _, out = guest.exec_captured(["uname", "-m"])
                    machine = out.strip()
            finally:
                guest.close()
            if rc != 0:
                raise FleetciError(f"the sample suite failed on {arch.name} (exit {rc})")
            return sample

        natives: list[Sample] = []
        plains: list[Sample] = []
        cuts: list[Sample] = []
        for n in range(1, rounds + 1):
            progress(f"round {n}/{rounds}: native, then {arch.name} without and with fleetci's cuts")
            natives.append(native())
            plains.append(emulated(False))
            cuts.append(emulated(True))
            progress(
                f"round {n}/{rounds}: native {natives[-1].wall:.2f} s, plain {plains[-1].wall:.2f} s, "
                f"cuts {cuts[-1].wall:.2f} s"
            )
        remove_tree(work / "project")

    native_s, emulated_s, plain_s = (median(x, "wall") for x in (natives, cuts, plains))
    native_cpu, emulated_cpu, plain_cpu = (median(x, "cpu") for x in (natives, cuts, plains))
    prepares = [s.prepare for s in plains + cuts]
    return {
        "arch": arch.name,
        "guest_machine": machine,
        "suite": spec_guest.suite,
        "rounds": rounds,
        "native_s": round(native_s, 2),
        "emulated_s": round(emulated_s, 2),
        "emulated_plain_s": round(plain_s, 2),
        "ratio": round(emulated_s / native_s, 2),
        "ratio_plain": round(plain_s / native_s, 2),
        "native_runs": runs(natives),
        "emulated_runs": runs(cuts),
        "emulated_plain_runs": runs(plains),
        "native_cpu_s": round(native_cpu, 2),
        "emulated_cpu_s": round(emulated_cpu, 2),
        "emulated_plain_cpu_s": round(plain_cpu, 2),
        "ratio_cpu": round(emulated_cpu / native_cpu, 2),
        "ratio_plain_cpu": round(plain_cpu / native_cpu, 2),
        "rootfs_cold_s": rootfs_cold_s,
        "rootfs_warm_s": round(statistics.median(prepares[1:] or prepares), 2),
        "rootfs_first_unpack_s": round(prepares[0], 2),
        "targets": {"ratio": 6, "rootfs_warm_s": 3},
        "mirror": mirror if mirror != DEFAULT_MIRROR else "deb.debian.org",
    }
