"""The shared store (CACHE_BACKEND=redis://…): real proxies, a real redis-server, the real emulator.

One redis-server, one emulator and two proxies serve the whole module (each test uses its own URLs);
the kill-and-restart test runs last because it takes Redis away.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.cache.hostproxy import find_host_proxy
from fleetci.cache.redis_store import CAPPED_GET_BOTH
from fleetci.cache.settings import cache_settings
from support import Proxy, clean_env, one_line_error, run_fleetci, start_proxy, wait_until
from support.emulator import quiet_emulator
from support.redis import PASSWORD, RedisServer

pytestmark = pytest.mark.integration

SECRET = "fleet-secret-for-redis-tests"
SHORT_TTL = 2.0  # seconds
LEASE = 0.5  # seconds: CACHE_CLAIM_WAIT, the miss lock's lease


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    with quiet_emulator() as server:
        yield server


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.kill()


def shared_env(store: RedisServer, password: str = PASSWORD, **extra: str) -> dict[str, str]:
    return clean_env(
        CACHE_BACKEND=store.url, CACHE_REDIS_PASSWORD=password, FLEETCI_CACHE_SECRET=SECRET, **extra
    )


@pytest.fixture(scope="module")
def fleet(
    emulator: Any, store: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Proxy]]:
    """Three proxies on the one Redis; a short lock lease (CACHE_CLAIM_WAIT) so that an upstream slower
    than it is cheap to test. They push nothing (CACHE_SHARED_PUSH_BYTES=0): these tests are about
    the Redis round trip (``pushing`` has two proxies that push)."""
    base = tmp_path_factory.mktemp("proxies")
    config = base / "config.yml"  # a short fresh window for the revalidation test's URLs only
    config.write_text(f"cache:\n  ttl:\n    - {{pattern: '[?&]ttl={SHORT_TTL:g}', seconds: {SHORT_TTL:g}}}\n")
    env = shared_env(
        store, FLEETCI_CONFIG=str(config), CACHE_CLAIM_WAIT=str(LEASE), CACHE_SHARED_PUSH_BYTES="0"
    )
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(start_proxy(emulator.url, base / n / "cache", env=env)) for n in "abc"]


@pytest.fixture(scope="module")
def pair(fleet: list[Proxy]) -> list[Proxy]:
    return fleet[:2]


def charged(emulator: Any, login: str) -> int:
    return int(emulator.emulator.charged(token(login)))


def entry_keys(store: RedisServer) -> set[bytes]:
    return set(store.client().scan_iter(match="fleetci:*:e:*"))


def get(proxy: Proxy, target: str, login: str = "alice") -> httpx.Response:
    with proxy.client(token(login)) as c:
        return c.get(target)


def published(store: RedisServer, before: set[bytes]) -> bytes:
    """The one entry key a request added to Redis (the proxy writes it right after answering)."""
    assert wait_until(lambda: len(entry_keys(store) - before) == 1, timeout=10)
    (key,) = entry_keys(store) - before
    return key


def test_second_proxy_first_read_is_a_shared_hit(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    a, b = pair
    before_keys, before = entry_keys(store), charged(emulator, "alice")
    first = get(a, "/repos/octo-org/api")
    key = published(store, before_keys)
    second = get(b, "/repos/octo-org/api")
    again = get(b, "/repos/octo-org/api")
    assert [r.headers["X-Fleetci-Cache"] for r in (first, second, again)] == ["MISS", "SHARED", "HIT"]
    assert first.text.replace(a.url, b.url) == second.text  # links point at the proxy asked
    assert charged(emulator, "alice") - before == 1
    assert b.stats()["shared_hits"] == 1
    assert b.stats()["shared_lookups"] == 1 and b.stats()["shared_pushed"] == 0  # push cap 0: from Redis
    # another token still misses on the other proxy: entries stay partitioned by credential
    assert get(b, "/repos/octo-org/api", "bob").headers["X-Fleetci-Cache"] == "MISS"
    # Redis holds sealed values and hashed keys: no token, no URL, no body in clear text
    raw = store.client().get(key)
    assert raw is not None and b"octo-org" not in raw and b"octo-org" not in key
    for k in store.client().scan_iter(match="*"):
        value = store.client().get(k) if store.client().type(k) == b"string" else b""
        assert token("alice").encode() not in k + (value or b"")


# -- pushed entries (CACHE_SHARED_PUSH_BYTES): a proxy's first read of what another fetched is local ------
@pytest.fixture(scope="module")
def pushing(
    emulator: Any, store: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Proxy]]:
    """Two proxies on the same Redis that push small entries to each other (the default cap); both
    have served alice (a proxy keeps only pushes of scopes its clients used lately)."""
    base = tmp_path_factory.mktemp("pushing")
    with contextlib.ExitStack() as stack:
        proxies = [
            stack.enter_context(start_proxy(emulator.url, base / n / "cache", env=shared_env(store)))
            for n in "de"
        ]
        for proxy in proxies:
            assert get(proxy, f"/repos/octo-org/api?push=warm-{proxy.url}").status_code == 200
        yield proxies


def counter(proxy: Proxy, name: str) -> int:
    return int(str(proxy.stats()[name]))


def pushes_seen(store: RedisServer) -> Any:
    """The fleet's entry channel as anyone with access to Redis sees it (subscribed before this returns)."""
    sub = store.client().pubsub(ignore_subscribe_messages=True)
    sub.psubscribe("fleetci:*:e")
    assert sub.get_message(timeout=5) is None  # the subscription's confirmation, skipped
    return sub


