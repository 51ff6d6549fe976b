"""``fleetci cache serve``: the engine behind an aiohttp server on TCP and a unix socket.

Peer-to-peer sharing arrives from outside: ``serve(attach=…)`` is handed a function that starts a node
(``fleetci.p2p.attach.start_peers``); this module never imports ``fleetci.p2p``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import grp
import ipaddress
import itertools
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetci.cache import graphql
from fleetci.cache.api import (
    COUNTER_KEYS,
    DASHBOARD_JSON_PATH,
    DASHBOARD_PATH,
    HEALTH_PATH,
    METRICS_PATH,
    PEERS_PATH,
    PROBE_PATH,
    STATS_PATH,
    Health,
    PeersStatus,
)
from fleetci.cache.changes import CHANGES_PATH, handle_changes
from fleetci.cache.engine import CACHE_HEADER, CacheEngine, Outcome
from fleetci.cache.peering import PeerService
from fleetci.cache.prewarm import Prewarmer
from fleetci.cache.settings import CacheSettings
from fleetci.cache.shared import SharedStore
from fleetci.cache.webhooks import WEBHOOK_PATH, HookRef, Reconciler, WebhookReceiver, parse_hooks
from fleetci.errors import FleetciError, UsageError
from fleetci.http import (
    RUNNER_OPTIONS,
    BodyTooLarge,
    StreamedBody,
    UpstreamError,
    check_port_free,
    describe,
    error_response,
    guarded_app,
    redact_url,
)

log = logging.getLogger("fleetci.cache")

STATS_FLUSH_S = 2.0
TRIM_EVERY = 5  # flushes between heap trims (10 s; see fleetci.process.release_free_memory)
LINK_URL = re.compile(r"<([^>]*)>")
# A Host we echo into Link headers and JSON bodies: a name or IP literal and a port, nothing that could
# end a JSON string or a Link target (RFC 3986 unreserved characters only).
CLIENT_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9._~-]{1,253})(?::[0-9]{1,5})?")
REWRITE_MEMO_BYTES = 1 * 1024 * 1024
REWRITE_MEMO_MAX_BODY = 1 << 20
ENGINE_KEY = web.AppKey("engine", CacheEngine)
WEBHOOKS_KEY = web.AppKey("webhooks", WebhookReceiver)
PREWARM_KEY = web.AppKey("prewarm", Prewarmer)
# Where the TCP side listens, known only after the site starts: a holder set before start (aiohttp
# deprecates changing a started application's state) and filled in once the port is known.
PROXY_URL_KEY = web.AppKey("proxy_url", dict)
# Random per process: a job that finds this proxy on its unix socket (whose permissions are the trust
# anchor) checks that the loopback TCP port it will send tokens to answers with the same value, so a
# process that took the port (e.g. while the service restarts) is not mistaken for this proxy.
INSTANCE = secrets.token_hex(16)
# How the proxy joins a fleet: start a node for this engine (setting ``engine.peers``) and return it, or
# say in one line why not and return that reason (``fleetci.p2p.attach.start_peers``); the health
# endpoint reports it, so ``fleetci cache verify`` can say why sharing is not running.
Attach = Callable[[CacheEngine, asyncio.AbstractEventLoop], PeerService | str]


class _Collector:
    """Prometheus view of the engine counters (read at scrape time, nothing to keep in sync)."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s: dict[str, Any] = dict(self.engine.stats())
        for name in COUNTER_KEYS:
            c = CounterMetricFamily(f"fleetci_cache_{name}", f"fleetci cache {name.replace('_', ' ')}")
            c.add_metric([], float(s[name]))
            yield c
        for name in ("hit_rate", "cache_size", "cache_bytes", "connected_peers"):
            g = GaugeMetricFamily(f"fleetci_cache_{name}", f"fleetci cache {name.replace('_', ' ')}")
            g.add_metric([], float(s[name]))
            yield g
        g = GaugeMetricFamily(
            "fleetci_cache_degraded", "1 while the shared store (CACHE_BACKEND) is unreachable, else 0"
        )
        g.add_metric([], 1.0 if s["shared_store"] == "degraded" else 0.0)
        yield g
        for key, what in (("rate_limit_remaining", "REST"), ("graphql_rate_limit_remaining", "GraphQL")):
            remaining = s[key]
            g = GaugeMetricFamily(f"fleetci_{key}", f"lowest {what} X-RateLimit-Remaining seen over tokens")
            if remaining is not None:
                g.add_metric([], float(remaining))
            yield g


