"""``fleetci cache`` settings, described once in :class:`CacheOptions`.

flag > environment (seed-compatible names) > ``.env.cache`` > config file ``cache:`` > default. A
``.env.cache`` file in the working directory (the seed's, copied from ``.env.cache.example``) is a source
of environment defaults: its ``CACHE_…`` lines count as environment variables that are not set, below
every real one. The argparse flags of
``fleetci cache …``, the Resolver lookups, the unknown-key check and the docs table all come from
:class:`CacheOptions`; :func:`cache_settings` turns them into the frozen :class:`CacheSettings`.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fleetci.config import (
    Resolver,
    Setting,
    SettingTable,
    default_cache_dir,
    parse_bool,
    parse_count,
    parse_csv,
    parse_ms,
    parse_port,
    parse_positive_int,
    parse_seconds,
    parse_stale,
    parse_timeout,
)
from fleetci.config import (
    number as numeric,
)
from fleetci.errors import UsageError

DEFAULT_UPSTREAM = "https://api.github.com"
# The hot part of a proxy's cache kept in RAM; the rest is a SQLite read away (see cache/store.py).
MEMORY_BYTES = 4 * 1024 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024  # fleetci.http.DEFAULT_MAX_BODY_BYTES (settings import no asyncio)
# Entries whose sealed value is at most this are pushed to every proxy of a shared store (P2P inlines
# bodies up to 32 KiB, fleetci.cache.peering.INLINE_MAX); a fleet may not push more than SHARED_PUSH_MAX.
SHARED_PUSH_BYTES = 32 * 1024
SHARED_PUSH_MAX = 1024 * 1024
# Where the host service (``fleetci cache service install``) listens; jobs look here first.
WELL_KNOWN_SOCKET = "/run/fleetci/proxy.sock"
DEFAULT_SERVICE_PORT = 9101  # the host service's loopback TCP port


@dataclass(frozen=True)
class TTLRule:
    """Fresh window for URLs whose path (and query) match ``pattern`` (a regular expression)."""

    pattern: str
    seconds: float
    name: str = "custom"


def parse_ttl_rules(raw: Any, key: str = "cache.ttl") -> tuple[TTLRule, ...]:
    """``cache.ttl`` (URL patterns) and ``cache.graphql_ttl`` (top-level GraphQL field patterns)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError(f"config key {key!r} must be a list of {{pattern, seconds}} mappings")
    rules = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, Mapping) or item.get("pattern") is None or item.get("seconds") is None:
            raise UsageError(f"config key {where!r} needs 'pattern' and 'seconds'")
        r = Resolver(None, item, {}, name=where)  # the same checks as every other setting
        pattern = r.get("pattern", "", _regex)
        seconds = r.get("seconds", 0.0, parse_seconds)
        name = r.get("name", "custom", str)
        r.check_unknown()
        rules.append(TTLRule(pattern, seconds, name))
    return tuple(rules)


def parse_patterns(text: str) -> tuple[str, ...]:
    """Comma-separated regular expressions (``cache.prewarm``), each checked before anything starts."""
    return tuple(_regex(p) for p in parse_csv(text))


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def parse_host_proxy(text: str) -> str:
    """``off``/``auto`` (any case; empty is auto), an http(s):// URL, or an absolute unix socket path."""
    value = text.strip()
    if value.lower() in ("", "auto"):
        return ""
    if value.lower() in ("off", "false", "no", "0", "none"):
        return "off"
    if value.startswith(("http://", "https://")) or value.startswith("/"):
        return value.rstrip("/") if value.startswith("http") else value
    raise ValueError("expected off, auto, an http:// URL or an absolute unix socket path")


def parse_job(text: str) -> str:
    """``FLEETCI_CACHE_JOB``: the hex token ``cache start`` exported (it names a file in the cache dir)."""
    value = text.strip()
    if value and not re.fullmatch(r"[0-9a-f]{8,64}", value):
        raise ValueError("expected the hex token 'fleetci cache start' exported")
    return value


