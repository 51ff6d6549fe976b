"""``fleetci bench install``: safe installs under faults vs plain pip, in one run, on one local index.

* ``success_rate_under_faults``: every trial waits for an apt-style lock held ``lock_hold`` s (the issue's
  30 s) and installs from an index that answers 503 / resets every other one of its first requests.
* ``retries_on_permanent``: retries spent on a missing package and an impossible pin (target 0).
* ``overhead_ratio_no_faults``: median time of fleetci's install path / median of plain ``pip install`` of
  the same wheels from the same healthy index into a fresh-equivalent venv (target ≤ 1.05).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleetci.install import InstallReport, install_settings, run
from fleetci.install.index import FaultPlan, LocalIndex, build_wheel
from fleetci.install.locks import APT_LOCKS, held

Progress = Callable[[str], None]


@contextmanager
def isolated_pip() -> Iterator[None]:
    """pip in this run sees only our index: no user config, cache, find-links or extra indexes."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        del os.environ[key]
    os.environ.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def make_venv(path: Path) -> str:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return str(path / "bin" / "python")


def uninstall(python: str, names: list[str]) -> None:
    subprocess.run([python, "-m", "pip", "uninstall", "-y", "-q", *names], capture_output=True, check=False)


def bench_install(
    lock_hold: float = 30.0,
    trials: int = 3,
    packages: int = 4,
    repeats: int = 5,
    faulty_first: int = 8,
    progress: Progress = lambda m: None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-install-") as tmp, isolated_pip():
        root = Path(tmp)
        names = [f"fleetci-bench-{i}" for i in range(packages)]
        for i, name in enumerate(names):
            build_wheel(root / "wheels", name, f"1.{i}.0")
        progress(f"creating {trials + 2} virtualenvs")
        with ThreadPoolExecutor(max_workers=2) as pool:
            pythons = list(pool.map(make_venv, [root / f"venv-{i}" for i in range(trials + 2)]))
        plain_py, fleet_py, trial_pys = pythons[0], pythons[1], pythons[2:]
        quiet: Progress = lambda m: None  # noqa: E731

        # 1. Faults: all trials wait on one lock held lock_hold seconds, each against its own faulty index.
        lock_root = root / "locks"
        indexes = [LocalIndex(root / "wheels", FaultPlan(first=faulty_first)).start() for _ in range(trials)]
        try:
            progress(
                f"{trials} trials: lock held {lock_hold:g}s, index faults every other of the first "
                f"{faulty_first} requests"
            )
            with held(lock_root / APT_LOCKS[0], lock_hold):
                t0 = time.monotonic()

                def trial(i: int) -> InstallReport:
                    settings = install_settings(
                        {
                            "packages": ",".join(names),
                            "python": trial_pys[i],
                            "index_url": indexes[i].url,
                            "wait_locks": "true",
                            "lock_root": str(lock_root),
                            "lock_timeout": str(lock_hold + 120),
                            "retries": "6",
                            "backoff": "0.2",
                            "backoff_max": "2",
                        },
                        {},
                        {},
                    )
                    return run(settings, quiet, describe_platform=False)

                with ThreadPoolExecutor(max_workers=trials) as pool:
                    reports = list(pool.map(trial, range(trials)))
                faulted_s = time.monotonic() - t0
            faults = [ix.plan.faults for ix in indexes]
        finally:
            for ix in indexes:
                ix.stop()
        successes = sum(1 for r in reports if r["ok"])
        fault_retries = [max((p["retries"] for p in r["packages"]), default=0) for r in reports]
        lock_waits = [r["apt"]["lock_wait_s"] if "apt" in r else 0.0 for r in reports]

        with LocalIndex(root / "wheels") as index:
            # 2. Permanent failures: a missing package and an impossible pin. No retry may happen.
            progress("permanent failures")
            perm = install_settings(
                {
                    "packages": f"no-such-package-xyz,{names[0]}==99",
                    "python": fleet_py,
                    "index_url": index.url,
                },
                {},
                {},
            )
            perm_report = run(perm, quiet, describe_platform=False)
            permanent_retries = sum(int(p["retries"]) for p in perm_report["packages"])

            # 3. No faults: plain pip vs fleetci's install path, alternating, same wheels, same index.
            progress(f"overhead: {repeats} rounds of plain pip vs fleetci install")
            plain_times: list[float] = []
            fleet_times: list[float] = []
            fleet = install_settings(
                {"packages": ",".join(names), "python": fleet_py, "index_url": index.url}, {}, {}
            )
            for rnd in range(repeats):
                uninstall(plain_py, names)
                uninstall(fleet_py, names)
                order = ("plain", "fleetci") if rnd % 2 == 0 else ("fleetci", "plain")
                for who in order:
                    t = time.monotonic()
                    if who == "plain":
                        proc = subprocess.run(
                            [plain_py, "-m", "pip", "install", "--index-url", index.url, *names],
                            capture_output=True,
                            text=True,
                        )
                        plain_times.append(time.monotonic() - t)
                        if proc.returncode != 0:
                            raise RuntimeError(f"plain pip failed: {proc.stderr[-300:]}")
                    else:
                        rep = run(fleet, quiet, describe_platform=False)
                        fleet_times.append(time.monotonic() - t)
                        if not rep["ok"]:
                            raise RuntimeError(f"fleetci install failed: {rep['failed']}")
        plain_med = statistics.median(plain_times)
        fleet_med = statistics.median(fleet_times)
        return {
            "success_rate_under_faults": round(successes / trials, 4),
            "retries_on_permanent": permanent_retries,
            "overhead_ratio_no_faults": round(fleet_med / plain_med, 4),
            "trials": trials,
            "packages": packages,
            "lock_hold_s": lock_hold,
            "lock_wait_s": [round(w, 2) for w in lock_waits],
            "faults_injected": faults,
            "retries_under_faults": fault_retries,
            "faulted_phase_s": round(faulted_s, 2),
            "permanent_failures_reported": [p["error"] for p in perm_report["packages"] if not p["ok"]],
            "plain_pip_median_s": round(plain_med, 3),
            "fleetci_median_s": round(fleet_med, 3),
            "repeats": repeats,
            "python": sys.version.split()[0],
            "targets": {
                "success_rate_under_faults": 1.0,
                "retries_on_permanent": 0,
                "overhead_ratio_no_faults": 1.05,
            },
        }
