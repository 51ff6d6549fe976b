"""``fleetci bench cache --host-proxy``: N jobs on one host proxy vs N jobs each with a proxy of its own.

Both phases run in the same benchmark, against the same emulator and workload (``bench.cache.run_fleet``),
and every job is started the way a workflow starts it: ``fleetci cache start`` (what setup-p2p-cache runs).
Phase "per job": each job's ``cache start`` spawns its own ``fleetci cache serve``. Phase "host proxy":
one ``fleetci cache serve`` runs as the host service would (its own socket), and each job's
``cache start`` finds it through ``FLEETCI_HOST_PROXY`` and starts nothing. Charged calls are the
emulator's count; RSS (and PSS) are summed over every proxy process of the phase.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetci.bench.cache import (
    BENCH_PRIMARY_LIMIT,
    FleetResult,
    FleetSpec,
    _rss_mb,
    list_repo_names,
    run_fleet,
    scaled_config,
    set_emulator,
    start_emulator,
)
from fleetci.bench.common import call as _call
from fleetci.bench.common import clean_env as _env
from fleetci.errors import FleetciError
from fleetci.http import free_port
from fleetci.process import Service, alive, fleetci_argv, running, stop_process
from fleetci.wait import WaitTimeout, wait_until

TARGETS = {
    "host_proxy_processes_max": 1,  # one proxy however many jobs
    "host_proxy_charged_vs_per_job_max": 1.0,  # never charges more than a proxy per job
}


def _start_job(job: Path, emulator_url: str, config: Path, host_proxy: str) -> tuple[str, int | None, float]:
    """``fleetci cache start`` as a job runs it; its api-url, the proxy pid it started (None: none), and
    how long it took."""
    job.mkdir(parents=True, exist_ok=True)
    outputs = job / "GITHUB_OUTPUT"
    outputs.write_text("")
    env = _env(
        GITHUB_ACTIONS="true",
        GITHUB_OUTPUT=str(outputs),
        GITHUB_ENV=str(job / "GITHUB_ENV"),
        CACHE_UPSTREAM=emulator_url,
        CACHE_DIR=str(job / "cache"),
        CACHE_PROXY_PORT="0",
        CACHE_HOST_PROXY=host_proxy,
    )
    began = time.monotonic()
    done = subprocess.run(
        fleetci_argv("--config", str(config), "cache", "start", "--no-probe"),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    took = time.monotonic() - began
    if done.returncode != 0:
        raise FleetciError(f"a job's 'fleetci cache start' failed: {done.stderr.strip()[-300:]}")
    values = dict(ln.split("=", 1) for ln in outputs.read_text().splitlines() if "=" in ln)
    pid_file = job / "cache" / "proxy.pid"
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    return values["api-url"], pid, took


def _stop(pids: list[int]) -> None:
    """SIGTERM the proxies jobs started (not our children: ``cache start`` detached them), then SIGKILL."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(WaitTimeout):
        wait_until(lambda: not any(alive(p) for p in pids), timeout=15, what="the per-job proxies to exit")
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _phase(
    name: str,
    urls: list[str],
    pids: list[int],
    emu: Service,
    spec: FleetSpec,
    repos: list[str],
    say: Callable[[str], None],
) -> tuple[FleetResult, dict[str, float]]:
    _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
    say(f"{name}: {spec.runners} jobs x {spec.calls} calls through {len(set(urls))} proxies")
    result = run_fleet(urls, emu.url, spec, repos, paced=True, progress=say)
    memory = {
        "rss_mb_total": round(sum(_rss_mb(p) for p in pids), 1),
        "pss_mb_total": round(sum(_rss_mb(p, "Pss:") for p in pids), 1),
    }
    return result, memory


