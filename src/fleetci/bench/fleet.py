"""``fleetci bench fleet``: thousands of runners for an hour, in virtual time, against the emulator's rules.

What is real: every proxy is a real :class:`CacheEngine` (its own store, TTL policy, revalidation,
local coalescing, claims and peer index; the store is the same SQLite schema and code in a private
in-memory database, since one process holds hundreds of them), and GitHub is the real emulator
application, called in process (a real ``aiohttp.web.Request`` routed by its own router), so ETags, free
304s and per-token charging are exactly what ``fleetci emulate github`` does. What is simulated: the
clock (an asyncio loop whose time jumps to the next timer, so an hour takes minutes and latencies are
honoured), and the libp2p transport between proxies, replaced by delivery after a random delay in
``propagation_ms`` (the range ``fleetci bench cache --p2p`` measures on real libp2p nodes). The
workload is the seed's autoscaler: every runner polls every two minutes with the five calls of
:func:`fleetci.bench.cache.workload`.

The world changes as jobs do (issue 17): workflow runs arrive as a Poisson process, ``jobs_per_hour``
(default 300) spread evenly over the watched repositories, each queued -> in_progress after a queue wait
(10-120 s) -> completed after its run time (3-20 min), through the emulator's own ``queue_run``,
``start_run`` and ``complete_run`` (runs carry 1-3 jobs; self-hosted ones turn an organisation runner busy
and idle again). Why these defaults: 5,000 runners at 2-minute polls is an organisation of a few hundred
active repositories, but the autoscalers here watch 7; a few hundred runs an hour on 7 busy repositories
is ~40 pushes/PRs per repository per hour, a busy working day, and queue waits and run times are the
usual range of self-hosted autoscaled CI. Every transition changes the repository's queued-runs and runs
lists, and each distinct state of a list that runners read costs one charged 200 fleet-wide at best, so
``charged_per_hour`` grows with the job rate, not with the fleet (``--jobs-per-hour`` shows the
relation). ``--churn-every`` keeps the old model (one random change of the whole world per period) for
comparison; it is off by default.

Webhooks (``--webhooks``): every transition sends what GitHub sends, a ``workflow_run`` delivery and one
``workflow_job`` delivery per job of the run (``--one-webhook-per-change``: only one), each lost with
probability ``webhook_loss`` or delivered after a random ``webhook_delay_ms`` to one proxy (the hook's
URL), which invalidates and gossips it to the others (``CacheEngine.invalidate`` and the simulated
link's ``invalidate``). Staleness is measured on every read of a queued-runs or runs list: the time since
the first change of that list the answer does not show yet (0 when it is current). The "isolated" mode
(a cache per box, nothing shared) is simulated for ``isolated_runners`` runners and scaled: its boxes
share nothing, so each costs the same whatever the fleet's size. The simulations run in ``workers``
processes at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import selectors
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
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
    churn_every_s: float = 0.0  # the old model: one random change of the world per period (0 = off)
    jobs_per_hour: float = 300.0  # workflow runs queued per hour over the watched repositories
    queue_wait_s: tuple[float, float] = (10.0, 120.0)  # queued -> in_progress, LOW-HIGH seconds
    job_duration_s: tuple[float, float] = (180.0, 1200.0)  # in_progress -> completed, LOW-HIGH seconds
    latency_ms: tuple[float, float] = (100.0, 500.0)
    propagation_ms: tuple[float, float] = (10.0, 100.0)
    baseline_runners: int = 20  # runners sampled straight against the API (every call is charged)
    seed: int = 1
    webhooks: bool = False  # changes are pushed as webhooks to one proxy (issue 17)
    webhook_loss: float = 0.0  # fraction of deliveries lost
    webhook_delay_ms: tuple[float, float] = (200.0, 1000.0)  # GitHub's delivery delay, LOW-HIGH
    webhook_per_job: bool = True  # a transition sends workflow_run + one workflow_job per job (GitHub)
    isolated_runners: int = 500  # the "isolated" mode simulates this many runners and scales (0 = all)

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


class _InProcessProtocol:
    """What an aiohttp request asks of its connection, for a call that never had one."""

    ssl_context = None
    peername = ("127.0.0.1", 0)
    sockname = ("127.0.0.1", 80)
    transport = None


class EmulatorUpstream:
    """The emulator's aiohttp application called in process (its latency sleeps in virtual time).

    The request is the real ``aiohttp.web.Request`` the server would build, routed by the app's own
    router; only the socket is missing (``_InProcessProtocol``). aiohttp's ``make_mocked_request`` did the
    same with half a dozen ``unittest.mock`` objects per call: 6 ms each, most of a 5,000-runner run."""

    base_path = ""

    def __init__(self, emulator: Any) -> None:
        self.emulator = emulator
        self.app = emulator.app
        self._protocol = _InProcessProtocol()

    async def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes | None = None
    ) -> UpstreamResponse:
        from aiohttp import HttpVersion11, web
        from aiohttp.http_parser import RawRequestMessage
        from aiohttp.streams import EMPTY_PAYLOAD
        from multidict import CIMultiDict, CIMultiDictProxy
        from yarl import URL

        pairs = [("Host", "api.github.com"), *headers]
        message = RawRequestMessage(
            method,
            target,
            HttpVersion11,
            CIMultiDictProxy(CIMultiDict(pairs)),
            tuple((k.encode(), v.encode()) for k, v in pairs),
            False,
            None,
            False,
            False,
            URL(target),
        )
        loop = asyncio.get_running_loop()
        req = web.Request(message, EMPTY_PAYLOAD, self._protocol, None, None, loop)  # type: ignore[arg-type]
        match = await self.app.router.resolve(req)
        match.add_app(self.app)
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
    """Per watched list (the queued runs and the newest runs of each repository), when its content changed
    (virtual time) and to what; a read's staleness is the time since the first change its answer does not
    reflect (0 when it is current). Answers are parsed once per distinct body."""

    def __init__(self) -> None:
        self.history: dict[str, list[tuple[float, Hashable]]] = {}
        self.samples: dict[str, list[float]] = {}
        self.unmatched = 0
        self._parsed: dict[bytes, Hashable | None] = {}

    def record(self, key: str, now: float, state: Hashable) -> bool:
        """The list ``key``'s content now; True when it changed."""
        h = self.history.setdefault(key, [])
        if h and h[-1][1] == state:
            return False
        h.append((now, state))
        return True

    def _state(self, kind: str, body: bytes) -> Hashable | None:
        state = self._parsed.get(body, ...)
        if state is ...:
            try:
                runs = json.loads(body)["workflow_runs"]
                if kind == QUEUED:
                    state = frozenset(int(r["id"]) for r in runs)
                else:
                    state = tuple((int(r["id"]), str(r["status"])) for r in runs)
            except (ValueError, KeyError, TypeError):
                state = None
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[body] = state
        return state

    def observe(self, kind: str, repo: str, now: float, body: bytes) -> None:
        seen = self._state(kind, body)
        h = self.history.get(f"{kind}:{repo}", [])
        for i in range(len(h) - 1, -1, -1):
            if seen is not None and h[i][1] == seen:
                stale = 0.0 if i == len(h) - 1 else max(0.0, now - h[i + 1][0])
                self.samples.setdefault(kind, []).append(stale)
                return
        self.unmatched += 1

    @staticmethod
    def _figures(xs: list[float]) -> dict[str, float | int]:
        xs = sorted(xs)
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
        }

    def summary(self) -> dict[str, Any]:
        """Over every checked read of both lists, and per list (``staleness_by_list``)."""
        every = [x for xs in self.samples.values() for x in xs]
        return {
            **self._figures(every),
            "unmatched_reads": self.unmatched,
            "staleness_by_list": {k: self._figures(self.samples.get(k, [])) for k in (QUEUED, RUNS)},
        }