def next_push(sub: Any) -> tuple[bytes, bytes]:
    """(channel, message) of the next entry a proxy pushed."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got = sub.get_message(timeout=1)
        if got is not None:
            return got["channel"], got["data"]
    raise AssertionError("no entry was pushed")


def test_pushed_entry_makes_the_first_read_shared_without_a_redis_lookup(
    emulator: Any, pushing: list[Proxy]
) -> None:
    d, e = pushing
    target = "/repos/octo-org/api?push=first-read"
    pushed, lookups, hits = (counter(e, n) for n in ("shared_pushed", "shared_lookups", "shared_hits"))
    before = charged(emulator, "alice")
    first = get(d, target)
    assert first.headers["X-Fleetci-Cache"] == "MISS"
    assert wait_until(lambda: counter(e, "shared_pushed") == pushed + 1)
    reads = [get(e, target) for _ in range(2)]
    assert [r.headers["X-Fleetci-Cache"] for r in reads] == ["SHARED", "HIT"]
    assert first.text.replace(d.url, e.url) == reads[0].text
    assert counter(e, "shared_lookups") == lookups  # answered from e's disk: no round trip to Redis
    assert counter(e, "shared_hits") == hits + 1 and charged(emulator, "alice") - before == 1
    # another token still misses on e: a pushed entry stays in its credential's partition
    assert get(e, target, "fleet-bot").headers["X-Fleetci-Cache"] == "MISS"
    assert counter(e, "shared_lookups") == lookups + 1


def test_an_idle_subscription_stays_subscribed(store: RedisServer, pushing: list[Proxy]) -> None:
    """The subscription (pushed entries, webhook invalidations) used to read with the pool's 0.5 s
    socket timeout: idle for half a second, it dropped and was gone for two seconds at a time."""
    d = pushing[0]
    assert get(d, "/repos/octo-org/api?push=idle").headers["X-Fleetci-Cache"] == "MISS"  # some traffic
    r = store.client()
    channel = next(c for c in r.pubsub_channels() if c.endswith(b":e"))
    for _ in range(3):
        time.sleep(1.0)  # idle
        assert dict(r.pubsub_numsub(channel))[channel] == 2  # d and e, all the time


def test_invalidations_and_pushes_subscribe_on_separate_connections_that_ping_and_reconnect(
    store: RedisServer,
) -> None:
    """A burst of pushes that makes Redis drop the entries subscriber (its pubsub output-buffer limit)
    must not cost an invalidation; each subscription PINGs when idle, and reconnects are counted."""
    from fleetci.cache.redis_store import RedisStore
    from fleetci.p2p.crypto import FleetKeys

    url = store.url.rsplit("/", 1)[0] + "/7"  # CLIENT LIST tells this store's connections by their db
    r = store.client()

    def subscribers() -> list[dict[str, Any]]:
        return [c for c in r.client_list() if c.get("db") == "7" and c.get("sub") == "1"]

    async def scenario() -> tuple[int, int, list[str], int]:
        applied: list[tuple[str, ...]] = []
        fleet = RedisStore(url, PASSWORD, FleetKeys(SECRET + "-subs"), max_stale=60, push_bytes=4096)
        fleet.listen_idle = 0.2
        await fleet.start()
        try:
            fleet.listen(lambda p, e: applied.append(p), lambda entry: None, lambda scope: True)
            assert await asyncio.to_thread(wait_until, lambda: len(subscribers()) == 2)
            two = len({c["id"] for c in subscribers()})
            # idle: each one PINGs on its own connection (the last command Redis saw from it)
            assert await asyncio.to_thread(
                wait_until, lambda: [c["cmd"] for c in subscribers()] == ["ping", "ping"]
            )
            victim = next(c for c in subscribers())["id"]
            r.client_kill_filter(_id=victim)
            reconnects = fleet.counters
            assert await asyncio.to_thread(wait_until, lambda: reconnects()["shared_listen_reconnects"] == 1)
            assert await asyncio.to_thread(wait_until, lambda: len(subscribers()) == 2)
            sender = RedisStore(url, PASSWORD, FleetKeys(SECRET + "-subs"), max_stale=60)
            await sender.start()
            sender.invalidate(("/repos/o/",), ())
            await sender.close()
            assert await asyncio.to_thread(wait_until, lambda: applied == [("/repos/o/",)])
            return two, len(subscribers()), [c["cmd"] for c in subscribers()], len(applied)
        finally:
            await fleet.close()

    two, after, _, applied_count = asyncio.run(scenario())
    assert two == 2 and after == 2 and applied_count == 1


def test_hostile_pushed_messages_are_counted_and_never_kept(store: RedisServer, pushing: list[Proxy]) -> None:
    from fleetci.cache.policy import scope_of
    from fleetci.cache.shared import push_message

    d, e = pushing
    sub = pushes_seen(store)
    try:
        pushed = counter(e, "shared_pushed")
        assert get(d, "/repos/octo-org/api?push=hostile").headers["X-Fleetci-Cache"] == "MISS"
        channel, message = next_push(sub)
        assert wait_until(lambda: counter(e, "shared_pushed") == pushed + 1)
    finally:
        sub.close()
    _, key, value = message.split(b"\n", 2)
    fmt, scope, sealed = value.split(b"\n", 2)
    assert (
        b"octo-org" not in message
        and token("alice").encode() not in message
        and SECRET.encode() not in message
    )
    flipped = bytearray(sealed)
    flipped[-3] ^= 0x01
    bob = scope_of(f"token {token('bob')}").encode()
    origin = b"f" * 16  # not e's own token: e does look at these
    hostile = [
        push_message(origin, key.decode(), b"\n".join((fmt, scope, bytes(flipped)))),  # tampered
        push_message(origin, key.decode(), b"\n".join((fmt, bob, sealed))),  # claims another scope
        push_message(origin, "a" * 64, value),  # replayed under another key
        push_message(origin, key.decode(), value + b"x" * (40 * 1024)),  # over the 32 KiB cap
        b"\xff\x00garbage\n\n" * 7,
    ]
    rejected, ignored = counter(e, "shared_rejected"), counter(e, "shared_push_ignored")
    r = store.client()
    for message in hostile:
        assert r.publish(channel, message) == 2  # both proxies subscribe
    # the channel is in order: once the next real push is kept, every hostile one was looked at
    assert get(d, "/repos/octo-org/api?push=after-hostile").headers["X-Fleetci-Cache"] == "MISS"
    assert wait_until(lambda: counter(e, "shared_pushed") == pushed + 2)
    # bob's scope: nobody used it on e, so it is not even opened
    assert counter(e, "shared_rejected") == rejected + len(hostile) - 1
    assert counter(e, "shared_push_ignored") == ignored + 1
    assert counter(d, "shared_rejected") + counter(d, "shared_push_ignored") >= len(hostile)
    assert e.proc.poll() is None


def test_replayed_push_after_a_webhook_invalidation_is_not_kept(
    emulator: Any, store: RedisServer, pushing: list[Proxy]
) -> None:
    from fleetci.cache.redis_store import RedisStore
    from fleetci.p2p.crypto import FleetKeys

    d, e = pushing
    target = "/repos/octo-org/api?push=replayed"
    sub = pushes_seen(store)
    try:
        pushed = counter(e, "shared_pushed")
        assert get(d, target).headers["X-Fleetci-Cache"] == "MISS"
        channel, old = next_push(sub)
        assert wait_until(lambda: counter(e, "shared_pushed") == pushed + 1)
    finally:
        sub.close()

    async def webhook() -> None:  # what a proxy that received the webhook tells the fleet
        fleet = RedisStore(store.url, PASSWORD, FleetKeys(SECRET), max_stale=60)
        await fleet.start()
        fleet.invalidate((target,), ())
        await fleet.close()  # waits for the PUBLISH

    asyncio.run(webhook())
    assert store.client().publish(channel, old) == 2  # the old, validly sealed copy again
    assert get(d, "/repos/octo-org/api?push=after-replay").headers["X-Fleetci-Cache"] == "MISS"
    assert wait_until(lambda: counter(e, "shared_pushed") == pushed + 2)  # that one, not the replay
    before = charged(emulator, "alice")
    assert get(e, target).headers["X-Fleetci-Cache"] == "REVALIDATED"  # e knows its copy is out of date
    assert charged(emulator, "alice") == before  # a 304: free


def test_pushes_of_a_token_no_client_of_the_proxy_used_are_not_kept(
    emulator: Any, pushing: list[Proxy]
) -> None:
    d, e = pushing
    target = "/repos/bob/hello-fleet?push=foreign"
    ignored = counter(e, "shared_push_ignored")
    assert get(d, target, "bob").headers["X-Fleetci-Cache"] == "MISS"
    assert wait_until(lambda: counter(e, "shared_push_ignored") == ignored + 1)
    lookups = counter(e, "shared_lookups")
    assert get(e, target, "bob").headers["X-Fleetci-Cache"] == "SHARED"  # from Redis, as before pushing
    assert counter(e, "shared_lookups") == lookups + 1


def script_calls(store: RedisServer) -> dict[str, int]:
    """How many EVAL and EVALSHA commands Redis ran since the last CONFIG RESETSTAT."""
    stats = store.client().info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("eval", "evalsha")}


def test_shared_hits_send_the_script_digest_and_survive_a_script_flush(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    """Review t2 #12: a shared lookup runs its script by EVALSHA (not the whole text by EVAL on every
    hit), and a Redis that forgot its scripts (SCRIPT FLUSH, a restart) still answers the next hit."""
    a, b = pair
    target = "/repos/octo-org/api?script=digest"
    before = entry_keys(store)
    assert get(a, target).headers["X-Fleetci-Cache"] == "MISS"
    published(store, before)
    before = entry_keys(store)
    assert get(b, "/repos/octo-org/api?script=warm").headers["X-Fleetci-Cache"] == "MISS"  # b ran it too
    published(store, before)  # and its publishing pipeline (EVAL) is over
    store.client().script_flush()
    store.client().config_resetstat()
    shared = get(b, target)
    assert shared.status_code == 200 and shared.headers["X-Fleetci-Cache"] == "SHARED"
    calls = script_calls(store)
    assert calls["eval"] == 0 and calls["evalsha"] >= 1, calls
    assert store.client().script_exists(hashlib.sha1(CAPPED_GET_BOTH.encode()).hexdigest()) == [True]


def test_concurrent_misses_on_two_proxies_make_one_upstream_call(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    emulator.emulator.configure(latency_ms=[300, 300])
    before = charged(emulator, "alice")
    target = "/repos/octo-org/api/actions/runs"

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"token {token('alice')}"}
        async with httpx.AsyncClient(timeout=30, headers=headers) as c:
            return await asyncio.gather(*(c.get(f"{p.url}{target}") for p in pair for _ in range(8)))

    try:
        responses = asyncio.run(burst())
    finally:
        emulator.emulator.configure(latency_ms=[0, 0])
    assert all(r.status_code == 200 for r in responses)
    outcomes = [r.headers["X-Fleetci-Cache"] for r in responses]
    assert charged(emulator, "alice") - before == 1, outcomes
    assert outcomes.count("MISS") == 1 and "SHARED" in outcomes, outcomes
    assert sum(int(str(p.stats()["shared_waits"])) for p in pair) == 1  # the other proxy waited once


def test_upstream_slower_than_the_lock_lease_is_still_asked_once(emulator: Any, fleet: list[Proxy]) -> None:
    before = charged(emulator, "alice")
    target = "/repos/octo-org/api/actions/runners?slow=1"
    emulator.emulator.configure(latency_ms=[LEASE * 4000, LEASE * 4000])  # four leases per answer

    async def burst() -> list[httpx.Response]:
        headers = {"Authorization": f"token {token('alice')}"}
        async with httpx.AsyncClient(timeout=60, headers=headers) as c:
            return await asyncio.gather(*(c.get(f"{p.url}{target}") for p in fleet for _ in range(3)))

    try:
        responses = asyncio.run(burst())
    finally:
        emulator.emulator.configure(latency_ms=[0, 0])
    assert all(r.status_code == 200 for r in responses)
    outcomes = [r.headers["X-Fleetci-Cache"] for r in responses]
    assert charged(emulator, "alice") - before == 1, outcomes
    assert outcomes.count("MISS") == 1 and outcomes.count("SHARED") == 2, outcomes


def test_a_holder_whose_lease_ran_out_leaves_the_next_holders_lock_alone(store: RedisServer) -> None:
    from fleetci.cache.redis_store import RedisStore
    from fleetci.p2p.crypto import FleetKeys

    keys = FleetKeys(SECRET, "lock-test")

    async def scenario() -> tuple[bool, bool, bool]:
        a, b = (RedisStore(store.url, PASSWORD, keys, max_stale=60, lock_ms=300) for _ in range(2))
        await a.start()
        await b.start()
        lock_key = a._lock_key("k")
        try:
            assert await a.lock("k")
            await asyncio.sleep(1.0)  # three leases: a's renewals keep the lock
            renewed = not await b.lock("k")
            store.client().delete(lock_key)  # a's lease runs out (a stalled holder) ...
            taken = await b.lock("k")  # ... and b takes the lock
            a.unlock("k")  # a finishes late: must not delete b's lock
            await a.close()
            return renewed, taken, bool(store.client().exists(lock_key))
        finally:
            await a.close()
            await b.close()

    assert asyncio.run(scenario()) == (True, True, True)


@pytest.mark.parametrize(
    ("userinfo", "password"),
    [("default:wrong-in-url", PASSWORD), (":wrong-in-url", PASSWORD), (f":{PASSWORD}", "")],
    ids=["user-and-url-password", "url-password", "url-password-only"],
)
def test_redis_password_setting_wins_over_a_password_in_the_url(
    store: RedisServer, userinfo: str, password: str
) -> None:
    from fleetci.cache.redis_store import RedisStore
    from fleetci.p2p.crypto import FleetKeys

    url = store.url.replace("redis://", f"redis://{userinfo}@")

    async def state() -> str:
        shared = RedisStore(url, password, FleetKeys(SECRET, "pw-test"), max_stale=60)
        await shared.start()  # a refused password raises FleetciError
        try:
            return shared.state
        finally:
            await shared.close()

    assert asyncio.run(state()) == "ok"


def test_tampered_value_is_rejected_and_refetched(
    emulator: Any, store: RedisServer, fleet: list[Proxy]
) -> None:
    a, b, c = fleet
    before_keys = entry_keys(store)
    get(a, "/repos/octo-org/api/actions/runners")
    key = published(store, before_keys)
    r = store.client()
    value = bytearray(r.get(key) or b"")
    value[-5] ^= 0x01  # one bit of the sealed payload
    r.set(key, bytes(value), keepttl=True)
    rejected, before = int(str(b.stats()["shared_rejected"])), charged(emulator, "alice")
    again = get(b, "/repos/octo-org/api/actions/runners")
    assert again.status_code == 200 and again.headers["X-Fleetci-Cache"] == "MISS"
    assert charged(emulator, "alice") - before == 1
    assert int(str(b.stats()["shared_rejected"])) == rejected + 1
    # the refetch replaced the bad value: a third proxy's first read is a clean shared hit again
    assert wait_until(lambda: r.get(key) not in (None, bytes(value)), timeout=10)
    third = get(c, "/repos/octo-org/api/actions/runners")
    assert third.status_code == 200 and third.headers["X-Fleetci-Cache"] == "SHARED"
    assert charged(emulator, "alice") - before == 1


def upstream_requests(proxy: Proxy) -> int:
    return int(str(proxy.stats()["upstream_requests"]))


def test_revalidated_shared_entry_is_fresh_again_on_the_reader(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    a, b = pair
    target = f"/repos/octo-org/api?ttl={SHORT_TTL:g}"
    before_keys = entry_keys(store)
    assert get(a, target).headers["X-Fleetci-Cache"] == "MISS"
    published(store, before_keys)
    time.sleep(SHORT_TTL + 0.1)  # the shared copy is stale now (Redis keeps it for max_stale)
    before, calls = charged(emulator, "alice"), upstream_requests(b)
    assert get(b, target).headers["X-Fleetci-Cache"] == "REVALIDATED"  # a 304 from GitHub: free
    assert upstream_requests(b) == calls + 1
    # the 304 renewed b's copy (it came from Redis, not from b's own tiers): b answers it itself now
    assert [get(b, target).headers["X-Fleetci-Cache"] for _ in range(2)] == ["HIT", "HIT"]
    assert upstream_requests(b) == calls + 1 and charged(emulator, "alice") == before
    # and the renewed copy went back to Redis: a's next read is fresh from there, not another 304
    assert get(a, target).headers["X-Fleetci-Cache"] in ("HIT", "SHARED")


def rss_kb(proxy: Proxy) -> int:
    status = Path(f"/proc/{proxy.proc.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")))


def test_hostile_values_neither_crash_nor_bloat_the_proxy(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    a, b = pair
    r = store.client()
    targets = [f"/repos/octo-org/api?hostile={i}" for i in range(3)]
    keys = []
    for target in targets:
        before_keys = entry_keys(store)
        get(a, target)
        keys.append(published(store, before_keys))
    r.set(keys[0], b"\x00" * (64 * 1024 * 1024))  # oversize junk
    r.delete(keys[1])
    r.rpush(keys[1], b"not", b"a", b"string")  # wrong type
    r.set(keys[2], b"fleetci-entry/1\n" + b"9" * 32 + b"\n" + b"garbage")  # the right shape, not sealed
    rss_before, rejected = rss_kb(b), int(str(b.stats()["shared_rejected"]))
    for _ in range(3):
        for target in targets:
            resp = get(b, target, "alice")
            assert resp.status_code == 200, resp.text
            with b.client(token("alice")) as c:  # the fresh local copy now answers
                assert c.get(target, headers={"Cache-Control": "no-cache"}).status_code == 200
    assert b.proc.poll() is None
    assert int(str(b.stats()["shared_rejected"])) >= rejected + 3
    assert rss_kb(b) - rss_before < 16 * 1024  # the 64 MiB value never crossed the wire


def test_rate_limit_block_is_shared_by_every_proxy(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    a, b = pair
    used = charged(emulator, "bob")
    emulator.emulator.set_primary_limit(used + 1)
    try:
        last = get(a, "/repos/octo-org/api?rl=1", "bob")  # the last allowed call: remaining 0
        assert last.status_code == 200 and last.headers["X-RateLimit-Remaining"] == "0"
        upstream_before = int(str(b.stats()["upstream_requests"]))
        assert wait_until(
            lambda: any(k.split(b":")[2] == b"r" for k in store.client().scan_iter(match="fleetci:*")),
            timeout=10,
        )
        refused = get(b, "/repos/octo-org/api?rl=2", "bob")
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert int(str(b.stats()["upstream_requests"])) == upstream_before  # b never called GitHub for bob
        assert charged(emulator, "bob") == used + 1
    finally:
        emulator.emulator.set_primary_limit(5000)


def test_shared_hits_answer_before_their_sqlite_commit_which_takes_them_all_at_once(
    emulator: Any, store: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16: the copy a shared hit keeps is committed after the answers (no COMMIT while answering;
    the old code committed each one between requests, ~1 ms on the answer path under load), all of a
    burst in one transaction, and still lands: on the write-behind timer, and at close."""
    import sqlite3

    from fleetci.cache import engine as engine_module
    from fleetci.cache.engine import CacheEngine
    from fleetci.p2p.backend import shared_store
    from fleetci.wait import wait_until_async

    env = {"CACHE_BACKEND": store.url, "CACHE_REDIS_PASSWORD": PASSWORD, "FLEETCI_CACHE_SECRET": SECRET}
    headers = [("Authorization", f"token {token('alice')}")]
    targets = [f"/repos/octo-org/api?write_behind={i}" for i in range(4)]

    def rows(name: str) -> int:
        with sqlite3.connect(tmp_path / name / "cache.db") as db:
            return int(db.execute("SELECT COUNT(*) FROM entries").fetchone()[0])

    def engine(name: str) -> CacheEngine:
        settings = cache_settings({"upstream": emulator.url, "cache_dir": str(tmp_path / name)}, {}, env)
        e = CacheEngine(settings)
        e.shared = shared_store(settings)
        return e

    async def scenario() -> tuple[list[str], list[str], int, list[str], int, int]:
        origin, reader = engine("origin"), engine("reader")
        for e in (origin, reader):
            assert e.shared is not None
            await e.shared.start()
        commits: list[str] = []
        reader.store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        outcomes: list[str] = []
        during: list[str] = []
        try:
            before = entry_keys(store)
            for t in targets:
                await origin.handle("GET", t, headers)
            await wait_until_async(
                lambda: len(entry_keys(store) - before) == len(targets), timeout=10, what="published"
            )
            for t in targets:
                outcomes.append((await reader.handle("GET", t, headers)).outcome)
                during += commits
            on_disk = rows("reader")
        finally:
            await origin.close()
            await reader.close()  # commits what is still queued
        return outcomes, during, on_disk, commits, rows("reader"), rows("origin")

    monkeypatch.setattr(engine_module, "WRITE_BEHIND_S", 60.0)  # only close() commits in this run
    outcomes, during, on_disk, commits, after, origin_rows = asyncio.run(scenario())
    assert outcomes == ["SHARED"] * 4 and during == [] and on_disk == 0
    assert commits == ["COMMIT"] and after == 4 and origin_rows == 4

    async def timer() -> int:  # the default delay: the commit lands on its own, the engine still open
        e = engine("timed")
        assert e.shared is not None
        await e.shared.start()
        try:
            await e.handle("GET", targets[0], headers)
            return await wait_until_async(lambda: rows("timed"), timeout=30, what="the deferred commit")
        finally:
            await e.close()

    monkeypatch.setattr(engine_module, "WRITE_BEHIND_S", 0.05)
    assert asyncio.run(timer()) == 1


