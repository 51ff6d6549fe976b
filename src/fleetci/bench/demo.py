"""``fleetci demo``: the cache benchmark on its defaults, told as a table of the GitHub calls it saved.

A local fleet of simulated autoscaler runners polls through ``fleetci cache serve`` in front of the
bundled GitHub emulator; :func:`run_demo` runs it and returns a :class:`DemoReport`, whose lines the
command prints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fleetci.bench.spec import FLEET, Progress, Result, fleet_spec

PARAMS = FLEET  # the flags of `fleetci demo`
OUTCOMES = ("HIT", "COALESCED", "REVALIDATED", "STALE", "MISS")  # the table's columns, in order
LATENCY_SAMPLES = 100  # fewer than `bench cache`: the demo shows the figures, it does not publish them


def intro(runners: int, calls: int, time_scale: float) -> str:
    from fleetci.bench.cache import POLL_INTERVAL_S

    return (
        f"fleetci demo: {runners} autoscaler runners, {calls} GitHub API calls each, polling every "
        f"{POLL_INTERVAL_S / 60:g} simulated minutes (time x{time_scale:g}),\n"
        "through `fleetci cache serve` in front of the bundled GitHub emulator"
    )


@dataclass(frozen=True)
class DemoReport:
    """What the demo measured: per-runner outcomes and the charged calls with and without fleetci."""

    per_runner: tuple[dict[str, int], ...]
    baseline_charged: int
    upstream_charged: int
    saved_ratio: float
    local_hit_http_p50_ms: float
    miss_overhead_p50_ms: float
    errors: int

    @classmethod
    def of(cls, result: Result) -> DemoReport:
        return cls(
            per_runner=tuple(dict(counts) for counts in result["per_runner"]),
            baseline_charged=result["baseline_charged"],
            upstream_charged=result["upstream_charged"],
            saved_ratio=result["saved_ratio"],
            local_hit_http_p50_ms=result["local_hit_http_p50_ms"],
            miss_overhead_p50_ms=result["miss_overhead_p50_ms"],
            errors=result["errors"],
        )

    def lines(self) -> list[str]:
        """The table (one row per runner) and the summary, after a blank line each."""
        rows = ["", f"{'runner':<8}{'calls':>7}" + "".join(f"{c.lower():>13}" for c in OUTCOMES)]
        for i, counts in enumerate(self.per_runner, 1):
            rows.append(
                f"{i:<8}{sum(counts.values()):>7}" + "".join(f"{counts.get(c, 0):>13}" for c in OUTCOMES)
            )
        saved = self.baseline_charged - self.upstream_charged
        return [
            *rows,
            "",
            f"charged GitHub calls without fleetci : {self.baseline_charged}",
            f"charged GitHub calls with fleetci    : {self.upstream_charged}",
            f"calls saved                          : {saved} ({self.saved_ratio:.1%})",
            f"cache hit over loopback HTTP (p50)   : {self.local_hit_http_p50_ms:.3f} ms",
            f"extra latency on a miss (p50)        : {self.miss_overhead_p50_ms:.3f} ms",
        ]


def run_demo(*, progress: Progress, **fleet: Any) -> DemoReport:
    """Run the demo fleet (the values of :data:`PARAMS` by name) and report what it saved."""
    from fleetci.bench.cache import bench_cache

    spec = fleet_spec(**fleet)
    return DemoReport.of(bench_cache(spec, progress=progress, latency_samples=LATENCY_SAMPLES))
