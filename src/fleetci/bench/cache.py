"""``fleetci bench cache`` and the demo fleet: simulated autoscaler runners against the emulator.

Charged calls are counted by the emulator (the truth, as GitHub would count them). Time is compressed:
runners poll every 2 simulated minutes, and the proxy's fresh windows, the emulator's latency and the
world's churn are scaled by the same factor, so a 40-minute fleet session runs in seconds without
changing which calls hit, revalidate or miss.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from fleetci.bench.common import call as _call
from fleetci.cache.graphql import DEFAULT_RULES as GRAPHQL_RULES
from fleetci.cache.policy import DEFAULT_RULES
from fleetci.errors import FleetciError
from fleetci.http import client, error_message
from fleetci.process import Service, fleetci_argv, running
from fleetci.wait import wait_until

POLL_INTERVAL_S = 120.0  # seed: autoscalers check every 2 minutes
CALLS_PER_CYCLE = 5
BENCH_PRIMARY_LIMIT = 10_000_000
BENCH_SECRET = "fleetci-bench-" + os.urandom(8).hex()


@dataclass(frozen=True)
class FleetSpec:
    runners: int = 5
    calls: int = 100
    latency_ms: tuple[float, float] = (100.0, 500.0)
    time_scale: float = 240.0
    churn_every_s: float = 600.0  # simulated seconds between changes in the world (new/finished runs)
    repos: int = 3
    seed: int = 1


@dataclass
class FleetResult:
    calls: int
    charged: int
    outcomes: Counter[str] = field(default_factory=Counter)
    per_runner: list[Counter[str]] = field(default_factory=list)
    churn_events: int = 0
    errors: int = 0
    wall_s: float = 0.0


def workload(org: str, repos: list[str], cycle: int, runner: int) -> list[str]:
    """One autoscaler poll: queue depth, runner list, workflow runs, repository list, repository metadata."""
    repo = repos[(cycle + runner) % len(repos)]
    return [
        f"/repos/{org}/{repo}/actions/runs?status=queued&per_page=100",
        f"/orgs/{org}/actions/runners?per_page=100",
        f"/repos/{org}/{repo}/actions/runs?per_page=30",
        f"/orgs/{org}/repos?per_page=100",
        f"/repos/{org}/{repo}",
    ]


def fleet_token() -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == "fleet-bot")


def charged_total(emulator_url: str, login: str = "fleet-bot") -> int:
    data = _call("GET", f"{emulator_url}/_emulator/stats", timeout=10).json()
    return int(data["charged"].get(login, 0))


def set_emulator(emulator_url: str, **config: Any) -> None:
    _call("POST", f"{emulator_url}/_emulator/config", json=config, timeout=10).raise_for_status()


def list_repo_names(emulator_url: str, org: str, n: int) -> list[str]:
    r = _call(
        "GET",
        f"{emulator_url}/orgs/{org}/repos?per_page=100",
        headers={"Authorization": f"token {fleet_token()}"},
        timeout=30,
    )
    r.raise_for_status()
    return [x["name"] for x in r.json()][:n]


def run_fleet(
    target_url: str | list[str],
    emulator_url: str,
    spec: FleetSpec,
    repos: list[str],
    org: str = "octo-org",
    paced: bool = True,
    progress: Callable[[str], None] | None = None,
) -> FleetResult:
    """Run ``spec.runners`` threads of ``spec.calls`` calls each; runner i uses ``target_url[i % n]``."""
    targets = [target_url] if isinstance(target_url, str) else target_url
    token = fleet_token()
    interval = POLL_INTERVAL_S / spec.time_scale
    cycles = max(1, spec.calls // CALLS_PER_CYCLE)
    before = charged_total(emulator_url)
    result = FleetResult(calls=0, charged=0, per_runner=[Counter() for _ in range(spec.runners)])
    lock = threading.Lock()
    stop_churn = threading.Event()
    start = time.monotonic()

    def churn() -> None:
        every = spec.churn_every_s / spec.time_scale
        while not stop_churn.wait(every):
            _call("POST", f"{emulator_url}/_emulator/mutate", json={"n": 1}, timeout=10)
            result.churn_events += 1

    def runner(i: int) -> None:
        rng = random.Random(spec.seed * 1000 + i)
        offset = rng.uniform(0, interval) if paced else 0.0
        local: Counter[str] = Counter()
        errors = 0
        made = 0
        with client(
            targets[i % len(targets)],
            timeout=60,
            headers={"Authorization": f"token {token}", "Accept": "application/vnd.github+json"},
        ) as c:
            for cycle in range(cycles):
                if paced:
                    due = start + offset + cycle * interval * rng.uniform(0.95, 1.05)
                    time.sleep(max(0.0, due - time.monotonic()))
                for path in workload(org, repos, cycle, i):
                    if made >= spec.calls:
                        break
                    r = c.get(path)
                    made += 1
                    local[r.headers.get("X-Fleetci-Cache", "DIRECT")] += 1
                    if r.status_code >= 400:
                        errors += 1
        with lock:
            result.per_runner[i] = local
            result.outcomes.update(local)
            result.calls += made
            result.errors += errors

    churner = threading.Thread(target=churn, daemon=True) if paced and spec.churn_every_s > 0 else None
    if churner:
        churner.start()
    threads = [threading.Thread(target=runner, args=(i,)) for i in range(spec.runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop_churn.set()
    if churner:
        churner.join()
    result.charged = charged_total(emulator_url) - before
    result.wall_s = time.monotonic() - start
    if progress:
        progress(
            f"{spec.runners} runners x {spec.calls} calls -> {result.charged} charged ({result.wall_s:.1f}s)"
        )
    return result


def scaled_config(
    path: Path, scale: float, default_ttl: float = 300.0, graphql_default_ttl: float = 60.0
) -> Path:
    """The proxy's fresh windows (REST and GraphQL), compressed by the same factor as the runners' clock."""

    def scaled(rules: Any) -> list[dict[str, Any]]:
        return [{"pattern": r.pattern, "seconds": r.seconds / scale, "name": r.name} for r in rules]

    cache = {
        "ttl": scaled(DEFAULT_RULES),
        "default_ttl": default_ttl / scale,
        "graphql_ttl": scaled(GRAPHQL_RULES),
        "graphql_default_ttl": graphql_default_ttl / scale,
    }
    path.write_text(yaml.safe_dump({"cache": cache}))
    return path


def _p50_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 4)


class _Conn:
    """Keep-alive HTTP/1.1 client with the least client-side overhead, so timings show the server."""

    def __init__(self, url: str, token: str) -> None:
        u = urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=30)
        # Real clients (requests, gh, octokit) accept gzip; so does the proxy's upstream client.
        self.headers = {
            "Authorization": f"token {token}",
            "Accept": "application/vnd.github+json",
            "Accept-Encoding": "gzip",
        }

    def get(self, path: str, extra: dict[str, str] | None = None) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers={**self.headers, **(extra or {})})
        resp = self.conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - t0
        return elapsed, resp.status, resp.getheader("X-Fleetci-Cache") or ""

    def close(self) -> None:
        self.conn.close()


def measure_misses(
    proxy_url: str,
    emulator_url: str,
    repos: list[str],
    token: str,
    samples: int,
    plain_url: str | None = None,
    tag: str = "",
    org: str = "octo-org",
) -> dict[str, Any]:
    """Misses of distinct URLs through ``proxy_url``, interleaved with the same URL straight to the
    emulator and (``plain_url``) through a proxy without P2P, so drift on the machine affects every side
    alike. The overhead is the median of the per-URL differences: vs the plain proxy when there is one
    (what P2P adds to a miss, issue 16), else vs going direct (what the proxy adds)."""
    conns = [_Conn(emulator_url, token), _Conn(proxy_url, token)]
    if plain_url is not None:
        conns.append(_Conn(plain_url, token))
    direct_s: list[float] = []
    miss_s: list[float] = []
    plain_s: list[float] = []
    try:
        for i in range(samples):
            repo = repos[i % len(repos)]
            path = f"/repos/{org}/{repo}/actions/runs?per_page={1 + i % 100}&page={1 + i // 100}{tag}"
            answers = [c.get(path) for c in conns]
            if all(a[1] == 200 for a in answers) and all(a[2] == "MISS" for a in answers[1:]):
                direct_s.append(answers[0][0])
                miss_s.append(answers[1][0])
                if plain_url is not None:
                    plain_s.append(answers[2][0])
    finally:
        for c in conns:
            c.close()
    base = plain_s if plain_url is not None else direct_s
    pairs = sorted(m - b for m, b in zip(miss_s, base, strict=True))
    return {
        "direct_p50_ms": _p50_ms(direct_s) if direct_s else float("nan"),
        "miss_via_proxy_p50_ms": _p50_ms(miss_s) if miss_s else float("nan"),
        "miss_via_plain_proxy_p50_ms": _p50_ms(plain_s) if plain_s else float("nan"),
        "miss_overhead_p50_ms": round(statistics.median(pairs) * 1000, 4) if pairs else float("nan"),
        "latency_samples": len(pairs),
    }


def measure_latencies(
    proxy_url: str,
    emulator_url: str,
    cache_dir: Path,
    repos: list[str],
    samples: int = 400,
    org: str = "octo-org",
    plain_url: str | None = None,
) -> dict[str, Any]:
    """Hit over HTTP, hit in-process, direct, and miss overhead, with a zero-latency emulator."""
    from fleetci.cache import GitHubAPICache
    from fleetci.cache.settings import cache_settings
    from fleetci.testing import TOKENS

    set_emulator(emulator_url, latency_ms=[0, 0], error_rate=0.0, drop_rate=0.0)
    tok = next(t for t, who in TOKENS.items() if who == "alice")  # a scope the fleet phase left cold
    misses = measure_misses(proxy_url, emulator_url, repos, tok, samples, plain_url, org=org)
    via = _Conn(proxy_url, tok)
    try:
        hit_path = f"/repos/{org}/{repos[0]}"
        via.get(hit_path)
        hits = [via.get(hit_path)[0] for _ in range(samples * 2)]
        cache = GitHubAPICache(
            cache_settings({"upstream": emulator_url, "cache_dir": str(cache_dir)}, {}, {})
        )
        auth = f"token {tok}"

        def stored() -> bool:
            # The proxy writes SQLite just after answering, and a slow machine may have let the (time-
            # scaled) fresh window pass during the HTTP samples: refresh it and wait for the write.
            if cache.get(hit_path, auth, {"Accept": "application/vnd.github+json"}) is not None:
                return True
            via.get(hit_path)
            return False

        wait_until(stored, timeout=10, what=f"the proxy to store {hit_path} in {cache_dir}")
    finally:
        via.close()
    inproc = []
    for _ in range(samples * 5):
        t0 = time.perf_counter()
        cache.get(hit_path, auth, {"Accept": "application/vnd.github+json"})
        inproc.append(time.perf_counter() - t0)
    cache.close()
    return {
        "local_hit_http_p50_ms": _p50_ms(hits),
        "local_hit_inproc_p50_ms": _p50_ms(inproc),
        **misses,
    }


def measure_memory(proxy: Service, repos: list[str], org: str = "octo-org") -> dict[str, Any]:
    """RSS of the proxy with its memory tier full (issue 16: <= 50 MB without P2P): distinct misses
    until the tier holds 90% of its budget, each read twice so it is hot."""
    from fleetci.testing import TOKENS

    tok = next(t for t, who in TOKENS.items() if who == "alice")
    conn = _Conn(proxy.url, tok)

    def tier() -> dict[str, int]:
        backend: dict[str, int] = _call("GET", f"{proxy.url}/_fleetci/dashboard.json", timeout=10).json()[
            "backend"
        ]
        return backend

    try:
        for i in range(3000):
            repo = repos[i % len(repos)]
            path = f"/repos/{org}/{repo}/actions/runs?per_page={1 + i % 100}&page={1 + i // 100}"
            conn.get(path)
            conn.get(path)
            if i % 25 == 24:
                t = tier()
                if t["memory_tier_bytes"] >= 0.9 * t["memory_tier_max_bytes"]:
                    break
    finally:
        conn.close()
    t = tier()
    return {
        "rss_mb": round(_rss_mb(proxy.proc.pid), 1),
        "pss_mb": round(_rss_mb(proxy.proc.pid, "Pss:"), 1),
        "memory_tier_bytes": t["memory_tier_bytes"],
        "memory_tier_max_bytes": t["memory_tier_max_bytes"],
    }


TARGETS = {
    "upstream_charged_max_5_runners": 25,
    "local_hit_http_p50_ms_max": 1.0,
    "local_hit_inproc_p50_ms_max": 0.05,
    "miss_overhead_p50_ms_max": 2.0,
}


P2P_TARGETS = {
    "peer_hit_p50_ms_max": 5.0,
    "propagation_p99_ms_max": 1000.0,
    "rss_mb_per_node_max": 100.0,
    # issue 16: what P2P adds to a miss nobody else fetches, over a proxy without P2P (same run)
    "miss_overhead_p50_ms_max": 5.0,
    # issue 16 item 5: the same in the token every node uses, where each miss asks the key's owner
    "miss_overhead_fleet_token_p50_ms_max": 5.0,
}


FLEET_COUNTERS = (
    "misses",
    "revalidations",
    "peer_hits",
    "leases",
    "fetched_at_once",
    "claim_waits",
    "claim_windows",
)


def wait_for_mesh(nodes: list[Service], timeout: float = 60.0) -> None:
    """Until an entry announced by the first node comes back from every other node."""
    want = {_call("GET", f"{n.url}/_fleetci/peers", timeout=10).json()["peer_id"] for n in nodes[1:]}

    def formed() -> bool:
        r = _call("POST", f"{nodes[0].url}/_fleetci/p2p/probe", timeout=30).json()
        return want <= set(r.get("shared_with", []))

    wait_until(formed, timeout=timeout, what="the benchmark fleet to form a mesh", interval=0.5)


def _rss_mb(pid: int, field: str = "Rss:") -> float:
    """Rss (every resident page) or Pss (shared pages split between the processes sharing them)."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