class BadHost(ValueError):
    """A Host header we will not echo into answers: answered 400."""


def _client_base(request: web.Request, engine: CacheEngine) -> str:
    """The base URL the client used, for pointing links back at the proxy; the upstream's own base (no
    rewriting) when the client sent no Host."""
    hosts = request.headers.getall("Host", [])
    if len(hosts) > 1:
        raise BadHost(f"{len(hosts)} Host headers in one request")
    host = hosts[0].strip() if hosts else ""
    if not host:
        return engine.upstream.base_url
    if not CLIENT_HOST.fullmatch(host):
        raise BadHost("the Host header is not a host name or address with an optional port")
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        # gh's http_unix_socket: the client believes it talks to https://<host>
        return f"https://{host}{engine.upstream.base_path}"
    return f"http://{host}"


def _rewrite_links(value: str, upstream_base: str, client_base: str) -> str:
    def sub(m: re.Match[str]) -> str:
        url = m.group(1)
        if url.startswith(upstream_base):
            return f"<{client_base}{url[len(upstream_base) :]}>"
        return m.group(0)

    return LINK_URL.sub(sub, value)


def _rewrite_body(body: bytes, upstream_base: str, client_base: str) -> bytes:
    """API URLs inside JSON bodies point at the upstream; clients such as PyGithub follow them and refuse
    foreign hosts, so they must point back at the proxy."""
    pattern = re.compile(re.escape(upstream_base.encode()) + rb'(?=[/"?])')
    return pattern.sub(client_base.encode(), body)


class RewriteMemo:
    """Rewritten bodies, so hits reuse one bytes object; bounded by bytes, not entries, because the key
    holds the client's Host (which any client chooses) and a body of up to 1 MiB."""

    def __init__(self, max_bytes: int = REWRITE_MEMO_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple[bytes, str, str], bytes] = OrderedDict()

    def rewrite(self, body: bytes, upstream_base: str, client_base: str) -> bytes:
        key = (body, upstream_base, client_base)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        out = _rewrite_body(body, upstream_base, client_base)
        size = len(body) + len(out) + len(upstream_base) + len(client_base)
        if len(body) < REWRITE_MEMO_MAX_BODY and size <= self.max_bytes:
            self._items[key] = out
            self.nbytes += size
            while self.nbytes > self.max_bytes:
                (old_body, old_up, old_client), dropped = self._items.popitem(last=False)
                self.nbytes -= len(old_body) + len(dropped) + len(old_up) + len(old_client)
        return out


_REWRITES = RewriteMemo()


def rewrite_for_client(
    headers: list[tuple[str, str]], body: bytes, upstream_base: str, client_base: str
) -> tuple[list[tuple[str, str]], bytes]:
    """Point Link, Location and URLs in JSON bodies at the address the client used."""
    if client_base == upstream_base:
        return headers, body
    out: list[tuple[str, str]] = []
    is_json = False
    for k, v in headers:
        low = k.lower()
        if low == "link":
            v = _rewrite_links(v, upstream_base, client_base)
        elif low == "location" and v.startswith(upstream_base):
            v = client_base + v[len(upstream_base) :]
        elif low == "content-type":
            is_json = "json" in v
        out.append((k, v))
    if is_json and upstream_base.encode() in body:
        body = _REWRITES.rewrite(body, upstream_base, client_base)
    return out, body


def _error(status: int, message: str, outcome: str) -> web.Response:
    resp = error_response(status, message)
    resp.headers[CACHE_HEADER] = outcome
    return resp


# -- who may read the proxy's own state ------------------------------------------------------------------
# The dashboard, its JSON, stats, peers and /metrics show each credential's budget and block state, the
# endpoints in use and the fleet's addresses. They need no credential (anything that can reach the listen
# address may read them), but a web page on the runner must not: with DNS rebinding, a browser sends a
# request for evil.example to 127.0.0.1 and lets that page read the answer. Such a request still carries
# the attacker's name in Host, so these routes answer only a loopback or listen-address Host. GitHub's
# routes keep accepting any Host (clients name api.github.com, the runner's name, …).
LOOPBACK_NAMES = frozenset({"localhost", "localhost."})


