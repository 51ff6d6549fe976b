"""``fleetci bench fleet``: hundreds of runners for an hour, in virtual time, against the emulator's rules.

What is real: every proxy is a real :class:`CacheEngine` (its own store, TTL policy, revalidation,
local coalescing, claims and peer index), and GitHub is the real emulator application, called in
process, so ETags, free 304s and per-token charging are exactly what ``fleetci emulate github`` does.
What is simulated: the clock (an asyncio loop whose time jumps to the next timer, so an hour takes
seconds and latencies are honoured), and the libp2p transport between proxies, replaced by delivery
after a random delay in ``propagation_ms`` (the range ``fleetci bench cache --p2p`` measures on real
libp2p nodes). The workload is the seed's autoscaler: every runner polls every two minutes with the
five calls of :func:`fleetci.bench.cache.workload`, while the world changes every ``churn_every_s``.

Webhooks (``--webhooks``, issue 17): after each change of the world, every repository whose runs or
jobs changed gets one delivery — lost with probability ``webhook_loss``, otherwise delivered after a
random ``webhook_delay_ms`` to one proxy (the hook's URL), which invalidates and gossips it to the
others (``CacheEngine.invalidate`` and the simulated link's ``invalidate``). Staleness is measured on
every read of a queued-runs list: the time since the first change of that repository's queued runs that
the answer does not show yet (0 when it is current).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import selectors
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fleetci.bench.cache import fleet_token, workload
from fleetci.cache.engine import CacheEngine
from fleetci.cache.peering import Announcement, Claim
from fleetci.cache.settings import CacheSettings
from fleetci.cache.store import CacheStore, Entry
from fleetci.cache.webhooks import affected_prefixes
from fleetci.http import UpstreamResponse

HOURLY_BUDGET = 5000  # GitHub's primary limit for one token
ORG = "octo-org"


@dataclass(frozen=True)
class FleetSimSpec:
    runners: int = 500
    hours: float = 1.0
    runners_per_node: int = 10  # runners of one box share a proxy; boxes share over p2p
    repos: int = 7
    poll_s: float = 120.0  # seed 004: autoscalers check every 2 minutes
    churn_every_s: float = 60.0  # a busy organisation: something changes every minute
    latency_ms: tuple[float, float] = (100.0, 500.0)
    propagation_ms: tuple[float, float] = (10.0, 100.0)
    baseline_runners: int = 20  # runners sampled straight against the API (every call is charged)
    seed: int = 1
    webhooks: bool = False  # changes are pushed as webhooks to one proxy (issue 17)
    webhook_loss: float = 0.0  # fraction of deliveries lost
    webhook_delay_ms: tuple[float, float] = (200.0, 1000.0)  # GitHub's delivery delay, LOW-HIGH

    @property
    def nodes(self) -> int:
        return -(-self.runners // self.runners_per_node)


class _JumpingSelector(selectors.BaseSelector):
    """Never waits: when nothing is ready, virtual time jumps by the timeout the loop asked for."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._inner = selectors.DefaultSelector()
        self._loop = loop

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._inner.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._inner.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = self._inner.select(0)
        if not ready:
            if timeout is None:
                raise RuntimeError("fleet simulation stalled: nothing scheduled and nothing ready")
            self._loop.now += max(0.0, timeout)
        return ready

    def get_map(self) -> Any:
        return self._inner.get_map()

    def close(self) -> None:
        self._inner.close()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """asyncio with a virtual clock: ``sleep(120)`` costs nothing, and ordering is kept exactly."""

    def __init__(self, epoch: float | None = None) -> None:
        self.now = 0.0
        self.epoch = time.time() if epoch is None else epoch
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self.now

    def wall(self) -> float:
        """The engines' clock: a plausible epoch plus virtual time."""
        return self.epoch + self.now


class EmulatorUpstream:
    """The emulator's aiohttp application called in process (its latency sleeps in virtual time)."""

    base_path = ""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.app = emulator.app

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None = None
    ) -> UpstreamResponse:
        from aiohttp.test_utils import make_mocked_request
        from multidict import CIMultiDict

        req = make_mocked_request(
            method, target, headers=CIMultiDict([("Host", "api.github.com"), *headers]), app=self.app
        )
        match = await self.app.router.resolve(req)
        req._match_info = match
        resp = await match.handler(req)
        raw = getattr(resp, "body", None)
        return UpstreamResponse(resp.status, tuple(resp.headers.items()), bytes(raw or b""))

    async def close(self) -> None:
        return None


