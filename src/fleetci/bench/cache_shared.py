"""``fleetci bench cache --backend redis``: one proxy per runner on one real ``redis-server``.

Same workload and time compression as ``bench cache`` (``fleetci.bench.cache``). In one run: the fleet
through a single proxy (``single_proxy_charged``, the baseline a shared store should match), then the
same fleet with every runner on its own proxy and all proxies on Redis (``upstream_charged``), the
latency of an answer from Redis (``shared_hit_p50_ms``), the proxies' memory, and a phase in which Redis
is killed for 5 s while the fleet keeps polling (``redis_down_errors``: answers >= 400 plus calls that
never got an answer).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetci.bench.cache import (
    BENCH_PRIMARY_LIMIT,
    BENCH_SECRET,
    FleetSpec,
    _Conn,
    _p50_ms,
    _rss_mb,
    list_repo_names,
    run_fleet,
    scaled_config,
    set_emulator,
    start_emulator,
    start_proxy,
)
from fleetci.bench.common import call as _call
from fleetci.http import free_port
from fleetci.process import Service, fleetci_argv, spawn
from fleetci.testing.redis import RedisServer

SHARED_TARGETS = {
    "charged_ratio_to_single_proxy_max": 1.2,
    "shared_hit_p50_ms_max": 2.0,
    "rss_mb_per_node_max": 50.0,
    "redis_down_errors_max": 0,
}
DOWN_AFTER_S = 2.0
DOWN_FOR_S = 5.0


def _shared_proxy(emulator_url: str, cache_dir: Path, config: Path, store: RedisServer) -> Service:
    argv = fleetci_argv(
        "--config", str(config), "cache", "serve", "--upstream", emulator_url, "--port", str(free_port())
    )
    argv += ["--cache-dir", str(cache_dir)]
    env = {
        **os.environ,
        "CACHE_BACKEND": store.url,
        "CACHE_REDIS_PASSWORD": store.password,
        "FLEETCI_CACHE_SECRET": BENCH_SECRET,
        "CACHE_FLEET": "bench",
    }
    return spawn(argv, timeout=120, env=env)


def measure_shared_hits(origin_url: str, reader_url: str, repos: list[str], samples: int) -> dict[str, Any]:
    """Latency of a reader proxy's first read of what another proxy fetched (answered from Redis, or
    from the copy the origin pushed). The probe token is new to the reader at its first probe, so that
    push is not kept (a proxy keeps pushes only of scopes its clients used) and the first read asks
    Redis; from the second probe on the reader has used the token, as a runner's proxy has its job's."""
    from fleetci.testing import TOKENS

    tok = next(t for t, who in TOKENS.items() if who == "bob")  # a scope the fleet phase never used
    origin, reader = _Conn(origin_url, tok), _Conn(reader_url, tok)
    shared: list[float] = []
    hits: list[float] = []  # the same reader's second read: the same-run baseline (no Redis involved)
    try:
        for i in range(samples):
            path = f"/repos/octo-org/{repos[i % len(repos)]}?fleetci_probe={i}"
            origin.get(path)
            time.sleep(0.02)  # the origin writes Redis right after answering
            elapsed, status, outcome = reader.get(path)
            if status == 200 and outcome == "SHARED":
                shared.append(elapsed)
                time.sleep(0.02)  # the same idle gap before the baseline read: a fair comparison
                elapsed, status, outcome = reader.get(path)
                if status == 200 and outcome == "HIT":
                    hits.append(elapsed)
    finally:
        origin.close()
        reader.close()
    return {
        "shared_hit_p50_ms": _p50_ms(shared) if shared else float("nan"),
        "shared_hit_p90_ms": round(sorted(shared)[int(len(shared) * 0.9)] * 1000, 4)
        if shared
        else float("nan"),
        "shared_hit_samples": f"{len(shared)}/{samples}",
        "local_hit_http_p50_ms": _p50_ms(hits) if hits else float("nan"),
        "shared_minus_local_hit_p50_ms": round(
            (statistics.median(shared) - statistics.median(hits)) * 1000, 4
        )
        if shared and hits
        else float("nan"),
    }


def redis_outage(
    nodes: list[Service], emulator_url: str, spec: FleetSpec, repos: list[str], store: RedisServer
) -> dict[str, Any]:
    """The fleet polls while Redis is killed for DOWN_FOR_S seconds and restarted on its port."""
    states: set[str] = set()
    box: dict[str, Any] = {}

    def fleet() -> None:
        box["result"] = run_fleet([n.url for n in nodes], emulator_url, spec, repos, paced=True)

    def watch() -> None:
        with contextlib.suppress(Exception):
            states.add(str(_call("GET", f"{nodes[0].url}/_fleetci/health", timeout=5).json()["status"]))

    worker = threading.Thread(target=fleet)
    worker.start()
    time.sleep(DOWN_AFTER_S)
    store.kill()
    down_at = time.monotonic()
    while time.monotonic() - down_at < DOWN_FOR_S:
        watch()
        time.sleep(0.25)
    store.start()
    worker.join()
    time.sleep(2.5)  # the reconnect backoff is at most 2 s
    watch()
    result = box["result"]
    expected = spec.runners * spec.calls
    return {
        "redis_down_errors": result.errors + (expected - result.calls),
        "redis_down_calls": result.calls,
        "redis_down_outcomes": dict(sorted(result.outcomes.items())),
        "degraded_seen": "degraded" in states,
        "recovered": "ok" in states
        and _call("GET", f"{nodes[0].url}/_fleetci/health", timeout=5).json()["status"] == "ok",
    }


def bench_cache_shared(
    spec: FleetSpec, progress: Callable[[str], None] | None = None, latency_samples: int = 400
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    scaled_latency = (spec.latency_ms[0] / spec.time_scale, spec.latency_ms[1] / spec.time_scale)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-") as tmp, start_emulator(spec.latency_ms) as emu:
        tmp_path = Path(tmp)
        repos = list_repo_names(emu.url, "octo-org", spec.repos)
        config = scaled_config(tmp_path / "bench.yml", spec.time_scale)
        _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
        set_emulator(emu.url, latency_ms=list(scaled_latency), primary_limit=BENCH_PRIMARY_LIMIT)
        say(f"emulator at {emu.url}; {spec.runners} runners through one proxy (the baseline)")
        with start_proxy(emu.url, tmp_path / "single", config) as single:
            one = run_fleet(single.url, emu.url, spec, repos, paced=True, progress=say)
            base_rss = _rss_mb(single.proc.pid)
        _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
        set_emulator(emu.url, latency_ms=list(scaled_latency), primary_limit=BENCH_PRIMARY_LIMIT)
        store = RedisServer(tmp_path / "redis")
        store.start()  # UsageError (one line) when redis-server is not installed
        try:
            with contextlib.ExitStack() as stack:
                say(f"redis-server on {store.url}; starting {spec.runners} proxies on it")
                nodes: list[Service] = []
                with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
                    futures = [
                        pool.submit(_shared_proxy, emu.url, tmp_path / f"cache{i}", config, store)
                        for i in range(spec.runners)
                    ]
                    for f in futures:  # each started proxy is stopped, also when another fails
                        with contextlib.suppress(Exception):
                            node = f.result()
                            nodes.append(node)
                            stack.callback(node.stop)
                    for f in futures:
                        f.result()  # re-raise the first start failure
                say(f"{len(nodes)} proxies on one Redis: the same fleet, one proxy per runner")
                shared = run_fleet([n.url for n in nodes], emu.url, spec, repos, paced=True, progress=say)
                stats = [_call("GET", f"{n.url}/_fleetci/stats", timeout=10).json() for n in nodes]
                rss = [_rss_mb(n.proc.pid) for n in nodes]
                pss = [_rss_mb(n.proc.pid, "Pss:") for n in nodes]
                redis_rss = _rss_mb(store.proc.pid) if store.proc is not None else 0.0
                say("latency of answers from Redis (zero-latency emulator)")
                set_emulator(emu.url, latency_ms=[0, 0])
                lookups = int(
                    _call("GET", f"{nodes[1].url}/_fleetci/stats", timeout=10).json()["shared_lookups"]
                )
                lat = measure_shared_hits(nodes[0].url, nodes[1].url, repos, latency_samples)
                after = _call("GET", f"{nodes[1].url}/_fleetci/stats", timeout=10).json()
                # of the reader's first reads, how many asked Redis (a pushed copy had not arrived)
                lat["shared_hit_lookups"] = int(after["shared_lookups"]) - lookups
                set_emulator(emu.url, latency_ms=list(scaled_latency))
                say(f"Redis killed for {DOWN_FOR_S:g}s while the fleet polls")
                outage = redis_outage(nodes, emu.url, spec, repos, store)
        finally:
            store.kill()
    ratio = shared.charged / one.charged if one.charged else float("nan")
    return {
        "backend": "redis",
        "runners": spec.runners,
        "proxies": spec.runners,
        "calls_per_runner": spec.calls,
        "total_calls": shared.calls,
        "single_proxy_charged": one.charged,
        "upstream_charged": shared.charged,
        "charged_ratio_to_single_proxy": round(ratio, 3),
        **lat,
        "rss_mb_per_node": round(max(rss), 1),
        "rss_mb_per_node_median": round(statistics.median(rss), 1),
        "pss_mb_per_node": round(max(pss), 1),
        "base_proxy_rss_mb": round(base_rss, 1),
        "redis_rss_mb": round(redis_rss, 1),
        **outage,
        "shared_hits": sum(int(s.get("shared_hits", 0)) for s in stats),
        "shared_waits": sum(int(s.get("shared_waits", 0)) for s in stats),
        "shared_pushed": sum(int(s.get("shared_pushed", 0)) for s in stats),
        "shared_push_dropped": sum(int(s.get("shared_push_dropped", 0)) for s in stats),
        "outcomes": dict(sorted(shared.outcomes.items())),
        "single_proxy_outcomes": dict(sorted(one.outcomes.items())),
        "errors": one.errors + shared.errors,
        "time_scale": spec.time_scale,
        "latency_ms": list(spec.latency_ms),
        "wall_s": round(time.monotonic() - started, 2),
        "targets": SHARED_TARGETS,
    }