def parse_backend(text: str) -> str:
    """``CACHE_BACKEND``: empty/``local`` (this proxy's tiers only) or ``redis[s]://host:port/db``
    (``valkey[s]://`` too: the client is valkey-py, which speaks to Redis and Valkey alike).

    The message never repeats the URL's userinfo (it may hold the password).
    """
    from fleetci.http import redact_url  # here: fleetci.http imports asyncio, settings stay light

    text = text.strip()
    if text in ("", "local"):
        return ""
    parts = urlsplit(text)
    shown = redact_url(text)
    if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
        raise ValueError(f"expected local, redis://HOST:PORT/DB or rediss://…, got {shown!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {shown!r}") from None
    db = parts.path.strip("/")
    if not parts.hostname or (db and not db.isdigit()) or parts.query or parts.fragment or port == 0:
        raise ValueError(f"expected {parts.scheme}://HOST[:PORT][/DB] (DB a number), got {shown!r}")
    return text


def _rules(_: str) -> tuple[TTLRule, ...]:
    """``cache.ttl`` is a list of mappings, read whole by :func:`parse_ttl_rules` (never as one value)."""
    raise ValueError("expected a list of {pattern, seconds} mappings in the config file")


class CacheOptions(SettingTable):
    """Every setting of ``fleetci cache …``: one line each."""

    section = "cache"
    upstream = Setting(
        DEFAULT_UPSTREAM, str, env=("CACHE_UPSTREAM", "GITHUB_API_URL"), help="GitHub API base URL"
    )
    host = Setting("127.0.0.1", str, env=("CACHE_PROXY_HOST",), help="bind address for the proxy")
    proxy_port = Setting(
        9101, parse_port, env=("CACHE_PROXY_PORT",), flags=("--port",), help="proxy TCP port (0: a free one)"
    )
    listen_port = Setting(
        9100,
        parse_port,
        env=("CACHE_LISTEN_PORT",),
        help="peer-to-peer port (TCP; lease datagrams use it over UDP when free)",
    )
    cache_dir = Setting[str | None](
        None,
        str,
        env=("CACHE_DIR",),
        doc_default="$XDG_CACHE_HOME/fleetci, else ~/.cache/fleetci",
        help="cache directory",
    )
    socket = Setting(
        "",
        str,
        env=("CACHE_SOCKET", "FLEETCI_CACHE_SOCKET"),
        doc_default="<cache-dir>/proxy.sock",
        help="unix socket path",
    )
    default_ttl = Setting(
        300.0,
        parse_seconds,
        env=("CACHE_DEFAULT_TTL",),
        help="fresh window in seconds for unclassified URLs",
    )
    max_entries = Setting(10_000, parse_positive_int, env=("CACHE_MAX_ENTRIES",), help="entry bound")
    max_bytes = Setting(
        256 * 1024 * 1024,
        parse_positive_int,
        env=("CACHE_MAX_BYTES",),
        doc_default="256 MiB",
        help="byte budget",
    )
    memory_bytes = Setting(
        MEMORY_BYTES,
        parse_positive_int,
        env=("CACHE_MEMORY_BYTES",),
        doc_default="4 MiB",
        help="bytes of hot entries kept in RAM as well",
    )
    max_body_bytes = Setting(
        MAX_BODY_BYTES,
        parse_positive_int,
        env=("CACHE_MAX_BODY_BYTES",),
        doc_default="16 MiB",
        help="largest request body passed through; bigger ones get 413",
    )
    max_concurrency = Setting(
        20, parse_positive_int, env=("CACHE_MAX_CONCURRENCY",), help="concurrent upstream requests per token"
    )
    max_stale = Setting(
        24 * 3600,
        parse_stale,
        env=("CACHE_MAX_STALE",),
        flag=False,
        help="seconds past its fresh window an entry may still answer when the upstream fails",
    )
    upstream_timeout = Setting(
        30.0, parse_timeout, env=("CACHE_UPSTREAM_TIMEOUT",), flag=False, help="upstream timeout in seconds"
    )
    ttl = Setting[tuple[TTLRule, ...]](
        (),
        _rules,
        flag=False,
        doc_default="built-in rules",
        help="list of {pattern, seconds, name} fresh-window rules, before the built-in ones",
    )
    graphql_default_ttl = Setting(
        60.0,
        parse_seconds,
        env=("CACHE_GRAPHQL_DEFAULT_TTL",),
        help="fresh window in seconds for GraphQL queries no graphql_ttl rule matches (0: never cache)",
    )
    graphql_ttl = Setting[tuple[TTLRule, ...]](
        (),
        _rules,
        flag=False,
        doc_default="built-in rules",
        help="list of {pattern, seconds, name} rules on top-level GraphQL fields, before the built-in ones",
    )
    enable_p2p = Setting(
        False,
        parse_bool,
        env=("CACHE_ENABLE_P2P",),
        flags=("--enable-p2p", "--p2p"),
        switch=True,
        help="share entries with peers",
    )
    bootstrap_peers = Setting[tuple[str, ...]](
        (), parse_csv, env=("CACHE_BOOTSTRAP_PEERS",), help="comma-separated peer multiaddrs"
    )
    secret = Setting(
        "",
        str,
        env=("FLEETCI_CACHE_SECRET",),
        flag=False,
        help="fleet secret shared by every runner; peers without it can neither read nor inject entries",
    )
    peer_registry = Setting(
        "", str, env=("CACHE_PEER_REGISTRY",), help="directory shared by runners for discovery"
    )
    p2p_host = Setting("0.0.0.0", str, env=("CACHE_P2P_HOST",), help="address the peer transport binds")
    shared_scope = Setting(
        "",
        str,
        env=("CACHE_SHARED_SCOPE",),
        help="declare every token used with this fleet equivalent and share entries under NAME "
        "(read docs/cache.md first)",
    )
    fleet = Setting(
        "",
        str,
        env=("CACHE_FLEET",),
        flag=False,
        help="name of the fleet's gossip topic (empty: from the secret)",
    )
    public_bootstrap = Setting(
        False,
        parse_bool,
        env=("CACHE_PUBLIC_BOOTSTRAP",),
        flag=False,
        help="also dial the public libp2p bootstrap nodes",
    )
    peer_timeout = Setting(
        0.5, parse_timeout, env=("CACHE_PEER_TIMEOUT",), flag=False, help="seconds to wait for a peer's body"
    )
    claim_window_ms = Setting(
        50.0,
        parse_ms,
        env=("CACHE_CLAIM_WINDOW_MS",),
        flag=False,
        help="milliseconds a miss waits for another runner's claim before fetching upstream itself",
    )
    claim_wait = Setting(
        2.0,
        parse_seconds,
        env=("CACHE_CLAIM_WAIT",),
        flag=False,
        help="seconds a miss waits for a peer claimant's entry; with CACHE_BACKEND, the lease of the "
        "shared miss lock (renewed while its holder fetches)",
    )
    # --- issue 16 (host service): one proxy per host, reused by the jobs ---
    socket_group = Setting(
        "",
        str,
        env=("CACHE_SOCKET_GROUP",),
        help="group that may use the unix socket (it becomes 0660); empty: owner only (0600)",
    )
    host_proxy = Setting(
        "",
        parse_host_proxy,
        env=("CACHE_HOST_PROXY", "FLEETCI_HOST_PROXY"),
        doc_default=f"auto ({WELL_KNOWN_SOCKET} when it answers)",
        help="'cache start' reuses this host proxy instead of starting one: off, auto, an http:// URL "
        "or a unix socket path",
    )
    cache_job = Setting(
        "",
        parse_job,
        env=("FLEETCI_CACHE_JOB",),
        flag=False,
        help="set by 'cache start' for the rest of the job when it reuses the host proxy: which "
        "marker 'cache stop' releases (jobs sharing a cache dir never touch each other's)",
    )
    # -- webhooks (cache/webhooks.py; docs/cache.md "Webhooks") --
    webhook_secret = Setting(
        "",
        str,
        env=("CACHE_WEBHOOK_SECRET",),
        flag=False,
        help="the hooks' secret; POST /_fleetci/webhook is refused (403) while it is empty",
    )
    webhook_host = Setting(
        "",
        str,
        env=("CACHE_WEBHOOK_HOST",),
        doc_default="the proxy's host",
        help="bind address of --webhook-port",
    )
    webhook_port = Setting[int | None](
        None,
        parse_port,
        env=("CACHE_WEBHOOK_PORT",),
        doc_default="none: the proxy's own port",
        help="a listener of its own for POST /_fleetci/webhook only (for a tunnel; 0: a free port)",
    )
    webhook_reconcile = Setting[tuple[str, ...]](
        (),
        parse_csv,
        env=("CACHE_WEBHOOK_RECONCILE",),
        metavar="HOOKS",
        help="hooks whose failed deliveries the proxy redelivers: OWNER/REPO:HOOK_ID or ORG:HOOK_ID, "
        "comma-separated",
    )
    webhook_reconcile_interval = Setting(
        60.0,
        parse_seconds,
        env=("CACHE_WEBHOOK_RECONCILE_INTERVAL",),
        flag=False,
        help="seconds between two reconciliations of --webhook-reconcile hooks (0: off)",
    )
    webhook_token = Setting(
        "",
        str,
        env=("CACHE_WEBHOOK_TOKEN", "GH_TOKEN", "GITHUB_TOKEN"),
        flag=False,
        help="token that lists and redelivers the hooks' deliveries (needs admin:repo_hook / admin:org_hook)",
    )
    # -- prewarming (cache/prewarm.py; docs/cache.md "Prewarming") --
    prewarm = Setting[tuple[str, ...]](
        (),
        parse_patterns,
        env=("CACHE_PREWARM",),
        metavar="PATTERNS",
        help="regular expressions (searched in path?query, comma-separated) of URLs kept fresh: revalidated "
        "just before their window ends, for the credentials that read them",
    )
    prewarm_lead = Setting(
        10.0,
        parse_seconds,
        env=("CACHE_PREWARM_LEAD",),
        flag=False,
        help="seconds before a prewarmed entry's window ends when the proxy revalidates it",
    )
    prewarm_reserve = Setting(
        500,
        parse_count,
        env=("CACHE_PREWARM_RESERVE",),
        flag=False,
        help="prewarming pauses for a credential whose remaining rate-limit budget is under this",
    )
    # -- shared store (issue 16 item 3; fleetci.cache.shared, fleetci.cache.redis_store) --
    backend = Setting(
        "",
        parse_backend,
        env=("CACHE_BACKEND",),
        doc_default="local",
        help="shared store for every proxy of the fleet: redis://HOST:PORT/DB, rediss://… (valkey[s]:// too) "
        "(needs FLEETCI_CACHE_SECRET)",
    )
    redis_password = Setting(
        "",
        str,
        env=("CACHE_REDIS_PASSWORD",),
        flag=False,
        doc_default="none",
        help="password for the shared store (wins over one in the URL; never logged)",
    )
    shared_push_bytes = Setting(
        SHARED_PUSH_BYTES,
        numeric(int, min=0, max=SHARED_PUSH_MAX),
        env=("CACHE_SHARED_PUSH_BYTES",),
        flag=False,
        help="with CACHE_BACKEND: entries sealed into at most this many bytes are pushed to every proxy, "
        "which keeps them on disk (its first read answers without a Redis round trip); 0: no pushing",
    )