def measure_peers(
    nodes: list[Service], repos: list[str], samples: int = 200, org: str = "octo-org"
) -> dict[str, Any]:
    """Peer hit latency on node 1 for entries node 0 fetched; propagation from node 0 to every node."""
    from fleetci.cache.policy import cache_key, normalize_target, scope_of
    from fleetci.testing import TOKENS

    tok = next(t for t, who in TOKENS.items() if who == "bob")  # a scope the fleet phase never used
    origin, reader = _Conn(nodes[0].url, tok), _Conn(nodes[1].url, tok)
    sent: dict[str, float] = {}
    peer_s: list[float] = []
    try:
        for i in range(samples):
            path = f"/repos/{org}/{repos[i % len(repos)]}?fleetci_probe={i}"
            _, status, outcome = origin.get(path)
            sent[
                cache_key(
                    scope_of(f"token {tok}"),
                    normalize_target(path),
                    {"accept": "application/vnd.github+json"},
                )
            ] = time.time()
            time.sleep(0.05)  # let the announcement travel; propagation is measured separately below
            elapsed, status, outcome = reader.get(path)
            if status == 200 and outcome == "PEER":
                peer_s.append(elapsed)
    finally:
        origin.close()
        reader.close()
    delays: list[float] = []
    for n in nodes[1:]:
        receipts = _call("GET", f"{n.url}/_fleetci/peers", params={"receipts": "1"}, timeout=10).json()[
            "receipts"
        ]
        delays += [max(0.0, receipts[k] - t) for k, t in sent.items() if k in receipts]
    delays.sort()
    peers = [len(_call("GET", f"{n.url}/_fleetci/peers", timeout=10).json()["connected"]) for n in nodes]
    return {
        "peer_hit_p50_ms": _p50_ms(peer_s) if peer_s else float("nan"),
        "peer_samples": len(peer_s),
        "propagation_p50_ms": round(statistics.median(delays) * 1000, 2) if delays else float("nan"),
        "propagation_p99_ms": round(delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000, 2)
        if delays
        else float("nan"),
        "propagation_received": f"{len(delays)}/{len(sent) * (len(nodes) - 1)}",
        "connected_peers": min(peers),
        "rss_mb_per_node": round(max(_rss_mb(n.proc.pid) for n in nodes), 1),
        "pss_mb_per_node": round(max(_rss_mb(n.proc.pid, "Pss:") for n in nodes), 1),
    }


