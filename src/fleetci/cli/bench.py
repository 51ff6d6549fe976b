"""``fleetci bench <capability>``: benchmarks that compare against a baseline in the same run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from fleetci.cli import arg_type
from fleetci.config import (
    MAX_SECONDS,
    number,
    parse_count,
    parse_ms_range,
    parse_positive_int,
    parse_seconds,
    parse_timeout,
)
from fleetci.errors import UsageError

if TYPE_CHECKING:
    from fleetci.bench.cache import FleetSpec

# Numeric flags share the settings' parsers: nan, inf and out-of-range values are one-line usage errors.
COUNT = arg_type(parse_positive_int)
COUNT_0 = arg_type(parse_count)
SECONDS = arg_type(parse_seconds)
TIMEOUT = arg_type(parse_timeout)
HOURS = arg_type(number(float, min=0, max=MAX_SECONDS / 3600, min_inclusive=False, unit="hours"))


def add_world_flags(p: argparse.ArgumentParser, runners: int, churn_every: float, repos: int) -> None:
    """The simulated fleet and world shared by ``bench cache`` and ``bench fleet``."""
    p.add_argument("--runners", type=COUNT, default=runners, help=f"simulated runners ({runners})")
    p.add_argument(
        "--latency-ms",
        type=arg_type(parse_ms_range),
        default=(100.0, 500.0),
        help="emulated GitHub latency per call, LOW-HIGH ms (100-500)",
    )
    p.add_argument(
        "--churn-every",
        type=SECONDS,
        default=churn_every,
        help=f"simulated seconds between changes in the emulated world ({churn_every:g}; 0 = static)",
    )
    p.add_argument("--repos", type=COUNT, default=repos, help=f"repositories the autoscalers watch ({repos})")


def add_fleet_flags(p: argparse.ArgumentParser, runners: int = 5) -> None:
    add_world_flags(p, runners, churn_every=600.0, repos=3)
    p.add_argument("--calls", type=COUNT, default=100, help="API calls per runner (100)")
    p.add_argument(
        "--time-scale",
        type=arg_type(number(float, min=0, min_inclusive=False)),
        default=240.0,
        help="simulated seconds per real second (240: a 2-minute poll every 0.5 s)",
    )


def fleet_spec(args: argparse.Namespace) -> FleetSpec:
    from fleetci.bench.cache import FleetSpec

    return FleetSpec(
        runners=args.runners,
        calls=args.calls,
        latency_ms=args.latency_ms,
        time_scale=args.time_scale,
        churn_every_s=args.churn_every,
        repos=args.repos,
    )


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmarks (one JSON object with --json)")
    caps = p.add_subparsers(dest="capability", metavar="CAPABILITY", parser_class=type(p))
    caps.required = True
    c = caps.add_parser("cache", help="API cache: charged calls and latency vs going straight to the API")
    add_fleet_flags(c)
    c.add_argument("--samples", type=COUNT, default=400, help="latency samples per measurement (400)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument(
        "--p2p", action="store_true", help="one proxy per runner, sharing over libp2p on 127.0.0.1"
    )
    c.set_defaults(func=cmd_bench_cache)
    f = caps.add_parser(
        "fleet", help="API cache at fleet scale: charged calls per hour for N runners, in virtual time"
    )
    add_world_flags(f, runners=500, churn_every=60.0, repos=7)
    f.add_argument("--hours", type=HOURS, default=1.0, help="virtual hours to simulate (1)")
    f.add_argument("--runners-per-node", type=COUNT, default=10, help="runners sharing one proxy (10)")
    f.add_argument("--poll", type=TIMEOUT, default=120.0, help="seconds between an autoscaler's polls (120)")
    f.add_argument(
        "--propagation-ms",
        type=arg_type(parse_ms_range),
        default=(10.0, 100.0),
        help="peer-to-peer delivery delay, LOW-HIGH ms (10-100, as bench cache --p2p measures)",
    )
    f.add_argument(
        "--baseline-runners", type=COUNT, default=20, help="runners sampled without any cache (20)"
    )
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=cmd_bench_fleet)
    i = caps.add_parser("install", help="safe installs: success under lock + index faults, overhead vs pip")
    i.add_argument("--lock-hold", type=SECONDS, default=30.0, help="seconds a child holds the apt lock (30)")
    i.add_argument("--trials", type=COUNT, default=3, help="concurrent faulted installs (3)")
    i.add_argument("--packages", type=COUNT, default=4, help="generated wheels per install (4)")
    i.add_argument("--repeats", type=COUNT, default=5, help="plain pip vs fleetci rounds, no faults (5)")
    i.add_argument(
        "--faulty-first", type=COUNT_0, default=8, help="fault every other of the first N requests (8)"
    )
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.set_defaults(func=cmd_bench_install)
    m = caps.add_parser("multiarch", help="multi-arch tests: the same pytest suite natively and under QEMU")
    m.add_argument("--arch", default="arm64", help="emulated architecture (arm64)")
    m.add_argument("--cache-dir", help="reuse rootfs archives from here (default: a fresh dir, a cold build)")
    m.add_argument("--mirror", default=None, help="Debian mirror (deb.debian.org)")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    m.set_defaults(func=cmd_bench_multiarch)
    b = caps.add_parser("build", help="distributed builds: 30-package DAG makespan vs lower bound, failover")
    b.add_argument("--workers", type=COUNT, default=4, help="worker processes (4)")
    b.add_argument("--heartbeat-ttl", type=TIMEOUT, default=2.0, help="heartbeat TTL in seconds (2)")
    b.add_argument(
        "--no-replace", action="store_true", help="do not start a replacement for the killed worker"
    )
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_bench_build)

    r = caps.add_parser(
        "registry", help="registry push: daemonless push vs skopeo copy, re-push/retag bytes, RSS"
    )
    r.add_argument(
        "--size-mb", type=COUNT, default=512, help="image size for the throughput comparison (512)"
    )
    r.add_argument(
        "--rss-size-mb", type=COUNT, default=2048, help="image size for the peak-RSS measurement (2048)"
    )
    r.add_argument("--chunk-mb", type=COUNT, default=128, help="chunked-upload threshold in MiB (128)")
    r.add_argument(
        "--resume-layer-mb",
        type=COUNT,
        default=300,
        help="layer of the push killed mid-layer and resumed; more than --chunk-mb (300)",
    )
    r.add_argument("--workdir", help="where the temporary images and registry go (default: $TMPDIR)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_bench_registry)


def emit(result: dict[str, Any], as_json: bool) -> int:
    """One JSON object (``--json``), or an aligned table without the nested parts."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return 0
    width = max(len(k) for k in result)
    for k, v in result.items():
        if not isinstance(v, (dict, list)) or k == "outcomes":
            print(f"{k:<{width}} {v}")
    return 0


