"""``fleetci bench <capability>``: benchmarks that compare against a baseline in the same run."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from fleetci.cli import arg_type
from fleetci.config import parse_ms_range
from fleetci.errors import UsageError

if TYPE_CHECKING:
    from fleetci.cache.bench import FleetSpec


def add_fleet_flags(p: argparse.ArgumentParser, runners: int = 5) -> None:
    p.add_argument("--runners", type=int, default=runners, help=f"simulated runners ({runners})")
    p.add_argument("--calls", type=int, default=100, help="API calls per runner (100)")
    p.add_argument(
        "--latency-ms",
        type=arg_type(parse_ms_range),
        default=(100.0, 500.0),
        help="emulated GitHub latency per call, LOW-HIGH ms (100-500)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=240.0,
        help="simulated seconds per real second (240: a 2-minute poll every 0.5 s)",
    )
    p.add_argument(
        "--churn-every",
        type=float,
        default=600.0,
        help="simulated seconds between changes in the emulated world (600; 0 = static)",
    )
    p.add_argument("--repos", type=int, default=3, help="repositories the autoscalers watch (3)")


def fleet_spec(args: argparse.Namespace) -> FleetSpec:
    from fleetci.cache.bench import FleetSpec

    if args.runners < 1 or args.calls < 1 or args.repos < 1:
        raise UsageError("--runners, --calls and --repos must be at least 1")
    if args.time_scale <= 0:
        raise UsageError("--time-scale must be positive")
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
    c.add_argument("--samples", type=int, default=400, help="latency samples per measurement (400)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_bench_cache)


def cmd_bench_cache(args: argparse.Namespace) -> int:
    from fleetci.cache.bench import bench_cache

    spec = fleet_spec(args)
    if args.samples < 10:
        raise UsageError("--samples must be at least 10")
    result = bench_cache(
        spec,
        progress=lambda m: print(f"bench: {m}", file=sys.stderr, flush=True),
        latency_samples=args.samples,
    )
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            if k not in ("per_runner", "targets"):
                print(f"{k:<26} {v}")
    return 0