def start_emulator(latency_ms: tuple[float, float]) -> Any:
    return running(
        fleetci_argv(
            "emulate", "github", "--port", "0", "--latency-ms", f"{latency_ms[0]:g}-{latency_ms[1]:g}"
        )
    )


def start_proxy(emulator_url: str, cache_dir: Path, config: Path, p2p: list[str] | None = None) -> Any:
    """A real ``fleetci cache serve``; with ``p2p`` (extra flags: bootstrap peers) a libp2p fleet node."""
    from fleetci.http import free_port

    argv = fleetci_argv(
        "--config",
        str(config),
        "cache",
        "serve",
        "--upstream",
        emulator_url,
        "--port",
        str(free_port()),
        "--cache-dir",
        str(cache_dir),
    )
    if p2p is None:
        return running(argv)
    argv += ["--enable-p2p", "--p2p-host", "127.0.0.1", "--listen-port", str(free_port()), *p2p]
    return running(argv, env={**os.environ, "FLEETCI_CACHE_SECRET": BENCH_SECRET, "CACHE_FLEET": "bench"})


def bench_cache(
    spec: FleetSpec,
    progress: Callable[[str], None] | None = None,
    latency_samples: int = 400,
    p2p: bool = False,
) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    scaled_latency = (spec.latency_ms[0] / spec.time_scale, spec.latency_ms[1] / spec.time_scale)
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-") as tmp:
        tmp_path = Path(tmp)
        emu: Service
        with start_emulator(spec.latency_ms) as emu:
            repos = list_repo_names(emu.url, "octo-org", spec.repos)
            say(f"emulator at {emu.url}; baseline: {spec.runners} runners straight to the API")
            # Count every call: at 50 runners the baseline alone would exceed one token's 5,000/h.
            _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
            set_emulator(emu.url, latency_ms=list(scaled_latency), primary_limit=BENCH_PRIMARY_LIMIT)
            baseline = run_fleet(emu.url, emu.url, spec, repos, paced=False, progress=say)
            _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
            config = scaled_config(tmp_path / "bench.yml", spec.time_scale)
            with contextlib.ExitStack() as stack:
                proxy = stack.enter_context(
                    start_proxy(emu.url, tmp_path / "cache", config, [] if p2p else None)
                )
                nodes = [proxy]
                if p2p:
                    boot = _call("GET", f"{proxy.url}/_fleetci/peers", timeout=10).json()["addrs"][0]
                    for i in range(1, spec.runners):
                        nodes.append(
                            stack.enter_context(
                                start_proxy(
                                    emu.url, tmp_path / f"cache{i}", config, ["--bootstrap-peers", boot]
                                )
                            )
                        )
                    say(f"{len(nodes)} proxies on libp2p; waiting for the mesh")
                    wait_for_mesh(nodes)
                say(f"proxy at {proxy.url}; the same fleet through the cache")
                cached = run_fleet([n.url for n in nodes], emu.url, spec, repos, paced=True, progress=say)
                stats = _call("GET", f"{proxy.url}/_fleetci/stats", timeout=10).json()
                # Where the fleet's charged calls came from (misses, leases, waits), summed over the nodes.
                node_stats = [_call("GET", f"{n.url}/_fleetci/stats", timeout=10).json() for n in nodes]
                fleet_counters = {k: sum(int(ns.get(k, 0)) for ns in node_stats) for k in FLEET_COUNTERS}
                say("latency: direct vs proxy miss vs proxy hit (zero-latency emulator)")
                plain_url = None
                if p2p:  # the same misses through a proxy without P2P: what P2P adds (issue 16)
                    plain_url = stack.enter_context(start_proxy(emu.url, tmp_path / "plain", config)).url
                lat = measure_latencies(
                    proxy.url, emu.url, tmp_path / "cache", repos, latency_samples, plain_url=plain_url
                )
                if p2p and plain_url is not None:
                    say("misses in the fleet's own token (every node uses it: leases)")
                    shared = measure_misses(
                        proxy.url, emu.url, repos, fleet_token(), latency_samples, plain_url, tag="&fleet=1"
                    )
                    lat["miss_overhead_fleet_token_p50_ms"] = shared["miss_overhead_p50_ms"]
                    lat["fleet_token_samples"] = shared["latency_samples"]
                    lat["fleet_counters"] = fleet_counters
                lat.update(measure_memory(proxy, repos))
                if p2p:
                    say("peer hits and propagation")
                    lat.update(measure_peers(nodes, repos, samples=min(latency_samples, 200)))
    simulated_min = (max(1, spec.calls // CALLS_PER_CYCLE) * POLL_INTERVAL_S) / 60
    out: dict[str, Any] = {
        "runners": spec.runners,
        "calls_per_runner": spec.calls,
        "total_calls": cached.calls,
        "baseline_charged": baseline.charged,
        "upstream_charged": cached.charged,
        "saved_ratio": round(1 - cached.charged / baseline.charged, 4) if baseline.charged else 0.0,
        **{
            k: lat[k]
            for k in (
                "local_hit_http_p50_ms",
                "local_hit_inproc_p50_ms",
                "direct_p50_ms",
                "miss_overhead_p50_ms",
                "miss_via_proxy_p50_ms",
                "latency_samples",
            )
        },
        "rss_mb": lat["rss_mb"],  # the (first) proxy, memory tier full
        "pss_mb": lat["pss_mb"],
        "memory_tier_bytes": lat["memory_tier_bytes"],
        "memory_tier_max_bytes": lat["memory_tier_max_bytes"],
        "outcomes": dict(sorted(cached.outcomes.items())),
        "per_runner": [dict(sorted(c.items())) for c in cached.per_runner],
        "hit_rate": stats.get("hit_rate"),
        "errors": baseline.errors + cached.errors,
        "churn_events": cached.churn_events,
        "simulated_minutes": simulated_min,
        "time_scale": spec.time_scale,
        "latency_ms": list(spec.latency_ms),
        "wall_s": round(baseline.wall_s + cached.wall_s, 2),
        "targets": {**TARGETS, **(P2P_TARGETS if p2p else {"rss_mb_max": 50.0})},
        # p2p: vs a proxy without P2P in the same run (what P2P adds); else vs going straight to the API
        "miss_overhead_vs": "plain_proxy" if p2p else "direct",
    }
    if p2p:
        for k in (
            "miss_via_plain_proxy_p50_ms",
            "miss_overhead_fleet_token_p50_ms",
            "fleet_token_samples",
            "fleet_counters",
            "peer_hit_p50_ms",
            "propagation_p99_ms",
            "propagation_p50_ms",
            "connected_peers",
            "rss_mb_per_node",
            "pss_mb_per_node",
            "peer_samples",
        ):
            out[k] = lat[k]
    return out


# -- GraphQL (issue 20): gh's GraphQL commands across a fleet, points charged vs straight to the API -------

# Watch-style polling in CI jobs: `gh pr checks --watch` asks every 10 s, `gh run watch` every 3 s.
GRAPHQL_CALL_INTERVAL_S = 5.0
GRAPHQL_CALLS_PER_JOB = 20  # then the fleet moves to the next repository
GRAPHQL_TARGETS = {"graphql_charged_ratio_max": 0.10, "local_hit_http_p50_ms_max": 1.0}
# The bodies gh 2.23 sends for `repo view`, `pr list`, `issue list` (captured from gh itself) and a
# `gh api graphql -f query=…` one.
GH_REPO_INFO = (
    "query RepositoryInfo($owner: String!, $name: String!) {\n\t\trepository(owner: $owner, name: $name) "
    "{name,owner{id,login},description}\n\t}"
)
GH_PR_LIST = (
    "fragment pr on PullRequest{number,title,state,url,headRefName,headRepositoryOwner{id,login,...on "
    "User{name}},isCrossRepository,isDraft,createdAt}\n\t\tquery PullRequestList($owner: String!, $repo: "
    "String!, $limit: Int!, $endCursor: String, $baseBranch: String, $headBranch: String, $state: "
    "[PullRequestState!] = OPEN) { repository(owner: $owner, name: $repo) { pullRequests(states: $state, "
    "baseRefName: $baseBranch, headRefName: $headBranch, first: $limit, after: $endCursor, orderBy: "
    "{field: CREATED_AT, direction: DESC}) { totalCount nodes { ...pr } pageInfo { hasNextPage endCursor } "
    "} } }"
)
GH_ISSUE_LIST = (
    "fragment issue on Issue {number,title,url,state,updatedAt,labels(first:100){nodes{id,name,description,"
    "color},totalCount},stateReason}\n\tquery IssueList($owner: String!, $repo: String!, $limit: Int, "
    "$endCursor: String, $states: [IssueState!] = OPEN, $assignee: String, $author: String, $mention: "
    "String) { repository(owner: $owner, name: $repo) { hasIssuesEnabled issues(first: $limit, after: "
    "$endCursor, orderBy: {field: CREATED_AT, direction: DESC}, states: $states, filterBy: {assignee: "
    "$assignee, createdBy: $author, mentioned: $mention}) { totalCount nodes { ...issue } pageInfo { "
    "hasNextPage endCursor } } } }"
)
GH_VIEWER = "{ viewer { login name } }"


def graphql_workload(org: str, repo: str) -> list[dict[str, Any]]:
    """One round of a job's gh calls on ``repo``: repo view, pr list, issue list, api graphql."""
    return [
        {"query": GH_REPO_INFO, "variables": {"owner": org, "name": repo}},
        {"query": GH_PR_LIST, "variables": {"limit": 30, "owner": org, "repo": repo, "state": ["OPEN"]}},
        {"query": GH_ISSUE_LIST, "variables": {"limit": 30, "owner": org, "repo": repo, "states": ["OPEN"]}},
        {"query": GH_VIEWER},
    ]


def graphql_points(emulator_url: str, login: str = "fleet-bot") -> int:
    data = _call("GET", f"{emulator_url}/_emulator/stats", timeout=10).json()
    return int(data.get("graphql_points", {}).get(login, 0))


def run_graphql_fleet(
    targets: list[str], emulator_url: str, spec: FleetSpec, repos: list[str], org: str = "octo-org"
) -> tuple[int, FleetResult]:
    """``spec.runners`` threads of ``spec.calls`` GraphQL calls, one every GRAPHQL_CALL_INTERVAL_S simulated
    seconds; the fleet's jobs work on one repository at a time. Returns (points charged, result)."""
    interval = GRAPHQL_CALL_INTERVAL_S / spec.time_scale
    before = graphql_points(emulator_url)
    result = FleetResult(calls=0, charged=0, per_runner=[Counter() for _ in range(spec.runners)])
    lock = threading.Lock()
    start = time.monotonic()
    token = fleet_token()

    def runner(i: int) -> None:
        rng = random.Random(spec.seed * 1000 + i)
        offset = rng.uniform(0, interval)
        local: Counter[str] = Counter()
        errors = 0
        with client(targets[i % len(targets)], timeout=60, headers={"Authorization": f"token {token}"}) as c:
            for n in range(spec.calls):
                time.sleep(max(0.0, start + offset + n * interval - time.monotonic()))
                job = n // GRAPHQL_CALLS_PER_JOB
                mix = graphql_workload(org, repos[job % len(repos)])
                r = c.post("/graphql", json=mix[n % len(mix)])
                local[r.headers.get("X-Fleetci-Cache", "DIRECT")] += 1
                if r.status_code != 200 or "errors" in r.json():
                    errors += 1
        with lock:
            result.per_runner[i] = local
            result.outcomes.update(local)
            result.calls += spec.calls
            result.errors += errors

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(spec.runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.wall_s = time.monotonic() - start
    return graphql_points(emulator_url) - before, result


class _Post(_Conn):
    def post(self, body: bytes) -> tuple[float, int, str]:
        t0 = time.perf_counter()
        self.conn.request(
            "POST", "/graphql", body=body, headers={**self.headers, "Content-Type": "application/json"}
        )
        resp = self.conn.getresponse()
        resp.read()
        elapsed = time.perf_counter() - t0
        return elapsed, resp.status, resp.getheader("X-Fleetci-Cache") or ""


def measure_graphql_latencies(proxy_url: str, emulator_url: str, repo: str, samples: int) -> dict[str, float]:
    """Hit over HTTP for gh's `pr list` body (and, interleaved, a REST hit on the same proxy), and the
    same body straight to a zero-latency emulator."""
    import json

    from fleetci.testing import TOKENS

    set_emulator(emulator_url, latency_ms=[0, 0], error_rate=0.0, drop_rate=0.0)
    tok = next(t for t, who in TOKENS.items() if who == "alice")  # a scope the fleet phase left cold
    body = json.dumps(graphql_workload("octo-org", repo)[1]).encode()
    direct, via = _Post(emulator_url, tok), _Post(proxy_url, tok)
    try:
        first = via.post(body)
        if first[1] != 200:
            raise FleetciError(f"the proxy answered {first[1]} to gh's pr list query")
        rest_path = f"/repos/octo-org/{repo}"
        via.get(rest_path)
        hits: list[float] = []
        rest: list[float] = []
        for _ in range(samples * 2):  # interleaved with a REST hit: the same-run reference
            elapsed, _status, outcome = via.post(body)
            if outcome == "HIT":
                hits.append(elapsed)
            elapsed, _status, outcome = via.get(rest_path)
            if outcome == "HIT":
                rest.append(elapsed)
        straight = [direct.post(body)[0] for _ in range(samples)]
    finally:
        direct.close()
        via.close()
    return {
        "local_hit_http_p50_ms": _p50_ms(hits) if hits else float("nan"),
        "rest_hit_http_p50_ms": _p50_ms(rest) if rest else float("nan"),
        "hit_samples": len(hits),
        "direct_p50_ms": _p50_ms(straight),
    }


def check_graphql_endpoint(emulator_url: str) -> None:
    """The emulator answers GraphQL only with GitHub's schema installed: say so in one line."""
    r = _call(
        "POST",
        f"{emulator_url}/graphql",
        json={"query": GH_VIEWER},
        headers={"Authorization": f"token {fleet_token()}"},
        timeout=60,
    )
    if r.status_code != 200:
        raise FleetciError(f"the emulator cannot answer GraphQL: {error_message(r.status_code, r.content)}")


def bench_graphql(
    spec: FleetSpec, progress: Callable[[str], None] | None = None, latency_samples: int = 400
) -> dict[str, Any]:
    """``fleetci bench cache --graphql``: the same gh query mix straight to the emulator and through one
    proxy; points charged as the emulator counts them (GitHub's rules), and GraphQL hit latency."""
    say = progress or (lambda _m: None)
    scaled_latency = (spec.latency_ms[0] / spec.time_scale, spec.latency_ms[1] / spec.time_scale)
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-") as tmp:
        tmp_path = Path(tmp)
        with start_emulator(spec.latency_ms) as emu:
            repos = list_repo_names(emu.url, "octo-org", spec.repos)
            check_graphql_endpoint(emu.url)
            _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
            limits = {"primary_limit": BENCH_PRIMARY_LIMIT, "graphql_limit": BENCH_PRIMARY_LIMIT}
            set_emulator(emu.url, latency_ms=list(scaled_latency), **limits)
            say(f"emulator at {emu.url}; baseline: {spec.runners} runners' gh queries straight to the API")
            baseline_points, baseline = run_graphql_fleet([emu.url], emu.url, spec, repos)
            say(f"baseline: {baseline.calls} calls -> {baseline_points} points")
            _call("POST", f"{emu.url}/_emulator/reset", timeout=10)
            config = scaled_config(tmp_path / "bench.yml", spec.time_scale)
            with start_proxy(emu.url, tmp_path / "cache", config) as proxy:
                say(f"proxy at {proxy.url}; the same queries through the cache")
                charged, cached = run_graphql_fleet([proxy.url], emu.url, spec, repos)
                say(f"through the proxy: {cached.calls} calls -> {charged} points")
                stats = _call("GET", f"{proxy.url}/_fleetci/stats", timeout=10).json()
                say("latency: GraphQL hit over HTTP vs straight to a zero-latency emulator")
                lat = measure_graphql_latencies(proxy.url, emu.url, repos[0], latency_samples)
    return {
        "runners": spec.runners,
        "calls_per_runner": spec.calls,
        "total_calls": cached.calls,
        "baseline_graphql_points": baseline_points,
        "graphql_points_charged": charged,
        "graphql_charged_ratio": round(charged / baseline_points, 4) if baseline_points else 0.0,
        **lat,
        "outcomes": dict(sorted(cached.outcomes.items())),
        "graphql_hits": stats.get("graphql_hits"),
        "graphql_misses": stats.get("graphql_misses"),
        "errors": baseline.errors + cached.errors,
        "call_interval_s": GRAPHQL_CALL_INTERVAL_S,
        "simulated_minutes": round(spec.calls * GRAPHQL_CALL_INTERVAL_S / 60, 1),
        "time_scale": spec.time_scale,
        "latency_ms": list(spec.latency_ms),
        "wall_s": round(baseline.wall_s + cached.wall_s, 2),
        "targets": GRAPHQL_TARGETS,
    }
