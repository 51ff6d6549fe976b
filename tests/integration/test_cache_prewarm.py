"""Issue 17, prewarming: a real proxy process keeps the URLs of ``CACHE_PREWARM`` fresh against the real
emulator, so fleet reads of them are always HIT, for free while nothing changes; under the budget reserve it
stops. One emulator for the module; the reserve test starts a second proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.testing import EmulatorConfig, EmulatorServer, GitHubEmulator
from support import Proxy, clean_env, start_proxy, wait_until
from support.emulator import auth, tok

TTL = 3.0  # the fresh window of this module's URLs (a ttl rule on ?ttl=3)
LEAD = 2.5  # prewarm that long before the window ends (a tick every LEAD / 4 s)


def _env(base: Path, **extra: str) -> dict[str, str]:
    config = base / "config.yml"
    config.write_text(f"cache:\n  ttl:\n    - {{pattern: '[?&]ttl=3', seconds: {TTL:g}}}\n")
    return clean_env(FLEETCI_CONFIG=str(config), CACHE_PREWARM=r"[?&]warm=1", **extra)


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorServer]:
    server = EmulatorServer(GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=11))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def proxy(emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    base = tmp_path_factory.mktemp("prewarm")
    p = start_proxy(emulator.url, base / "cache", env=_env(base, CACHE_PREWARM_LEAD=str(LEAD)))
    try:
        yield p
    finally:
        p.stop()


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
    outcomes = []
    for _ in range(16):  # 8 s: more than two windows of 3 s
        outcomes.append(_read(proxy, warm).headers["X-Fleetci-Cache"])
        time.sleep(0.5)
    assert set(outcomes) == {"HIT"}, outcomes
    assert _prewarm(proxy)["revalidated"] >= before + 2  # renewed by conditional requests ...
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
    assert wait_until(lambda: _prewarm(proxy)["changed"] > changed, timeout=TTL * 3)
    after = _read(proxy, warm)
    assert after.headers["X-Fleetci-Cache"] == "HIT" and new_run in _runs(after)


def test_prewarming_pauses_under_the_budget_reserve(emulator: EmulatorServer, tmp_path: Path) -> None:
    """A reserve above the whole budget (5,000/h): nothing is prewarmed; the reader revalidates itself."""
    env = _env(tmp_path, CACHE_PREWARM_LEAD=str(LEAD), CACHE_PREWARM_RESERVE="100000")
    p = start_proxy(emulator.url, tmp_path / "cache", env=env)
    try:
        warm = f"/repos/{_repo(emulator, 2)}/actions/runs?status=queued&ttl=3&warm=1"
        assert _read(p, warm).headers["X-Fleetci-Cache"] == "MISS"
        assert wait_until(lambda: _prewarm(p)["paused"] >= 1, timeout=TTL * 3)
        assert wait_until(lambda: _read(p, warm).headers["X-Fleetci-Cache"] != "HIT", timeout=TTL * 3)
        stats = _prewarm(p)
        assert stats["revalidated"] == 0 and stats["changed"] == 0 and stats["watched"] == 1
    finally:
        p.stop()