QUEUED, RUNS = "queued_runs", "runs"  # the two lists of workload() whose content the jobs change
RUNS_PAGE = 30  # workload()'s runs list: ?per_page=30


@dataclass
class FleetRun:
    label: str
    runners: int = 0
    calls: int = 0
    charged: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    virtual_s: float = 0.0
    wall_s: float = 0.0
    staleness: dict[str, Any] = field(default_factory=dict)
    webhooks_sent: int = 0
    webhooks_lost: int = 0
    changes: int = 0  # transitions of the world (each one webhook event on GitHub)
    jobs_queued: int = 0

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
    """``mode``: "p2p" (nodes share), "isolated" (one cache per node; ``spec.isolated_runners`` of the
    fleet are simulated) or "direct" (no cache; ``spec.baseline_runners``); webhooks (``spec.webhooks``)
    reach the proxies of the "p2p" and "isolated" modes. The world's changes are the same in every mode."""
    loop = VirtualTimeLoop()
    rng = random.Random(spec.seed)
    emu = _emulator(spec)
    upstream = EmulatorUpstream(emu)
    token = fleet_token()
    headers = [("Authorization", f"token {token}"), ("Accept", "application/vnd.github+json")]
    repos = _repo_names(emu, spec.repos)
    end = spec.hours * 3600.0
    runners = {
        "direct": spec.baseline_runners,
        "isolated": min(spec.runners, spec.isolated_runners or spec.runners),
    }.get(mode, spec.runners)
    run = FleetRun(mode, runners=runners)
    engines: list[CacheEngine] = []
    if mode != "direct":
        net = SimNetwork(loop, rng, spec.propagation_ms)
        base = CacheSettings(upstream="http://emulator.invalid", cache_dir=work)
        for n in range(-(-runners // spec.runners_per_node)):
            settings = replace(base, cache_dir=work / mode / f"node{n}")
            store = CacheStore.for_settings(settings, memory=True)  # the same SQL, no files
            engine = CacheEngine(settings, store, upstream, clock=loop.wall)  # type: ignore[arg-type]
            if mode == "p2p":
                net.join(engine)
            engines.append(engine)

    stale = Staleness()
    hook_rng = random.Random(spec.seed * 7 + 1)
    hooks = spec.webhooks and bool(engines)

    def truth(name: str) -> None:
        """The watched lists of ``name`` as the emulator would answer them now."""
        stale.record(f"{QUEUED}:{name}", loop.time(), frozenset(emu.run_ids(ORG, name, status="queued")))
        stale.record(f"{RUNS}:{name}", loop.time(), tuple(emu.run_states(ORG, name, RUNS_PAGE)))

    for name in repos:
        truth(name)

    def deliver(name: str, event: str) -> None:
        """One delivery of a change in ``name``: to one proxy (the hook's URL), which passes it on."""
        run.webhooks_sent += 1
        if hook_rng.random() < spec.webhook_loss:
            run.webhooks_lost += 1
            return
        payload = {"repository": {"full_name": f"{ORG}/{name}"}, "organization": {"login": ORG}}
        inv = affected_prefixes(event, payload)
        delay = hook_rng.uniform(*spec.webhook_delay_ms) / 1000.0
        if mode == "p2p":
            loop.call_later(delay, engines[0].invalidate, inv.prefixes, inv.exact)
        else:  # isolated proxies share nothing: the hook would have to reach each (one hook per proxy)
            for engine in engines:
                loop.call_later(delay, engine.invalidate, inv.prefixes, inv.exact, False)

    def changed(name: str, run_id: int | None) -> None:
        """One transition: GitHub sends a ``workflow_run`` delivery and one ``workflow_job`` delivery per
        job of the run (``spec.webhook_per_job``), each lost or delayed on its own."""
        run.changes += 1
        truth(name)
        if not hooks:
            return
        deliver(name, "workflow_run")
        if spec.webhook_per_job and run_id is not None:
            for _ in emu.job_ids(run_id):
                deliver(name, "workflow_job")

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
                    if n in (0, 2) and answer.status == 200:  # workload()'s queued-runs and runs lists
                        stale.observe(
                            QUEUED if n == 0 else RUNS, path.split("/")[3], loop.time(), answer.body
                        )
                run.calls += 1
                run.outcomes[outcome] += 1
            cycle += 1
            pause = spec.poll_s * r.uniform(0.95, 1.05)
            if loop.time() + pause >= end:
                return
            await asyncio.sleep(pause)

    async def churn() -> None:
        """The old model (``--churn-every``): one random change of the whole world at a fixed period."""
        if spec.churn_every_s <= 0:
            return
        while True:
            await asyncio.sleep(spec.churn_every_s)
            before = {name: tuple(emu.run_states(ORG, name, 10**6)) for name in repos}
            emu.mutate(1)
            for name in repos:
                if tuple(emu.run_states(ORG, name, 10**6)) != before[name]:
                    changed(name, None)

    def lifecycle(name: str, run_id: int, r: random.Random) -> None:
        """queued -> in_progress after a queue wait -> completed after the job's duration."""

        def complete() -> None:
            emu.complete_run(run_id)
            changed(name, run_id)

        def start() -> None:
            emu.start_run(run_id)
            changed(name, run_id)
            loop.call_later(r.uniform(*spec.job_duration_s), complete)

        loop.call_later(r.uniform(*spec.queue_wait_s), start)

    async def jobs() -> None:
        """Jobs arrive as a Poisson process over the watched repositories (``spec.jobs_per_hour``)."""
        if spec.jobs_per_hour <= 0:
            return
        r = random.Random(spec.seed * 31 + 5)  # its own dice: the same arrivals in every mode
        while True:
            await asyncio.sleep(r.expovariate(spec.jobs_per_hour / 3600.0))
            if loop.time() >= end:
                return
            name = r.choice(repos)
            run_id = emu.queue_run(ORG, name)
            run.jobs_queued += 1
            changed(name, run_id)
            lifecycle(name, run_id, r)

    async def main() -> None:
        world = [asyncio.ensure_future(churn()), asyncio.ensure_future(jobs())]
        await asyncio.gather(*(runner(i) for i in range(runners)))
        await asyncio.sleep(max(0.0, end - loop.time()))  # the world runs the whole window in every mode
        for task in world:
            task.cancel()
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
        f"{mode}: {runners} runners, {run.calls} calls, {run.changes} changes in {loop.now / 3600:.2f} "
        f"virtual h -> {run.charged} charged ({run.wall_s:.1f} s)"
    )
    return run


def _quiet(_message: str) -> None:
    return None


def _simulate_in_worker(spec: FleetSimSpec, mode: str, work: Path) -> FleetRun:
    return simulate(spec, mode, work, _quiet)


def bench_fleet(
    spec: FleetSimSpec, progress: Callable[[str], None] | None = None, workers: int = 2
) -> dict[str, Any]:
    """The four simulations (shared, isolated, direct, and shared without webhooks) are independent: they
    run in ``workers`` processes at once (each is one single-threaded event loop)."""
    say = progress or (lambda _m: None)
    say(
        f"{spec.runners} runners on {spec.nodes} proxies ({spec.runners_per_node} per box), "
        f"{spec.hours:g} virtual hour(s), {spec.jobs_per_hour:g} jobs/h"
    )
    t0 = time.monotonic()
    jobs: dict[str, tuple[FleetSimSpec, str]] = {"shared": (spec, "p2p")}
    if spec.webhooks:  # the same fleet without webhooks, for the staleness and cost side by side
        jobs["without"] = (replace(spec, webhooks=False), "p2p")
    jobs.update({"isolated": (spec, "isolated"), "direct": (spec, "direct")})
    runs: dict[str, FleetRun] = {}
    with tempfile.TemporaryDirectory(prefix="fleetci-bench-fleet-") as tmp:
        work = Path(tmp)
        if workers <= 1:
            for name, (s, mode) in jobs.items():
                runs[name] = simulate(s, mode, work / name, say)
        else:
            import concurrent.futures as cf
            import multiprocessing

            ctx = multiprocessing.get_context("spawn")  # no forked copy of the caller's threads
            with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = {
                    pool.submit(_simulate_in_worker, s, mode, work / name): name
                    for name, (s, mode) in jobs.items()
                }
                for fut in cf.as_completed(futures):
                    r = runs[futures[fut]] = fut.result()
                    say(
                        f"{futures[fut]}: {r.runners} runners, {r.calls} calls, {r.changes} changes -> "
                        f"{r.charged} charged ({r.wall_s:.1f} s)"
                    )
    shared, isolated, direct = runs["shared"], runs["isolated"], runs["direct"]
    without = runs.get("without")
    hours = spec.hours
    per_hour = shared.per_hour(hours)
    direct_per_runner = direct.per_hour(hours) / max(1, spec.baseline_runners)
    isolated_per_hour = isolated.per_hour(hours) * spec.runners / max(1, isolated.runners)

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
        # isolated caches share nothing: a sample of the fleet's boxes, scaled to all of them
        "charged_per_hour_isolated": round(isolated_per_hour, 1),
        "runners_supported_per_5000h_isolated": supported(isolated_per_hour, spec.runners),
        "isolated_sampled_runners": isolated.runners,
        "baseline_charged_per_hour": round(direct_per_runner * spec.runners, 1),
        "baseline_runners_supported_per_5000h": int(HOURLY_BUDGET / direct_per_runner),
        "baseline_sampled_runners": spec.baseline_runners,
        "outcomes": dict(sorted(shared.outcomes.items())),
        "outcomes_isolated": dict(sorted(isolated.outcomes.items())),
        "repos": spec.repos,
        "poll_s": spec.poll_s,
        "churn_every_s": spec.churn_every_s,
        "jobs_per_hour": spec.jobs_per_hour,
        "jobs_queued": shared.jobs_queued,
        "changes": shared.changes,
        "queue_wait_s": list(spec.queue_wait_s),
        "job_duration_s": list(spec.job_duration_s),
        "latency_ms": list(spec.latency_ms),
        "propagation_ms": list(spec.propagation_ms),
        "wall_s": round(time.monotonic() - t0, 1),
        "wall_s_by_run": {name: round(r.wall_s, 1) for name, r in runs.items()},
        "workers": workers,
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
                "webhook_per_job": spec.webhook_per_job,
                "webhooks_sent": shared.webhooks_sent,
                "webhooks_lost": shared.webhooks_lost,
                "without_webhooks": {
                    "charged_per_hour": round(without.per_hour(hours), 1),
                    **without.staleness,
                },
                # the side-by-side figures, flat (the docs tables read top-level keys)
                "charged_per_hour_without_webhooks": round(without.per_hour(hours), 1),
                "staleness_p50_s_without_webhooks": without.staleness.get("staleness_p50_s", 0.0),
                "staleness_p99_s_without_webhooks": without.staleness.get("staleness_p99_s", 0.0),
                "staleness_max_s_without_webhooks": without.staleness.get("staleness_max_s", 0.0),
                "stale_reads_without_webhooks": without.staleness.get("stale_reads", 0),
                "targets": {"charged_per_hour": 4000, "staleness_p99_s": 2, "at_runners": 5000},
            }
        )
    return result
