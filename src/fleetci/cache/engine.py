"""The caching engine behind ``fleetci cache serve`` and the in-process API.

Order of business for a GET: fresh local entry -> join an identical in-flight request -> (rate-limited?
serve stale) -> conditional request upstream (a 304 is free) -> store. Anything else passes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

from fleetci.cache.activity import Activity
from fleetci.cache.api import COUNTER_KEYS as COUNTER_KEYS
from fleetci.cache.api import GRAPHQL_KEYS, CacheStats
from fleetci.cache.api import SUMMARY_KEYS as SUMMARY_KEYS
from fleetci.cache.changes import ChangeFeed
from fleetci.cache.peering import LEASE_FRESH, LEASE_GRANTED, LEASE_WAIT, Announcement, Claim
from fleetci.cache.peering import PeerLink as PeerLink
from fleetci.cache.policy import (
    ANONYMOUS_SCOPE,
    CredentialError,
    TTLPolicy,
    cache_key,
    normalize_target,
    request_credential,
    response_is_storable,
    scope_of,
    shared_scope_of,
    upstream_headers,
    wants_revalidation,
)
from fleetci.cache.ratelimit import RateLimitTracker
from fleetci.cache.settings import CacheSettings
from fleetci.cache.shared import SharedStore
from fleetci.cache.store import CacheStore, Entry, Headers
from fleetci.http import HOP_BY_HOP, AsyncUpstream, StreamedBody, UpstreamError, UpstreamResponse, forwardable
from fleetci.wait import within

log = logging.getLogger("fleetci.cache")

CACHE_HEADER = "X-Fleetci-Cache"
MAX_STORED_BODY = 16 * 1024 * 1024
DROP_FROM_STORED = HOP_BY_HOP | {"x-fleetci-cache", "set-cookie"}
CONDITIONAL = {"if-none-match", "if-modified-since", "cache-control", "pragma"}


class Outcome:
    HIT = "HIT"
    PEER = "PEER"
    REVALIDATED = "REVALIDATED"
    MISS = "MISS"
    COALESCED = "COALESCED"
    STALE = "STALE"
    BYPASS = "BYPASS"
    SHARED = "SHARED"  # from the fleet's shared store (CACHE_BACKEND)
    REFUSED = "REFUSED"  # bad request (an ambiguous credential): answered 400 without calling upstream


@dataclass(frozen=True)
class ProxyResponse:
    status: int
    headers: Headers
    body: bytes
    outcome: str


@dataclass
class Counters:
    requests: int = 0
    local_hits: int = 0
    peer_hits: int = 0
    misses: int = 0
    revalidations: int = 0
    coalesced: int = 0
    stale_served: int = 0
    bypassed: int = 0
    upstream_errors: int = 0
    rate_limited: int = 0
    upstream_requests: int = 0
    claim_waits: int = 0  # peer answers obtained by waiting for another node's claimed fetch
    claim_windows: int = 0  # misses that waited the claim window (the key's owner did not answer)
    leases: int = 0  # misses that asked the key's owner for a lease (a round trip unless we own the key)
    fetched_at_once: int = 0  # misses that asked nobody: no peer uses their token (issue 16)
    refused: int = 0  # requests answered 400 (ambiguous credentials, credentials in the query)
    shared_hits: int = 0  # answered from the shared store (CACHE_BACKEND)
    shared_waits: int = 0  # of those, after waiting for another proxy's fetch (its miss lock)
    shared_rejected: int = 0  # shared values refused: tampered, foreign, oversize (kept by the store)
    shared_errors: int = 0  # failed calls to the shared store (kept by the store)
    shared_lookups: int = 0  # local misses that asked the shared store (kept by the store)
    shared_pushed: int = 0  # entries other proxies pushed that this one kept (accept_shared)
    shared_push_dropped: int = 0  # pushed entries over the store's rate cap (kept by the store)
    shared_push_ignored: int = 0  # pushed entries of scopes no client here used lately (kept by the store)
    shared_listen_reconnects: int = 0  # subscriptions to the shared store lost and made again (the store's)
    started_at: float = field(default_factory=time.time)

    def count(self, outcome: str) -> None:
        name = {
            Outcome.HIT: "local_hits",
            Outcome.PEER: "peer_hits",
            Outcome.REVALIDATED: "revalidations",
            Outcome.MISS: "misses",
            Outcome.COALESCED: "coalesced",
            Outcome.STALE: "stale_served",
            Outcome.BYPASS: "bypassed",
            Outcome.SHARED: "shared_hits",
        }[outcome]
        setattr(self, name, getattr(self, name) + 1)


@dataclass(frozen=True)
class Prepared:
    """A GET/HEAD after normalization: where it lives in the cache and for how long."""

    scope: str  # cache partition (the token's scope, or a declared shared scope)
    target: str
    key: str
    ttl_class: str
    ttl: float
    limit_scope: str  # rate limits are always per real token
    credential: str | None = field(default=None, repr=False)  # keyed the entry; the only one sent upstream


def _lower(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Lower-case name -> value; repeated headers combine into one comma-separated list (RFC 9110 5.3).

    Upstream sees every line of a repeated ``Accept``; keying on only the last one would let a request
    that GitHub answers in one representation fill the entry of another.
    """
    out: dict[str, str] = {}
    for k, v in headers:
        low = k.lower()
        out[low] = f"{out[low]}, {v}" if low in out else v
    return out


def _error(status: int, message: str, outcome: str) -> ProxyResponse:
    """A one-line JSON error in GitHub's shape (``{"message": …}``), answered by the proxy itself."""
    body = json.dumps({"message": " ".join(message.split())}).encode()
    return ProxyResponse(status, (("Content-Type", "application/json; charset=utf-8"),), body, outcome)


def _etag_matches(client_inm: str, etag: str | None) -> bool:
    if not etag:
        return False
    if client_inm.strip() == "*":
        return True
    return _weak(etag) in {_weak(t) for t in client_inm.split(",")}


def _weak(tag: str) -> str:
    """Weak comparison, as GitHub does: W/"x" equals "x"."""
    return tag.strip().removeprefix("W/")


@dataclass(frozen=True)
class UpstreamCall:
    """A cacheable request that is not a conditional GET of ``prep.target`` (GraphQL's POST of a query):
    what to send and which answers to keep. The rest of a miss (rate limits, stale copies, storing,
    persisting, announcing) is the engine's, the same as for REST."""

    method: str
    target: str
    body: bytes
    storable: Callable[[int, Mapping[str, str], bytes], bool]
    from_origin: bool = False  # GHES GraphQL: HOST/api/graphql, not under the REST base
    charged_as: str = ""  # the dashboard's name for the charged call ("" -> the target)
    sent: Callable[[], None] | None = None  # told when the request goes upstream (its own counters)