class SimNetwork:
    """Stands in for libp2p between engines: everything a node announces or claims reaches every other
    node after a random propagation delay; bodies are fetched from the announcing node's store."""

    def __init__(self, loop: VirtualTimeLoop, rng: random.Random, propagation_ms: tuple[float, float]):
        self.loop = loop
        self.rng = rng
        self.propagation = (propagation_ms[0] / 1000, propagation_ms[1] / 1000)
        self.links: dict[str, SimPeerLink] = {}

    def join(self, engine: CacheEngine) -> SimPeerLink:
        link = SimPeerLink(self, f"node-{len(self.links):03d}", engine)
        self.links[link.peer_id] = link
        engine.peers = link
        return link

    def deliver(self, sender: str, fn: Callable[[SimPeerLink], None]) -> None:
        for peer_id, link in self.links.items():
            if peer_id != sender:
                self.loop.call_later(self.rng.uniform(*self.propagation), fn, link)


class SimPeerLink:
    """The :class:`fleetci.cache.peering.PeerLink` of one simulated node."""

    def __init__(self, net: SimNetwork, peer_id: str, engine: CacheEngine) -> None:
        self.net = net
        self.peer_id = peer_id
        self.engine = engine
        self.announced = 0

    def announce(self, entry: Entry) -> None:
        self.announced += 1
        ann = Announcement.of(entry, self.peer_id)
        self.net.deliver(self.peer_id, lambda link: link.engine.accept_announcements([ann]))

    def claim(self, scope: str, key: str, release: bool = False) -> None:
        c = Claim(key, scope, self.peer_id, release, self.net.loop.wall())
        self.net.deliver(self.peer_id, lambda link: link.engine.accept_claims([c]))

    def fetch(self, ann: Announcement) -> concurrent.futures.Future[bytes | None]:
        fut: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        origin = self.net.links.get(ann.peer)
        entry = origin.engine.store.get(ann.key) if origin is not None else None
        fut.set_result(entry.body if entry is not None and entry.cid() == ann.cid else None)
        return fut

    def connected_peers(self) -> list[str]:
        return [p for p in self.net.links if p != self.peer_id]

    def invalidate(self, prefixes: tuple[str, ...], exact: tuple[str, ...]) -> None:
        def apply(link: SimPeerLink) -> None:
            link.engine.invalidate(prefixes, exact, False)

        self.net.deliver(self.peer_id, apply)


class Staleness:
    """Per repository, when its queued runs changed (virtual time) and to what; a read's staleness is
    the time since the first change its answer does not reflect."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[float, frozenset[int]]]] = {}
        self.samples: list[float] = []
        self.unmatched = 0

    def record(self, repo: str, now: float, queued: frozenset[int]) -> bool:
        """The repository's queued runs now; True when they changed."""
        h = self.history.setdefault(repo, [])
        if h and h[-1][1] == queued:
            return False
        h.append((now, queued))
        return True

    def observe(self, repo: str, now: float, body: bytes) -> None:
        import json

        try:
            seen = frozenset(int(r["id"]) for r in json.loads(body)["workflow_runs"])
        except (ValueError, KeyError, TypeError):
            self.unmatched += 1
            return
        h = self.history.get(repo, [])
        for i in range(len(h) - 1, -1, -1):
            if h[i][1] == seen:
                self.samples.append(0.0 if i == len(h) - 1 else max(0.0, now - h[i + 1][0]))
                return
        self.unmatched += 1

    def summary(self) -> dict[str, float | int]:
        xs = sorted(self.samples)
        if not xs:
            return {"staleness_p50_s": 0.0, "staleness_p99_s": 0.0, "staleness_max_s": 0.0, "reads": 0}

        def q(p: float) -> float:
            return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2)

        return {
            "staleness_p50_s": q(0.50),
            "staleness_p99_s": q(0.99),
            "staleness_max_s": round(xs[-1], 2),
            "reads": len(xs),
            "stale_reads": sum(1 for x in xs if x > 0),
            "unmatched_reads": self.unmatched,
        }


def _world_by_repo(emu: Any, repos: list[str]) -> dict[str, tuple[frozenset[int], int]]:
    """Per watched repository: its queued run ids, and a fingerprint of every run's status (a change
    there is a ``workflow_run``/``workflow_job`` delivery on GitHub)."""
    w = emu._world
    ids: dict[str, set[int]] = {r: set() for r in repos}
    states: dict[str, list[tuple[int, str]]] = {r: [] for r in repos}
    by_id = {repo.id: repo.name for repo in w.repos.values() if repo.owner == ORG and repo.name in ids}
    for run in w.runs.values():
        name = by_id.get(run.repo_id)
        if name is not None:
            states[name].append((run.id, run.status))
            if run.status == "queued":
                ids[name].add(run.id)
    return {r: (frozenset(ids[r]), hash(frozenset(states[r]))) for r in repos}


