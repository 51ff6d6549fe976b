"""Issue 17, prewarming: a real proxy process keeps the URLs of ``CACHE_PREWARM`` fresh against the real
emulator, so fleet reads of them are always HIT, for free while nothing changes; under the budget reserve it
stops. One emulator for the module; the reserve test starts a second proxy. The review's findings (whose
credential prewarms, refused tokens, idle keys, TTL under the lead, a key's or a pass's failure, shutdown)
are checked on a real engine against an emulator (the module's, or a slowed one), one pass at a time on a
clock of the test's own (counters, log lines, tasks; where a test must wait, it waits for a condition).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.cache.engine import CacheEngine
from fleetci.cache.prewarm import IDLE_MIN_S, PREWARM_CONCURRENCY, Prewarmer
from fleetci.cache.settings import cache_settings
from fleetci.testing import EmulatorServer
from fleetci.wait import wait_until_async
from support import Proxy, clean_env, start_proxy, wait_until
from support.emulator import auth, quiet_emulator, tok

TTL = 3.0  # the fresh window of this module's URLs (a ttl rule on ?ttl=3)
LEAD = 2.5  # prewarm that long before the window ends (a tick every LEAD / 4 s)


def _env(base: Path, **extra: str) -> dict[str, str]:
    config = base / "config.yml"
    config.write_text(f"cache:\n  ttl:\n    - {{pattern: '[?&]ttl=3', seconds: {TTL:g}}}\n")
    return clean_env(FLEETCI_CONFIG=str(config), CACHE_PREWARM=r"[?&]warm=1", **extra)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    with quiet_emulator(seed=11) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("prewarm")
    with start_proxy(emulator.url, base / "cache", env=_env(base, CACHE_PREWARM_LEAD=str(LEAD))) as p:
        yield p


def _repo(emulator: EmulatorServer, i: int) -> str:
    repos = httpx.get(f"{emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
    return str(repos[i]["full_name"])


def _read(proxy: Proxy, path: str) -> httpx.Response:
    return httpx.get(proxy.url + path, headers=auth("alice"), timeout=30)


def _prewarm(proxy: Proxy) -> dict[str, Any]:
    return dict(proxy.stats()["prewarm"])  # type: ignore[call-overload]


def _runs(resp: httpx.Response) -> set[int]:
    return {int(r["id"]) for r in resp.json()["workflow_runs"]}


def test_prewarmed_urls_are_always_hit_and_free_while_unchanged(
    emulator: EmulatorServer, proxy: Proxy
) -> None:
    repo = _repo(emulator, 0)
    warm = f"/repos/{repo}/actions/runs?status=queued&ttl=3&warm=1"
    cold = f"/repos/{repo}/actions/runs?status=queued&ttl=3"
    assert _read(proxy, warm).headers["X-Fleetci-Cache"] == "MISS"
    assert _read(proxy, cold).headers["X-Fleetci-Cache"] == "MISS"
    charged = emulator.emulator.charged(tok("alice"))
    before = _prewarm(proxy)["revalidated"]
    outcomes: list[str] = []
    start = time.monotonic()

    def read_until_renewed_over_two_windows() -> bool:
        """One read (every read must be a HIT); done after two windows and two renewals, however long a
        loaded machine makes that take."""
        outcomes.append(_read(proxy, warm).headers["X-Fleetci-Cache"])
        renewed = _prewarm(proxy)["revalidated"] - before
        return renewed >= 2 and time.monotonic() - start > 2 * TTL

    assert wait_until(read_until_renewed_over_two_windows, timeout=120, interval=0.5), outcomes
    assert set(outcomes) == {"HIT"}, outcomes  # renewed by conditional requests ...
    assert emulator.emulator.charged(tok("alice")) == charged  # ... answered 304: free
    # the same URL without the prewarm pattern: its window ended and the reader revalidates it
    assert _read(proxy, cold).headers["X-Fleetci-Cache"] == "REVALIDATED"


def test_a_change_reaches_prewarmed_readers_within_a_window_still_as_hit(
    emulator: EmulatorServer, proxy: Proxy
) -> None:
    repo = _repo(emulator, 1)
    owner, name = repo.split("/")
    warm = f"/repos/{repo}/actions/runs?status=queued&ttl=3&warm=1"
    first = _read(proxy, warm)
    changed = _prewarm(proxy)["changed"]
    new_run = emulator.emulator.queue_run(owner, name)
    assert new_run not in _runs(first)
    assert wait_until(lambda: _prewarm(proxy)["changed"] > changed, timeout=60)
    after = _read(proxy, warm)
    assert after.headers["X-Fleetci-Cache"] == "HIT" and new_run in _runs(after)


def test_prewarming_pauses_under_the_budget_reserve(emulator: EmulatorServer, tmp_path: Path) -> None:
    """A reserve above the whole budget (5,000/h): nothing is prewarmed; the reader revalidates itself."""
    env = _env(tmp_path, CACHE_PREWARM_LEAD=str(LEAD), CACHE_PREWARM_RESERVE="100000")
    with start_proxy(emulator.url, tmp_path / "cache", env=env) as p:
        warm = f"/repos/{_repo(emulator, 2)}/actions/runs?status=queued&ttl=3&warm=1"
        assert _read(p, warm).headers["X-Fleetci-Cache"] == "MISS"
        assert wait_until(lambda: _prewarm(p)["paused"] >= 1, timeout=60)
        assert wait_until(lambda: _read(p, warm).headers["X-Fleetci-Cache"] != "HIT", timeout=60)
        stats = _prewarm(p)
        assert stats["revalidated"] == 0 and stats["changed"] == 0 and stats["watched"] == 1


# -- one engine, one pass at a time (review findings) --------------------------------------------------
QUEUE_TTL = 60  # the default "queue" class of /actions/runs?status=queued
FAKE = "token ghp_" + "f" * 36  # a token GitHub never accepted


def _on_engine(
    emulator: EmulatorServer,
    tmp: Path,
    lead: float,
    body: Callable[[CacheEngine, Prewarmer, list[float]], Awaitable[None]],
    **settings: str,
) -> None:
    clock = [1_000_000.0]
    values = {"upstream": emulator.url, "cache_dir": str(tmp), **settings}
    engine = CacheEngine(cache_settings(values, {}, {}), clock=lambda: clock[0])
    prewarmer = Prewarmer(engine, (r"[?&]warm=1",), lead, reserve=0)
    engine.prewarm = prewarmer

    async def run() -> None:
        try:
            await body(engine, prewarmer, clock)
        finally:
            await engine.close()

    asyncio.run(run())


async def _get(engine: CacheEngine, path: str, authorization: str) -> str:
    resp = await engine.handle("GET", path, [("Authorization", authorization)])
    return f"{resp.status} {resp.outcome}"


def test_a_shared_scope_hit_never_lends_its_token_to_prewarming(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Under a shared scope a token that never reached GitHub reads alice's entry as HIT: prewarming keeps
    using alice's token (a 304), never the other one (a 401 that would be counted and retried)."""
    warm = f"/repos/{_repo(emulator, 3)}/actions/runs?status=queued&warm=1"

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
        assert await _get(engine, warm, FAKE) == "200 HIT"
        charged = emulator.emulator.charged(tok("alice"))
        clock[0] += QUEUE_TTL - 5  # inside the lead
        assert await prewarmer.once() == 1
        stats = prewarmer.stats()
        assert (stats["revalidated"], stats["changed"], stats["failed"]) == (1, 0, 0), stats
        assert emulator.emulator.charged(tok("alice")) == charged
        # a key first read by the unknown token (401) is never watched
        other = warm.replace("status=queued", "status=in_progress")
        assert (await _get(engine, other, FAKE)).startswith("401")
        assert prewarmer.stats()["watched"] == 1

    _on_engine(emulator, tmp_path, 10.0, body, shared_scope="fleet")