class GraphQLHook(Protocol):
    """What the engine asks of the GraphQL cache (``fleetci.cache.graphql``, which builds on this module)."""

    def is_endpoint(self, target: str) -> bool: ...
    async def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        lower: dict[str, str],
        body: bytes | StreamedBody | None,
    ) -> ProxyResponse: ...
    def counters(self) -> dict[str, int]: ...


PEER_INDEX_MAX = 50_000
SHARED_ORIGIN_MAX = 10_000  # pushed entries whose first read says SHARED (also at most CACHE_MAX_ENTRIES)
SCOPES_SERVED_MAX = 1024  # scopes (tokens) whose pushed entries this proxy keeps: its clients' own
SCOPE_RECENT_S = 3600.0  # ... used within this long
INVALIDATIONS_MAX = 10_000  # prefixes/targets whose last invalidation time the engine remembers
CLAIMS_MAX = 50_000
HEARD_S = 120.0  # a fleet member not heard from for this long no longer owns keys
HEARD_MAX = 4096
WRITE_BEHIND_S = 0.05  # seconds an answer's entry waits for its SQLite commit (batched with others)


class PrewarmHook(Protocol):
    """What the engine tells prewarming (fleetci.cache.prewarm.Prewarmer): a cacheable GET was answered;
    ``confirmed``: the upstream accepted this credential for it (see ``CacheEngine.handle``)."""

    def note(self, prep: Prepared, headers: Sequence[tuple[str, str]], confirmed: bool) -> None: ...


