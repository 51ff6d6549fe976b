"""The proxy's own endpoints (``/_fleetci/…``): their paths and the JSON they answer.

The server (``cache/server.py``) writes these shapes, the client side (``cache/client.py``,
``cache/daemon.py``, ``fleetci cache …``) reads them; both import them from here, so they agree.
Key order is the order the proxy writes (``fleetci cache stats --json`` sorts keys itself).
"""

from __future__ import annotations

from typing import TypedDict

HEALTH_PATH = "/_fleetci/health"
STATS_PATH = "/_fleetci/stats"
PEERS_PATH = "/_fleetci/peers"
PROBE_PATH = "/_fleetci/p2p/probe"
METRICS_PATH = "/metrics"
DASHBOARD_PATH = "/_fleetci/dashboard"  # also "/" for a browser (Accept: text/html, no credential)
DASHBOARD_JSON_PATH = "/_fleetci/dashboard.json"

# GraphQL's share of the counters (POST /graphql; also counted in the totals above them).
GRAPHQL_KEYS = (
    "graphql_requests",
    "graphql_hits",
    "graphql_peer_hits",
    "graphql_shared_hits",
    "graphql_misses",
    "graphql_coalesced",
    "graphql_stale_served",
    "graphql_bypassed",
    "graphql_upstream_requests",
)
# Counters (monotonic) and the seed's summary keys, shared by the stats table, the saved stats and /metrics.
COUNTER_KEYS = (
    "requests",
    "local_hits",
    "peer_hits",
    "misses",
    "revalidations",
    "coalesced",
    "stale_served",
    "bypassed",
    "upstream_requests",
    "upstream_errors",
    "rate_limited",
    "claim_waits",
    "claim_windows",
    "leases",
    "fetched_at_once",
    "refused",
    "shared_hits",
    "shared_waits",
    "shared_rejected",
    "shared_errors",
    "shared_lookups",
    "shared_pushed",
    "shared_push_dropped",
    "shared_push_ignored",
    "shared_listen_reconnects",
    *GRAPHQL_KEYS,
)
SUMMARY_KEYS = (
    "local_hits",
    "peer_hits",
    "misses",
    "revalidations",
    "coalesced",
    "stale_served",
    "graphql_hits",
    "graphql_misses",
    "hit_rate",
    "api_calls_saved",
    "rate_limit_remaining",
    "cache_size",
    "connected_peers",
)


class CacheStats(TypedDict, total=False):
    """``GET /_fleetci/stats``, the counters saved in the database, ``fleetci cache stats --json``."""

    requests: int
    local_hits: int
    peer_hits: int
    misses: int
    revalidations: int
    coalesced: int
    stale_served: int
    bypassed: int
    upstream_requests: int
    upstream_errors: int
    rate_limited: int
    claim_waits: int
    claim_windows: int  # misses that waited the claim window (no owner answered; see engine._lease)
    leases: int  # misses that asked the key's owner for a lease (issue 16)
    fetched_at_once: int  # misses that asked nobody: no peer uses their token (issue 16)
    refused: int
    shared_hits: int
    shared_waits: int
    shared_rejected: int
    shared_errors: int
    shared_lookups: int  # local misses that asked the shared store (one round trip each)
    shared_pushed: int  # entries other proxies pushed that this proxy kept (CACHE_SHARED_PUSH_BYTES)
    shared_push_dropped: int  # pushed entries over the rate cap (their readers ask the shared store)
    shared_push_ignored: int  # pushed entries of scopes no client of this proxy used lately (not opened)
    shared_listen_reconnects: int  # subscriptions (invalidations, pushes) lost and made again
    graphql_requests: int
    graphql_hits: int
    graphql_peer_hits: int
    graphql_shared_hits: int
    graphql_misses: int
    graphql_coalesced: int
    graphql_stale_served: int
    graphql_bypassed: int
    graphql_upstream_requests: int
    hit_rate: float
    api_calls_saved: int
    rate_limit_remaining: int | None  # the lowest X-RateLimit-Remaining seen over tokens
    graphql_rate_limit_remaining: int | None  # the same for the GraphQL budget (points)
    cache_size: int
    cache_bytes: int
    connected_peers: int
    uptime_s: float
    shared_store: str  # "off", "ok" or "degraded" (CACHE_BACKEND unreachable: serving locally)
    source: str  # added by the reader: "live" (a running proxy), "saved" or "empty" (the database)


class Health(TypedDict):
    """``GET /_fleetci/health``: ``fleetci cache start`` waits for it and reads the proxy's address."""

    status: str
    upstream: str
    socket: str
    proxy_url: str
    pid: int
    instance: str  # random per process: the socket's and the TCP port's answers must match (hostproxy)
    shared_scope: bool  # CACHE_SHARED_SCOPE is set: jobs do not reuse it as a host proxy
    peer_id: str
    p2p: str  # "off", "active" or "failed" (sharing asked for but not running)
    p2p_reason: str  # with "failed": why, in one line (also in the proxy log); else ""
    backend: str  # the shared store's URL (userinfo redacted), "" when there is none
    backend_state: str  # "off", "ok" or "degraded" (then status is "degraded" too)


class PeersStatus(TypedDict, total=False):
    """``GET /_fleetci/peers`` (``?receipts=1`` adds when each announced key arrived)."""

    p2p: str
    peer_id: str
    addrs: list[str]
    connected: list[str]
    stats: dict[str, int]
    receipts: dict[str, float]


class ProbeResult(TypedDict):
    """``POST /_fleetci/p2p/probe``: an announced throw-away entry, fetched back from each peer."""

    peer_id: str
    connected: list[str]
    shared_with: list[str]
    cid: str