@pytest.mark.parametrize(
    ("password", "secret", "expected"),
    [
        ("wrong-password", SECRET, "refused the credentials"),
        ("", SECRET, "needs a password"),
    ],
    ids=["wrong-password", "no-password"],  # no secret, a bad URL: tests/unit/test_cache_shared.py
)
def test_misconfigured_shared_store_is_one_line_error_at_start(
    emulator: Any, store: RedisServer, tmp_path: Path, password: str, secret: str, expected: str
) -> None:
    env = clean_env(CACHE_BACKEND=store.url, FLEETCI_CACHE_SECRET=secret)
    if password:
        env["CACHE_REDIS_PASSWORD"] = password
    proc = run_fleetci(
        "cache", "serve", "--upstream", emulator.url, "--port", "0", "--cache-dir", str(tmp_path), env=env
    )
    line = one_line_error(proc)
    assert expected in line and "wrong-password" not in proc.stdout + proc.stderr
    assert PASSWORD not in proc.stdout + proc.stderr


def health(proxy: Proxy) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{proxy.url}/_fleetci/health", timeout=10).json()
    return data


def degraded_metric(proxy: Proxy) -> str:
    text = httpx.get(f"{proxy.url}/metrics", timeout=10).text
    return next(line.split()[-1] for line in text.splitlines() if line.startswith("fleetci_cache_degraded "))