def bench_host_proxy(spec: FleetSpec, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    scaled_latency = (spec.latency_ms[0] / spec.time_scale, spec.latency_ms[1] / spec.time_scale)
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-host-") as tmp:
        tmp_path = Path(tmp)
        config = scaled_config(tmp_path / "bench.yml", spec.time_scale)
        emu: Service
        with start_emulator(spec.latency_ms) as emu:
            repos = list_repo_names(emu.url, "octo-org", spec.repos)
            _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
            set_emulator(emu.url, latency_ms=list(scaled_latency), primary_limit=BENCH_PRIMARY_LIMIT)
            say(f"emulator at {emu.url}; baseline: {spec.runners} jobs straight to the API")
            baseline = run_fleet(emu.url, emu.url, spec, repos, paced=False, progress=say)

            # Phase 1: today's default, a proxy per job.
            say(f"per job: {spec.runners} x 'fleetci cache start' (each starts a proxy)")
            started: list[int] = []
            jobs = []
            try:
                for i in range(spec.runners):
                    jobs.append(_start_job(tmp_path / f"job{i}", emu.url, config, "off"))
                    started += [pid for pid in (jobs[-1][1],) if pid is not None]
                per_job, per_job_mem = _phase(
                    "per job", [u for u, _, _ in jobs], started, emu, spec, repos, say
                )
            finally:
                _stop(started)
            per_job_start = [took for _, _, took in jobs]

            # Phase 2: one host proxy (as the service runs it), the jobs reuse it.
            sock = tmp_path / "host.sock"
            argv = fleetci_argv(
                "--config", str(config), "cache", "serve", "--upstream", emu.url, "--port", str(free_port()),
                "--cache-dir", str(tmp_path / "host-cache"), "--socket", str(sock), "--no-probe",
            )  # fmt: skip
            host: Service
            with running(argv, env=_env()) as host:
                say(f"host proxy at {host.url}: {spec.runners} x 'fleetci cache start' (each reuses it)")
                jobs = [
                    _start_job(tmp_path / f"hjob{i}", emu.url, config, str(sock)) for i in range(spec.runners)
                ]
                extra = [pid for _, pid, _ in jobs if pid is not None]
                if extra:
                    _stop(extra)
                    raise FleetciError(f"{len(extra)} jobs started a proxy although the host runs one")
                shared, shared_mem = _phase(
                    "host proxy", [u for u, _, _ in jobs], [host.proc.pid], emu, spec, repos, say
                )
                stats = _call("GET", f"{host.url}/_fleetci/stats", timeout=10).json()
            host_start = [took for _, _, took in jobs]
            stop_process(host.proc)
    charged_ratio = shared.charged / per_job.charged if per_job.charged else 0.0
    return {
        "runners": spec.runners,
        "calls_per_runner": spec.calls,
        "total_calls": shared.calls,
        "baseline_charged": baseline.charged,
        "per_job_charged": per_job.charged,
        "host_proxy_charged": shared.charged,
        "host_proxy_charged_vs_per_job": round(charged_ratio, 4),
        "per_job_processes": len(started),
        "host_proxy_processes": 1,
        "per_job_rss_mb_total": per_job_mem["rss_mb_total"],
        "host_proxy_rss_mb_total": shared_mem["rss_mb_total"],
        "per_job_pss_mb_total": per_job_mem["pss_mb_total"],
        "host_proxy_pss_mb_total": shared_mem["pss_mb_total"],
        "rss_saved_ratio": round(1 - shared_mem["rss_mb_total"] / per_job_mem["rss_mb_total"], 4)
        if per_job_mem["rss_mb_total"]
        else 0.0,
        "job_start_p50_s_per_job": round(statistics.median(per_job_start), 3),
        "job_start_p50_s_host_proxy": round(statistics.median(host_start), 3),
        "host_proxy_hit_rate": stats.get("hit_rate"),
        "per_job_outcomes": dict(sorted(per_job.outcomes.items())),
        "host_proxy_outcomes": dict(sorted(shared.outcomes.items())),
        "errors": baseline.errors + per_job.errors + shared.errors,
        "time_scale": spec.time_scale,
        "latency_ms": list(spec.latency_ms),
        "wall_s": round(baseline.wall_s + per_job.wall_s + shared.wall_s, 2),
        "targets": TARGETS,
    }
