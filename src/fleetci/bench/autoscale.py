"""``fleetci bench autoscale``: how fast a queued job reaches the provider, with webhooks and without.

Real parts: an emulator process (``fleetci emulate github``: latency, webhook delay and loss), two proxy
processes (``fleetci cache serve``), and two autoscalers in this process, each with a recording provider
(a :class:`fleetci.autoscale.Provider` that notes when it was called with which count). The organization
hook delivers to proxy A only; proxy B never hears of a change, so its autoscaler sees new jobs by
polling alone. Both run at once on the same workload, each on its own pool label (and token, so the
emulator's charged counts stay apart).

Workload: ``jobs`` events at random times over ``spread`` seconds; each event queues one run per pool,
each pool in a random repository of its own half of the organization's repositories (disjoint: the other
side's deliveries never refresh a repository the webhook side must hear about, so loss is measured
honestly). A run has one to a few jobs. Nothing starts the jobs, so a pool's queued count only grows: the
reaction to event k is the time from just before queueing it to the first provider call for that pool
with a desired count of at least the jobs queued up to and including it. An event not covered within the
bound counts as the bound in the quantiles (and in ``missed``): loss shows in p99, never as a smaller
sample.
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetci.autoscale import GitHubRunnerAutoscaler, ScaleRequest
from fleetci.bench.common import call, clean_env
from fleetci.cache.api import STATS_PATH
from fleetci.cache.webhooks import WEBHOOK_PATH
from fleetci.errors import FleetciError
from fleetci.http import free_port
from fleetci.process import Service, fleetci_argv, spawn
from fleetci.wait import WaitTimeout, wait_until

ORG = "octo-org"
SECRET = "bench-autoscale-hook"
PUSH: tuple[str, ...] = ("self-hosted", "bench-push")
PULL: tuple[str, ...] = ("self-hosted", "bench-pull")
TARGETS = {"scale_reaction_p99_s": 2}


@dataclass(frozen=True)
class AutoscaleBenchSpec:
    jobs: int = 30
    spread_s: float = 30.0
    poll_s: float = 120.0
    poll_without_webhooks_s: float = 5.0
    webhook_delay_ms: float = 500.0
    webhook_loss: float = 0.0
    latency_ms: tuple[float, float] = (20.0, 80.0)
    seed: int = 17


@dataclass
class Recording:
    """A provider that notes (when, desired) per call."""

    calls: list[tuple[float, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def scale(self, request: ScaleRequest) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), request.desired))

    def first_covering(self, count: int, since: float) -> float | None:
        with self.lock:
            return next((t for t, d in self.calls if d >= count and t >= since), None)


def _proxy(emulator: str, where: Path, secret: str) -> Service:
    env = clean_env(CACHE_WEBHOOK_SECRET=secret) if secret else clean_env()
    argv = fleetci_argv(
        "cache", "serve", "--upstream", emulator, "--port", str(free_port()),
        "--cache-dir", str(where / "cache"), "--socket", str(where / "proxy.sock"),
    )  # fmt: skip
    return spawn(argv, timeout=60, env=env)


def _token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


def _proxy_requests(url: str) -> int:
    """GitHub API requests a proxy answered so far (its stats' ``requests``: hits, 304s and misses)."""
    return int(call("GET", f"{url}{STATS_PATH}").json().get("requests", 0))


def _quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(p * len(s)))], 3) if s else 0.0