def _host_name(value: str) -> str:
    """The name or address of a Host value, without its port and brackets, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_local_name(name: str, listen: tuple[str, ...]) -> bool:
    if name in LOOPBACK_NAMES or name in listen:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def observer_refusal(request: web.Request, listen: tuple[str, ...]) -> str:
    """Why this request may not read the proxy's state ("" when it may): over the unix socket (its file
    permissions decide) always; over TCP only with one Host naming loopback or a listen address."""
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None and sock.family == socket.AF_UNIX:
        return ""
    hosts = request.headers.getall("Host", [])
    if len(hosts) != 1:
        return f"{len(hosts)} Host headers; the proxy's own pages answer one loopback Host only"
    if _is_local_name(_host_name(hosts[0]), listen):
        return ""
    return "the proxy's own pages answer only a loopback or listen-address Host (DNS rebinding guard)"


def _listen_names(engine: CacheEngine) -> tuple[str, ...]:
    return tuple(h.strip().strip("[]").lower() for h in (engine.settings.host,) if h.strip())


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def local_observers(handler: Handler) -> Handler:
    """A route that shows the proxy's own state: refused 403, one line, unless :func:`observer_refusal`
    lets this request through."""

    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        why = observer_refusal(request, _listen_names(request.app[ENGINE_KEY]))
        if why:
            return error_response(403, f"fleetci: {why}")
        return await handler(request)

    return checked


async def _proxy(request: web.Request) -> web.StreamResponse:
    if _wants_dashboard(request):
        return await _dashboard(request)
    engine = request.app[ENGINE_KEY]
    try:
        client_base = _client_base(request, engine)
    except BadHost as exc:
        return _error(400, f"fleetci: {exc}", Outcome.REFUSED)
    body: StreamedBody | None = None
    if request.method not in ("GET", "HEAD"):  # GET/HEAD bodies are never sent upstream
        body = StreamedBody.of(request, engine.settings.max_body_bytes)
    try:
        resp = await engine.handle(
            request.method, request.rel_url.raw_path_qs, list(request.headers.items()), body
        )
    except BodyTooLarge as exc:
        raise web.HTTPRequestEntityTooLarge(max_size=exc.limit, actual_size=exc.limit + 1) from None
    except UpstreamError as exc:
        return _error(502, f"fleetci: upstream unavailable and no cached copy: {exc}", Outcome.MISS)
    headers, rewritten = rewrite_for_client(
        list(resp.headers), resp.body, engine.upstream.base_url, client_base
    )
    out = web.Response(status=resp.status, body=None if request.method == "HEAD" else rewritten)
    for k, v in headers:
        out.headers.add(k, v)
    if request.method == "HEAD":
        out.headers["Content-Length"] = str(len(rewritten))
    return out


async def _health(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    peers = request.app.get("peers")
    backend_state = engine.shared.state if engine.shared is not None else "off"
    health: Health = {
        "status": "degraded" if backend_state == "degraded" else "ok",
        "upstream": redact_url(engine.settings.upstream),
        "socket": str(engine.settings.socket_path),
        "proxy_url": request.app.get(PROXY_URL_KEY, {}).get("url", ""),
        "pid": os.getpid(),
        "instance": INSTANCE,
        "shared_scope": bool(engine.settings.shared_scope),
        "peer_id": peers.peer_id if peers is not None else "",
        "p2p": request.app.get("p2p_status", "off"),
        "p2p_reason": request.app.get("p2p_reason", ""),
        "backend": redact_url(engine.settings.backend),
        "backend_state": backend_state,
    }
    return web.json_response(health)


@local_observers
async def _peers(request: web.Request) -> web.Response:
    peers: PeerService | None = request.app.get("peers")
    if peers is None:
        off: PeersStatus = {"p2p": request.app.get("p2p_status", "off"), "peer_id": "", "connected": []}
        return web.json_response(off)
    return web.json_response(peers.status(receipts=bool(request.query.get("receipts"))))


@local_observers
async def _probe(request: web.Request) -> web.Response:
    """Announce a throw-away entry, then fetch it back from every peer (``fleetci cache verify``)."""
    peers: PeerService | None = request.app.get("peers")
    if peers is None:
        return web.json_response({"error": "peer-to-peer sharing is not active"}, status=409)
    return web.json_response(await peers.probe())


# -- dashboard (fleetci.cache.dashboard) ---------------------------------------------------------------
def _peers_view(request: web.Request) -> dict[str, Any]:
    peers: PeerService | None = request.app.get("peers")
    if peers is None:
        return {"p2p": request.app.get("p2p_status", "off"), "peer_id": "", "connected": []}
    return dict(peers.status())


@local_observers
async def _dashboard(request: web.Request) -> web.Response:
    from fleetci.cache.dashboard import PAGE, PAGE_HEADERS

    return web.Response(body=PAGE, headers=PAGE_HEADERS)


@local_observers
async def _dashboard_json(request: web.Request) -> web.Response:
    from fleetci.cache.dashboard import snapshot

    resp = web.json_response(snapshot(request.app[ENGINE_KEY], _peers_view(request)))
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _wants_dashboard(request: web.Request) -> bool:
    """``GET /`` from a browser: HTML asked for and no credential (API clients get GitHub's root)."""
    return (
        request.method == "GET"
        and request.rel_url.raw_path == "/"
        and "text/html" in request.headers.get("Accept", "")
        and "Authorization" not in request.headers
    )


# -- end dashboard ---------------------------------------------------------------------------------------


@local_observers
async def _stats(request: web.Request) -> web.Response:
    stats: dict[str, Any] = dict(request.app[ENGINE_KEY].stats())
    webhooks = request.app.get(WEBHOOKS_KEY)
    if webhooks is not None:
        stats["webhooks"] = webhooks.stats()
    prewarm = request.app.get(PREWARM_KEY)
    if prewarm is not None:
        stats["prewarm"] = prewarm.stats()
    return web.json_response(stats)


@local_observers
async def _changes(request: web.Request) -> web.Response:
    """``GET /_fleetci/changes?after=N&wait=S``: long poll on the invalidation counter (cache/changes.py)."""
    return await handle_changes(request.app[ENGINE_KEY].changes, request)


async def _webhook(request: web.Request) -> web.StreamResponse:
    """``POST /_fleetci/webhook`` on the proxy's port (cache/webhooks.py), unless it has a port of its own."""
    webhooks = request.app[WEBHOOKS_KEY]
    if request.app.get("webhook_elsewhere"):
        return error_response(404, f"fleetci: webhooks are received on {request.app['webhook_elsewhere']}")
    return await webhooks.handle(request)


@local_observers
async def _metrics(request: web.Request) -> web.Response:
    # Imported on the first scrape: a proxy nobody scrapes does not carry prometheus_client (issue 16).
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(_Collector(request.app[ENGINE_KEY]))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": "text/plain; version=0.0.4"})


def share_socket(sock: Path, group: str) -> None:
    """The socket is the proxy's door: its owner only, or also ``group`` (the host's runner users)."""
    if not group:
        sock.chmod(0o600)
        return
    try:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise FleetciError(f"socket group {group!r} does not exist on this host") from None
    os.chown(sock, -1, gid)
    sock.chmod(0o660)


def make_app(engine: CacheEngine, webhooks: WebhookReceiver | None = None) -> web.Application:
    """Routes behind :func:`fleetci.http.guarded_app`: a declared body over ``max_body_bytes`` gets 413
    before a byte of it is read; an undeclared one is streamed upstream and cut off at the same cap."""
    app = guarded_app(engine.settings.max_body_bytes)
    graphql.install(engine)  # issue 20: POST /graphql queries are cached (fleetci.cache.graphql)
    app[ENGINE_KEY] = engine
    app[WEBHOOKS_KEY] = webhooks or _receiver(engine)
    app.router.add_post(WEBHOOK_PATH, _webhook)
    app.router.add_get(HEALTH_PATH, _health)
    app.router.add_get(STATS_PATH, _stats)
    app.router.add_get(CHANGES_PATH, _changes)
    app.router.add_get(PEERS_PATH, _peers)
    app.router.add_post(PROBE_PATH, _probe)
    app.router.add_get(METRICS_PATH, _metrics)
    app.router.add_get(DASHBOARD_PATH, _dashboard)
    app.router.add_get(DASHBOARD_JSON_PATH, _dashboard_json)
    app.router.add_route("*", "/{tail:.*}", _proxy)
    return app


def _receiver(engine: CacheEngine) -> WebhookReceiver:
    settings = engine.settings
    return WebhookReceiver(engine, settings.webhook_secret, max_body=min(settings.max_body_bytes, 25 << 20))


def webhook_app(receiver: WebhookReceiver) -> web.Application:
    """The listener of ``--webhook-port``: the webhook route only (what a tunnel may expose)."""
    app = guarded_app(receiver.max_body)
    app[WEBHOOKS_KEY] = receiver
    app.router.add_post(WEBHOOK_PATH, receiver.handle)
    return app


async def _reconcile_forever(reconciler: Reconciler, receiver: WebhookReceiver, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            receiver.counts["redelivered"] += await reconciler.once()
        except Exception as exc:  # the safety net must never take the proxy down
            log.warning("webhook reconciliation failed: %s", describe(exc))


def reconciled_hooks(settings: CacheSettings) -> tuple[HookRef, ...]:
    """``--webhook-reconcile`` parsed, refused in one line before anything starts when it cannot work."""
    hooks = parse_hooks(settings.webhook_reconcile)
    if hooks and not settings.webhook_token:
        raise UsageError(
            "--webhook-reconcile needs a token that may read the hooks' deliveries: "
            "set CACHE_WEBHOOK_TOKEN (or GH_TOKEN/GITHUB_TOKEN)"
        )
    if hooks and not settings.webhook_secret:
        raise UsageError("--webhook-reconcile redelivers to this proxy, which needs CACHE_WEBHOOK_SECRET")
    return hooks


async def _start_webhooks(
    engine: CacheEngine, app: web.Application
) -> tuple[web.AppRunner | None, asyncio.Task[None] | None]:
    """The webhook listener of its own (``--webhook-port``) and the reconciliation task, when configured."""
    settings = engine.settings
    receiver = app[WEBHOOKS_KEY]
    hooks = reconciled_hooks(settings)
    runner: web.AppRunner | None = None
    if settings.webhook_port is not None:
        host = settings.webhook_host or settings.host
        runner = web.AppRunner(webhook_app(receiver), handle_signals=False, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, settings.webhook_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise FleetciError(f"cannot listen on {host}:{settings.webhook_port}: {describe(exc)}") from exc
        server = getattr(site, "_server", None)
        port = server.sockets[0].getsockname()[1] if server is not None and server.sockets else 0
        app["webhook_elsewhere"] = f"http://{host}:{port}{WEBHOOK_PATH}"
        print(f"fleetci cache: webhooks on http://{host}:{port}{WEBHOOK_PATH}", flush=True)
    task = None
    if hooks and settings.webhook_reconcile_interval > 0:
        reconciler = Reconciler(engine.upstream, hooks, settings.webhook_token)
        task = asyncio.create_task(
            _reconcile_forever(reconciler, receiver, settings.webhook_reconcile_interval)
        )
    return runner, task


async def probe_upstream(engine: CacheEngine, attempts: int = 3) -> None:
    """Fail fast, in one line, when the upstream cannot be reached at start-up."""
    last = ""
    for i in range(attempts):
        try:
            await engine.upstream.request("GET", "/rate_limit", [("Accept", "application/vnd.github+json")])
            return
        except UpstreamError as exc:
            last = str(exc)
            await asyncio.sleep(0.3 * (i + 1))
    raise FleetciError(f"upstream {redact_url(engine.settings.upstream)} is unreachable: {last}")


async def _flush_stats_forever(engine: CacheEngine) -> None:
    from fleetci.process import release_free_memory

    for tick in itertools.count(1):
        await asyncio.sleep(STATS_FLUSH_S)
        persist_stats(engine)
        if tick % TRIM_EVERY == 0:
            release_free_memory()


def persist_stats(engine: CacheEngine) -> None:
    with contextlib.suppress(Exception):
        engine.store.flush()
        engine.store.save_meta("stats", {**engine.stats(), "saved_at": time.time()})


async def serve(
    settings: CacheSettings,
    probe: bool = True,
    ready: asyncio.Event | None = None,
    attach: Attach | None = None,
    shared: SharedStore | None = None,
) -> None:
    """Run the proxy until SIGINT/SIGTERM (or until cancelled); ``attach`` joins it to a fleet,
    ``shared`` puts the fleet's shared store (``CACHE_BACKEND``) behind its own tiers."""
    check_port_free(settings.host, settings.proxy_port)
    reconciled_hooks(settings)
    if settings.upstream.rstrip("/") in (settings.proxy_url, f"http://localhost:{settings.proxy_port}"):
        raise FleetciError(f"upstream {redact_url(settings.upstream)} is this proxy itself")
    from fleetci.process import fix_malloc_thresholds

    fix_malloc_thresholds()
    engine = CacheEngine(settings)
    runner: web.AppRunner | None = None
    flusher: asyncio.Task[None] | None = None
    hook_runner: web.AppRunner | None = None
    reconciling: asyncio.Task[None] | None = None
    prewarming: asyncio.Task[None] | None = None
    peers: PeerService | None = None
    sock = settings.socket_path
    try:
        if probe:
            await probe_upstream(engine)
        if shared is not None:
            engine.shared = shared  # closed with the engine, also when start() refuses
            await shared.start()
            # webhook invalidations of the other proxies, and the small entries they push
            listen = getattr(shared, "listen", None)
            if callable(listen):
                listen(
                    functools.partial(engine.invalidate, forward=False),
                    engine.accept_shared,
                    engine.wants_shared,
                )
        app = make_app(engine)
        proxy_url: dict[str, str] = {}
        app[PROXY_URL_KEY] = proxy_url
        if settings.prewarm:
            prewarmer = Prewarmer(engine, settings.prewarm, settings.prewarm_lead, settings.prewarm_reserve)
            engine.prewarm = app[PREWARM_KEY] = prewarmer
        runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=0.5,
            **RUNNER_OPTIONS,  # type: ignore[arg-type]
        )
        await runner.setup()
        tcp = web.TCPSite(runner, settings.host, settings.proxy_port, reuse_address=True)
        try:
            await tcp.start()
        except OSError as exc:
            raise FleetciError(
                f"cannot listen on {settings.host}:{settings.proxy_port}: {describe(exc)}"
            ) from exc
        port = settings.proxy_port
        server = getattr(tcp, "_server", None)
        if server is not None and server.sockets:
            port = server.sockets[0].getsockname()[1]
        proxy_url["url"] = f"http://{settings.host}:{port}"
        with contextlib.suppress(FileNotFoundError):
            if sock.is_socket():
                sock.unlink()
        try:
            sock.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # /run/fleetci for the host service
            await web.UnixSite(runner, str(sock)).start()
            share_socket(sock, settings.socket_group)  # 0600, or 0660 for the runners' group (issue 16)
        except OSError as exc:
            raise FleetciError(f"cannot listen on unix socket {sock}: {describe(exc)}") from exc
        if attach is not None:
            joined = attach(engine, asyncio.get_running_loop())
            if isinstance(joined, str):
                app["p2p_status"], app["p2p_reason"] = "failed", joined
            else:
                peers = joined
                app["peers"], app["p2p_status"] = peers, "active"
        elif settings.enable_p2p:  # a caller of serve() that did not pass fleetci.p2p.attach.start_peers
            print("fleetci cache: p2p enabled but no peer transport given; serving without peers", flush=True)
        hook_runner, reconciling = await _start_webhooks(engine, app)
        if engine.prewarm is not None:
            prewarming = asyncio.create_task(app[PREWARM_KEY].run_forever())
        flusher = asyncio.create_task(_flush_stats_forever(engine))
        print(
            f"fleetci cache listening on http://{settings.host}:{port} and unix:{sock} "
            f"(upstream {redact_url(settings.upstream)}, cache {settings.cache_dir})",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        for task in (flusher, reconciling, prewarming):  # ended before what they use is closed
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if hook_runner is not None:
            await hook_runner.cleanup()
        if peers is not None:
            await asyncio.to_thread(peers.stop)
            engine.peers = None
        if runner is not None:
            await runner.cleanup()
        persist_stats(engine)
        await engine.close()
        with contextlib.suppress(OSError):
            if sock.is_socket():
                sock.unlink()


def run(
    settings: CacheSettings,
    probe: bool = True,
    attach: Attach | None = None,
    shared: SharedStore | None = None,
) -> int:
    try:
        asyncio.run(serve(settings, probe=probe, attach=attach, shared=shared))
    except FleetciError:
        raise
    except KeyboardInterrupt:
        pass
    print("fleetci cache stopped", file=sys.stderr, flush=True)
    return 0
