"""``fleetci bench fleet``: the virtual-time fleet (real engines, the emulator's charging rules)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fleetci.bench.fleet import FleetSimSpec, VirtualTimeLoop, simulate
from support import RunCli, one_line_error


def test_virtual_time_keeps_order_and_costs_no_wall_time() -> None:
    loop = VirtualTimeLoop(epoch=1_000_000.0)
    seen: list[tuple[str, float]] = []

    async def sleeper(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        seen.append((name, loop.time()))

    async def main() -> None:
        await asyncio.gather(sleeper("hour", 3600), sleeper("minute", 60), sleeper("second", 1))
        await asyncio.wait_for(asyncio.sleep(10), timeout=20)  # wait_for's timer is virtual too

    t0 = time.monotonic()
    loop.run_until_complete(main())
    loop.close()
    assert [n for n, _ in seen] == ["second", "minute", "hour"]
    assert [round(t) for _, t in seen] == [1, 60, 3600]
    assert round(loop.wall() - 1_000_000.0) == 3610
    assert time.monotonic() - t0 < 5  # an hour and ten seconds of virtual time


def test_fleet_modes_rank_and_charges_match_misses(tmp_path: Path) -> None:
    """Charged calls are counted by the emulator, misses by the engines: the two must agree, and sharing
    between nodes must beat isolated caches, which must beat no cache."""
    spec = FleetSimSpec(runners=40, hours=0.25, runners_per_node=10, repos=4, baseline_runners=8)
    runs = {mode: simulate(spec, mode, tmp_path, lambda _m: None) for mode in ("p2p", "isolated", "direct")}
    for mode in ("p2p", "isolated"):
        outcomes = runs[mode].outcomes
        assert runs[mode].charged == outcomes.get("MISS", 0), (mode, outcomes)
    assert runs["p2p"].outcomes.get("PEER", 0) > 0
    assert "PEER" not in runs["isolated"].outcomes
    per_runner = {
        m: r.charged / (spec.baseline_runners if m == "direct" else spec.runners) for m, r in runs.items()
    }
    assert per_runner["p2p"] < per_runner["isolated"] < per_runner["direct"]
    assert runs["direct"].charged == runs["direct"].calls  # no conditional requests: every call pays
    # every runner polls five calls every ~2 minutes for the whole window
    expected = spec.runners * 5 * spec.hours * 3600 / spec.poll_s
    assert 0.85 * expected <= runs["p2p"].calls <= 1.1 * expected


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--runners", "0"], "--runners"),
        (["--hours", "0"], "--hours"),
        (["--latency-ms", "fast"], "--latency-ms"),
        (["--propagation-ms", "9-1"], "--propagation-ms"),
        (["--bogus"], "unrecognized arguments"),
        (["--webhooks", "--webhook-loss", "1.5"], "--webhook-loss"),
        (["--webhook-loss", "0.1"], "--webhooks"),
        (["--webhooks", "--webhook-delay-ms", "slow"], "--webhook-delay-ms"),
    ],
)
def test_bench_fleet_bad_input(args: list[str], needle: str, fleetci: RunCli) -> None:
    assert needle in one_line_error(fleetci("bench", "fleet", *args))


def test_webhooks_cut_staleness_and_lost_ones_are_bounded_by_the_ttl(tmp_path: Path) -> None:
    """Issue 17: the same fleet and world with and without webhooks (some lost): reads of queued lists
    are current far more often with them, and a lost delivery costs at most about the 60 s window."""
    from dataclasses import replace

    spec = FleetSimSpec(
        runners=30,
        hours=0.5,
        runners_per_node=10,
        repos=3,
        baseline_runners=4,
        webhooks=True,
        webhook_loss=0.2,
    )
    hooked = simulate(spec, "p2p", tmp_path / "on", lambda _m: None)
    plain = simulate(replace(spec, webhooks=False), "p2p", tmp_path / "off", lambda _m: None)
    assert hooked.webhooks_sent > 0 and 0 < hooked.webhooks_lost < hooked.webhooks_sent
    assert plain.webhooks_sent == 0
    on, off = hooked.staleness, plain.staleness
    assert on["reads"] > 100 and on["unmatched_reads"] == 0 and off["unmatched_reads"] == 0
    assert int(on["stale_reads"]) * 3 < int(off["stale_reads"])
    assert float(on["staleness_max_s"]) <= 60 + 2  # a lost delivery: the queue class's TTL, plus delivery