@dataclass(frozen=True)
class CacheSettings:
    """Everything ``fleetci cache …`` needs; seed-compatible environment names are kept."""

    upstream: str = DEFAULT_UPSTREAM
    host: str = "127.0.0.1"
    proxy_port: int = 9101
    listen_port: int = 9100
    cache_dir: Path = Path(".")
    socket: Path | None = None
    default_ttl: float = 300.0
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    memory_bytes: int = MEMORY_BYTES
    max_body_bytes: int = MAX_BODY_BYTES
    max_concurrency: int = 20
    max_stale: int = 24 * 3600
    upstream_timeout: float = 30.0
    enable_p2p: bool = False
    bootstrap_peers: tuple[str, ...] = ()
    ttl_rules: tuple[TTLRule, ...] = ()
    graphql_default_ttl: float = 60.0
    graphql_ttl_rules: tuple[TTLRule, ...] = ()
    secret: str = field(default="", repr=False)
    peer_registry: Path | None = None
    p2p_host: str = "0.0.0.0"
    shared_scope: str = ""
    fleet: str = ""
    public_bootstrap: bool = False
    peer_timeout: float = 0.5
    claim_window: float = 0.05
    claim_wait: float = 2.0
    socket_group: str = ""
    host_proxy: str = ""  # "" (auto), "off", an http(s):// URL or an absolute unix socket path
    cache_job: str = ""  # this job's host-proxy marker (hostproxy.remember)
    webhook_secret: str = field(default="", repr=False)
    webhook_host: str = ""
    webhook_port: int | None = None
    webhook_reconcile: tuple[str, ...] = ()
    webhook_reconcile_interval: float = 60.0
    webhook_token: str = field(default="", repr=False)
    prewarm: tuple[str, ...] = ()
    prewarm_lead: float = 10.0
    prewarm_reserve: int = 500
    backend: str = field(default="", repr=False)  # may carry userinfo: print it with redact_url
    redis_password: str = field(default="", repr=False)
    shared_push_bytes: int = SHARED_PUSH_BYTES

    @property
    def identity_path(self) -> Path:
        return self.cache_dir / "p2p-identity.key"

    @property
    def db_path(self) -> Path:
        return self.cache_dir / "cache.db"

    @property
    def pid_path(self) -> Path:
        """Where ``fleetci cache start`` records the background proxy (``fleetci cache stop`` reads it)."""
        return self.cache_dir / "proxy.pid"

    @property
    def socket_path(self) -> Path:
        """Unix socket for the proxy; a short fallback when CACHE_DIR is too deep for AF_UNIX (108 bytes)."""
        if self.socket is not None:
            return self.socket
        candidate = self.cache_dir / "proxy.sock"
        if len(str(candidate)) < 100:
            return candidate
        digest = hashlib.sha256(str(self.cache_dir.resolve()).encode()).hexdigest()[:16]
        return Path("/tmp") / f"fleetci-{digest}.sock"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"


