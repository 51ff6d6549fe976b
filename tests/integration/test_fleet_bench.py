"""``fleetci bench fleet``: the virtual-time fleet (real engines, the emulator's charging rules)."""

from __future__ import annotations

import json

from support import run_fleetci


def test_bench_fleet_cli_prints_the_issue_keys() -> None:
    proc = run_fleetci(
        "bench",
        "fleet",
        "--runners",
        "30",
        "--hours",
        "0.2",
        "--baseline-runners",
        "5",
        "--json",
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["runners"] == 30 and result["nodes"] == 3
    assert 0 < result["charged_per_hour"] < result["charged_per_hour_isolated"]
    assert result["charged_per_hour_isolated"] < result["baseline_charged_per_hour"]
    assert result["runners_supported_per_5000h"] > result["baseline_runners_supported_per_5000h"]
    assert "shared: 30 runners" in proc.stderr  # progress on stderr, the JSON alone on stdout
