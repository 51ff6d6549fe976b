"""``fleetci demo``: the main job on an embedded default — a local fleet against the bundled emulator."""

from __future__ import annotations

import argparse
import sys

from fleetci.cli.bench import add_fleet_flags, fleet_spec


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run a demo fleet: emulator + cache proxy + simulated runners")
    add_fleet_flags(p)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetci.bench.cache import POLL_INTERVAL_S, bench_cache

    spec = fleet_spec(args)
    print(
        f"fleetci demo: {args.runners} autoscaler runners, {args.calls} GitHub API calls each, polling every "
        f"{POLL_INTERVAL_S / 60:g} simulated minutes (time x{args.time_scale:g}),\n"
        "through `fleetci cache serve` in front of the bundled GitHub emulator",
        flush=True,
    )
    r = bench_cache(spec, progress=lambda m: print(f"  ... {m}", flush=True), latency_samples=100)
    cols = ("HIT", "COALESCED", "REVALIDATED", "STALE", "MISS")
    print()
    print(f"{'runner':<8}{'calls':>7}" + "".join(f"{c.lower():>13}" for c in cols))
    for i, counts in enumerate(r["per_runner"], 1):
        print(f"{i:<8}{sum(counts.values()):>7}" + "".join(f"{counts.get(c, 0):>13}" for c in cols))
    print()
    saved = r["baseline_charged"] - r["upstream_charged"]
    print(f"charged GitHub calls without fleetci : {r['baseline_charged']}")
    print(f"charged GitHub calls with fleetci    : {r['upstream_charged']}")
    print(f"calls saved                          : {saved} ({r['saved_ratio']:.1%})")
    print(f"cache hit over loopback HTTP (p50)   : {r['local_hit_http_p50_ms']:.3f} ms")
    print(f"extra latency on a miss (p50)        : {r['miss_overhead_p50_ms']:.3f} ms")
    if r["errors"]:
        print(f"fleetci demo: {r['errors']} calls failed", file=sys.stderr)
        return 1
    return 0