@dataclass
class FleetRun:
    label: str
    calls: int = 0
    charged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    staleness: dict[str, float | int] = field(default_factory=dict)
    webhooks_sent: int = 0
    webhooks_lost: int = 0

    def per_hour(self, hours: float) -> float:
        return self.charged / hours


def _emulator(spec: FleetSimSpec) -> Any:
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    return GitHubEmulator(
        EmulatorConfig(
            latency_ms=spec.latency_ms, primary_limit=10**9, secondary_concurrency=10**6, seed=spec.seed
        )
    )


def _repo_names(emu: Any, n: int) -> list[str]:
    """The organisation's repositories, as the autoscalers would list them (``/orgs/{org}/repos``)."""
    names = sorted(r.name for r in emu._world.repos.values() if r.owner == ORG)
    return names[: max(1, n)]


def simulate(spec: FleetSimSpec, mode: str, work: Path, progress: Callable[[str], None]) -> FleetRun:
    """``mode``: "p2p" (nodes share), "isolated" (one cache per node) or "direct" (no cache); webhooks
    (``spec.webhooks``) reach the proxies of the "p2p" and "isolated" modes."""
    loop = VirtualTimeLoop()
    rng = random.Random(spec.seed)
    emu = _emulator(spec)
    upstream = EmulatorUpstream(emu)
    token = fleet_token()
    headers = [("Authorization", f"token {token}"), ("Accept", "application/vnd.github+json")]
    repos = _repo_names(emu, spec.repos)
    end = spec.hours * 3600.0
    run = FleetRun(mode)
    runners = spec.baseline_runners if mode == "direct" else spec.runners
    engines: list[CacheEngine] = []
    if mode != "direct":
        net = SimNetwork(loop, rng, spec.propagation_ms)
        base = CacheSettings(upstream="http://emulator.invalid", cache_dir=work)
        for n in range(spec.nodes):
            settings = replace(base, cache_dir=work / mode / f"node{n}")
            settings.cache_dir.mkdir(parents=True, exist_ok=True)
            store = CacheStore.for_settings(settings)
            engine = CacheEngine(settings, store, upstream, clock=loop.wall)  # type: ignore[arg-type]
            if mode == "p2p":
                net.join(engine)
            engines.append(engine)

    stale = Staleness()
    stale_rng = random.Random(spec.seed * 7 + 1)
    hooks = spec.webhooks and bool(engines)
    last = _world_by_repo(emu, repos)
    for name, (ids, _) in last.items():
        stale.record(name, loop.time(), ids)

    def deliver(name: str) -> None:
        """One webhook of a change in ``name``: to one proxy (the hook's URL), which passes it on."""
        run.webhooks_sent += 1
        if stale_rng.random() < spec.webhook_loss:
            run.webhooks_lost += 1
            return
        payload = {"repository": {"full_name": f"{ORG}/{name}"}, "organization": {"login": ORG}}
        inv = affected_prefixes("workflow_job", payload)
        target = engines[0] if mode == "p2p" else None
        delay = stale_rng.uniform(*spec.webhook_delay_ms) / 1000.0
        if target is not None:
            loop.call_later(delay, target.invalidate, inv.prefixes, inv.exact)
        else:  # isolated proxies share nothing: the hook would have to reach each (one hook per proxy)
            for engine in engines:
                loop.call_later(delay, engine.invalidate, inv.prefixes, inv.exact, False)

    async def runner(i: int) -> None:
        r = random.Random(spec.seed * 100_003 + i)
        await asyncio.sleep(r.uniform(0, min(spec.poll_s, end)))
        cycle = 0
        engine = engines[i // spec.runners_per_node] if engines else None
        while True:  # every poll starts inside the simulated window
            for n, path in enumerate(workload(ORG, repos, cycle, i)):
                if engine is None:
                    resp = await upstream.request("GET", path, headers)
                    outcome = "DIRECT" if resp.status < 400 else f"DIRECT {resp.status}"
                else:
                    answer = await engine.handle("GET", path, headers)
                    outcome = answer.outcome
                    if n == 0 and answer.status == 200:  # the queued-runs list of workload()'s repo
                        stale.observe(path.split("/")[3], loop.time(), answer.body)
                run.calls += 1
                run.outcomes[outcome] += 1
            cycle += 1
            pause = spec.poll_s * r.uniform(0.95, 1.05)
            if loop.time() + pause >= end:
                return
            await asyncio.sleep(pause)

    async def churn() -> None:
        if spec.churn_every_s <= 0:
            return
        while True:
            await asyncio.sleep(spec.churn_every_s)
            emu.mutate(1)
            now = _world_by_repo(emu, repos)
            for name, (ids, state) in now.items():
                stale.record(name, loop.time(), ids)
                if hooks and state != last[name][1]:
                    deliver(name)
            last.update(now)

    async def main() -> None:
        churner = asyncio.ensure_future(churn())
        await asyncio.gather(*(runner(i) for i in range(runners)))
        churner.cancel()
        for engine in engines:
            await engine.close()

    before = emu.charged(token)
    t0 = time.monotonic()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    run.charged = emu.charged(token) - before
    run.virtual_s = loop.now
    run.wall_s = time.monotonic() - t0
    run.staleness = stale.summary() if engines else {}
    progress(
        f"{mode}: {runners} runners, {run.calls} calls in {loop.now / 3600:.2f} virtual h -> "
        f"{run.charged} charged ({run.wall_s:.1f} s)"
    )
    return run


def bench_fleet(spec: FleetSimSpec, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    say = progress or (lambda _m: None)
    say(
        f"{spec.runners} runners on {spec.nodes} proxies ({spec.runners_per_node} per box), "
        f"{spec.hours:g} virtual hour(s)"
    )
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-fleet-") as tmp:
        work = Path(tmp)
        shared = simulate(spec, "p2p", work, say)
        isolated = simulate(spec, "isolated", work, say)
        direct = simulate(spec, "direct", work, say)
        # the same fleet without webhooks, for the staleness and cost side by side
        without = (
            simulate(replace(spec, webhooks=False), "p2p", work / "no-webhooks", say)
            if spec.webhooks
            else None
        )
    hours = spec.hours
    per_hour = shared.per_hour(hours)
    direct_per_runner = direct.per_hour(hours) / max(1, spec.baseline_runners)

    def supported(charged_per_hour: float, runners: int) -> int:
        # Linear in runners: conservative, since cached charges grow slower than the fleet does.
        per_runner = charged_per_hour / runners
        return int(HOURLY_BUDGET / per_runner) if per_runner > 0 else 10**6

    result: dict[str, Any] = {
        "runners": spec.runners,
        "hours": hours,
        "nodes": spec.nodes,
        "runners_per_node": spec.runners_per_node,
        "calls_per_hour": round(shared.calls / hours),
        "charged_per_hour": round(per_hour, 1),
        "runners_supported_per_5000h": supported(per_hour, spec.runners),
        "charged_per_hour_isolated": round(isolated.per_hour(hours), 1),
        "runners_supported_per_5000h_isolated": supported(isolated.per_hour(hours), spec.runners),
        "baseline_charged_per_hour": round(direct_per_runner * spec.runners, 1),
        "baseline_runners_supported_per_5000h": int(HOURLY_BUDGET / direct_per_runner),
        "baseline_sampled_runners": spec.baseline_runners,
        "outcomes": dict(sorted(shared.outcomes.items())),
        "outcomes_isolated": dict(sorted(isolated.outcomes.items())),
        "repos": spec.repos,
        "poll_s": spec.poll_s,
        "churn_every_s": spec.churn_every_s,
        "latency_ms": list(spec.latency_ms),
        "propagation_ms": list(spec.propagation_ms),
        "wall_s": round(shared.wall_s + isolated.wall_s + direct.wall_s, 1),
        "targets": {"charged_per_hour": 4000, "at_runners": 500},
        **shared.staleness,
        "staleness_isolated": isolated.staleness,
        "webhooks": spec.webhooks,
    }
    if spec.webhooks and without is not None:
        result.update(
            {
                "webhook_loss": spec.webhook_loss,
                "webhook_delay_ms": list(spec.webhook_delay_ms),
                "webhooks_sent": shared.webhooks_sent,
                "webhooks_lost": shared.webhooks_lost,
                "without_webhooks": {
                    "charged_per_hour": round(without.per_hour(hours), 1),
                    **without.staleness,
                },
                # the side-by-side figures, flat (the docs tables read top-level keys)
                "charged_per_hour_without_webhooks": round(without.per_hour(hours), 1),
                "staleness_p99_s_without_webhooks": without.staleness.get("staleness_p99_s", 0.0),
                "staleness_max_s_without_webhooks": without.staleness.get("staleness_max_s", 0.0),
                "stale_reads_without_webhooks": without.staleness.get("stale_reads", 0),
                "targets": {"charged_per_hour": 4000, "staleness_p99_s": 2, "at_runners": 5000},
            }
        )
    return result