class ServiceOptions(SettingTable):
    """``fleetci cache service install|status`` (issue 16): the host service's own settings."""

    section = "cache"
    service_group = Setting(
        "",
        str,
        env=("CACHE_SERVICE_GROUP",),
        flags=("--group",),
        help="group of the runner users that may use the host service's socket; none: root only",
    )
    service_port = Setting(
        DEFAULT_SERVICE_PORT,
        parse_port,
        env=("CACHE_SERVICE_PORT",),
        flags=("--port",),
        help="loopback TCP port of the host service (for REST clients)",
    )
    service_socket = Setting(
        WELL_KNOWN_SOCKET,
        str,
        env=("CACHE_SERVICE_SOCKET",),
        flags=("--socket",),
        help="the socket 'cache service status' checks",
    )


@dataclass(frozen=True)
class ServiceSettings:
    group: str = ""
    port: int = DEFAULT_SERVICE_PORT
    socket: Path = Path(WELL_KNOWN_SOCKET)


def service_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServiceSettings:
    """:class:`ServiceSettings` by flag > environment > config file ``cache:`` > default."""
    o = ServiceOptions
    r = o.resolver(flags, config, {k: v for k, v in os.environ.items() if v != ""} if env is None else env)
    r.known.update(s.name for s in CacheOptions.settings)  # the same ``cache:`` section
    settings = ServiceSettings(
        group=r.value(o.service_group),
        port=r.value(o.service_port),
        socket=Path(r.value(o.service_socket)),
    )
    r.check_unknown()
    return settings


