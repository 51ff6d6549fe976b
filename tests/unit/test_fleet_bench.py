"""``fleetci bench fleet``: the virtual-time fleet (real engines, the emulator's charging rules)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from fleetci.bench.fleet import FleetSimSpec, VirtualTimeLoop, bench_fleet, simulate
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
        (["--jobs-per-hour", "-1"], "--jobs-per-hour"),
        (["--jobs-per-hour", "nan"], "--jobs-per-hour"),
        (["--queue-wait-s", "120-10"], "--queue-wait-s"),
        (["--job-duration-s", "long"], "--job-duration-s"),
        (["--workers", "0"], "--workers"),
        (["--isolated-runners", "0"], "--isolated-runners"),
        (["--one-webhook-per-change"], "--webhooks"),
    ],
)
def test_bench_fleet_bad_input(args: list[str], needle: str, fleetci: RunCli) -> None:
    assert needle in one_line_error(fleetci("bench", "fleet", *args))


def test_webhooks_cut_staleness_and_lost_ones_are_bounded_by_the_ttl(tmp_path: Path) -> None:
    """Issue 17: the same fleet and world with and without webhooks (some lost): reads of queued lists
    are current far more often with them, and a lost delivery costs at most about the 60 s window."""
    spec = FleetSimSpec(
        runners=30,
        hours=0.5,
        runners_per_node=10,
        repos=3,
        baseline_runners=4,
        webhooks=True,
        webhook_loss=0.2,
        jobs_per_hour=120,
    )
    hooked = simulate(spec, "p2p", tmp_path / "on", lambda _m: None)
    plain = simulate(replace(spec, webhooks=False), "p2p", tmp_path / "off", lambda _m: None)
    assert hooked.webhooks_sent > 0 and 0 < hooked.webhooks_lost < hooked.webhooks_sent
    assert plain.webhooks_sent == 0
    on, off = hooked.staleness, plain.staleness
    assert on["reads"] > 100 and on["unmatched_reads"] == 0 and off["unmatched_reads"] == 0
    assert int(on["stale_reads"]) * 3 < int(off["stale_reads"])
    # every delivery of a change lost: stale until the list's TTL (queue class 60 s, runs 120 s) at most
    by_list = on["staleness_by_list"]
    assert float(by_list["queued_runs"]["staleness_max_s"]) <= 60 + 2
    assert float(by_list["runs"]["staleness_max_s"]) <= 120 + 2
    assert int(by_list["queued_runs"]["reads"]) > 50 and int(by_list["runs"]["reads"]) > 50


def test_jobs_change_the_world_at_the_asked_rate_and_cost_calls_with_it(tmp_path: Path) -> None:
    """The job lifecycle: Poisson arrivals, each queued -> in_progress -> completed (three changes);
    the same arrivals whatever the caches do; more jobs, more list states read, more charged calls;
    no jobs, nothing is ever stale."""
    base = FleetSimSpec(
        runners=10, hours=0.5, runners_per_node=10, repos=3, webhooks=True, queue_wait_s=(5.0, 30.0)
    )
    quiet = simulate(replace(base, jobs_per_hour=0), "p2p", tmp_path / "q", lambda _m: None)
    few = simulate(replace(base, jobs_per_hour=60), "p2p", tmp_path / "f", lambda _m: None)
    many = simulate(replace(base, jobs_per_hour=600), "p2p", tmp_path / "m", lambda _m: None)
    again = simulate(replace(base, jobs_per_hour=600), "isolated", tmp_path / "i", lambda _m: None)
    assert quiet.jobs_queued == quiet.changes == quiet.webhooks_sent == 0
    assert quiet.staleness["stale_reads"] == 0 and quiet.staleness["unmatched_reads"] == 0
    assert 10 <= few.jobs_queued <= 55 and 200 <= many.jobs_queued <= 400  # Poisson: 30 and 300 expected
    assert many.jobs_queued == again.jobs_queued  # the world does not depend on the caches
    # a 5-30 s wait and a 3-20 min run: almost every job has started, most have finished
    assert 2 * many.jobs_queued < many.changes <= 3 * many.jobs_queued
    # GitHub sends workflow_run plus one workflow_job per job (1-3 jobs a run) for every change
    assert 2 * many.changes <= many.webhooks_sent <= 4 * many.changes
    assert quiet.charged < few.charged < many.charged
    assert many.staleness["unmatched_reads"] == 0


def test_bench_fleet_samples_the_isolated_fleet_and_scales_it(tmp_path: Path) -> None:
    spec = FleetSimSpec(
        runners=40, hours=0.2, runners_per_node=10, repos=3, baseline_runners=4, isolated_runners=20
    )
    got = bench_fleet(spec, workers=1)
    assert got["isolated_sampled_runners"] == 20 and got["workers"] == 1
    sampled = got["outcomes_isolated"].get("MISS", 0)  # 20 runners' misses, charged one each
    assert got["charged_per_hour_isolated"] == round(sampled * 40 / 20 / spec.hours, 1)
    assert got["jobs_queued"] > 0 and got["changes"] > got["jobs_queued"]


def test_a_lost_delivery_costs_at_most_the_ttl_even_when_a_peer_copy_races_a_304(tmp_path: Path) -> None:
    """Found at 500 runners with one delivery per change: a 304 for the body a proxy asked about was
    applied to another body a peer had put in its store meanwhile, so the old body went on under the
    current ETag and every later 304 kept it fresh (reads 200+ s stale on a 120 s list). The 304 now
    refreshes only the body it was for."""
    spec = FleetSimSpec(
        runners=500, hours=0.08, webhooks=True, webhook_loss=0.1, webhook_per_job=False, baseline_runners=1
    )
    got = simulate(spec, "p2p", tmp_path, lambda _m: None)
    by_list = got.staleness["staleness_by_list"]
    assert got.staleness["unmatched_reads"] == 0 and int(by_list["runs"]["reads"]) > 100
    assert float(by_list["queued_runs"]["staleness_max_s"]) <= 60 + 2
    assert float(by_list["runs"]["staleness_max_s"]) <= 120 + 2
