"""``GET /_fleetci/changes?after=N&wait=S``: a long poll on the proxy's invalidation counter (issue 17).

Every invalidation the engine applies — from its own webhook receiver, from the fleet's P2P gossip or the
shared store's pub/sub — moves one counter. A reader such as the autoscaler (``fleetci.autoscale``) keeps
the last value it saw and asks to be woken when it passes: it then re-reads through the cache at once
(its entries were just marked stale, so the reads revalidate), while its poll stays the safety net for
lost webhooks. The answer is only the counter (``{"seq": M}``): no repository names, nothing another
credential's reader could learn from.

Bounded: ``wait`` is capped at :data:`MAX_WAIT_S`, at most :data:`MAX_WAITERS` requests wait at once
(more get 503 with ``Retry-After``), and bad parameters are one-line 400s.
"""

from __future__ import annotations

import asyncio
import contextlib
import math

from aiohttp import web

from fleetci.http import error_response, parse_id
from fleetci.wait import within

CHANGES_PATH = "/_fleetci/changes"
MAX_WAIT_S = 30.0  # a long poll answers within this, changed or not
MAX_WAITERS = 64  # requests waiting at once; a reader needs one
MAX_PARAM_CHARS = 32


class ChangeFeed:
    """The invalidation counter and the requests waiting for it to move (all on the proxy's event loop)."""

    def __init__(self, max_waiters: int = MAX_WAITERS) -> None:
        self.seq = 0
        self.max_waiters = max_waiters
        self._moved: asyncio.Event | None = None
        self.waiting = 0

    def bump(self) -> None:
        """One invalidation was applied: wake every waiter."""
        self.seq += 1
        if self._moved is not None:
            self._moved.set()
            self._moved = None

    async def wait(self, after: int, timeout: float) -> int:
        """The counter once it differs from ``after`` (a restarted proxy counts from 0 again, so any
        difference is news), or as it is after ``timeout`` seconds."""
        if self.seq != after or timeout <= 0:
            return self.seq
        if self._moved is None:
            self._moved = asyncio.Event()
        moved = self._moved
        self.waiting += 1
        try:
            with contextlib.suppress(asyncio.TimeoutError):
                await within(moved.wait(), timeout)
        finally:
            self.waiting -= 1
        return self.seq


def _param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ValueError(f"{name} given {len(values)} times")
    if not values:
        return None
    if len(values[0]) > MAX_PARAM_CHARS:
        raise ValueError(f"{name} is longer than {MAX_PARAM_CHARS} characters")
    return values[0]


def parse_changes_query(request: web.Request, current: int) -> tuple[int, float]:
    """``after`` (a non-negative integer; default: now) and ``wait`` (seconds, 0..30; more is capped)."""
    raw_after, raw_wait = _param(request, "after"), _param(request, "wait")
    after = current
    if raw_after is not None:
        parsed = parse_id(raw_after)
        if parsed is None:
            raise ValueError(f"after must be a whole number >= 0, got {raw_after!r}")
        after = parsed
    wait = 0.0
    if raw_wait is not None:
        try:
            wait = float(raw_wait)
        except ValueError:
            raise ValueError(f"wait must be a number of seconds, got {raw_wait!r}") from None
        if not math.isfinite(wait) or wait < 0:
            raise ValueError(f"wait must be a finite number of seconds >= 0, got {raw_wait!r}")
    return after, min(wait, MAX_WAIT_S)


async def handle_changes(feed: ChangeFeed, request: web.Request) -> web.Response:
    try:
        after, wait = parse_changes_query(request, feed.seq)
    except ValueError as exc:
        return error_response(400, f"fleetci: {exc}")
    if wait > 0 and feed.seq == after and feed.waiting >= feed.max_waiters:
        resp = error_response(503, f"fleetci: {feed.waiting} long polls already wait; retry shortly")
        resp.headers["Retry-After"] = "1"
        return resp
    seq = await feed.wait(after, wait)
    return web.json_response({"seq": seq}, headers={"Cache-Control": "no-store"})
