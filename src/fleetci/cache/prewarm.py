"""Prewarming (issue 17): URLs the fleet reads all the time stay fresh, so their reads are always ``HIT``.

``cache.prewarm`` lists regular expressions (searched in ``path?query``, like ``cache.ttl`` rules). Each
cacheable GET whose target matches is remembered with the reader's headers (in memory only: they carry its
token, and an entry is only ever revalidated with the credential it belongs to). Every tick, an entry whose
window ends within ``prewarm_lead`` seconds is revalidated — a conditional request, free when nothing
changed (GitHub does not charge a 304) — so no reader ever waits for it. Prewarming pauses for a
credential whose remaining budget (``X-RateLimit-Remaining`` of its last answer) is under
``prewarm_reserve`` or that is rate limited: the fleet's own reads come first. An entry that a webhook
made stale is revalidated at the next tick.

Bounded: the newest ``MAX_PREWARMED`` keys; a key whose entry left the cache is forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict

from fleetci.http import UpstreamError

if TYPE_CHECKING:
    from fleetci.cache.engine import CacheEngine, Prepared

log = logging.getLogger("fleetci.cache")

MAX_PREWARMED = 1_000  # keys kept warm (URL x credential); the least recently read go first
MIN_TICK_S = 0.05
MAX_TICK_S = 1.0


class PrewarmStats(TypedDict):
    """``prewarm`` in ``GET /_fleetci/stats``."""

    watched: int  # keys kept warm now
    revalidated: int  # refreshed for free (304)
    changed: int  # refreshed with a new body (charged)
    paused: int  # revalidations skipped: the credential's budget under the reserve, or rate limited
    failed: int  # upstream errors (the entry stays as it is; readers revalidate it themselves)


@dataclass
class _Watched:
    prep: Prepared
    headers: tuple[tuple[str, str], ...]  # the reader's request headers: in memory only


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

    def __post_init__(self) -> None:
        self._compiled = tuple(re.compile(p) for p in self.patterns)

    @property
    def tick(self) -> float:
        """Seconds between two passes: well inside the lead, so no window ends between two looks."""
        return min(MAX_TICK_S, max(MIN_TICK_S, self.lead / 4))

    def note(self, prep: Prepared, headers: Sequence[tuple[str, str]]) -> None:
        """A cacheable GET was read: keep its entry warm when its URL matches."""
        if not any(p.search(prep.target) for p in self._compiled):
            return
        self._watched[prep.key] = _Watched(prep, tuple(headers))
        self._watched.move_to_end(prep.key)
        while len(self._watched) > self.max_keys:
            self._watched.popitem(last=False)

    def stats(self) -> PrewarmStats:
        c = self.counts
        return {
            "watched": len(self._watched),
            "revalidated": c["revalidated"],
            "changed": c["changed"],
            "paused": c["paused"],
            "failed": c["failed"],
        }

    def _budget_ok(self, scope: str, now: float) -> bool:
        limits = self.engine.limits
        if limits.blocked_for(scope, now) > 0:
            return False
        remaining = limits.remaining(scope)
        return remaining is None or remaining >= self.reserve

    async def once(self) -> int:
        """One pass: revalidate every watched entry whose window ends within the lead, concurrently (the
        engine's per-credential semaphore caps the calls in flight); how many were revalidated."""
        engine = self.engine
        due: list[_Watched] = []
        for key, watched in list(self._watched.items()):
            now = engine.clock()
            entry = engine.store.get(key)
            if entry is None:  # evicted or expired for good: a reader brings it back
                self._watched.pop(key, None)
            elif entry.fresh_until - now > self.lead:
                continue
            elif not self._budget_ok(watched.prep.limit_scope, now):
                self.counts["paused"] += 1
            else:
                due.append(watched)
        done = await asyncio.gather(*(self._one(w) for w in due))
        return sum(done)

    async def _one(self, watched: _Watched) -> bool:
        try:
            resp = await self.engine.revalidate(watched.prep, watched.headers)
        except UpstreamError as exc:
            self.counts["failed"] += 1
            log.warning("prewarm %s: %s", watched.prep.target, exc)
            return False
        self.counts["revalidated" if resp.outcome == "REVALIDATED" else "changed"] += 1
        return True

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.once()
            except Exception as exc:
                log.warning("prewarm pass failed: %s", type(exc).__name__)