def dashboard_backend(proxy: Proxy) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{proxy.url}/_fleetci/dashboard.json", timeout=10).json()["backend"]
    return data


def test_redis_killed_and_restarted_mid_traffic_fails_no_request(
    emulator: Any, store: RedisServer, pair: list[Proxy]
) -> None:
    assert [health(p)["backend_state"] for p in pair] == ["ok", "ok"]
    assert health(pair[0])["backend"] == store.url and PASSWORD not in str(health(pair[0]))
    failures: list[str] = []
    done = threading.Event()

    def traffic(proxy: Proxy, login: str) -> None:
        i = 0
        with proxy.client(token(login)) as c:
            while not done.is_set():
                i += 1
                r = c.get(f"/repos/octo-org/api/actions/runs?per_page=1&page={i}")  # misses: each asks Redis
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")

    threads = [
        threading.Thread(target=traffic, args=(p, login)) for p in pair for login in ("alice", "alice")
    ]  # bob is blocked by the rate-limit test
    for t in threads:
        t.start()
    try:
        store.kill()
        assert wait_until(lambda: all(health(p)["status"] == "degraded" for p in pair), timeout=20)
        assert degraded_metric(pair[0]) == "1.0"
        assert dashboard_backend(pair[0])["shared"] == "degraded"
        # a degraded proxy still serves: a job still reuses it as its host proxy
        found, why = find_host_proxy(
            cache_settings({"upstream": emulator.url, "host_proxy": pair[0].url}, {}, {})
        )
        assert found is not None and found.api_url == pair[0].url, why
        store.start()
        assert wait_until(lambda: all(health(p)["status"] == "ok" for p in pair), timeout=20)
        assert degraded_metric(pair[0]) == "0.0"
        backend = dashboard_backend(pair[0])
        assert (backend["shared"], backend["shared_url"]) == ("ok", store.url)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=30)
    assert not failures
    # sharing works again after the restart (a fresh, empty Redis)
    before_keys = entry_keys(store)
    get(pair[0], "/repos/octo-org/api?after=restart")
    published(store, before_keys)
    assert get(pair[1], "/repos/octo-org/api?after=restart").headers["X-Fleetci-Cache"] == "SHARED"
