"""``fleetci bench build``: real master + worker processes build a 30-package DAG of sleep-bound recipes.

Compared in the same run against the schedule's lower bound (max of the critical path and total work /
workers), against itself with one worker SIGKILLed mid-build, and a chain of no-op jobs for the fixed cost
each job pays (source download, clean directory, build spawn, signing, upload, result, pickup).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetci.buildfarm.client import MasterApi
from fleetci.buildfarm.models import BuildInfo, JobRow
from fleetci.buildfarm.recipe import Recipe, check_graph, critical_path, discover
from fleetci.errors import FleetciError
from fleetci.process import Service, fleetci_argv, spawn
from fleetci.wait import WaitTimeout, wait_until

Progress = Callable[[str], None]


def sample_dag(root: Path, packages: int = 30, seed: int = 4) -> dict[str, float]:
    """A layered DAG like a distribution's: few base libraries, many libraries, a few applications."""
    rng = random.Random(seed)
    shape = [6, 9, 8, 5, 2]
    scale = packages / sum(shape)
    sizes = [max(1, round(s * scale)) for s in shape]
    sizes[2] += packages - sum(sizes)
    layers: list[list[str]] = []
    durations: dict[str, float] = {}
    for depth, size in enumerate(sizes):
        layer = []
        for i in range(size):
            name = f"pkg{depth}-{i:02d}"
            below = [n for lvl in layers for n in lvl]
            deps = sorted(set(rng.sample(below, k=min(len(below), rng.randint(1, 3))))) if below else []
            if layers and not set(deps) & set(layers[-1]):
                deps.append(rng.choice(layers[-1]))
            seconds = round(rng.uniform(0.4, 1.6), 2)
            durations[name] = seconds
            write_recipe(root / name, name, f"sleep {seconds}; echo {name} > {name}.pkg", deps, seconds)
            layer.append(name)
        layers.append(layer)
    return durations