def cmd_bench_cache(args: argparse.Namespace) -> int:
    from fleetci.bench.cache import bench_cache

    spec = fleet_spec(args)
    if args.samples < 10:
        raise UsageError("--samples must be at least 10")
    if args.p2p and spec.runners < 2:
        raise UsageError("--p2p needs at least 2 runners")
    result = bench_cache(
        spec,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
        latency_samples=args.samples,
        p2p=args.p2p,
    )
    return emit(result, args.json)


def cmd_bench_fleet(args: argparse.Namespace) -> int:
    from fleetci.bench.fleet import FleetSimSpec, bench_fleet

    spec = FleetSimSpec(
        runners=args.runners,
        hours=args.hours,
        runners_per_node=args.runners_per_node,
        repos=args.repos,
        poll_s=args.poll,
        churn_every_s=args.churn_every,
        latency_ms=args.latency_ms,
        propagation_ms=args.propagation_ms,
        baseline_runners=min(args.baseline_runners, args.runners),
    )
    result = bench_fleet(spec, progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True))
    return emit(result, args.json)


def cmd_bench_install(args: argparse.Namespace) -> int:
    from fleetci.bench.install import bench_install

    result = bench_install(
        lock_hold=args.lock_hold,
        trials=args.trials,
        packages=args.packages,
        repeats=args.repeats,
        faulty_first=args.faulty_first,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
    )
    return emit(result, args.json)


def cmd_bench_multiarch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleetci.bench.multiarch import bench_multiarch
    from fleetci.multiarch.arch import parse_arch
    from fleetci.multiarch.settings import DEFAULT_MIRROR

    result = bench_multiarch(
        parse_arch(args.arch),
        Path(args.cache_dir) if args.cache_dir else None,
        (args.mirror or DEFAULT_MIRROR).rstrip("/"),
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
    )
    return emit(result, args.json)


def cmd_bench_build(args: argparse.Namespace) -> int:
    from fleetci.bench.buildfarm import bench_build

    result = bench_build(
        args.workers,
        args.heartbeat_ttl,
        replace=not args.no_replace,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
    )
    return emit(result, args.json)


def cmd_bench_registry(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleetci.bench.registry import bench_registry

    if args.resume_layer_mb <= args.chunk_mb:
        raise UsageError("--resume-layer-mb must be more than --chunk-mb (a layer sent in chunks)")
    result = bench_registry(
        args.size_mb,
        args.rss_size_mb,
        args.chunk_mb,
        Path(args.workdir) if args.workdir else None,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
        resume_layer_mb=args.resume_layer_mb,
    )
    return emit(result, args.json)