def test_a_revoked_token_is_dropped_and_its_neighbour_kept_warm(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Two tokens read one URL (two keys); bob's is revoked: his key is dropped after one 401 (counted as
    failed, never as changed) and not asked again; alice's entry stays warm with alice's token."""
    warm = f"/repos/{_repo(emulator, 0)}/actions/runs?status=queued&warm=1"
    bob = tok("bob")

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
        assert await _get(engine, warm, f"token {bob}") == "200 MISS"
        assert prewarmer.stats()["watched"] == 2
        del emulator.emulator.tokens[bob]
        try:
            for _ in range(3):  # three windows
                clock[0] += QUEUE_TTL - 5
                await prewarmer.once()
        finally:
            emulator.emulator.tokens[bob] = "bob"
        stats = prewarmer.stats()
        assert stats["watched"] == 1 and stats["dropped"] == 1 and stats["failed"] == 1, stats
        assert stats["revalidated"] == 3 and stats["changed"] == 0, stats

    _on_engine(emulator, tmp_path, 10.0, body)


def test_keys_nobody_reads_are_forgotten_and_passes_do_not_count_as_reads(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    warm = f"/repos/{_repo(emulator, 1)}/actions/runs?status=queued&warm=1"

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
        engine.store._touched.clear()  # what the store's LRU / last_access record as reads
        for _ in range(5):  # passes with nothing due only look
            clock[0] += 1.0
            assert await prewarmer.once() == 0
        assert not engine.store._touched
        idle = max(IDLE_MIN_S, 10 * QUEUE_TTL)
        while prewarmer.stats()["watched"] and prewarmer.stats()["revalidated"] < 100:
            clock[0] += QUEUE_TTL - 5
            await prewarmer.once()
        assert prewarmer.stats()["watched"] == 0
        assert prewarmer.stats()["revalidated"] <= idle // (QUEUE_TTL - 5) + 1

    _on_engine(emulator, tmp_path, 10.0, body)


def test_a_ttl_under_the_lead_is_renewed_twice_a_window_not_every_tick(
    emulator: EmulatorServer, tmp_path: Path
) -> None:
    """Lead 90 s over a 60 s window: every entry is always "due"; passes every second for two windows
    renew it about twice a window, not 120 times. A webhook's invalidation still goes at the next pass."""
    warm = f"/repos/{_repo(emulator, 2)}/actions/runs?status=queued&warm=1"

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
        for _ in range(2 * QUEUE_TTL):
            clock[0] += 1.0
            await prewarmer.once()
            assert await _get(engine, warm, f"token {tok('alice')}") == "200 HIT"
        assert 3 <= prewarmer.stats()["revalidated"] <= 5, prewarmer.stats()
        clock[0] += 1.0
        await prewarmer.once()
        before = prewarmer.stats()["revalidated"]
        assert engine.invalidate([warm.split("?")[0]]) == 1
        clock[0] += 1.0
        assert await prewarmer.once() == 1 and prewarmer.stats()["revalidated"] == before + 1
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 HIT"

    _on_engine(emulator, tmp_path, 90.0, body)