def cache_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> CacheSettings:
    """Build :class:`CacheSettings` from flags, environment and the ``cache:`` section of the config file."""
    o = CacheOptions
    if env is None:
        # an empty variable is unset (as everywhere), so it does not hide the file's value
        env = {**read_env_file(Path(ENV_FILE)), **{k: v for k, v in os.environ.items() if v != ""}}
    r = o.resolver(flags, config, env)
    r.known.update(s.name for s in ServiceOptions.settings)  # the same ``cache:`` section
    upstream = r.value(o.upstream).rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise UsageError(f"invalid upstream {upstream!r}: expected an http:// or https:// URL")
    socket = r.value(o.socket)
    rules = parse_ttl_rules(r.raw(o.ttl.name))
    graphql_rules = parse_ttl_rules(r.raw(o.graphql_ttl.name), "cache.graphql_ttl")
    settings = CacheSettings(
        upstream=upstream,
        host=r.value(o.host),
        proxy_port=r.value(o.proxy_port),
        listen_port=r.value(o.listen_port),
        cache_dir=Path(_or(r.value(o.cache_dir), str(default_cache_dir()))).expanduser(),
        socket=Path(socket) if socket else None,
        default_ttl=r.value(o.default_ttl),
        max_entries=r.value(o.max_entries),
        max_bytes=r.value(o.max_bytes),
        memory_bytes=r.value(o.memory_bytes),
        max_body_bytes=r.value(o.max_body_bytes),
        max_concurrency=r.value(o.max_concurrency),
        max_stale=r.value(o.max_stale),
        upstream_timeout=r.value(o.upstream_timeout),
        enable_p2p=r.value(o.enable_p2p),
        bootstrap_peers=r.value(o.bootstrap_peers),
        ttl_rules=rules,
        graphql_default_ttl=r.value(o.graphql_default_ttl),
        graphql_ttl_rules=graphql_rules,
        secret=r.value(o.secret),
        peer_registry=Path(registry) if (registry := r.value(o.peer_registry)) else None,
        p2p_host=r.value(o.p2p_host),
        shared_scope=r.value(o.shared_scope),
        fleet=r.value(o.fleet),
        public_bootstrap=r.value(o.public_bootstrap),
        peer_timeout=r.value(o.peer_timeout),
        claim_window=r.value(o.claim_window_ms) / 1000,
        claim_wait=r.value(o.claim_wait),
        socket_group=r.value(o.socket_group),
        host_proxy=r.value(o.host_proxy),
        cache_job=r.value(o.cache_job),
        webhook_secret=r.value(o.webhook_secret),
        webhook_host=r.value(o.webhook_host),
        webhook_port=r.value(o.webhook_port),
        webhook_reconcile=r.value(o.webhook_reconcile),
        webhook_reconcile_interval=r.value(o.webhook_reconcile_interval),
        webhook_token=r.value(o.webhook_token),
        prewarm=r.value(o.prewarm),
        prewarm_lead=r.value(o.prewarm_lead),
        prewarm_reserve=r.value(o.prewarm_reserve),
        backend=r.value(o.backend),
        redis_password=r.value(o.redis_password),
        shared_push_bytes=r.value(o.shared_push_bytes),
    )
    r.check_unknown()
    return settings


ENV_FILE = ".env.cache"  # in the working directory, as in the seed (``cp .env.cache.example .env.cache``)
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def env_names() -> frozenset[str]:
    """Every environment name a cache setting reads (the names a ``.env.cache`` may set)."""
    return frozenset(name for s in CacheOptions.settings for name in s.env)


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines (``export``, ``#`` comments, blank lines and '…'/"…" quoting allowed) of a
    ``.env.cache``; {} when there is none. A malformed line or a name no cache setting reads is refused
    in one line, with a hint for a typo."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from exc
    known = env_names()
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _ENV_LINE.match(stripped)
        if m is None:
            raise UsageError(f"{path}:{number}: expected NAME=value, got {stripped[:40]!r}")
        name, value = m.group(1), m.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UsageError(f"{path}:{number}: unknown cache variable {name!r}{hint}")
        values[name] = value
    return values


def _or(value: str | None, computed: str) -> str:
    """A computed default (it reads the environment at build time, not at import time)."""
    return computed if value is None else value


def github_token(flag: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The GitHub token by the usual precedence: flag, then GH_TOKEN, then GITHUB_TOKEN."""
    environ = os.environ if env is None else env
    return flag or environ.get("GH_TOKEN") or environ.get("GITHUB_TOKEN") or None
