"""Prewarming (issue 17): URLs the fleet reads all the time stay fresh, so their reads are always ``HIT``.

``cache.prewarm`` lists regular expressions (searched in ``path?query``, like ``cache.ttl`` rules). Each
cacheable GET whose target matches is remembered with the headers of a reader whose credential the upstream
accepted for it (a MISS or REVALIDATED answered 2xx/3xx, or a HIT in the token's own scope: under a shared
scope a HIT says nothing about the reader's token). They stay in memory only (they carry its token), and an
entry is only ever revalidated with that credential. Every tick, an entry whose window ends within
``prewarm_lead`` seconds is revalidated — a conditional request, free when nothing changed (GitHub does not
charge a 304) — so no reader ever waits for it; never twice within half a window (a TTL at or under the lead
would otherwise ask every tick), except for an entry a webhook made stale, at the next tick. Prewarming
pauses for a credential whose remaining budget (``X-RateLimit-Remaining`` of its last answer, minus the
revalidations this pass started) is under ``prewarm_reserve`` or that is rate limited: the fleet's own
reads come first; and at most ``PREWARM_CONCURRENCY`` prewarm calls per credential are in flight, so a
reader's miss never queues behind a whole batch on the engine's per-credential semaphore.

Bounded: the newest ``MAX_PREWARMED`` keys; a key is forgotten when its entry left the cache, when no reader
read it for ``IDLE_WINDOWS`` windows (at least ``IDLE_MIN_S``), or when the upstream refused its credential
(401/403/404: a revoked or expired token is not asked again every tick).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from fleetci.http import describe

if TYPE_CHECKING:
    from fleetci.cache.engine import CacheEngine, Prepared

log = logging.getLogger("fleetci.cache")

MAX_PREWARMED = 1_000  # keys kept warm (URL x credential); the least recently read go first
IDLE_WINDOWS = 10  # a key no reader read for this many windows is forgotten ...
IDLE_MIN_S = 60.0  # ... but not sooner than this
REFUSED = frozenset({401, 403, 404})  # the credential cannot read it (any more): forget the key
PREWARM_CONCURRENCY = 2  # prewarm calls in flight per credential: a reader's miss waits behind 2 at most
MIN_TICK_S = 0.05
MAX_TICK_S = 1.0


class PrewarmStats(TypedDict):
    """``prewarm`` in ``GET /_fleetci/stats``."""

    watched: int  # keys kept warm now
    revalidated: int  # refreshed for free (304)
    changed: int  # refreshed with a new body (charged)
    joined: int  # a reader's fetch of it was in flight: the prewarm shared its answer
    paused: int  # revalidations skipped: the credential's budget under the reserve, or rate limited
    failed: int  # not renewed: upstream errors, a stale answer, a refusal (the entry stays as it is)
    dropped: int  # keys forgotten because the upstream refused their credential (401/403/404)


@dataclass
class _Watched:
    prep: Prepared
    headers: tuple[tuple[str, str], ...]  # the confirmed reader's request headers: in memory only
    last_read: float  # the last time a reader read it (idle keys are forgotten)
    last_try: float = float("-inf")  # the last prewarm of it
    seen_until: float = float("-inf")  # its window's end after that prewarm (a webhook changes it)


@dataclass
class Prewarmer:
    """Keeps the entries of matching URLs fresh for the credentials that read them."""

    engine: CacheEngine
    patterns: tuple[str, ...]
    lead: float
    reserve: int
    max_keys: int = MAX_PREWARMED
    counts: Counter[str] = field(default_factory=Counter)
    _watched: OrderedDict[str, _Watched] = field(default_factory=OrderedDict)
    _compiled: tuple[re.Pattern[str], ...] = ()
    _gates: dict[str, asyncio.Semaphore] = field(default_factory=dict)  # per credential (limit scope)
    _running: dict[str, asyncio.Task[bool]] = field(default_factory=dict)  # key -> its prewarm call

    def __post_init__(self) -> None:
        self._compiled = tuple(re.compile(p) for p in self.patterns)

    @property
    def tick(self) -> float:
        """Seconds between two passes: well inside the lead, so no window ends between two looks."""
        return min(MAX_TICK_S, max(MIN_TICK_S, self.lead / 4))

    def note(self, prep: Prepared, headers: Sequence[tuple[str, str]], confirmed: bool) -> None:
        """A cacheable GET was answered: keep its entry warm when its URL matches. Only a ``confirmed``
        credential (the upstream accepted it for this URL) is recorded; any other read only counts as a
        read of a key already watched."""
        if not any(p.search(prep.target) for p in self._compiled):
            return
        now = self.engine.clock()
        watched = self._watched.get(prep.key)
        if confirmed:
            if watched is None:
                watched = self._watched[prep.key] = _Watched(prep, tuple(headers), now)
            else:
                watched.prep, watched.headers = prep, tuple(headers)
        elif watched is None:
            return
        watched.last_read = now
        self._watched.move_to_end(prep.key)
        while len(self._watched) > self.max_keys:
            self._watched.popitem(last=False)

    def stats(self) -> PrewarmStats:
        c = self.counts
        return {
            "watched": len(self._watched),
            "revalidated": c["revalidated"],
            "changed": c["changed"],
            "joined": c["joined"],
            "paused": c["paused"],
            "failed": c["failed"],
            "dropped": c["dropped"],
        }

    def _budget_ok(self, scope: str, now: float, started: int) -> bool:
        limits = self.engine.limits
        if limits.blocked_for(scope, now) > 0:
            return False
        remaining = limits.remaining(scope)
        return remaining is None or remaining - started >= self.reserve

    def _due(self, watched: _Watched, fresh_until: float, now: float) -> bool:
        if fresh_until - now > self.lead:
            return False
        if now - watched.last_try >= watched.prep.ttl / 2:
            return True
        return fresh_until <= now and fresh_until != watched.seen_until  # a webhook made it stale

    async def once(self) -> int:
        """One pass: revalidate every watched entry that is due, concurrently (the engine's per-credential
        semaphore caps the calls in flight); how many were renewed."""
        engine = self.engine
        due: list[_Watched] = []
        started: Counter[str] = Counter()
        for key, watched in list(self._watched.items()):
            now = engine.clock()
            entry = engine.store.peek(key)  # a look is not a read: it must not keep the entry from eviction
            idle = max(IDLE_MIN_S, IDLE_WINDOWS * watched.prep.ttl)
            if entry is None or now - watched.last_read > idle:  # a reader brings it back
                self._watched.pop(key, None)
            elif key in self._running or not self._due(watched, entry.fresh_until, now):  # or still going
                continue
            elif not self._budget_ok(watched.prep.limit_scope, now, started[watched.prep.limit_scope]):
                self.counts["paused"] += 1
            else:
                started[watched.prep.limit_scope] += 1
                watched.last_try = now
                due.append(watched)
        scopes = {w.prep.limit_scope for w in self._watched.values()}
        for scope in [s for s, gate in self._gates.items() if s not in scopes and not gate.locked()]:
            del self._gates[scope]
        tasks = []
        for watched in due:
            task = asyncio.create_task(self._gated(watched))
            self._running[watched.prep.key] = task
            task.add_done_callback(functools.partial(self._finished, watched.prep.key))
            tasks.append(task)
        if not tasks:
            return 0
        # A slow call does not hold the next pass back: it goes on (and counts itself) after the pass.
        done, _ = await asyncio.wait(tasks, timeout=max(self.lead, MAX_TICK_S))
        return sum(t.result() for t in done)

    def _finished(self, key: str, task: asyncio.Task[bool]) -> None:
        if self._running.get(key) is task:
            del self._running[key]

    async def _gated(self, watched: _Watched) -> bool:
        gate = self._gates.setdefault(watched.prep.limit_scope, asyncio.Semaphore(PREWARM_CONCURRENCY))
        async with gate:
            return await self._one(watched)

    async def _one(self, watched: _Watched) -> bool:
        prep = watched.prep
        try:
            resp = await self.engine.revalidate(prep, watched.headers)
        except Exception as exc:  # one key's failure must not end the pass for the others
            self.counts["failed"] += 1
            log.warning("prewarm %s: %s", prep.target, describe(exc))
            return False
        entry = self.engine.store.peek(prep.key)
        watched.seen_until = entry.fresh_until if entry is not None else float("-inf")
        if resp.status in REFUSED:
            self.counts["failed"] += 1
            if self._watched.get(prep.key) is watched:  # not re-confirmed by a reader meanwhile
                del self._watched[prep.key]
                self.counts["dropped"] += 1
            return False
        if resp.outcome == "REVALIDATED":
            self.counts["revalidated"] += 1
        elif resp.outcome == "MISS" and resp.status < 300:
            self.counts["changed"] += 1
        elif resp.outcome == "COALESCED" and resp.status < 300:
            self.counts["joined"] += 1
        else:  # STALE (upstream down, rate limited), a 5xx, a redirect: not renewed
            self.counts["failed"] += 1
            return False
        return True

    async def run_forever(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.tick)
                try:
                    await self.once()
                except Exception as exc:
                    log.warning("prewarm pass failed: %s: %s", type(exc).__name__, exc)
        finally:  # shutdown: no call outlives the engine
            running = list(self._running.values())
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