def test_prewarm_calls_per_credential_are_capped_below_the_readers(tmp_path: Path) -> None:
    """Six entries of one token due at once: prewarming has at most PREWARM_CONCURRENCY of them upstream at
    a time (readers' misses wait behind that many at most), where the engine alone would allow 20. Each
    prewarm call takes 300 ms upstream, so calls let through together overlap even on a loaded machine."""
    with quiet_emulator(seed=11) as slow:
        repo = _repo(slow, 0)
        urls = [f"/repos/{repo}/actions/runs?status=queued&warm=1&page={i}" for i in range(1, 7)]

        async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
            for url in urls:
                assert await _get(engine, url, f"token {tok('alice')}") == "200 MISS"
            assert slow.emulator.peak_inflight(tok("alice")) == 1
            slow.emulator.set_latency(300.0, 300.0)
            clock[0] += QUEUE_TTL - 5
            assert await prewarmer.once() == len(urls)
            assert slow.emulator.peak_inflight(tok("alice")) == PREWARM_CONCURRENCY

        _on_engine(slow, tmp_path, 10.0, body)


def test_one_keys_unexpected_error_is_logged_with_its_message_and_the_pass_goes_on(
    emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Review #5: any exception of one key, not only an upstream error (here the cache database failing
    under that key's renewal), counts as failed and is logged with its message; the other key due in the
    same pass is still renewed (the old code let the error end the pass, logging its type only)."""
    repo = _repo(emulator, 3)
    broken, fine = (f"/repos/{repo}/actions/runs?status=queued&warm=1&page={i}" for i in (1, 2))

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        for url in (broken, fine):
            assert await _get(engine, url, f"token {tok('alice')}") == "200 MISS"
        renew, failed = engine.revalidate, []

        async def failing_for_one_key(prep: Any, headers: Any) -> Any:
            if "page=1" in prep.target:  # broken's key (targets are kept normalised)
                failed.append(prep.target)
                raise sqlite3.OperationalError("database disk image is malformed")
            return await renew(prep, headers)

        monkeypatch.setattr(engine, "revalidate", failing_for_one_key)
        clock[0] += QUEUE_TTL - 5
        assert await prewarmer.once() == 1
        stats = prewarmer.stats()
        assert (stats["revalidated"], stats["failed"], stats["watched"]) == (1, 1, 2), stats
        lines = [r.getMessage() for r in server_log.records if r.name == "fleetci.cache"]
        assert len(failed) == 1 and f"prewarm {failed[0]}: database disk image is malformed" in lines, lines

    _on_engine(emulator, tmp_path, 10.0, body)


def test_a_failed_pass_is_logged_with_its_message_and_the_next_pass_runs(
    emulator: EmulatorServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server_log: pytest.LogCaptureFixture,
) -> None:
    """Review #5: a pass that fails as a whole (the store cannot be read) is logged as type and message, and
    prewarming goes on: the next pass renews the entry. Waits on the log and the counters, not on time."""
    warm = f"/repos/{_repo(emulator, 0)}/actions/runs?status=queued&warm=1&page=3"

    async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
        assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
        peek, failures = engine.store.peek, [sqlite3.OperationalError("disk I/O error")]

        def peek_failing_once(key: str) -> Any:
            if failures:
                raise failures.pop()
            return peek(key)

        monkeypatch.setattr(engine.store, "peek", peek_failing_once)
        clock[0] += QUEUE_TTL - 5
        forever = asyncio.create_task(prewarmer.run_forever())
        try:
            await wait_until_async(
                lambda: prewarmer.stats()["revalidated"] == 1 or None, timeout=60, what="the next pass"
            )
        finally:
            forever.cancel()
            await asyncio.gather(forever, return_exceptions=True)
        lines = [r.getMessage() for r in server_log.records if r.name == "fleetci.cache"]
        assert "prewarm pass failed: OperationalError: disk I/O error" in lines, lines

    _on_engine(emulator, tmp_path, 10.0, body)


def _hold_upstream(emulator: EmulatorServer) -> Callable[[], Awaitable[object]]:
    """From now on the emulator holds every call for a minute; the returned wait ends once the next call
    arrived (it is then in flight, held there)."""
    asked = int(emulator.emulator.stats()["requests"])
    emulator.emulator.set_latency(60_000.0, 60_000.0)

    def arrived() -> bool | None:
        return int(emulator.emulator.stats()["requests"]) > asked or None

    return lambda: wait_until_async(arrived, timeout=60, what="a call held upstream")


def test_shutdown_ends_the_prewarm_calls_in_flight_before_the_engine_closes(tmp_path: Path) -> None:
    """Review #6: when prewarming is stopped (the server's shutdown cancels it, then closes the engine), a
    prewarm call still waiting on the upstream is cancelled and awaited: no task of it is left running
    against a closed engine. The upstream holds the call for a minute; the test waits until it arrived."""
    with quiet_emulator(seed=11) as slow:
        warm = f"/repos/{_repo(slow, 0)}/actions/runs?status=queued&warm=1"

        async def body(engine: CacheEngine, prewarmer: Prewarmer, clock: list[float]) -> None:
            assert await _get(engine, warm, f"token {tok('alice')}") == "200 MISS"
            arrived = _hold_upstream(slow)
            clock[0] += QUEUE_TTL - 5
            forever = asyncio.create_task(prewarmer.run_forever())
            await arrived()
            forever.cancel()
            await asyncio.gather(forever, return_exceptions=True)
            left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
            assert not left, left
            assert prewarmer.stats()["revalidated"] == 0

        _on_engine(slow, tmp_path, 10.0, body)


def test_the_server_ends_prewarming_before_it_closes_the_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review #6, the server's side: at shutdown ``serve`` awaits the cancelled prewarming (and with it the
    call it had upstream) before it closes the engine; the old code only cancelled it, so the engine was
    closed under a prewarm call still unwinding. Recorded by a spy on ``CacheEngine.close`` (it calls
    through); the upstream holds the prewarm call for a minute, the test waits until it arrived."""
    from fleetci.cache.server import serve
    from fleetci.http import free_port

    pending_at_close: list[list[str]] = []
    close = CacheEngine.close

    async def recording_close(engine: CacheEngine) -> None:
        names = [t.get_coro().__qualname__ for t in asyncio.all_tasks() if not t.done()]  # type: ignore[union-attr]
        pending_at_close.append([n for n in names if n.startswith("Prewarmer.")])
        await close(engine)

    monkeypatch.setattr(CacheEngine, "close", recording_close)
    with quiet_emulator(seed=11) as slow:
        port = free_port()
        flags = {"upstream": slow.url, "cache_dir": str(tmp_path / "cache"), "proxy_port": port}
        flags |= {"socket": str(tmp_path / "proxy.sock"), "prewarm": r"[?&]warm=1", "prewarm_lead": LEAD}
        settings = cache_settings(flags, {"cache": {"ttl": [{"pattern": "[?&]ttl=3", "seconds": TTL}]}}, {})
        warm = f"http://127.0.0.1:{port}/repos/{_repo(slow, 0)}/actions/runs?status=queued&ttl=3&warm=1"

        async def scenario() -> None:
            ready = asyncio.Event()
            server = asyncio.create_task(serve(settings, probe=False, ready=ready))
            await wait_until_async(ready.is_set, timeout=60, what="the proxy")
            async with httpx.AsyncClient(timeout=30) as client:
                assert (await client.get(warm, headers=auth("alice"))).headers["X-Fleetci-Cache"] == "MISS"
            await _hold_upstream(slow)()
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)

        asyncio.run(scenario())
    assert pending_at_close == [[]], pending_at_close
