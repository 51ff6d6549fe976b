"""What each benchmark is asked for, described once: its parameters (flag, parser, default, help) and the
function that checks them and runs it.

``fleetci bench <capability>`` and ``fleetci demo`` derive their flags from these tables and call ``run``
with the parsed values by name; nothing else knows a benchmark's parameters. Adding a parameter is one
:class:`Param` here and one keyword of its ``run`` function.

Cheap to import (the CLI builds its parser from it): each ``run`` imports its benchmark when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetci.config import (
    MAX_SECONDS,
    number,
    parse_count,
    parse_ms_range,
    parse_positive_int,
    parse_s_range,
    parse_seconds,
    parse_timeout,
)
from fleetci.errors import UsageError
from fleetci.registry.compress import parse_compression

if TYPE_CHECKING:
    from fleetci.bench.cache import FleetSpec

Progress = Callable[[str], None]
Result = dict[str, Any]  # one JSON object per benchmark (`--json`), the figures docs/ quotes


@dataclass(frozen=True)
class Param:
    """One parameter of a benchmark, given as ``--<name with dashes>``.

    ``parse`` is a settings parser (nan, inf and out-of-range values are one-line usage errors); None for
    plain text. ``help`` shows the default in parentheses at its end, or where it says ``{}``; with
    ``shown=""`` the help is printed as it is. ``switch`` parameters are on/off flags (default off).
    """

    name: str
    parse: Callable[[str], Any] | None
    default: Any
    help: str
    shown: str | None = None
    switch: bool = False

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def help_text(self) -> str:
        if self.switch or self.shown == "":
            return self.help
        shown = _shown(self.default) if self.shown is None else self.shown
        return self.help.format(shown) if "{}" in self.help else f"{self.help} ({shown})"


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return "-".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


JSON = Param("json", None, False, "print one JSON object", switch=True)  # every benchmark: the CLI's output


@dataclass(frozen=True)
class Benchmark:
    """``fleetci bench <name>``: its parameters in flag order, and ``run(progress=…, **values)``."""

    name: str
    help: str
    params: tuple[Param, ...]
    run: Callable[..., Result]


COUNT = parse_positive_int
HOURS = number(float, min=0, max=MAX_SECONDS / 3600, min_inclusive=False, unit="hours")
SCALE = number(float, min=0, min_inclusive=False)
FRACTION = number(float, min=0, max=1)
LINK_MBPS = number(float, min=0, max=1e6, unit="Mbit/s")
LEVEL = number(int, min=0, max=19)
PER_HOUR = number(float, min=0, max=1e6, unit="per hour")


def world_params(runners: int, churn_every: float, repos: int) -> tuple[Param, ...]:
    """The simulated fleet and world shared by ``bench cache``, ``bench fleet`` and ``demo``."""
    return (
        Param("runners", COUNT, runners, "simulated runners"),
        Param("latency_ms", parse_ms_range, (100.0, 500.0), "emulated GitHub latency per call, LOW-HIGH ms"),
        Param(
            "churn_every",
            parse_seconds,
            churn_every,
            "simulated seconds between changes in the emulated world ({}; 0 = static)",
        ),
        Param("repos", COUNT, repos, "repositories the autoscalers watch"),
    )


# A fleet of runners polling through ``fleetci cache serve`` in real (scaled) time: bench cache, demo.
FLEET = (
    *world_params(runners=5, churn_every=600.0, repos=3),
    Param("calls", COUNT, 100, "API calls per runner"),
    Param("time_scale", SCALE, 240.0, "simulated seconds per real second ({}: a 2-minute poll every 0.5 s)"),
)


def fleet_spec(
    *,
    runners: int,
    latency_ms: tuple[float, float],
    churn_every: float,
    repos: int,
    calls: int,
    time_scale: float,
) -> FleetSpec:
    from fleetci.bench.cache import FleetSpec

    return FleetSpec(
        runners=runners,
        calls=calls,
        latency_ms=latency_ms,
        time_scale=time_scale,
        churn_every_s=churn_every,
        repos=repos,
    )


def _bench_backend(text: str) -> str:
    """``bench cache --backend``: the shared store to benchmark (only ``redis`` today)."""
    if text.strip() not in ("redis", "local", ""):
        raise ValueError(f"expected redis or local, got {text!r}")
    return "" if text.strip() == "local" else text.strip()


def run_cache(
    *,
    samples: int,
    p2p: bool,
    host_proxy: bool,
    backend: str,
    graphql: bool,
    progress: Progress,
    **fleet: Any,
) -> Result:
    from fleetci.bench.cache import bench_cache, bench_graphql

    spec = fleet_spec(**fleet)
    if samples < 10:
        raise UsageError("--samples must be at least 10")
    if p2p and spec.runners < 2:
        raise UsageError("--p2p needs at least 2 runners")
    if graphql:  # issue 20: gh's GraphQL queries through one proxy
        if p2p or host_proxy or backend:
            raise UsageError(
                "--graphql measures one proxy: it cannot be combined with --p2p, --host-proxy or --backend"
            )
        return bench_graphql(spec, progress=progress, latency_samples=samples)
    if backend:  # issue 16: one proxy per runner on one shared store
        from fleetci.bench.cache_shared import bench_cache_shared

        if p2p or host_proxy:
            raise UsageError("--backend, --p2p and --host-proxy are separate benchmarks: pick one")
        if spec.runners < 2:
            raise UsageError("--backend needs at least 2 runners")
        return bench_cache_shared(spec, progress=progress, latency_samples=samples)
    if host_proxy:  # issue 16: N jobs on one host proxy vs a proxy per job
        if p2p:
            raise UsageError("--host-proxy and --p2p measure different fleets: choose one")
        from fleetci.bench.hostproxy import bench_host_proxy

        return bench_host_proxy(spec, progress=progress)
    return bench_cache(spec, progress=progress, latency_samples=samples, p2p=p2p)


def run_fleet(
    *,
    runners: int,
    latency_ms: tuple[float, float],
    churn_every: float,
    repos: int,
    hours: float,
    runners_per_node: int,
    poll: float,
    propagation_ms: tuple[float, float],
    baseline_runners: int,
    webhooks: bool,
    webhook_loss: float,
    webhook_delay_ms: tuple[float, float],
    jobs_per_hour: float,
    queue_wait_s: tuple[float, float],
    job_duration_s: tuple[float, float],
    isolated_runners: int,
    workers: int,
    one_webhook_per_change: bool,
    progress: Progress,
) -> Result:
    from fleetci.bench.fleet import FleetSimSpec, bench_fleet

    spec = FleetSimSpec(
        runners=runners,
        hours=hours,
        runners_per_node=runners_per_node,
        repos=repos,
        poll_s=poll,
        churn_every_s=churn_every,
        latency_ms=latency_ms,
        propagation_ms=propagation_ms,
        baseline_runners=min(baseline_runners, runners),
        webhooks=webhooks,
        webhook_loss=webhook_loss,
        webhook_delay_ms=webhook_delay_ms,
        webhook_per_job=not one_webhook_per_change,
        jobs_per_hour=jobs_per_hour,
        queue_wait_s=queue_wait_s,
        job_duration_s=job_duration_s,
        isolated_runners=isolated_runners,
    )
    if webhook_loss and not webhooks:
        raise UsageError("--webhook-loss needs --webhooks")
    if one_webhook_per_change and not webhooks:
        raise UsageError("--one-webhook-per-change needs --webhooks")
    return bench_fleet(spec, progress=progress, workers=workers)


def run_autoscale(
    *,
    jobs: int,
    spread: float,
    poll: float,
    poll_without_webhooks: float,
    webhook_delay_ms: float,
    webhook_loss: float,
    latency_ms: tuple[float, float],
    seed: int,
    progress: Progress,
) -> Result:
    from fleetci.bench.autoscale import AutoscaleBenchSpec, bench_autoscale

    spec = AutoscaleBenchSpec(
        jobs=jobs,
        spread_s=spread,
        poll_s=poll,
        poll_without_webhooks_s=poll_without_webhooks,
        webhook_delay_ms=webhook_delay_ms,
        webhook_loss=webhook_loss,
        latency_ms=latency_ms,
        seed=seed,
    )
    return bench_autoscale(spec, progress=progress)


def run_install(
    *, lock_hold: float, trials: int, packages: int, repeats: int, faulty_first: int, progress: Progress
) -> Result:
    from fleetci.bench.install import bench_install

    return bench_install(
        lock_hold=lock_hold,
        trials=trials,
        packages=packages,
        repeats=repeats,
        faulty_first=faulty_first,
        progress=progress,
    )


def run_multiarch(*, arch: str, cache_dir: str | None, mirror: str | None, progress: Progress) -> Result:
    from fleetci.bench.multiarch import bench_multiarch
    from fleetci.multiarch.arch import parse_arch
    from fleetci.multiarch.settings import DEFAULT_MIRROR

    return bench_multiarch(
        parse_arch(arch),
        Path(cache_dir) if cache_dir else None,
        (mirror or DEFAULT_MIRROR).rstrip("/"),
        progress=progress,
    )


def run_build(*, workers: int, heartbeat_ttl: float, no_replace: bool, progress: Progress) -> Result:
    from fleetci.bench.buildfarm import bench_build

    return bench_build(workers, heartbeat_ttl, replace=not no_replace, progress=progress)


def run_registry(
    *,
    size_mb: int,
    rss_size_mb: int,
    chunk_mb: int,
    resume_layer_mb: int,
    link_mbps: float,
    compression: str,
    compression_level: int,
    parallel: int,
    workdir: str | None,
    progress: Progress,
) -> Result:
    from fleetci.bench.registry import bench_registry

    if resume_layer_mb <= chunk_mb:
        raise UsageError("--resume-layer-mb must be more than --chunk-mb (a layer sent in chunks)")
    return bench_registry(
        size_mb,
        rss_size_mb,
        chunk_mb,
        Path(workdir) if workdir else None,
        progress=progress,
        resume_layer_mb=resume_layer_mb,
        link_mbps=link_mbps,
        compression=compression,
        parallel=parallel,
        compression_level=compression_level,
    )


BENCHMARKS = (
    Benchmark(
        "cache",
        "API cache: charged calls and latency vs going straight to the API",
        (
            *FLEET,
            Param("samples", COUNT, 400, "latency samples per measurement"),
            JSON,
            Param("p2p", None, False, "one proxy per runner, sharing over libp2p on 127.0.0.1", switch=True),
            Param(
                "host_proxy",
                None,
                False,
                "jobs reuse one host proxy ('fleetci cache start'), vs a proxy per job, in the same run",
                switch=True,
            ),
            Param(
                "backend",
                _bench_backend,
                "",
                "redis: one proxy per runner, all on one real redis-server (CACHE_BACKEND)",
                shown="local",
            ),
            Param(
                "graphql",
                None,
                False,
                "gh's GraphQL queries instead of REST calls: points charged and GraphQL hit latency",
                switch=True,
            ),
        ),
        run_cache,
    ),
    Benchmark(
        "fleet",
        "API cache at fleet scale: charged calls per hour for N runners, in virtual time",
        (
            *world_params(runners=500, churn_every=0.0, repos=7),
            Param("hours", HOURS, 1.0, "virtual hours to simulate"),
            Param(
                "jobs_per_hour",
                PER_HOUR,
                300.0,
                "workflow runs queued per hour over the watched repos, Poisson ({}; 0 = none)",
            ),
            Param("queue_wait_s", parse_s_range, (10.0, 120.0), "a job's wait queued, LOW-HIGH seconds"),
            Param("job_duration_s", parse_s_range, (180.0, 1200.0), "a job's run time, LOW-HIGH seconds"),
            Param("runners_per_node", COUNT, 10, "runners sharing one proxy"),
            Param("poll", parse_timeout, 120.0, "seconds between an autoscaler's polls"),
            Param(
                "propagation_ms",
                parse_ms_range,
                (10.0, 100.0),
                "peer-to-peer delivery delay, LOW-HIGH ms ({}, as bench cache --p2p measures)",
            ),
            Param("baseline_runners", COUNT, 20, "runners sampled without any cache"),
            Param(
                "isolated_runners",
                COUNT,
                500,
                "runners simulated for the unshared-cache comparison, scaled to the fleet",
            ),
            Param("workers", COUNT, 2, "processes running the fleet's simulations at once"),
            JSON,
            Param(
                "webhooks",
                None,
                False,
                "changes also arrive as webhooks at one proxy, which passes them on (issue 17)",
                switch=True,
            ),
            Param("webhook_loss", FRACTION, 0.0, "fraction of webhook deliveries lost"),
            Param("webhook_delay_ms", parse_ms_range, (200.0, 1000.0), "webhook delivery delay, LOW-HIGH ms"),
            Param(
                "one_webhook_per_change",
                None,
                False,
                "one delivery per transition (GitHub sends workflow_run plus one workflow_job per job)",
                switch=True,
            ),
        ),
        run_fleet,
    ),
    Benchmark(
        "autoscale",
        "autoscaler: job queued -> provider called, with webhooks and by polling alone, in the same run",
        (
            Param("jobs", COUNT, 30, "events; each queues one run per pool at a random time"),
            Param("spread", parse_timeout, 30.0, "seconds over which the events are queued"),
            Param("poll", parse_timeout, 120.0, "the webhook side's poll interval in seconds"),
            Param(
                "poll_without_webhooks",
                parse_timeout,
                5.0,
                "the polling-only side's interval ({}; short, so the run ends within ~2 minutes)",
            ),
            Param("webhook_delay_ms", number(float, min=0, max=600_000), 500.0, "webhook delivery delay, ms"),
            Param("webhook_loss", FRACTION, 0.0, "fraction of webhook deliveries lost"),
            Param(
                "latency_ms", parse_ms_range, (20.0, 80.0), "emulated GitHub latency per call, LOW-HIGH ms"
            ),
            Param("seed", parse_count, 17, "seed for the event times and repositories"),
            JSON,
        ),
        run_autoscale,
    ),
    Benchmark(
        "install",
        "safe installs: success under lock + index faults, overhead vs pip",
        (
            Param("lock_hold", parse_seconds, 30.0, "seconds a child holds the apt lock"),
            Param("trials", COUNT, 3, "concurrent faulted installs"),
            Param("packages", COUNT, 4, "generated wheels per install"),
            Param("repeats", COUNT, 5, "plain pip vs fleetci rounds, no faults"),
            Param("faulty_first", parse_count, 8, "fault every other of the first N requests"),
            JSON,
        ),
        run_install,
    ),
    Benchmark(
        "multiarch",
        "multi-arch tests: the same pytest suite natively and under QEMU",
        (
            Param("arch", None, "arm64", "emulated architecture"),
            Param(
                "cache_dir",
                None,
                None,
                "reuse rootfs archives from here (default: a fresh dir, a cold build)",
                shown="",
            ),
            Param("mirror", None, None, "Debian mirror", shown="deb.debian.org"),
            JSON,
        ),
        run_multiarch,
    ),
    Benchmark(
        "build",
        "distributed builds: 30-package DAG makespan vs lower bound, failover",
        (
            Param("workers", COUNT, 4, "worker processes"),
            Param("heartbeat_ttl", parse_timeout, 2.0, "heartbeat TTL in seconds"),
            Param("no_replace", None, False, "do not start a replacement for the killed worker", switch=True),
            JSON,
        ),
        run_build,
    ),
    Benchmark(
        "registry",
        "registry push over a link: compressed, parallel push vs skopeo copy, re-push/retag bytes, RSS",
        (
            Param("size_mb", COUNT, 512, "image size for the throughput comparison"),
            Param("rss_size_mb", COUNT, 2048, "image size for the peak-RSS measurement"),
            Param("chunk_mb", COUNT, 128, "chunked-upload threshold in MiB"),
            Param(
                "resume_layer_mb",
                COUNT,
                300,
                "layer of the push killed mid-layer and resumed; more than --chunk-mb",
            ),
            Param(
                "link_mbps",
                LINK_MBPS,
                400.0,
                "Mbit/s of the relay both pushers go through; 0 = no relay (loopback)",
            ),
            Param("compression", parse_compression, "gzip", "fleetci's layer compression"),
            Param("compression_level", LEVEL, 0, "fleetci's level; 0 = the codec's default"),
            Param("parallel", COUNT, 5, "fleetci's blobs in flight at once"),
            Param(
                "workdir",
                None,
                None,
                "where the temporary images and registry go (default: $TMPDIR)",
                shown="",
            ),
            JSON,
        ),
        run_registry,
    ),
)