def bench_autoscale(spec: AutoscaleBenchSpec, progress: Callable[[str], None]) -> dict[str, Any]:
    began = time.monotonic()
    rng = random.Random(spec.seed)
    services: list[Service] = []
    scalers: list[GitHubRunnerAutoscaler] = []
    threads: list[threading.Thread] = []
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-autoscale-") as tmp:
        try:
            lo, hi = spec.latency_ms
            emu = spawn(
                fleetci_argv(
                    "emulate", "github", "--port", "0", "--latency-ms", f"{lo:g}-{hi:g}",
                    "--webhook-delay-ms", f"{spec.webhook_delay_ms:g}",
                    "--webhook-drop-rate", f"{spec.webhook_loss:g}", "--seed", str(spec.seed),
                ),
                env=clean_env(),
            )  # fmt: skip
            services.append(emu)
            for name in ("push", "pull"):
                (Path(tmp) / name).mkdir()
            push = _proxy(emu.url, Path(tmp) / "push", SECRET)
            services.append(push)
            pull = _proxy(emu.url, Path(tmp) / "pull", "")
            services.append(pull)
            alice = {"Authorization": f"token {_token('alice')}"}
            hook = call(
                "POST",
                f"{emu.url}/orgs/{ORG}/hooks",
                headers=alice,
                json={"config": {"url": push.url + WEBHOOK_PATH, "secret": SECRET}, "events": ["*"]},
            )
            if hook.status_code != 201:
                raise FleetciError(f"emulator refused the hook: HTTP {hook.status_code}")
            repos = [str(r["name"]) for r in call("GET", f"{emu.url}/orgs/{ORG}/repos", headers=alice).json()]
            recorders = {PUSH: Recording(), PULL: Recording()}
            setups = (
                (PUSH, push.url, "alice", spec.poll_s),
                (PULL, pull.url, "fleet-bot", spec.poll_without_webhooks_s),
            )
            for labels, url, login, poll in setups:
                scaler = GitHubRunnerAutoscaler(
                    owner=ORG,
                    poll_interval=poll,
                    api_url=url,
                    token=_token(login),
                    pools=[f"{','.join(labels)}:max=10000"],
                    scale_down_delay=3600,
                    provider=recorders[labels],
                    env={},
                    config={},
                    say=lambda line: None,
                )
                if scaler.cache is not None:
                    scaler.cache.chunk = 5.0  # stop() waits for the long poll in flight
                scalers.append(scaler)
                threads.append(threading.Thread(target=scaler.run, daemon=True))
                threads[-1].start()
            wait_until(lambda: all(s.cycles >= 1 for s in scalers), timeout=60, what="the first cycles")
            charged_before = call("GET", f"{emu.url}/_emulator/stats").json()["charged"]
            proxies = (push, pull)
            reads_before = [(_proxy_requests(p.url), s.cycles) for p, s in zip(proxies, scalers, strict=True)]
            progress(
                f"{spec.jobs} events over {spec.spread_s:g}s; polls {spec.poll_s:g}s (webhooks) and "
                f"{spec.poll_without_webhooks_s:g}s (none); webhook delay {spec.webhook_delay_ms:g} ms"
            )
            times = sorted(rng.uniform(0, spec.spread_s) for _ in range(spec.jobs))
            halves = {PUSH: repos[0::2], PULL: repos[1::2]}
            measured_from = time.monotonic()
            events: dict[tuple[str, ...], list[tuple[float, int]]] = {PUSH: [], PULL: []}
            totals = dict.fromkeys(events, 0)
            start = time.monotonic()
            for at in times:
                time.sleep(max(0.0, start + at - time.monotonic()))
                for labels in (PUSH, PULL):
                    repo = rng.choice(halves[labels])
                    t0 = time.monotonic()  # before the POST: its round trip is part of the reaction
                    r = call(
                        "POST",
                        f"{emu.url}/_emulator/queue",
                        json={"owner": ORG, "repo": repo, "labels": list(labels)},
                    )
                    if r.status_code != 201:
                        raise FleetciError(f"emulator refused to queue a run: HTTP {r.status_code}")
                    totals[labels] += len(r.json()["job_ids"])
                    events[labels].append((t0, totals[labels]))
            bound = spec.poll_without_webhooks_s + 60 + 30  # poll + the queued list's window + slack
            reactions: dict[tuple[str, ...], list[float]] = {}
            missed: dict[tuple[str, ...], int] = {}
            for labels, evs in events.items():
                rec = recorders[labels]
                last_t, last_n = evs[-1]

                def covered(rec: Recording = rec, n: int = last_n, t0: float = last_t) -> bool:
                    return rec.first_covering(n, t0) is not None

                try:
                    wait_until(covered, timeout=bound, what=f"the {labels[-1]} pool to cover every job")
                except WaitTimeout as exc:
                    progress(str(exc))
                got = [rec.first_covering(n, t) for t, n in evs]
                reactions[labels] = [
                    bound if c is None else c - t for (t, _), c in zip(evs, got, strict=True)
                ]
                missed[labels] = sum(1 for c in got if c is None)
                if missed[labels]:
                    progress(f"{labels[-1]}: {missed[labels]} event(s) never covered within {bound:g}s")
            stats = call("GET", f"{emu.url}/_emulator/stats").json()
            measured_s = time.monotonic() - measured_from
            reads = [
                (_proxy_requests(p.url) - n) / max(s.cycles - c, 1)
                for p, s, (n, c) in zip(proxies, scalers, reads_before, strict=True)
            ]
        finally:
            for s in scalers:
                s.stop()
            for t in threads:
                t.join(timeout=15)
            for s in scalers:
                s.close()
            for svc in reversed(services):
                svc.stop()
    charged = {k: int(v) - int(charged_before.get(k, 0)) for k, v in stats["charged"].items()}
    push_r, pull_r = reactions[PUSH], reactions[PULL]
    return {
        "jobs": spec.jobs,
        "queued_jobs": totals[PUSH] + totals[PULL],
        "spread_s": spec.spread_s,
        "poll_s": spec.poll_s,
        "poll_s_without_webhooks": spec.poll_without_webhooks_s,
        "webhook_delay_ms": spec.webhook_delay_ms,
        "webhook_loss": spec.webhook_loss,
        "latency_ms": list(spec.latency_ms),
        "scale_reaction_p50_s": _quantile(push_r, 0.5),
        "scale_reaction_p99_s": _quantile(push_r, 0.99),
        "scale_reaction_max_s": _quantile(push_r, 1.0),
        "scale_reaction_p50_s_without_webhooks": _quantile(pull_r, 0.5),
        "scale_reaction_p99_s_without_webhooks": _quantile(pull_r, 0.99),
        "scale_reaction_max_s_without_webhooks": _quantile(pull_r, 1.0),
        "covered": len(push_r) - missed[PUSH],
        "covered_without_webhooks": len(pull_r) - missed[PULL],
        "missed": missed[PUSH],
        "missed_without_webhooks": missed[PULL],
        "bound_s": bound,
        "webhooks_sent": int(stats.get("webhooks_sent", 0)),
        "webhooks_lost": int(stats.get("webhooks_dropped", 0)),
        "charged_calls": charged.get("alice", 0),
        "charged_calls_without_webhooks": charged.get("fleet-bot", 0),
        "reads_per_cycle": round(reads[0], 1),
        "reads_per_cycle_without_webhooks": round(reads[1], 1),
        # the rate over the measured part, as an hour of this workload would cost each token
        "charged_per_hour": round(charged.get("alice", 0) * 3600 / measured_s),
        "charged_per_hour_without_webhooks": round(charged.get("fleet-bot", 0) * 3600 / measured_s),
        "measured_s": round(measured_s, 1),
        "cycles": scalers[0].cycles if scalers else 0,
        "cycles_without_webhooks": scalers[1].cycles if len(scalers) > 1 else 0,
        "wall_s": round(time.monotonic() - began, 1),
        "targets": dict(TARGETS),
    }