def write_recipe(directory: Path, name: str, build: str, depends: list[str], estimate: float | None) -> None:
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    recipe: dict[str, Any] = {
        "name": name,
        "version": "1.0",
        "depends": sorted(depends),
        "build": build,
        "artifacts": [f"{name}.pkg"],
    }
    if estimate is not None:
        recipe["estimate_s"] = estimate
    (directory / "recipe.yml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


class Fleet:
    """A master and its workers as real processes under one temporary directory."""

    def __init__(self, root: Path, ttl: float) -> None:
        self.root = root
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEETCI_")},
            "FLEETCI_BUILD_TOKEN": "bench-admin-" + os.urandom(8).hex(),
            "FLEETCI_BUILD_JOIN_TOKEN": "bench-join-" + os.urandom(8).hex(),
        }
        self.master: Service = spawn(
            fleetci_argv(
                "build",
                "master",
                "--port",
                "0",
                "--state-dir",
                str(root / "master"),
                "--heartbeat-ttl",
                f"{ttl}",
            ),
            env=self.env,
        )
        self.workers: list[subprocess.Popen[bytes]] = []
        self.client = MasterApi(self.master.url, self.env["FLEETCI_BUILD_TOKEN"])

    def add_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        log = (self.root / f"worker{n}.log").open("wb")
        proc = subprocess.Popen(
            fleetci_argv(
                "build",
                "worker",
                "--master",
                self.master.url,
                "--name",
                f"bench{n}",
                "--work-dir",
                str(self.root / f"worker{n}"),
            ),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(proc)
        return proc

    def wait_workers(self, count: int, timeout: float = 30.0) -> None:
        active = 0

        def registered() -> bool:
            nonlocal active
            active = sum(1 for w in self.client.status()["workers"] if w["state"] == "active")
            return active >= count

        try:
            wait_until(registered, timeout=timeout, what=f"{count} workers")
        except WaitTimeout:
            raise FleetciError(f"only {active} of {count} workers registered within {timeout:g}s") from None

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.terminate()
        for w in self.workers:
            try:
                w.wait(timeout=10)
            except subprocess.TimeoutExpired:
                w.kill()
        self.client.close()
        self.master.stop()


def makespan(jobs: list[JobRow]) -> float:
    return float(max(j["finished_at"] or 0.0 for j in jobs) - min(j["created_at"] for j in jobs))


def run_build(fleet: Fleet, recipes: list[Recipe], timeout: float = 300.0) -> BuildInfo:
    queued = fleet.client.submit(recipes)
    info = fleet.client.wait(int(queued["build"]), timeout)
    if info["state"] != "done":
        bad = [f"{j['package']}: {j['error']}" for j in info["jobs"] if j["state"] != "done"]
        raise FleetciError(f"benchmark build failed: {'; '.join(bad)[:300]}")
    return info


def kill_mid_build(
    fleet: Fleet, build_id: int, durations: dict[str, float], say: Progress
) -> dict[str, Any] | None:
    """Once a third of the build is done, SIGKILL the worker of the longest running job about half-way
    through it (a real crash in the middle of the work); None while that moment has not come."""
    info = fleet.client.build(build_id)
    started = [j for j in info["jobs"] if j["state"] == "running"]
    done = sum(1 for j in info["jobs"] if j["state"] == "done")
    if done < len(info["jobs"]) // 3 or not started:
        return None
    victim = max(started, key=lambda j: durations[j["package"]])
    if time.time() - (victim["started_at"] or 0.0) < durations[victim["package"]] / 2:
        return None
    by_id = {w["id"]: w for w in fleet.client.status()["workers"]}
    name = by_id[str(victim["worker_id"])]["name"]
    proc = fleet.workers[int(name.removeprefix("bench"))]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    say(f"killed worker {name} while it built {victim['package']}")
    return {"package": victim["package"], "worker": victim["worker_id"], "at": time.time()}


def bench_build(
    workers: int = 4, ttl: float = 2.0, replace: bool = True, progress: Progress | None = None
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    if workers < 1:
        raise FleetciError("--workers must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="fleetci-bench-build-"))
    try:
        durations = sample_dag(tmp / "dag")
        recipes = discover([tmp / "dag"])
        graph = check_graph(recipes)
        cp = critical_path(graph, durations)
        work = sum(durations.values())
        lower = max(cp, work / workers)
        chain = 10
        for i in range(chain):
            deps = [f"noop-{i - 1:02d}"] if i else []
            write_recipe(
                tmp / "chain" / f"noop-{i:02d}", f"noop-{i:02d}", f"echo > noop-{i:02d}.pkg", deps, None
            )
        chain_recipes = discover([tmp / "chain"])

        fleet = Fleet(tmp, ttl)
        try:
            for _ in range(workers):
                fleet.add_worker()
            fleet.wait_workers(workers)
            say(f"master {fleet.master.url} and {workers} workers up; no-op chain of {chain} jobs")
            chain_info = run_build(fleet, chain_recipes)
            overhead_ms = makespan(chain_info["jobs"]) / chain * 1000

            say(f"30-package DAG: critical path {cp:.2f}s, work {work:.2f}s, lower bound {lower:.2f}s")
            first = run_build(fleet, recipes)
            span = makespan(first["jobs"])
            say(f"makespan {span:.2f}s (ratio {span / lower:.3f})")

            say("failover: the same DAG again (release bump), one worker SIGKILLed mid-build")
            queued = fleet.client.submit(recipes)
            build_id = int(queued["build"])
            try:
                killed = wait_until(
                    lambda: kill_mid_build(fleet, build_id, durations, say),
                    timeout=60,
                    what="a running job to interrupt",
                )
            except WaitTimeout:
                raise FleetciError("failover: found no running job to interrupt") from None
            if replace:
                fleet.add_worker()
            info = fleet.client.wait(build_id, 300)
            if info["state"] != "done":
                raise FleetciError("failover build did not complete after the worker was killed")
            span2 = makespan(info["jobs"])
            retried = next(j for j in info["jobs"] if j["package"] == killed["package"])
            extra = span2 - span
            bound = durations[killed["package"]] + ttl
            say(f"failover makespan {span2:.2f}s (+{extra:.2f}s; bound {bound:.2f}s)")
        finally:
            fleet.close()
        return {
            "workers": workers,
            "packages": len(recipes),
            "heartbeat_ttl_s": ttl,
            "critical_path_s": round(cp, 3),
            "total_work_s": round(work, 3),
            "makespan_s": round(span, 3),
            "lower_bound_s": round(lower, 3),
            "ratio": round(span / lower, 4),
            "failover_makespan_s": round(span2, 3),
            "failover_extra_s": round(extra, 3),
            "failover_bound_s": round(bound, 3),
            "failover_killed_package": killed["package"],
            "failover_job_attempts": retried["attempts"],
            "failover_replacement_worker": replace,
            "per_job_overhead_ms": round(overhead_ms, 2),
            "targets": {
                "ratio": "<= 1.10",
                "failover_extra_s": "<= failover_bound_s",
                "per_job_overhead_ms": "<= 50",
            },
            "targets_met": span / lower <= 1.10 and extra <= bound and overhead_ms <= 50,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
