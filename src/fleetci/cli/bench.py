"""``fleetci bench <capability>``: benchmarks that compare against a baseline in the same run.

The benchmarks and their parameters are described in :mod:`fleetci.bench.spec`; this module turns each
parameter into a flag, calls the benchmark and prints its result.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from fleetci.bench.spec import BENCHMARKS, JSON, Benchmark, Param, Result
from fleetci.cli.args import arg_type


def add_params(p: argparse.ArgumentParser, params: Iterable[Param]) -> None:
    """One flag per parameter, parsed by the parameter's own parser (one-line usage errors)."""
    for param in params:
        if param.switch:
            p.add_argument(param.option, action="store_true", help=param.help_text())
        elif param.parse is None:  # text
            p.add_argument(param.option, default=param.default, help=param.help_text())
        else:
            kind = arg_type(param.parse)
            p.add_argument(param.option, type=kind, default=param.default, help=param.help_text())


def values(args: argparse.Namespace, params: Iterable[Param]) -> dict[str, Any]:
    """The parsed parameters by name (what a benchmark's ``run`` takes); ``--json`` is the CLI's own."""
    return {param.name: getattr(args, param.name) for param in params if param is not JSON}


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="benchmarks (one JSON object with --json)")
    caps = p.add_subparsers(dest="capability", metavar="CAPABILITY", parser_class=type(p))
    caps.required = True
    for bench in BENCHMARKS:
        c = caps.add_parser(bench.name, help=bench.help)
        add_params(c, bench.params)
        c.set_defaults(func=cmd_bench, benchmark=bench)


def emit(result: Result, as_json: bool) -> int:
    """One JSON object (``--json``), or an aligned table without the nested parts."""
    if as_json:
        print(json.dumps(result, sort_keys=True))
        return 0
    width = max(len(k) for k in result)
    for k, v in result.items():
        if not isinstance(v, (dict, list)) or k == "outcomes":
            print(f"{k:<{width}} {v}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    bench: Benchmark = args.benchmark
    result = bench.run(progress=progress, **values(args, bench.params))
    return emit(result, args.json)
