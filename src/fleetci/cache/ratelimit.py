"""Per-token view of GitHub's primary and secondary rate limits.

GitHub says: on a limit, stop until ``Retry-After`` or ``x-ratelimit-reset``; with neither header wait at
least a minute, then back off exponentially. Calling on while limited can get an integration banned, so the
proxy serves stale entries instead of calling upstream for that token.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

SECONDARY_FALLBACK_S = 60.0
MAX_BACKOFF_S = 15 * 60.0
# Scopes remembered at most: every distinct token a client sends makes one, so without a bound a client
# cycling made-up tokens grows the proxy without end. Blocked scopes are never forgotten early.
MAX_SCOPES = 4096


@dataclass
class ScopeLimits:
    limit: int | None = None
    remaining: int | None = None
    used: int | None = None
    reset: float | None = None
    resource: str | None = None
    blocked_until: float = 0.0
    backoff: float = 0.0
    reason: str = ""
    semaphore: asyncio.Semaphore | None = field(default=None, repr=False)


def _int(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        return int(float(raw))
    except ValueError:
        return None


class RateLimitTracker:
    """Tracks limits per token scope and caps concurrent upstream requests per scope."""

    def __init__(self, max_concurrency: int = 20, max_scopes: int = MAX_SCOPES) -> None:
        self.max_concurrency = max_concurrency
        self.max_scopes = max_scopes
        self.scopes: OrderedDict[str, ScopeLimits] = OrderedDict()  # least recently used first

    def _get(self, scope: str) -> ScopeLimits:
        s = self.scopes.get(scope)
        if s is None:
            s = self.scopes[scope] = ScopeLimits()
        else:
            self.scopes.move_to_end(scope)
        return s

    def _forget_idle(self, now: float) -> None:
        """Drop the least recently used scopes that are neither blocked nor saturated, down to the bound
        (a dropped scope with a request still in flight just starts a fresh semaphore)."""
        excess = len(self.scopes) - self.max_scopes
        if excess <= 0:
            return
        drop: list[str] = []
        for name, s in self.scopes.items():
            if len(drop) >= excess:
                break
            if s.blocked_until <= now and (s.semaphore is None or not s.semaphore.locked()):
                drop.append(name)
        for name in drop:
            del self.scopes[name]

    def semaphore(self, scope: str) -> asyncio.Semaphore:
        s = self._get(scope)
        if s.semaphore is None:
            s.semaphore = asyncio.Semaphore(self.max_concurrency)
        return s.semaphore

    def blocked_for(self, scope: str, now: float) -> float:
        """Seconds this scope must still wait before calling upstream (0 when free)."""
        s = self.scopes.get(scope)
        if s is None:
            return 0.0
        return max(0.0, s.blocked_until - now)

    def observe(self, scope: str, status: int, headers: Mapping[str, str], body: bytes, now: float) -> bool:
        """Record an upstream answer; True when it was a rate-limit refusal.

        ``headers`` must have lower-case names.
        """
        s = self._get(scope)
        self._forget_idle(now)
        remaining = _int(headers, "x-ratelimit-remaining")
        reset = _int(headers, "x-ratelimit-reset")
        if remaining is not None:
            s.remaining = remaining
            s.limit = _int(headers, "x-ratelimit-limit")
            s.used = _int(headers, "x-ratelimit-used")
            s.reset = float(reset) if reset is not None else s.reset
            s.resource = headers.get("x-ratelimit-resource", s.resource)
        limited = False
        if status in (403, 429):
            retry_after = _int(headers, "retry-after")
            text = body[:2000].decode("utf-8", "replace").lower()
            if retry_after is not None:
                s.blocked_until = now + max(retry_after, 1)
                s.reason = "secondary rate limit (Retry-After)"
                limited = True
            elif remaining == 0 and reset is not None:
                s.blocked_until = max(float(reset), now + 1)
                s.reason = "primary rate limit"
                limited = True
            elif status == 429 or "secondary rate limit" in text or "abuse" in text or "rate limit" in text:
                s.backoff = SECONDARY_FALLBACK_S if s.backoff == 0 else min(s.backoff * 2, MAX_BACKOFF_S)
                s.blocked_until = now + s.backoff
                s.reason = "secondary rate limit"
                limited = True
        elif status < 400:
            s.backoff = 0.0
            if remaining == 0 and reset is not None and reset > now:
                # The last allowed call: the next one would be refused, so stop now.
                s.blocked_until = float(reset)
                s.reason = "primary rate limit (exhausted)"
        return limited

    def adopt_block(self, scope: str, until: float, reason: str) -> None:
        """A block another proxy of the fleet saw for this credential (the shared store): honour it."""
        s = self._get(scope)
        if until > s.blocked_until:
            s.blocked_until, s.reason = until, reason or "rate limit (seen by another proxy)"

    def remaining(self, scope: str) -> int | None:
        """The scope's remaining budget from its last answer (None: not seen yet)."""
        s = self.scopes.get(scope)
        return None if s is None else s.remaining

    def headers_for(self, scope: str) -> dict[str, str]:
        """Latest known X-RateLimit-* values, to overwrite stale ones on cached answers."""
        s = self.scopes.get(scope)
        if s is None or s.remaining is None:
            return {}
        out = {"X-RateLimit-Remaining": str(s.remaining)}
        if s.limit is not None:
            out["X-RateLimit-Limit"] = str(s.limit)
        if s.used is not None:
            out["X-RateLimit-Used"] = str(s.used)
        if s.reset is not None:
            out["X-RateLimit-Reset"] = str(int(s.reset))
        return out

    def lowest_remaining(self, resource: str | None = None) -> int | None:
        """Over every token's REST budgets, or over the budgets of one ``resource`` (``graphql``)."""
        values = [
            s.remaining
            for s in self.scopes.values()
            if s.remaining is not None
            and (s.resource == resource if resource else (s.resource or "core") != "graphql")
        ]
        return min(values) if values else None
