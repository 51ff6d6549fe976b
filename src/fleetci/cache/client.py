"""The cache's Python API: direct access to a cache directory, cached GitHub calls, and the one stats call.

Seed names kept: ``get_cache()`` / ``get_global_cache()`` with ``.get_stats()`` and ``.clear_stale()``,
``CachedGitHubCLI`` with ``list_repos``, ``get_workflow_runs``, ``get_cache_stats`` (the seed's
``start_cache_network`` is in ``fleetci.cache.network``). Nothing here imports httpx at module level: the
proxy process (which imports this package) never needs it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlsplit

from fleetci import gha
from fleetci.cache.api import (
    DASHBOARD_JSON_PATH,
    PEERS_PATH,
    PROBE_PATH,
    STATS_PATH,
    SUMMARY_KEYS,
    CacheStats,
    Health,
    PeersStatus,
    ProbeResult,
)
from fleetci.cache.engine import CacheEngine, Outcome, ProxyResponse
from fleetci.cache.policy import TTLPolicy, cache_key, normalize_target, scope_of
from fleetci.cache.settings import CacheSettings, cache_settings, github_token
from fleetci.cache.store import CacheStore, Entry
from fleetci.config import load_config_file
from fleetci.errors import FleetciError, UsageError
from fleetci.http import MAX_PAGES, client, describe, error_message, paginate, redact_url

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")


class GitHubAPICache:
    """Direct access to a cache directory: lookups, stats, clearing. Safe next to a running proxy."""

    def __init__(self, settings: CacheSettings | None = None, repair: bool = True) -> None:
        """``repair=False`` (``fleetci cache stats|clear``): a corrupt database is an error, left in place."""
        self.settings = settings or cache_settings({}, load_config_file(None))
        self.store = CacheStore.for_settings(self.settings, repair)
        self.policy = TTLPolicy.build(self.settings.ttl_rules, self.settings.default_ttl)
        self.engine: CacheEngine | None = None

    def key_for(
        self, target: str, authorization: str | None = None, headers: dict[str, str] | None = None
    ) -> str:
        lower = {k.lower(): v for k, v in (headers or {}).items()}
        base_path = urlsplit(self.settings.upstream).path.rstrip("/")
        return cache_key(scope_of(authorization), normalize_target(target, base_path), lower)

    def get(
        self, target: str, authorization: str | None = None, headers: dict[str, str] | None = None
    ) -> Entry | None:
        """The fresh entry for ``GET target`` under that Authorization header, or None."""
        entry = self.store.get(self.key_for(target, authorization, headers))
        return entry if entry is not None and entry.is_fresh(time.time()) else None

    def get_stats(self) -> CacheStats:
        """Seed name: :func:`read_stats` of the in-process engine, else of this directory's database."""
        return read_stats(engine=self.engine, store=self.store)

    def clear_stale(self) -> int:
        """Drop entries past their fresh window (they would only be used for stale-if-error)."""
        return self.store.clear(stale_only=True)

    def clear(self) -> int:
        return self.store.clear()

    def close(self) -> None:
        self.store.close()


_global: GitHubAPICache | None = None
_global_lock = threading.Lock()


def get_cache() -> GitHubAPICache:
    """The process-wide cache for ``$CACHE_DIR`` (settings from environment and config file)."""
    global _global
    with _global_lock:
        if _global is None:
            _global = GitHubAPICache()
        return _global


get_global_cache = get_cache