class CacheEngine:
    """Transport-independent cache logic; one per proxy process."""

    def __init__(
        self,
        settings: CacheSettings,
        store: CacheStore | None = None,
        upstream: AsyncUpstream | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock  # injectable: ``fleetci bench fleet`` runs an hour of virtual time
        self.policy = TTLPolicy.build(settings.ttl_rules, settings.default_ttl)
        # ``is not None``: an empty store is falsy (``__len__``), and a given store must be the one used
        self.store = store if store is not None else CacheStore.for_settings(settings)
        self.upstream = upstream or AsyncUpstream(settings.upstream, settings.upstream_timeout)
        self.limits = RateLimitTracker(settings.max_concurrency)
        self.counters = Counters()
        # Moves with every invalidation (webhook, fleet gossip, shared store): GET /_fleetci/changes.
        self.changes = ChangeFeed()
        self.activity = Activity(clock)  # the dashboard's last hour and top endpoints (bounded)
        self.peers: PeerLink | None = None
        self.shared: SharedStore | None = None  # CACHE_BACKEND: set by fleetci.cache.server.serve
        self._peer_index: OrderedDict[str, Announcement] = OrderedDict()  # announced, body not fetched yet
        # Stored from a peer, not served yet (its first answer says PEER); bounded like the index, since
        # a runner may never serve most of what its peers push.
        self._peer_origin: OrderedDict[str, None] = OrderedDict()
        # Pushed by another proxy through the shared store (accept_shared), not served yet: key -> the
        # copy's stored_at (its first answer says SHARED; a copy renewed here since is our own).
        self._shared_origin: OrderedDict[str, float] = OrderedDict()
        # Scopes this proxy's clients used lately (with a shared store): only their pushed entries are
        # kept (``wants_shared``), so another token's pushes neither fill the disk nor sit in cache.db.
        self._scopes_served: OrderedDict[str, float] = OrderedDict()
        # Pushes stored before this process started are refused: the invalidations that may have made
        # them obsolete (``_invalidated``) are remembered in memory only.
        self._started = clock()
        self._inflight: dict[str, asyncio.Future[ProxyResponse]] = {}
        # Fleet-wide coalescing: key -> {peer: when its claim arrived (monotonic)}, the keys we claimed
        # and have not announced yet, and requests waiting for a claimant's announcement.
        self._claims: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._claimed: set[str] = set()
        self._arrivals: dict[str, asyncio.Future[None]] = {}
        # GraphQL query caching, installed by the proxy (fleetci.cache.graphql.install); None: pass through.
        self.graphql: GraphQLHook | None = None
        # (when, prefixes, exact) of the last webhook invalidations: see ``invalidate``.
        self._invalidated: OrderedDict[str, float] = OrderedDict()  # "p:<prefix>" / "e:<target>" -> when
        self._prefix_lengths: set[int] = set()  # lengths of invalidated prefixes (only grows: a bounded set)
        # Keys this node owns (rendezvous hashing over the connected fleet) that a node is fetching now:
        # key -> (peer, since, the answer it got). Asked from the p2p thread (grant_lease), hence the lock.
        self._leases: OrderedDict[str, tuple[str, float, str]] = OrderedDict()
        self._lease_lock = threading.Lock()
        # key -> fresh_until of what this node stored or heard announced lately: the owner's "someone just
        # fetched it" check, read from the p2p thread without touching the store.
        self._fresh_hint: OrderedDict[str, float] = OrderedDict()
        # Fleet members heard from lately (claims and announcements carry their sender): with those, nodes
        # of a mesh that is not (yet) complete still agree on a key's owner.
        self._heard: OrderedDict[str, float] = OrderedDict()
        # Scopes (token partitions) peers used lately: only a node holding the same token can fetch the
        # same key, so a miss in a scope no peer uses has nobody to coalesce with.
        self._scopes_heard: OrderedDict[str, float] = OrderedDict()
        # Scopes of lease questions peers asked this node (written on the p2p thread: a plain dict).
        self._scopes_asked: dict[str, float] = {}
        # Scopes this node's own misses used: scope -> (first, last) miss. A token this node only just
        # started using may be starting on other nodes too (a fleet starting up): see ``_quiet``.
        self._scopes_used: OrderedDict[str, tuple[float, float]] = OrderedDict()
        # Prewarming (cache/prewarm.py), installed by the proxy when cache.prewarm lists URLs.
        self.prewarm: PrewarmHook | None = None
        self._behind_timer: asyncio.TimerHandle | None = None  # _persist_later's pending commit

    # -- classification ------------------------------------------------------------------------------
    def prepare(self, target: str, headers: dict[str, str]) -> Prepared:
        norm = normalize_target(target, self.upstream.base_path)
        ttl_class, ttl = self.policy.classify(norm)
        credential = headers.get("authorization") or self.upstream.default_authorization
        token_scope = scope_of(credential)
        scope = token_scope
        if self.settings.shared_scope and token_scope != ANONYMOUS_SCOPE:
            scope = shared_scope_of(self.settings.shared_scope)
        return Prepared(
            scope,
            norm,
            cache_key(scope, norm, headers),
            ttl_class,
            ttl,
            token_scope,
            credential,
        )

    def lookup_fresh(self, key: str, now: float | None = None) -> Entry | None:
        """In-process fast path: a fresh entry or None, no I/O when the memory tier has it."""
        now = self.clock() if now is None else now
        entry = self.store.get(key)
        if entry is not None and entry.is_fresh(now):
            return entry
        return None

    # -- webhook invalidation (cache/webhooks.py) -----------------------------------------------------
    def invalidate(self, prefixes: Sequence[str], exact: Sequence[str] = (), forward: bool = True) -> int:
        """End the fresh window of every entry (any scope) whose target starts with one of ``prefixes``
        or equals one of ``exact``: the next read revalidates. Peers' announcements of such entries that
        nobody fetched yet are dropped, and copies stored before now that peers announce (or the shared
        store holds) count as stale (a peer that fetched just before the change must not make it fresh again).
        ``forward``: pass it on to the fleet through the ``PeerLink``'s optional ``invalidate`` (a webhook
        reaches one proxy; ``fleetci.p2p`` gossips it to the others, which call this with False)."""
        now = self.clock()
        n = self.store.invalidate(prefixes, exact, now=now)
        self._fresh_hint.clear()  # keyed by cache key, not target: a webhook is rare, start over
        lowered, whole = tuple(p.lower() for p in prefixes), frozenset(e.lower() for e in exact)
        for key, ann in list(self._peer_index.items()):
            target = ann.target.lower()
            if target.startswith(lowered) or target in whole:
                del self._peer_index[key]
        self._prefix_lengths.update(len(p) for p in lowered)
        for name in (*(f"p:{p}" for p in lowered), *(f"e:{e}" for e in whole)):
            self._invalidated[name] = now
            self._invalidated.move_to_end(name)
        while len(self._invalidated) > INVALIDATIONS_MAX:
            self._invalidated.popitem(last=False)
        self.changes.bump()  # long polls (GET /_fleetci/changes) answer now
        for link in (self.peers, self.shared) if forward else ():  # P2P gossip, the shared store's channel
            forward_to = getattr(link, "invalidate", None)
            if callable(forward_to):
                forward_to(tuple(prefixes), tuple(exact))
        return n

    def _invalidated_since(self, target: str, stored_at: float) -> bool:
        """A copy of ``target`` stored at ``stored_at`` predates an invalidation of it (one dict lookup per
        length some invalidated prefix has: no scan over the invalidations, and every announcement a
        fleet gossips is checked here)."""
        low = target.lower()
        marks = self._invalidated
        if marks.get(f"e:{low}", -1.0) >= stored_at:
            return True
        n = len(low)
        return any(marks.get(f"p:{low[:i]}", -1.0) >= stored_at for i in self._prefix_lengths if i <= n)

    # -- main entry point ----------------------------------------------------------------------------
    async def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: bytes | StreamedBody | None = None,
    ) -> ProxyResponse:
        self.counters.requests += 1
        try:
            # No credential of its own: the upstream URL's (``https://user:pw@host``), if any, keys it too.
            credential = request_credential(headers, target) or self.upstream.default_authorization
        except CredentialError as exc:
            self.counters.refused += 1
            return self._finish(_error(400, f"fleetci: {exc}", Outcome.REFUSED), {})
        lower = _lower(headers)
        # The one credential keys the entry and is the only one sent upstream (see policy.request_credential).
        if credential is None:
            lower.pop("authorization", None)
        else:
            lower["authorization"] = credential
        method = method.upper()
        # -- GraphQL (issue 20): POSTed queries are cached in fleetci.cache.graphql; anything else sent to
        # the GraphQL path (GET, a query string) passes through there too, never into the REST cache --
        if self.graphql is not None and self.graphql.is_endpoint(target):
            return self._finish(await self.graphql.handle(method, target, headers, lower, body), lower)
        if method not in ("GET", "HEAD"):
            return self._finish(await self._passthrough(method, target, headers, lower, body), lower)
        prep = self.prepare(target, lower)
        if prep.ttl <= 0:
            return self._finish(await self._passthrough("GET", target, headers, lower, None), lower)
        resp = await self._serve(prep, headers, wants_revalidation(lower))
        if self.prewarm is not None:
            # Only a credential the upstream just accepted for this URL may be used to prewarm it: under
            # a shared scope a HIT says nothing about the reader's token (it may never have reached GitHub).
            upstream_said = resp.outcome in (Outcome.MISS, Outcome.REVALIDATED) and resp.status < 400
            own_scope = prep.scope == prep.limit_scope and resp.status < 400  # the key is the token's own
            self.prewarm.note(prep, headers, upstream_said or (own_scope and resp.outcome != Outcome.STALE))
        return self._finish(resp, lower)

    async def revalidate(self, prep: Prepared, headers: Sequence[tuple[str, str]]) -> ProxyResponse:
        """A conditional request for ``prep`` now, fresh or not (prewarming): a 304 renews the entry."""
        return await self._serve(prep, headers, True)

    async def _serve(
        self,
        prep: Prepared,
        headers: Sequence[tuple[str, str]],
        force: bool,
        call: UpstreamCall | None = None,
    ) -> ProxyResponse:
        """A cacheable request: fresh entry, else join the identical in-flight one, else fetch (peers
        first, then upstream: a conditional GET unless ``call`` says otherwise, as GraphQL's does)."""
        now = self.clock()
        self._served_scope(prep.scope, now)  # cheap: one dict write (``wants_shared`` asks)
        entry = self.store.get(prep.key)
        if entry is not None and entry.is_fresh(now) and not force:
            outcome = Outcome.HIT
            if prep.key in self._peer_origin:
                del self._peer_origin[prep.key]
                outcome = Outcome.PEER
            elif self._shared_origin and self._shared_origin.pop(prep.key, None) == entry.stored_at:
                outcome = Outcome.SHARED  # pushed by another proxy: it came from the shared store
            self._count(outcome, prep.target)
            return self._from_entry(entry, outcome, prep.limit_scope)
        pending = self._inflight.get(prep.key)
        if pending is not None:
            shared = await asyncio.shield(pending)
            self._count(Outcome.COALESCED, prep.target)
            return replace(shared, outcome=Outcome.COALESCED)
        future: asyncio.Future[ProxyResponse] = asyncio.get_running_loop().create_future()
        self._inflight[prep.key] = future
        try:
            result = await self._fetch(prep, headers, entry, force, call)
            future.set_result(result)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it, nobody else must log it
            raise
        finally:
            del self._inflight[prep.key]
        self._count(result.outcome, prep.target)
        return result

    async def _fetch(
        self,
        prep: Prepared,
        headers: Sequence[tuple[str, str]],
        entry: Entry | None,
        force: bool = False,
        call: UpstreamCall | None = None,
    ) -> ProxyResponse:
        now = self.clock()
        if self.shared is not None and not force:
            return await self._via_shared(self.shared, prep, headers, entry, call)
        if self.peers is not None and not force:
            from_peer = await self._from_peers(prep, entry, now)
            if from_peer is None:
                from_peer = await self._after_claimant(prep, entry)
            if from_peer is not None:
                return from_peer
            entry = await self._newer_stale_copy(prep, entry, self.clock())
            try:
                return await self._fetch_upstream(prep, headers, entry, force, call)
            finally:
                if prep.key in self._claimed:  # we claimed it but have nothing to announce: say so
                    self._claimed.discard(prep.key)
                    self._end_lease(prep.key)
                    self.peers.claim(prep.scope, prep.key, release=True)
        return await self._fetch_upstream(prep, headers, entry, force, call)

    async def _fetch_upstream(
        self,
        prep: Prepared,
        headers: Sequence[tuple[str, str]],
        entry: Entry | None,
        force: bool,
        call: UpstreamCall | None = None,
    ) -> ProxyResponse:
        now = self.clock()
        usable_stale = (
            entry if entry is not None and now - entry.fresh_until <= self.settings.max_stale else None
        )
        wait = self.limits.blocked_for(prep.limit_scope, now)
        if wait > 0:
            self.counters.rate_limited += 1
            if usable_stale is not None:
                return self._from_entry(usable_stale, Outcome.STALE, prep.limit_scope)
            return self._limited_response(prep.limit_scope, wait)
        fwd = [(k, v) for k, v in upstream_headers(headers, prep.credential) if k.lower() not in CONDITIONAL]
        if call is None and entry is not None:  # a GET revalidates what we hold (a 304 is free)
            if entry.etag:
                fwd.append(("If-None-Match", entry.etag))
            if entry.last_modified:
                fwd.append(("If-Modified-Since", entry.last_modified))
        elif call is None:
            fwd += [(k, v) for k, v in headers if k.lower() in ("if-none-match", "if-modified-since")]
        # else not a GET: no validators (GraphQL answers carry none)
        try:
            async with self.limits.semaphore(prep.limit_scope):
                self.counters.upstream_requests += 1
                sent = self.clock()  # a 304 confirms the body as of when we asked, not of its arrival
                if call is None:
                    up = await self.upstream.request("GET", prep.target, fwd)
                else:
                    if call.sent is not None:
                        call.sent()
                    extra = (
                        {"from_origin": True} if call.from_origin else {}
                    )  # upstream doubles: old signature
                    up = await self.upstream.request(call.method, call.target, fwd, call.body, **extra)
        except UpstreamError:
            self.counters.upstream_errors += 1
            if usable_stale is not None:
                return self._from_entry(usable_stale, Outcome.STALE, prep.limit_scope)
            raise
        if up.status != 304:  # GitHub charges every call but a conditional one answered 304
            self.activity.charged(call.charged_as or call.target if call is not None else prep.target)
        up_headers = up.header_map()
        now = self.clock()
        limited = self.limits.observe(prep.limit_scope, up.status, up_headers, up.body, now)
        self._share_limit(prep.limit_scope)
        if limited:
            self.counters.rate_limited += 1
            if usable_stale is not None:
                return self._from_entry(usable_stale, Outcome.STALE, prep.limit_scope)
            return self._from_upstream(up, Outcome.MISS)
        if up.status == 304 and entry is not None and call is None:
            merged = self._merge_headers(entry.headers, up.headers)
            confirmed = replace(entry, fresh_until=sent + prep.ttl, headers=merged, stored_at=sent)
            if self._invalidated and self._invalidated_since(prep.target, sent):
                # A webhook's change reached us while the question was out: GitHub may have answered
                # before it. This client gets the body (as any request concurrent with a change may),
                # but nothing is extended or announced: the next read revalidates.
                return self._from_entry(confirmed, Outcome.REVALIDATED, prep.limit_scope)
            # Confirmed current as of ``sent``: peers that heard a webhook's invalidation before that
            # take this copy (its stored_at is after the invalidation) instead of each revalidating it.
            refreshed = self.store.refresh(
                prep.key, sent + prep.ttl, merged, verified_at=sent, digest=entry.digest
            )
            # None: a copy from the shared store or a peer, not in our tiers yet, or the store holds
            # another body by now (the 304 is for ours). A body stored after we asked (a peer fetched
            # it after a change) is newer than the one GitHub confirmed: keep it, do not write ours.
            if refreshed is None:
                current = self.store.get(prep.key)
                if current is not None and current.stored_at > sent:
                    return self._from_entry(confirmed, Outcome.REVALIDATED, prep.limit_scope)
                refreshed = confirmed
                self._persist_later(refreshed)
            self._announce(refreshed)
            return self._from_entry(refreshed, Outcome.REVALIDATED, prep.limit_scope)
        if up.status >= 500 and usable_stale is not None:
            self.counters.upstream_errors += 1
            return self._from_entry(usable_stale, Outcome.STALE, prep.limit_scope)
        storable = (
            response_is_storable(up.status, up_headers)
            if call is None
            else call.storable(up.status, up_headers, up.body)
        )
        if storable and len(up.body) <= MAX_STORED_BODY:
            stored = Entry.create(
                prep.key,
                prep.scope,
                prep.target,
                up.status,
                self._storable_headers(up.headers),
                up.body,
                prep.ttl,
                now,
            )
            if self._invalidated and self._invalidated_since(prep.target, sent):
                # As for a 304: GitHub may have answered before the change a webhook announced while
                # the question was out. Kept (its validators make the next read a cheap check), but
                # already stale and not announced as newer than the invalidation.
                stored = replace(stored, fresh_until=min(stored.fresh_until, now))
                self._persist_later(stored)
                return self._from_entry(stored, Outcome.MISS, prep.limit_scope)
            self._persist_later(stored)  # visible at once; committed after this answer is written
            self._announce(stored)
            return self._from_entry(stored, Outcome.MISS, prep.limit_scope)
        return self._from_upstream(up, Outcome.MISS)

    # -- shared store (CACHE_BACKEND; fleetci.cache.shared) ----------------------------------------------
    async def _via_shared(
        self,
        shared: SharedStore,
        prep: Prepared,
        headers: Sequence[tuple[str, str]],
        entry: Entry | None,
        call: UpstreamCall | None = None,
    ) -> ProxyResponse:
        """Local miss or stale: the fleet's copy, else one proxy of the fleet fetches (a lock in the
        store, renewed while it fetches) while the others wait for its entry as long as the lock lives
        (at most the upstream timeout plus one lease); a lock that goes away without an entry is taken
        again by one of them, so a slow or failing upstream is still asked once at a time."""
        found = await shared.lookup(prep.scope, prep.key, prep.limit_scope)
        if found.blocked_until > self.clock():  # another proxy hit this credential's limit: back off too
            self.limits.adopt_block(prep.limit_scope, found.blocked_until, found.reason)
        got = found.entry
        if got is not None and self._invalidated and self._invalidated_since(got.target, got.stored_at):
            got = replace(got, fresh_until=min(got.fresh_until, self.clock()))  # from before a webhook
        if got is not None and got.is_fresh(self.clock()):
            return self._keep_shared(got, prep)
        if got is not None and (entry is None or got.fresh_until > entry.fresh_until):
            entry = got  # a newer stale copy: revalidating it may cost nothing (304)
        deadline = self.clock() + self.settings.upstream_timeout + self.settings.claim_wait
        while not await shared.lock(prep.key):
            left = deadline - self.clock()
            if left <= 0:
                break  # the holder is stuck past any upstream answer: fetch ourselves
            waited = await shared.wait_for(prep.scope, prep.key, left)
            if waited is not None:
                self.counters.shared_waits += 1
                return self._keep_shared(waited, prep)
        try:
            return await self._fetch_upstream(prep, headers, entry, False, call)
        finally:
            shared.unlock(prep.key)  # a no-op once the entry was published

    def _keep_shared(self, got: Entry, prep: Prepared) -> ProxyResponse:
        self._shared_origin.pop(prep.key, None)
        self._persist_later(got)
        return self._from_entry(got, Outcome.SHARED, prep.limit_scope)

    def _served_scope(self, scope: str, now: float) -> None:
        self._scopes_served[scope] = now
        self._scopes_served.move_to_end(scope)
        if len(self._scopes_served) > SCOPES_SERVED_MAX:
            self._scopes_served.popitem(last=False)

    def wants_shared(self, scope: str) -> bool:
        """Keep pushed entries of ``scope``? Only when this proxy's clients used it within
        SCOPE_RECENT_S (asked by the store before it opens a push: a plaintext scope id)."""
        at = self._scopes_served.get(scope)
        return at is not None and self.clock() - at < SCOPE_RECENT_S

    def accept_shared(self, entry: Entry) -> bool:
        """An entry another proxy pushed through the shared store (opened under the fleet secret by the
        store; runs on the event loop). Kept on disk only, through write-behind (one commit per batch,
        the memory tier untouched until a client reads it, written cold: evicted before anything read
        here), unless its scope is none of this proxy's clients' (``wants_shared``), it is no longer
        fresh, was stored before this process started or before a webhook's invalidation of its target
        (a replay), or our own copy is as fresh or as recent. True: kept."""
        now = self.clock()
        if not entry.is_fresh(now) or entry.stored_at < self._started or not self.wants_shared(entry.scope):
            return False
        if self._invalidated and self._invalidated_since(entry.target, entry.stored_at):
            return False
        local = self.store.peek(entry.key)
        if local is not None and (
            local.fresh_until >= entry.fresh_until or local.stored_at >= entry.stored_at
        ):
            return False
        self._persist_later(entry, hot=False)
        self._shared_origin[entry.key] = entry.stored_at
        self._shared_origin.move_to_end(entry.key)
        while len(self._shared_origin) > min(SHARED_ORIGIN_MAX, self.store.max_entries):
            self._shared_origin.popitem(last=False)
        self.counters.shared_pushed += 1
        return True

    def _share_limit(self, scope: str) -> None:
        state = self.limits.scopes.get(scope)
        if self.shared is not None and state is not None and state.blocked_until > self.clock():
            self.shared.share_limit(scope, state.blocked_until, state.reason)

    # -- peers ---------------------------------------------------------------------------------------
    def _announce(self, entry: Entry) -> None:
        if self.shared is not None:
            self.shared.publish(entry)
        if self.peers is not None:
            self._hint(entry.key, entry.fresh_until)
            self._end_lease(entry.key)
            self._peer_origin.pop(entry.key, None)
            self._claimed.discard(entry.key)
            self.peers.announce(entry)

    def _claimants(self, key: str, now: float) -> list[str]:
        """Peers whose claim on ``key`` is recent enough that their announcement may still come."""
        peers = self._claims.get(key)
        if not peers:
            return []
        live = [p for p, at in peers.items() if now - at < self.settings.claim_wait]
        if not live:
            self._claims.pop(key, None)
        return live

    def fetching(self) -> bool:
        """A miss is being fetched now (asked from the p2p thread, which holds its announcements back)."""
        return bool(self._inflight)

    # -- fleet-wide coalescing (issue 16: pay for it only when another node is fetching the key) ------
    def grant_lease(self, key: str, peer: str) -> bool:
        """As ``key``'s owner: may ``peer`` fetch it upstream now (see :meth:`answer_lease`)?"""
        return self.answer_lease(key, peer) != LEASE_WAIT

    def answer_lease(self, key: str, peer: str, scope: str = "") -> str:
        """As ``key``'s owner, answer ``peer``'s lease question: LEASE_WAIT while another node holds a
        recent lease on it or this node is fetching it itself (that announcement will serve everyone);
        LEASE_FRESH (granted) when a fresh copy was stored or announced lately, so the asker looks in
        the fleet first and then fetches at once instead of waiting for an announcement that was made
        already (or never reached it: a webhook invalidated it there first); else LEASE_GRANTED. The
        question also says ``scope`` is in use elsewhere (``_quiet``). Thread-safe, never blocks."""
        now = time.monotonic()
        wall = self.clock()
        asker_is_other = peer != getattr(self.peers, "peer_id", None)
        if scope and asker_is_other:
            self._scopes_asked[scope] = wall  # one dict store: safe from the p2p thread
            if len(self._scopes_asked) > HEARD_MAX:
                self._scopes_asked.clear()
        with self._lease_lock:
            held = self._leases.get(key)
            if held is not None and now - held[1] < self.settings.claim_wait:
                if held[0] != peer:
                    return LEASE_WAIT
                # the same asker again (its datagram answer was lost, it asks on the line): the same
                # answer, or a LEASE_FRESH would turn into an upstream fetch
                self._leases[key] = (peer, now, held[2])
                self._leases.move_to_end(key)
                return held[2]
            # This node fetches it right now (at once: a token it thought nobody else used): its
            # announcement is coming. A dict membership test (the GIL makes it atomic).
            if held is None and asker_is_other and key in self._inflight:
                return LEASE_WAIT
            answer = LEASE_GRANTED
            # Fetched (here or by a peer) a moment ago. A dict lookup, not the store: this runs on the
            # p2p thread and must not wait for SQLite.
            if held is None and asker_is_other and self._fresh_hint.get(key, 0.0) > wall:
                answer = LEASE_FRESH
            if held is None:  # a node that could not ask us (claim window) claimed it: it fetches
                claims = list((self._claims.get(key) or {}).items())  # one copy: the loop thread writes
                if any(p != peer and wall - at < self.settings.claim_wait for p, at in claims):
                    return LEASE_WAIT
            self._leases[key] = (peer, now, answer)
            self._leases.move_to_end(key)
            while len(self._leases) > CLAIMS_MAX:
                self._leases.popitem(last=False)
            return answer

    def _hint(self, key: str, fresh_until: float) -> None:
        if fresh_until > self._fresh_hint.get(key, 0.0):
            self._fresh_hint[key] = fresh_until
            self._fresh_hint.move_to_end(key)
            while len(self._fresh_hint) > CLAIMS_MAX:
                self._fresh_hint.popitem(last=False)

    def _end_lease(self, key: str) -> None:
        with self._lease_lock:
            self._leases.pop(key, None)

    @staticmethod
    def owner_of(key: str, peers: Sequence[str]) -> str:
        """Rendezvous hashing: every node that sees the same fleet picks the same owner for a key."""
        return max(peers, key=lambda p: hashlib.sha256(f"{p}\x00{key}".encode()).digest())

    async def _lease(self, prep: Prepared, connected: list[str]) -> str | None:
        """Ask the key's owner (ourselves included) whether we may fetch now (LEASE_GRANTED, LEASE_WAIT
        or LEASE_FRESH); None: no answer."""
        peers = self.peers
        assert peers is not None
        now = self.clock()
        # Only peers that proved the fleet secret own keys, and none the node backed off (it left a
        # question unanswered): a stranger that dialled us must not make our misses wait (review t2 #1, #5).
        # A PeerLink that cannot tell them apart (bench.fleet) offers its connected peers.
        pick = getattr(peers, "lease_candidates", None)
        candidates, shunned = pick() if pick is not None else (connected, frozenset[str]())
        heard = (p for p, at in self._heard.items() if now - at < HEARD_S and p not in shunned)
        members = {peers.peer_id, *candidates, *heard}
        owner = self.owner_of(prep.key, sorted(members))
        if owner == peers.peer_id:
            return self.answer_lease(prep.key, owner)
        if owner not in connected:  # no direct line to it: the claim window decides
            return None
        # On the event loop when the PeerLink can (P2PNode.ask_lease: a datagram, no thread hop), else a
        # future from its own thread; a PeerLink without leases (bench.fleet): the claim window.
        ask_here = getattr(peers, "ask_lease", None)
        ask = getattr(peers, "lease", None)
        if ask_here is not None:
            asked: Awaitable[str | None] = ask_here(prep.scope, prep.key, owner)
        elif ask is not None:
            asked = asyncio.wrap_future(ask(prep.scope, prep.key, owner))
        else:
            return None
        try:
            answer: str | None = await within(asked, self.settings.claim_wait + 0.5)
        except asyncio.TimeoutError:
            return None
        return answer if answer in (LEASE_GRANTED, LEASE_WAIT, LEASE_FRESH) else None

    async def _after_claimant(self, prep: Prepared, entry: Entry | None) -> ProxyResponse | None:
        """Fleet-wide coalescing, paid for only when another node may be fetching the same key (issue 16).

        A live claim on the key (a node that could not reach the owner fetches it): wait for its
        announcement. Else, when no other node can be fetching it (see ``_quiet``), fetch at once: no
        round trip, no gossip before the call (work on the p2p thread during the fetch competes with it
        for the GIL, which cost 5-10 ms a miss). Else ask the key's owner for a lease (rendezvous hashing
        over the fleet; nothing to ask when we own it, else one question on a lease line kept open to
        each peer): granted, fetch at once (the owner tells every other asker to wait); refused, another
        node is fetching it and we wait for its announcement. Only when the owner cannot be asked do we
        claim (gossip), give concurrent claims ``claim_window`` to arrive, and let the lowest peer ID
        fetch. Everyone waits at most ``claim_wait`` and then goes upstream itself, so a silent
        claimant costs time, not errors."""
        peers = self.peers
        connected = peers.connected_peers() if peers is not None else []
        if peers is None or not connected:
            return None
        now = self.clock()
        claimants = self._claimants(prep.key, now)
        if not claimants and self._quiet(prep.scope, now):
            self.counters.fetched_at_once += 1
            return None
        if not claimants:
            if prep.key not in self._arrivals:  # an announcement during the lease round trip wakes us too
                self._arrivals[prep.key] = asyncio.get_running_loop().create_future()
            self.counters.leases += 1
            granted = await self._lease(prep, connected)
            if granted in (LEASE_WAIT, LEASE_FRESH):  # announced while we asked, or a while ago
                answer = await self._served_by_fleet(prep, entry)
                if answer is not None:
                    if granted == LEASE_FRESH:  # we hold its lease: let whoever waits on it go
                        peers.claim(prep.scope, prep.key, release=True)
                    return answer
            if granted in (LEASE_GRANTED, LEASE_FRESH):  # a fresh copy we lack: fetch, never wait
                self._claimed.add(prep.key)  # released (gossip) if we end without an entry to announce
                return None
            if granted is None:
                peers.claim(prep.scope, prep.key)
                self._claimed.add(prep.key)
                if self.settings.claim_window <= 0:
                    return None
                self.counters.claim_windows += 1
                await asyncio.sleep(self.settings.claim_window)
                answer = await self._served_by_fleet(prep, entry)  # a fast claimant may be done already
                if answer is not None:
                    return answer
                claimants = self._claimants(prep.key, self.clock())
                if not claimants or peers.peer_id < min(claimants):
                    return None
        arrival = self._arrivals.get(prep.key)
        if arrival is None:
            arrival = self._arrivals[prep.key] = asyncio.get_running_loop().create_future()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(arrival), timeout=self.settings.claim_wait)
        if self._arrivals.get(prep.key) is arrival and not arrival.done():
            del self._arrivals[prep.key]  # nobody delivered within claim_wait
        return await self._served_by_fleet(prep, entry)

    def _quiet(self, scope: str, now: float) -> bool:
        """Nobody else can be fetching a key of ``scope`` now: no peer used this token (scope) for
        ``HEARD_S``, and this node has used it for at least ``claim_wait`` — a token the whole fleet
        starts using at once (a fleet starting up) is not heard from the others for a moment, so its
        first misses still ask the owners."""
        first, last = self._scopes_used.get(scope, (now, now))
        if now - last > HEARD_S:
            first = now
        self._scopes_used[scope] = (first, now)
        self._scopes_used.move_to_end(scope)
        while len(self._scopes_used) > HEARD_MAX:
            self._scopes_used.popitem(last=False)
        return not self._scope_in_fleet(scope, now) and now - first >= self.settings.claim_wait

    async def _newer_stale_copy(self, prep: Prepared, entry: Entry | None, now: float) -> Entry | None:
        """Before calling GitHub for a key a peer announced without its body (too large to inline) and
        that has expired since: that peer's copy, if newer than ours, makes the call a conditional one
        (a 304 is free) instead of a charged full fetch, as one cache holding that copy would."""
        ann = self._peer_index.get(prep.key)
        if ann is None or self.peers is None or ann.fresh_until > now:
            return entry
        if now - ann.fresh_until > self.settings.max_stale or not (ann.etag or ann.last_modified):
            return entry
        if entry is not None and (entry.stored_at >= ann.stored_at or entry.etag == ann.etag):
            return entry
        try:
            body = await within(asyncio.wrap_future(self.peers.fetch(ann)), self.settings.peer_timeout + 0.5)
        except asyncio.TimeoutError:
            body = None
        if body is None:
            return entry
        self._peer_index.pop(prep.key, None)
        return ann.to_entry(body)

    async def _served_by_fleet(self, prep: Prepared, entry: Entry | None) -> ProxyResponse | None:
        """After waiting on a claim: the entry a peer announced meanwhile, if any."""
        now = self.clock()
        got = self.store.get(prep.key)
        if got is not None and got.is_fresh(now):
            self._peer_origin.pop(prep.key, None)
            answer: ProxyResponse | None = self._from_entry(got, Outcome.PEER, prep.limit_scope)
        else:
            answer = await self._from_peers(prep, entry, now)
        if answer is not None:
            self.counters.claim_waits += 1
            self._claimed.discard(prep.key)  # served by the fleet: our own claim needs no release
        return answer

    def _arrived(self, key: str) -> None:
        """An announcement (or a release) for ``key``: wake whoever waits for it."""
        self._claims.pop(key, None)
        self._end_lease(key)
        arrival = self._arrivals.pop(key, None)
        if arrival is not None and not arrival.done():
            arrival.set_result(None)

    def _hear(self, peer: str, scope: str, now: float) -> None:
        for seen, name in ((self._heard, peer), (self._scopes_heard, scope)):
            seen[name] = now
            seen.move_to_end(name)
            while len(seen) > HEARD_MAX:
                seen.popitem(last=False)

    def _scope_in_fleet(self, scope: str, now: float) -> bool:
        at = max(self._scopes_heard.get(scope, -math.inf), self._scopes_asked.get(scope, -math.inf))
        return now - at < HEARD_S

    def accept_claims(self, claims: list[Claim]) -> None:
        """Claims peers made (runs on the event loop thread)."""
        now = self.clock()
        for c in claims:
            self._hear(c.peer, c.scope, now)
            if c.release:
                self._end_lease(c.key)
                peers = self._claims.get(c.key)
                if peers is not None:
                    peers.pop(c.peer, None)
                if not peers:  # a lease holder (it never claimed) gave up: wake whoever waits for it
                    self._arrived(c.key)
                continue
            self._claims.setdefault(c.key, {})[c.peer] = now
            self._claims.move_to_end(c.key)
        while len(self._claims) > CLAIMS_MAX:
            self._claims.popitem(last=False)

    async def _from_peers(self, prep: Prepared, entry: Entry | None, now: float) -> ProxyResponse | None:
        """Local miss (or stale): a fresh copy a peer announced beats a call to GitHub."""
        ann = self._peer_index.get(prep.key)
        if ann is None or ann.fresh_until <= now or self.peers is None:
            return None
        if entry is not None and entry.etag == ann.etag and entry.is_fresh(now):
            return None
        try:
            body = await asyncio.wait_for(
                asyncio.wrap_future(self.peers.fetch(ann)), timeout=self.settings.peer_timeout + 0.5
            )
        except asyncio.TimeoutError:
            body = None
        self._peer_index.pop(prep.key, None)  # fetched now, or that peer could not deliver
        if body is None:
            return None
        got = ann.to_entry(body)
        self._persist_later(got)
        return self._from_entry(got, Outcome.PEER, prep.limit_scope)

    def accept_announcements(self, anns: list[Announcement]) -> None:
        """Entries peers announced (runs on the event loop thread)."""
        now = self.clock()
        for ann in anns:
            self._hear(ann.peer, ann.scope, now)
            if ann.fresh_until <= now:
                continue
            if self._invalidated and self._invalidated_since(ann.target, ann.stored_at):
                continue  # a copy from before a webhook's change
            self._arrived(ann.key)  # waiters resume after this loop
            self._hint(ann.key, ann.fresh_until)
            local = self.store.get(ann.key)
            if local is not None and local.etag == ann.etag and ann.etag is not None:
                if ann.fresh_until > local.fresh_until:
                    self.store.refresh(ann.key, ann.fresh_until, verified_at=ann.stored_at)
                continue
            if local is not None and local.fresh_until >= ann.fresh_until:
                continue
            if ann.body is not None:
                self.store.put(ann.to_entry(ann.body), hot=False)  # RAM only once a client asks
                self._peer_origin[ann.key] = None
                while len(self._peer_origin) > PEER_INDEX_MAX:
                    self._peer_origin.popitem(last=False)
                self._peer_index.pop(ann.key, None)
            else:
                self._peer_index[ann.key] = ann
                self._peer_index.move_to_end(ann.key)
                while len(self._peer_index) > PEER_INDEX_MAX:
                    self._peer_index.popitem(last=False)

    # -- write-behind (issue 16: a SQLite commit costs ~1 ms under load; it never delays an answer) ----
    def _persist_later(self, entry: Entry, hot: bool = True) -> None:
        """Visible at once; committed with whatever else arrives within WRITE_BEHIND_S, in one
        transaction, once this answer is written (``CacheStore.write_behind``; ``close`` commits the
        rest). A crash in between loses only these copies, never a whole row half written. ``hot``:
        also in the memory tier (not for pushed entries nobody asked for yet)."""
        if self.store.write_behind(entry, hot) and self._behind_timer is None:
            loop = asyncio.get_running_loop()
            self._behind_timer = loop.call_later(WRITE_BEHIND_S, self._write_behind)

    def _write_behind(self) -> None:
        self._behind_timer = None
        self.store.flush_behind()  # logs and keeps the entries in memory when the disk refuses

    async def _passthrough(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        lower: dict[str, str],
        body: bytes | StreamedBody | None,
        limit_scope: str | None = None,
        from_origin: bool = False,
    ) -> ProxyResponse:
        """Straight upstream, uncached; ``limit_scope``: the budget it spends (the token's REST one)."""
        credential = lower.get("authorization")
        scope = limit_scope or scope_of(credential)
        wait = self.limits.blocked_for(scope, self.clock())
        if wait > 0:
            self.counters.rate_limited += 1
            self._count(Outcome.BYPASS, target)
            return self._limited_response(scope, wait, Outcome.BYPASS)
        base = self.upstream.base_path
        if base and not from_origin and target.startswith(base + "/"):  # gh on GHES sends /api/v3/...
            target = target[len(base) :]
        async with self.limits.semaphore(scope):
            self.counters.upstream_requests += 1
            try:
                extra = {"from_origin": True} if from_origin else {}  # GHES GraphQL (cache/graphql.py)
                up = await self.upstream.request(
                    method, target, upstream_headers(headers, credential), body, **extra
                )
            except UpstreamError:
                self.counters.upstream_errors += 1
                raise
        self.limits.observe(scope, up.status, up.header_map(), up.body, self.clock())
        self._share_limit(scope)
        self.activity.charged(target)
        self._count(Outcome.BYPASS, target)
        return self._from_upstream(up, Outcome.BYPASS)

    # -- response shaping ----------------------------------------------------------------------------
    @staticmethod
    def _storable_headers(headers: Sequence[tuple[str, str]]) -> Headers:
        return tuple((k, v) for k, v in headers if k.lower() not in DROP_FROM_STORED)

    def _merge_headers(self, old: Headers, fresh: Sequence[tuple[str, str]]) -> Headers:
        """A 304 carries updated validators and rate-limit values; keep the rest of the stored set."""
        newer = {k.lower(): (k, v) for k, v in fresh if k.lower() not in DROP_FROM_STORED}
        keep = tuple((k, v) for k, v in old if k.lower() not in newer)
        return keep + tuple(newer.values())

    def _from_entry(self, entry: Entry, outcome: str, scope: str) -> ProxyResponse:
        latest = self.limits.headers_for(scope)
        if latest:
            names = {k.lower() for k in latest}
            headers = tuple((k, v) for k, v in entry.headers if k.lower() not in names) + tuple(
                latest.items()
            )
        else:
            headers = entry.headers
        return ProxyResponse(entry.status, headers, entry.body, outcome)

    @staticmethod
    def _from_upstream(up: UpstreamResponse, outcome: str) -> ProxyResponse:
        return ProxyResponse(up.status, tuple(forwardable(up.headers)), up.body, outcome)

    def _limited_response(self, scope: str, wait: float, outcome: str = Outcome.MISS) -> ProxyResponse:
        state = self.limits.scopes.get(scope)
        reason = state.reason if state else "rate limit"
        retry = max(1, int(wait + 0.999))
        body = json.dumps(
            {
                "message": f"fleetci: upstream {reason} for this token; not calling GitHub for {retry}s "
                "and no cached copy exists",
                "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api",
            }
        ).encode()
        headers: list[tuple[str, str]] = [
            ("Content-Type", "application/json; charset=utf-8"),
            ("Retry-After", str(retry)),
            ("X-Fleetci-Blocked", reason),
        ]
        headers += list(self.limits.headers_for(scope).items())
        return ProxyResponse(429, tuple(headers), body, outcome)

    def _finish(self, resp: ProxyResponse, client: dict[str, str]) -> ProxyResponse:
        """Add our header and answer the client's own conditional request."""
        headers = (*resp.headers, (CACHE_HEADER, resp.outcome))
        inm = client.get("if-none-match")
        if resp.status == 200 and inm:
            etag = next((v for k, v in resp.headers if k.lower() == "etag"), None)
            if _etag_matches(inm, etag):
                return ProxyResponse(304, headers, b"", resp.outcome)
        return ProxyResponse(resp.status, headers, resp.body, resp.outcome)

    def _count(self, outcome: str, target: str) -> None:
        self.counters.count(outcome)
        self.activity.count(outcome)
        if outcome not in (Outcome.MISS, Outcome.BYPASS):
            self.activity.saved(target)

    # -- stats -----------------------------------------------------------------------------------------
    def stats(self) -> CacheStats:
        c = self.counters
        served_free = c.local_hits + c.peer_hits + c.shared_hits + c.coalesced + c.stale_served
        served_free += c.revalidations
        cacheable = served_free + c.misses
        stats: dict[str, Any] = {k: getattr(c, k) for k in COUNTER_KEYS if not k.startswith("graphql_")}
        if self.shared is not None:
            stats.update({k: v for k, v in self.shared.counters().items() if k in stats})
        stats.update(self.graphql.counters() if self.graphql is not None else dict.fromkeys(GRAPHQL_KEYS, 0))
        stats.update(
            {
                "hit_rate": round(served_free / cacheable, 4) if cacheable else 0.0,
                "api_calls_saved": served_free,
                "rate_limit_remaining": self.limits.lowest_remaining(),
                "graphql_rate_limit_remaining": self.limits.lowest_remaining("graphql"),
                "cache_size": len(self.store),
                "cache_bytes": self.store.total_bytes,
                "connected_peers": len(self.peers.connected_peers()) if self.peers is not None else 0,
                "uptime_s": round(self.clock() - c.started_at, 1),
                "shared_store": self.shared.state if self.shared is not None else "off",
            }
        )
        return cast(CacheStats, stats)

    async def close(self) -> None:
        if self._behind_timer is not None:
            self._behind_timer.cancel()
            self._behind_timer = None
        if self.shared is not None:
            await self.shared.close()
        await self.upstream.close()
        self.store.close()  # commits what write-behind still holds
