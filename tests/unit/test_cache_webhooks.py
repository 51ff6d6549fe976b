"""Issue 17: which entries a webhook makes stale, signatures, hook references, the store's invalidation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetci.cache.policy import scope_of
from fleetci.cache.store import CacheStore, Entry
from fleetci.cache.webhooks import HookRef, affected_prefixes, signature, signature_ok
from fleetci.errors import UsageError
from support import RunCli, clean_env, one_line_error

REPO = {"repository": {"full_name": "Octo-Org/API", "name": "API", "owner": {"login": "Octo-Org"}}}


def test_workflow_events_make_the_repositorys_actions_and_the_org_runners_stale() -> None:
    inv = affected_prefixes("workflow_job", {**REPO, "organization": {"login": "Octo-Org"}})
    assert "/repos/Octo-Org/API/actions/" in inv.prefixes
    assert "/orgs/Octo-Org/actions/runners" in inv.prefixes
    assert not any(p.startswith("/repos/Octo-Org/API?") for p in inv.prefixes) and inv.exact == ()


def test_repository_events_reach_the_repository_and_the_lists_showing_it() -> None:
    renamed = {**REPO, "changes": {"repository": {"name": {"from": "old-api"}}}}
    inv = affected_prefixes("repository", renamed)
    assert {"/repos/Octo-Org/API/", "/orgs/Octo-Org/repos", "/user/repos", "/repos/Octo-Org/old-api/"} <= set(
        inv.prefixes
    )
    assert set(inv.exact) == {"/repos/Octo-Org/API", "/repos/Octo-Org/old-api"}


def test_organization_events_reach_the_organization() -> None:
    inv = affected_prefixes("member", {"organization": {"login": "octo-org"}})
    assert "/orgs/octo-org/" in inv.prefixes and inv.exact == ("/orgs/octo-org",)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"repository": "octo-org/api"},
        {"repository": {"full_name": "../../etc"}},
        {"repository": {"full_name": "a/b/c"}},
        {"repository": {"full_name": "octo-org/api?x=1"}},
        {"organization": {"login": ["x"]}},
    ],
)
def test_payloads_without_a_trustworthy_repository_invalidate_nothing(payload: dict[str, object]) -> None:
    for event in ("workflow_job", "repository", "member", "sponsorship", "ping"):
        inv = affected_prefixes(event, payload)
        assert inv.prefixes == () and inv.exact == ()


@given(st.binary(max_size=256), st.binary(min_size=1, max_size=8))
def test_any_change_to_the_body_breaks_the_signature(body: bytes, extra: bytes) -> None:
    good = signature("s3cret", body)
    assert signature_ok("s3cret", body, good)
    assert not signature_ok("s3cret", body + extra, good)
    assert not signature_ok("other", body, good)
    assert not signature_ok("", body, signature("", body))  # no secret: nothing is ever accepted
    assert not signature_ok("s3cret", body, None)


@pytest.mark.parametrize("text", ["octo-org", "octo-org:x", "a/b/c:1", ":1", "o/r:-1", "o/../r:1", "o/r:1e3"])
def test_bad_hook_references_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="OWNER/REPO:HOOK_ID or ORG:HOOK_ID"):
        HookRef.parse(text)


def test_hook_references() -> None:
    assert HookRef.parse("octo-org/api:12").path == "/repos/octo-org/api/hooks/12"
    assert HookRef.parse(" octo-org:7 ").path == "/orgs/octo-org/hooks/7"


def _entry(target: str, scope: str, now: float) -> Entry:
    return Entry.create(f"{scope}:{target}", scope, target, 200, (("ETag", '"x"'),), b"{}", 60, now)


def test_store_invalidation_reaches_every_partition_and_nothing_else(tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "cache.db", memory_bytes=1)  # almost everything only on disk
    now = 1000.0
    alice, bob = scope_of("token a"), scope_of("token b")
    targets = [
        "/repos/octo-org/api/actions/runs?status=queued",
        "/repos/OCTO-ORG/Api/actions/jobs/5",
        "/repos/octo-org/api-two/actions/runs",
        "/repos/octo-org/api",
        "/orgs/octo-org/repos",
    ]
    for scope in (alice, bob):
        for t in targets:
            store.put(_entry(t, scope, now))
    pending = _entry("/repos/octo-org/api/actions/runs", alice, now)
    store.remember(pending)  # written behind: in memory, not on disk yet

    n = store.invalidate(["/repos/octo-org/api/actions/"], ["/repos/octo-org/api"], now=now + 1)
    assert n == 7  # 3 targets x 2 scopes + the pending one

    def fresh(t: str, scope: str) -> bool:
        got = store.get(f"{scope}:{t}")
        return got is not None and got.is_fresh(now + 2)

    for scope in (alice, bob):
        assert [fresh(t, scope) for t in targets] == [False, False, True, False, True]
    store.put(pending)  # the write-behind lands after the invalidation: it must not undo it
    assert not fresh(pending.target, alice)
    store.close()
    assert not CacheStore(tmp_path / "cache.db").get(pending.key).is_fresh(now + 2)  # type: ignore[union-attr]


def test_serve_refuses_bad_webhook_settings_in_one_line(fleetci: RunCli, tmp_path: Path) -> None:
    base = ("cache", "serve", "--cache-dir", str(tmp_path), "--upstream", "http://127.0.0.1:9")
    env = clean_env(CACHE_WEBHOOK_SECRET="s")
    out = fleetci(*base, "--webhook-reconcile", "octo-org/api", env=env)
    assert out.returncode == 2 and "OWNER/REPO:HOOK_ID" in one_line_error(out)
    out = fleetci(*base, "--webhook-reconcile", "octo-org/api:1", env=env)
    assert out.returncode == 2 and "CACHE_WEBHOOK_TOKEN" in one_line_error(out)
    out = fleetci(*base, "--webhook-reconcile", "octo-org/api:1", env=clean_env(CACHE_WEBHOOK_TOKEN="t"))
    assert out.returncode == 2 and "CACHE_WEBHOOK_SECRET" in one_line_error(out)
    out = fleetci(*base, "--webhook-port", "99999", env=env)
    assert out.returncode == 2 and "--webhook-port" in one_line_error(out)


def test_invalidations_travel_sealed_and_malformed_ones_are_refused() -> None:
    from fleetci.p2p.crypto import FleetKeys, SealError
    from fleetci.p2p.messages import (
        INVALIDATE,
        INVALIDATION_SCOPE,
        MessageError,
        _seal_message,
        decode_message,
        encode_invalidation,
    )

    keys = FleetKeys("fleet secret")
    data = encode_invalidation(keys, "peerA", ("/repos/o/r/actions/",), ("/repos/o/r",))
    msg = decode_message(keys, data)
    assert msg.invalidations == [(("/repos/o/r/actions/",), ("/repos/o/r",))] and not msg.announcements
    with pytest.raises(SealError):
        decode_message(FleetKeys("another secret"), data)
    for items in ([[["no-slash"], [], 0]], [[["/x"] * 65, [], 0]], [[[1], [], 0]], [["/x"]]):
        with pytest.raises(MessageError):
            decode_message(keys, _seal_message(keys, "peerA", INVALIDATION_SCOPE, INVALIDATE, items))
    with pytest.raises(MessageError):  # only under the fleet-wide pseudo-scope
        decode_message(keys, _seal_message(keys, "peerA", "some-scope", INVALIDATE, [[["/x"], [], 0]]))


def test_announcements_of_copies_older_than_an_invalidation_are_refused(tmp_path: Path) -> None:
    """A peer that fetched just before the change must not make the entry fresh again here."""
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.peering import Announcement
    from fleetci.cache.settings import CacheSettings

    now = [5000.0]
    engine = CacheEngine(CacheSettings(cache_dir=tmp_path), clock=lambda: now[0])
    target = "/repos/o/r/actions/runs?status=queued"
    before = _entry(target, "s", now[0] - 5)
    after = Entry.create("s:other", "s", target + "&x=1", 200, (("ETag", '"y"'),), b"{}", 60, now[0] + 1)
    engine.store.put(before)
    assert engine.invalidate(["/repos/o/r/actions/"], forward=False) == 1
    engine.accept_announcements([Announcement.of(before, "peer"), Announcement.of(after, "peer")])
    got = engine.store.get(before.key)
    assert got is not None and not got.is_fresh(now[0] + 0.5)
    assert engine.store.get(after.key) is not None  # stored after the change: welcome
    engine.store.close()


@pytest.mark.parametrize(
    ("event", "payload", "refused"),
    [
        ("workflow_job", {"workflow_job": {}}, False),
        ("workflow_run", {"workflow_run": {}}, False),
        ("deployment_status", {"deployment_status": {}, "workflow_run": {}}, False),
        ("repository", {"repository": {}}, False),  # no subject key to check: accepted
        ("workflow_job", {"repository": {}}, True),  # the event's own object is missing
        ("repository", {"workflow_job": {}}, True),  # a job's body relabelled to reach the repository
        ("organization", {"check_run": {}}, True),
        ("workflow_job", {"workflow_job": {}, "workflow_run": {}}, True),
    ],
)
def test_the_event_header_must_agree_with_the_bodys_subject(
    event: str, payload: dict[str, object], refused: bool
) -> None:
    from fleetci.cache.webhooks import event_mismatch

    message = event_mismatch(event, payload)
    assert bool(message) is refused
    assert "\n" not in message


def test_serve_refuses_bad_prewarm_settings_in_one_line(fleetci: RunCli, tmp_path: Path) -> None:
    base = ("cache", "serve", "--cache-dir", str(tmp_path), "--upstream", "http://127.0.0.1:9")
    out = fleetci(*base, "--prewarm", "/repos/(unclosed", env=clean_env())
    assert out.returncode == 2 and "regular expression" in one_line_error(out)
    for var, value in (("CACHE_PREWARM_LEAD", "-1"), ("CACHE_PREWARM_RESERVE", "1.5")):
        out = fleetci(*base, env=clean_env(**{var: value}))
        assert out.returncode == 2 and var in one_line_error(out)


def test_a_copy_confirmed_after_an_invalidation_serves_the_fleet(tmp_path: Path) -> None:
    """After a fleet-wide invalidation the first node to revalidate (a free 304) announces the copy as
    confirmed now: the other nodes take it instead of each revalidating upstream (real engines, the
    emulator called in process, the fleet benchmark's simulated links)."""
    import asyncio
    import random

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream, SimNetwork, VirtualTimeLoop
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.settings import CacheSettings
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    loop = VirtualTimeLoop()
    emu = GitHubEmulator(EmulatorConfig(latency_ms=(50.0, 50.0), seed=3))
    upstream = EmulatorUpstream(emu)
    net = SimNetwork(loop, random.Random(1), (10.0, 10.0))
    nodes = []
    for n in range(2):
        settings = CacheSettings(upstream="http://emulator.invalid", cache_dir=tmp_path / f"n{n}")
        store = CacheStore.for_settings(settings, memory=True)
        engine = CacheEngine(settings, store, upstream, clock=loop.wall)  # type: ignore[arg-type]
        net.join(engine)
        nodes.append(engine)
    a, b = nodes
    headers = [("Authorization", f"token {fleet_token()}")]
    target = "/repos/octo-org/api/actions/runs?status=queued"

    async def scenario() -> list[str]:
        seen = [(await a.handle("GET", target, headers)).outcome]
        await asyncio.sleep(1)
        seen.append((await b.handle("GET", target, headers)).outcome)
        a.invalidate(["/repos/octo-org/"])  # a webhook at a, gossiped to b
        await asyncio.sleep(1)
        seen.append((await a.handle("GET", target, headers)).outcome)  # nothing changed: a free 304
        await asyncio.sleep(1)
        before = b.counters.upstream_requests
        seen.append((await b.handle("GET", target, headers)).outcome)
        seen.append(str(b.counters.upstream_requests - before))
        for engine in nodes:
            await engine.close()
        return seen

    try:
        seen = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert seen[0] == "MISS" and seen[2] == "REVALIDATED", seen
    assert seen[3] in ("HIT", "PEER") and seen[4] == "0", seen  # b asked GitHub nothing


# -- issue 16 review t2 (#2-#4): the P2P miss path around webhooks, 304s and leases ----------------------
# Real engines and the emulator's app called in process, linked by the fleet benchmark's simulated network
# (virtual time: a 2 s wait costs nothing and durations are exact), with the lease line added: a question
# is answered by the owner's engine, as fleetci.p2p's lease line does.


def _sim_fleet(tmp_path: Path, n: int, upstream: object) -> tuple[object, list[object]]:
    import random

    from fleetci.bench.fleet import SimNetwork, SimPeerLink, VirtualTimeLoop
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.settings import CacheSettings

    class LeaseLink(SimPeerLink):
        def lease(self, scope: str, key: str, owner: str) -> object:
            import concurrent.futures

            fut: concurrent.futures.Future[str | None] = concurrent.futures.Future()
            fut.set_result(self.net.links[owner].engine.answer_lease(key, self.peer_id, scope))
            return fut

    loop = VirtualTimeLoop()
    net = SimNetwork(loop, random.Random(1), (10.0, 10.0))
    nodes = []
    for i in range(n):
        settings = CacheSettings(upstream="http://emulator.invalid", cache_dir=tmp_path / f"n{i}")
        engine = CacheEngine(
            settings, CacheStore.for_settings(settings, memory=True), upstream, clock=loop.wall
        )  # type: ignore[arg-type]
        link = LeaseLink(net, f"node-{i:03d}", engine)
        net.links[link.peer_id] = link
        engine.peers = link
        nodes.append(engine)
    return loop, nodes


def _owned_target(engines: list[object], owner: object, others: tuple[object, ...] = ()) -> str:
    """A queued-runs list whose key ``owner`` owns (rendezvous hashing over the simulated fleet)."""
    from fleetci.bench.cache import fleet_token

    ids = sorted(e.peers.peer_id for e in engines)  # type: ignore[attr-defined]
    for repo in ("api", "docs", "web", "infra", "mobile", "data", "tools", "site"):
        target = f"/repos/octo-org/{repo}/actions/runs?status=queued"
        key = owner.prepare(target, {"authorization": f"token {fleet_token()}"}).key  # type: ignore[attr-defined]
        if owner.owner_of(key, ids) == owner.peers.peer_id:  # type: ignore[attr-defined]
            return target
    raise AssertionError("no target owned by that node")


def test_a_fresh_hint_refusal_never_makes_the_asker_wait(tmp_path: Path) -> None:
    """#2: the owner knows of a fresh copy (announced a moment ago), but the asker dropped its own (a
    webhook reached it before the owner): the owner's answer says so, and the asker fetches at once
    instead of waiting claim_wait for an announcement that was made already."""
    import asyncio

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    emu = GitHubEmulator(EmulatorConfig(latency_ms=(50.0, 50.0), seed=3))
    loop, nodes = _sim_fleet(tmp_path, 3, EmulatorUpstream(emu))
    owner, fetcher, asker = nodes
    target = _owned_target(nodes, owner)
    headers = [("Authorization", f"token {fleet_token()}")]

    async def scenario() -> tuple[str, float, bytes, bytes]:
        first = await fetcher.handle("GET", target, headers)  # type: ignore[attr-defined]
        await asyncio.sleep(1)  # announced: the owner holds the hint, the asker the copy
        emu.queue_run("octo-org", target.split("/")[3])
        asker.invalidate(["/repos/octo-org/"], forward=False)  # the webhook reached the asker only
        started = loop.time()
        got = await asker.handle("GET", target, headers)  # type: ignore[attr-defined]
        took = loop.time() - started
        for engine in nodes:
            await engine.close()  # type: ignore[attr-defined]
        return got.outcome, took, got.body, first.body

    try:
        outcome, took, body, old = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert outcome == "MISS" and body != old  # the new list, from GitHub
    assert took < asker.settings.claim_wait / 2, took  # type: ignore[attr-defined]


def test_a_key_fetched_at_once_is_not_leased_to_another_node(tmp_path: Path) -> None:
    """#4: a node that thinks nobody else uses its token fetches at once; a rarer user of that token
    asks it (the key's owner) for a lease meanwhile: it is told to wait for that fetch, not granted a
    second charged call, and the question tells the owner the token is in use elsewhere."""
    import asyncio

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    emu = GitHubEmulator(EmulatorConfig(latency_ms=(50.0, 50.0), seed=3))
    upstream = EmulatorUpstream(emu)
    loop, nodes = _sim_fleet(tmp_path, 2, upstream)
    busy, rare = nodes
    target = _owned_target(nodes, busy)
    headers = [("Authorization", f"token {fleet_token()}")]

    async def scenario() -> tuple[int, str, int]:
        await busy.handle("GET", "/repos/octo-org/api/pulls", headers)  # type: ignore[attr-defined]
        await asyncio.sleep(5)  # busy has used the token for longer than claim_wait, heard nobody in it
        before = busy.counters.upstream_requests + rare.counters.upstream_requests  # type: ignore[attr-defined]
        mine = asyncio.ensure_future(busy.handle("GET", target, headers))  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
        theirs = await rare.handle("GET", target, headers)  # type: ignore[attr-defined]
        await mine
        calls = busy.counters.upstream_requests + rare.counters.upstream_requests - before  # type: ignore[attr-defined]
        at_once = busy.counters.fetched_at_once  # type: ignore[attr-defined]
        await busy.handle("GET", "/repos/octo-org/api/issues", headers)  # type: ignore[attr-defined]
        after = busy.counters.fetched_at_once - at_once  # type: ignore[attr-defined]
        for engine in nodes:
            await engine.close()  # type: ignore[attr-defined]
        return calls, theirs.outcome, after

    try:
        calls, outcome, at_once_after = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert calls == 1 and outcome == "PEER", (calls, outcome)
    assert at_once_after == 0  # the question said the token is in use elsewhere: ask from now on


class _SlowReturn:
    """The emulator answers at once, the answer takes ``delay`` to come back (a long round trip): a 304
    GitHub computed before a change arrives after the webhook announcing it."""

    def __init__(self, inner: object, delay: float) -> None:
        self.inner, self.delay, self.base_path = inner, delay, ""

    async def request(self, *args: object, **kwargs: object) -> object:
        import asyncio

        up = await self.inner.request(*args, **kwargs)  # type: ignore[attr-defined]
        await asyncio.sleep(self.delay)
        return up

    async def close(self) -> None:
        await self.inner.close()  # type: ignore[attr-defined]


def test_a_304_older_than_a_webhook_is_not_announced_as_current(tmp_path: Path) -> None:
    """#3: a revalidation is out when a run is queued and the webhook invalidates the list; its 304
    (computed before the change) must neither make the old list fresh again nor reach peers as newer
    than the invalidation: every reader then gets the new list."""
    import asyncio

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    emu = GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=3))
    loop, nodes = _sim_fleet(tmp_path, 2, _SlowReturn(EmulatorUpstream(emu), 0.2))
    a, b = nodes
    target = "/repos/octo-org/api/actions/runs?status=queued"
    headers = [("Authorization", f"token {fleet_token()}")]

    async def scenario() -> tuple[bytes, str, bytes, bytes, bytes]:
        old = (await a.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        ttl = a.prepare(target, {"authorization": headers[0][1]}).ttl  # type: ignore[attr-defined]
        await asyncio.sleep(ttl + 1)  # stale everywhere: the next read revalidates
        reval = asyncio.ensure_future(a.handle("GET", target, headers))  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)  # GitHub said 304 already; the answer is on its way back
        emu.queue_run("octo-org", "api")
        b.invalidate(["/repos/octo-org/api/"])  # the webhook reaches b, gossiped to a
        first = await reval
        await asyncio.sleep(1)  # whatever a announced has reached b
        from_b = await b.handle("GET", target, headers)  # type: ignore[attr-defined]
        from_a = (await a.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        for engine in nodes:
            await engine.close()  # type: ignore[attr-defined]
        return old, first.outcome, from_b.body, from_a, first.body

    try:
        old, outcome, from_b, from_a, first = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert outcome == "REVALIDATED" and first == old  # concurrent with the change: either is right
    assert from_b != old and from_a != old  # afterwards nobody serves the old list as current


def test_a_304_never_writes_its_old_body_over_a_newer_peer_copy(tmp_path: Path) -> None:
    """#3: while a's revalidation is out, a run is queued (its delivery lost) and b fetches the new list
    and announces it; a's 304, for the old body, then arrives: a keeps the newer copy and announces
    nothing, so neither node goes back to the old list."""
    import asyncio

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    emu = GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=3))
    direct = EmulatorUpstream(emu)
    loop, nodes = _sim_fleet(tmp_path, 2, _SlowReturn(direct, 0.5))
    a, b = nodes
    b.upstream = direct  # type: ignore[attr-defined]
    target = "/repos/octo-org/api/actions/runs?status=queued"
    headers = [("Authorization", f"token {fleet_token()}")]

    async def scenario() -> tuple[bytes, bytes, bytes, bytes]:
        old = (await a.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        prep = b.prepare(target, {"authorization": headers[0][1]})  # type: ignore[attr-defined]
        await asyncio.sleep(prep.ttl + 1)  # stale everywhere
        reval = asyncio.ensure_future(a.revalidate(prep, headers))  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)  # GitHub said 304 already; the answer is on its way back
        emu.queue_run("octo-org", "api")
        new = (await b.revalidate(prep, headers)).body  # type: ignore[attr-defined]
        await reval
        await asyncio.sleep(1)
        from_a = (await a.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        from_b = (await b.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        for engine in nodes:
            await engine.close()  # type: ignore[attr-defined]
        return old, new, from_a, from_b

    try:
        old, new, from_a, from_b = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert new != old
    assert from_a == new and from_b == new


def test_a_full_answer_older_than_a_webhook_is_not_announced_as_current(tmp_path: Path) -> None:
    """#3, the charged path: a miss is out when a run is queued and the webhook invalidates the list; the
    200 (computed before the change) answers that reader but is neither fresh afterwards nor announced to
    peers as newer than the invalidation."""
    import asyncio

    from fleetci.bench.cache import fleet_token
    from fleetci.bench.fleet import EmulatorUpstream
    from fleetci.testing import EmulatorConfig, GitHubEmulator

    emu = GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=3))
    loop, nodes = _sim_fleet(tmp_path, 2, _SlowReturn(EmulatorUpstream(emu), 0.2))
    a, b = nodes
    target = "/repos/octo-org/api/actions/runs?status=queued"
    headers = [("Authorization", f"token {fleet_token()}")]

    async def scenario() -> tuple[bytes, bytes, bytes]:
        miss = asyncio.ensure_future(a.handle("GET", target, headers))  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)  # GitHub answered already; the answer is on its way back
        emu.queue_run("octo-org", "api")
        b.invalidate(["/repos/octo-org/api/"])  # the webhook reaches b, gossiped to a
        old = (await miss).body
        await asyncio.sleep(1)
        from_b = (await b.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        from_a = (await a.handle("GET", target, headers)).body  # type: ignore[attr-defined]
        for engine in nodes:
            await engine.close()  # type: ignore[attr-defined]
        return old, from_b, from_a

    try:
        old, from_b, from_a = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert from_b != old and from_a != old


def test_start_reads_the_variables_setup_p2p_cache_exports_for_prewarming_and_webhooks(
    fleetci: RunCli, tmp_path: Path
) -> None:
    """The action's prewarm/webhook-port/webhook-secret inputs travel as CACHE_PREWARM, CACHE_WEBHOOK_PORT
    and CACHE_WEBHOOK_SECRET (never flags): ``cache start`` resolves them from its environment, refusing a
    bad one in one line before anything starts, and the ``serve`` it spawns inherits that environment."""
    cache = tmp_path / "c"
    upstream = "http://127.0.0.1:9"
    base = ("cache", "start", "--cache-dir", str(cache), "--upstream", upstream, "--no-host-proxy")
    for var, value in (("CACHE_PREWARM", "/repos/(unclosed"), ("CACHE_WEBHOOK_PORT", "70000")):
        out = fleetci(*base, env=clean_env(CACHE_WEBHOOK_SECRET="hook-secret", **{var: value}))
        assert out.returncode == 2 and var in one_line_error(out), out
        assert "hook-secret" not in out.stdout + out.stderr
    assert not cache.exists()