class _LoopThread:
    """An asyncio loop in a daemon thread so synchronous callers can use the async engine."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fleetci-cache", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


class CachedGitHubCLI:
    """Cached GitHub calls for scripts and autoscalers.

    With ``$FLEETCI_API_URL`` (set by the setup-p2p-cache action) calls go through the running proxy,
    which the whole runner shares; otherwise an in-process engine caches into ``$CACHE_DIR``.
    ``gh`` is accepted for compatibility with the seed's ``CachedGitHubCLI(GitHubCLI())``.
    """

    def __init__(
        self,
        gh: object | None = None,
        *,
        token: str | None = None,
        api_url: str | None = None,
        settings: CacheSettings | None = None,
        owner: str | None = None,
    ) -> None:
        self.token = token or getattr(gh, "token", None) or github_token()
        gha.add_mask(self.token)
        self.owner = owner or os.environ.get("GITHUB_REPOSITORY_OWNER")
        proxy = api_url or os.environ.get("FLEETCI_API_URL")
        self._client: httpx.Client | None = None
        self._loop: _LoopThread | None = None
        self.cache: GitHubAPICache | None = None
        if proxy:
            self.base_url = proxy.rstrip("/")
            self._client = client(base_url=self.base_url, timeout=60)
        else:
            self.cache = GitHubAPICache(settings)
            self.base_url = self.cache.settings.upstream
            self._loop = _LoopThread()
            self.cache.engine = CacheEngine(self.cache.settings, store=self.cache.store)

    def _headers(self) -> dict[str, str]:
        h = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "fleetci",
        }
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def request(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """GET ``target`` (a path, or an absolute URL from a Link header) through the cache."""
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            base_path = urlsplit(self.base_url).path.rstrip("/")
            path = (
                parts.path[len(base_path) :] if base_path and parts.path.startswith(base_path) else parts.path
            )
            target = path + (f"?{parts.query}" if parts.query else "")
        headers = self._headers()
        if self._client is not None:
            r = self._client.get(target, headers=headers)
            return r.status_code, dict(r.headers), r.content
        assert self._loop is not None and self.cache is not None and self.cache.engine is not None
        engine = self.cache.engine
        prep = engine.prepare(target, {k.lower(): v for k, v in headers.items()})
        entry = engine.lookup_fresh(prep.key)
        if entry is not None:
            engine.counters.requests += 1
            engine.counters.count(Outcome.HIT)
            return entry.status, {k.lower(): v for k, v in entry.headers}, entry.body
        resp: ProxyResponse = self._loop.run(engine.handle("GET", target, list(headers.items())))
        return resp.status, {k.lower(): v for k, v in resp.headers}, resp.body

    def get_json(self, target: str) -> Any:
        status, _, body = self.request(target)
        if status >= 400:
            raise FleetciError(f"GitHub API GET {target} failed: HTTP {status} {error_message(status, body)}")
        return json.loads(body) if body else None

    def _page(self, target: str, _: object) -> tuple[bytes, dict[str, str]]:
        status, headers, body = self.request(target)
        if status >= 400:
            raise FleetciError(f"GitHub API GET {target} failed: HTTP {status} {error_message(status, body)}")
        return body, headers

    def _paginate(self, target: str, field: str | None, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` items over the list's pages (:func:`fleetci.http.paginate`, capped)."""
        pages = paginate(self._page, target, what="GitHub API", field=field, max_pages=max(MAX_PAGES, limit))
        return list(itertools.islice(pages, limit))

    def list_repos(
        self, owner: str | None = None, since_days: float | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        owner = owner or self.owner
        target = f"/users/{owner}/repos?per_page=100" if owner else "/user/repos?per_page=100"
        repos = self._paginate(target, None, limit)
        if since_days is not None:
            cutoff = time.time() - since_days * 86400
            repos = [r for r in repos if _iso_ts(r.get("pushed_at") or r.get("updated_at")) >= cutoff]
        return repos

    def get_workflow_runs(
        self, repo: str, status: str | None = None, owner: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        full = repo if "/" in repo else f"{owner or self.owner}/{repo}"
        if full.startswith("None/"):
            raise FleetciError(f"repository {repo!r} needs an owner (owner=… or $GITHUB_REPOSITORY_OWNER)")
        target = f"/repos/{full}/actions/runs?per_page=100" + (f"&status={status}" if status else "")
        return self._paginate(target, "workflow_runs", limit)

    def get_cache_stats(self) -> CacheStats:
        """Seed name: :func:`read_stats` of the proxy in use (or of the in-process cache)."""
        if self._client is not None:
            return read_stats(url=self.base_url)
        assert self.cache is not None
        return self.cache.get_stats()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._loop is not None and self.cache is not None and self.cache.engine is not None:
            self._loop.run(self.cache.engine.upstream.close())
            self._loop.stop()
            self.cache.store.close()

    def __enter__(self) -> CachedGitHubCLI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iso_ts(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


class _NoAnswer(Exception):
    """No proxy answered on the unix socket (the caller falls back to the saved counters)."""


def read_stats(
    settings: CacheSettings | None = None,
    url: str | None = None,
    *,
    engine: CacheEngine | None = None,
    store: CacheStore | None = None,
) -> CacheStats:
    """The one stats call; the first source given answers.

    ``engine``: a cache running in this process. ``url``: that proxy's live counters (an error when it
    does not answer). ``store``: the counters a proxy saved in that database. ``settings`` alone
    (``fleetci cache stats``): the proxy on its unix socket, else the counters it saved at its last flush.
    """
    if engine is not None:
        return engine.stats()
    if url is not None:
        return _live(url=url)
    if store is not None:
        return _saved(store)
    if settings is None:
        raise TypeError("read_stats needs settings, a url, an engine or a store")
    try:
        return _live(uds=settings.socket_path)
    except _NoAnswer:
        pass
    if not settings.db_path.exists():
        raise FleetciError(f"no proxy running on {settings.socket_path} and no cache at {settings.cache_dir}")
    saved = CacheStore.for_settings(settings, repair=False)
    try:
        return _saved(saved)
    finally:
        saved.close()


def _live(url: str | None = None, uds: Path | None = None) -> CacheStats:
    import httpx

    try:
        with client(base_url=(url or "").rstrip("/"), uds=uds, timeout=5) as http_client:
            r = http_client.get(STATS_PATH)
        r.raise_for_status()
        data = cast(CacheStats, r.json())
    except (httpx.HTTPError, ValueError) as exc:
        if url:
            raise FleetciError(f"cannot read stats from {redact_url(url)}: {describe(exc)}") from exc
        raise _NoAnswer from exc
    data["source"] = "live"
    return data


def _saved(store: CacheStore) -> CacheStats:
    saved = store.load_meta("stats") or {}
    stats: dict[str, Any] = {k: v for k, v in saved.items() if k != "saved_at"}
    stats.update(
        {
            "cache_size": len(store),
            "cache_bytes": store.total_bytes,
            "source": "saved" if saved else "empty",
        }
    )
    for k in SUMMARY_KEYS:
        stats.setdefault(k, None if k == "rate_limit_remaining" else 0)
    return cast(CacheStats, stats)


class LocalProxy:
    """The running proxy of these settings, asked over its unix socket (``fleetci cache peers|verify``)."""

    def __init__(self, settings: CacheSettings) -> None:
        self.settings = settings

    def _call(self, path: str, method: str = "GET", timeout: float = 10) -> Any:
        import httpx

        try:
            with client(uds=self.settings.socket_path, timeout=timeout) as http_client:
                r = http_client.request(method, path)
            return r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise FleetciError(f"no proxy answering on {self.settings.socket_path}: {describe(exc)}") from exc

    def health(self) -> Health:
        from fleetci.cache.hostproxy import proxy_health

        try:
            return proxy_health(uds=self.settings.socket_path, timeout=10)
        except FleetciError as exc:
            raise FleetciError(f"no proxy answering on {self.settings.socket_path}: {exc}") from None

    def peers(self) -> PeersStatus:
        return cast(PeersStatus, self._call(PEERS_PATH))

    def probe(self) -> ProbeResult:
        return cast(ProbeResult, self._call(PROBE_PATH, method="POST", timeout=30))


def clear_cache(settings: CacheSettings, stale_only: bool = False) -> int:
    """``fleetci cache clear``: delete entries (only those past their fresh window); the number removed."""
    if not settings.db_path.exists():
        raise FleetciError(f"no cache at {settings.cache_dir}")
    cache = GitHubAPICache(settings, repair=False)
    try:
        return cache.clear_stale() if stale_only else cache.clear()
    finally:
        cache.close()


def dashboard_url(settings: CacheSettings, url: str | None = None) -> str:
    """``fleetci cache dashboard``: the browser address of the running proxy's dashboard.

    ``url``: that proxy (checked over HTTP); otherwise the proxy on these settings' unix socket, which
    says its own TCP address (a browser cannot open a unix socket; the TCP port serves the same page),
    or, with no socket there, the host's proxy (``fleetci.cache.hostproxy``) a job would reuse.
    """
    import httpx

    from fleetci.cache.hostproxy import find_host_proxy, proxy_health

    if url is None and not settings.socket_path.is_socket():
        host, _ = find_host_proxy(settings)
        if host is not None and host.api_url:
            url = host.api_url
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"--url must be an http(s) URL of a fleetci proxy, not {redact_url(url)!r}")
        base, uds = url.rstrip("/"), None
    else:
        base, uds = "", settings.socket_path
    where = redact_url(url) if url is not None else f"unix:{settings.socket_path}"
    try:
        health = proxy_health(base or "http://localhost", uds, timeout=5)
        with client(base_url=base, uds=uds, timeout=5) as http_client:
            board = http_client.get(DASHBOARD_JSON_PATH)
        board.raise_for_status()
    except FleetciError as exc:
        raise FleetciError(f"no fleetci proxy dashboard answering on {where}: {exc}") from None
    except httpx.HTTPError as exc:
        raise FleetciError(f"no fleetci proxy dashboard answering on {where}: {describe(exc)}") from exc
    proxy_url = str(health.get("proxy_url") or "") if uds is not None else base
    if not proxy_url.startswith(("http://", "https://")):
        raise FleetciError(f"the proxy on {where} did not say its TCP address")
    return proxy_url.rstrip("/") + "/"
