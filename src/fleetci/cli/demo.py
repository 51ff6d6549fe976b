"""``fleetci demo``: the main job on an embedded default — a local fleet against the bundled emulator."""

from __future__ import annotations

import argparse
import sys

from fleetci.bench.demo import PARAMS
from fleetci.cli.bench import add_params, values


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("demo", help="run a demo fleet: emulator + cache proxy + simulated runners")
    add_params(p, PARAMS)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from fleetci.bench.demo import intro, run_demo

    print(intro(args.runners, args.calls, args.time_scale), flush=True)
    report = run_demo(progress=lambda m: print(f"  ... {m}", flush=True), **values(args, PARAMS))
    print("\n".join(report.lines()))
    if report.errors:
        print(f"fleetci demo: {report.errors} calls failed", file=sys.stderr)
        return 1
    return 0
