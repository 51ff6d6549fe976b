"""Settings resolution shared by every capability.

One precedence rule everywhere: command-line flag > environment variable > config file > default.
Settings are frozen dataclasses built once at start-up, so nothing reads the environment later.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fleetci.errors import UsageError

T = TypeVar("T")

CONFIG_ENV = "FLEETCI_CONFIG"


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fleetci" / "config.yml"


def load_config_file(path: str | Path | None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read the YAML config file; a missing default file is fine, a missing named file is an error."""
    env = os.environ if env is None else env
    explicit = path or env.get(CONFIG_ENV)
    p = Path(explicit) if explicit else default_config_path()
    try:
        exists = p.exists()
    except OSError as exc:  # e.g. an unreadable ~/.config for a non-root user
        if explicit:
            raise UsageError(f"config file {p} cannot be read: {exc.strerror or exc}") from exc
        return {}
    if not exists:
        if explicit:
            raise UsageError(f"config file {p} does not exist")
        return {}
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"config file {p} is not valid YAML: {first}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UsageError(f"config file {p} must hold a mapping at the top level")
    return data


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def parse_port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return port


def parse_ms_range(text: str) -> tuple[float, float]:
    """``100-500`` (a uniform range) or ``250`` (fixed), in milliseconds."""
    low, sep, high = text.partition("-")
    try:
        lo = float(low)
        hi = float(high) if sep else lo
    except ValueError:
        raise ValueError(f"expected LOW-HIGH milliseconds such as 100-500, got {text!r}") from None
    if not (0 <= lo <= hi < float("inf")):
        raise ValueError(f"expected 0 <= LOW <= HIGH milliseconds, got {text!r}")
    return lo, hi


def parse_positive_int(text: str) -> int:
    n = int(text)
    if n <= 0:
        raise ValueError(f"expected a positive number, got {n}")
    return n


def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


class Resolver:
    """Look a setting up in flags, then the environment, then one section of the config file."""

    def __init__(
        self,
        flags: Mapping[str, Any] | None,
        section: Mapping[str, Any] | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.flags = dict(flags or {})
        self.section = dict(section or {})
        self.env = os.environ if env is None else env

    def get(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        env: Sequence[str] = (),
    ) -> T:
        flag = self.flags.get(name)
        if flag is not None:
            return self._coerce(flag, parse, f"--{name.replace('_', '-')}")
        for var in env:
            raw = self.env.get(var)
            if raw is not None and raw != "":
                return self._coerce(raw, parse, f"${var}")
        if name in self.section and self.section[name] is not None:
            return self._coerce(self.section[name], parse, f"config key {name!r}")
        return default

    @staticmethod
    def _coerce(value: Any, parse: Callable[[str], T], where: str) -> T:
        if not isinstance(value, str):
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            else:
                value = str(value).lower() if isinstance(value, bool) else str(value)
        try:
            return parse(value)
        except ValueError as exc:
            raise UsageError(f"invalid value for {where}: {exc}") from exc


@dataclass(frozen=True)
class TTLRule:
    """Fresh window for URLs whose path (and query) match ``pattern`` (a regular expression)."""

    pattern: str
    seconds: float
    name: str = "custom"


def parse_ttl_rules(raw: Any) -> tuple[TTLRule, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UsageError("config key cache.ttl must be a list of {pattern, seconds} mappings")
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "pattern" not in item or "seconds" not in item:
            raise UsageError(f"config key cache.ttl[{i}] needs 'pattern' and 'seconds'")
        try:
            re.compile(str(item["pattern"]))
            seconds = float(item["seconds"])
        except (ValueError, TypeError, re.error) as exc:
            raise UsageError(f"config key cache.ttl[{i}] is invalid: {exc}") from exc
        if seconds < 0:
            raise UsageError(f"config key cache.ttl[{i}].seconds must be >= 0")
        rules.append(TTLRule(str(item["pattern"]), seconds, str(item.get("name", "custom"))))
    return tuple(rules)


DEFAULT_UPSTREAM = "https://api.github.com"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetci"


# The hot part of a proxy's cache kept in RAM; the rest is a SQLite read away (see cache/store.py).
MEMORY_BYTES = 4 * 1024 * 1024


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
    max_concurrency: int = 20
    max_stale: int = 24 * 3600
    upstream_timeout: float = 30.0
    enable_p2p: bool = False
    bootstrap_peers: tuple[str, ...] = ()
    ttl_rules: tuple[TTLRule, ...] = ()
    secret: str = field(default="", repr=False)
    peer_registry: Path | None = None
    p2p_host: str = "0.0.0.0"
    shared_scope: str = ""
    fleet: str = ""
    public_bootstrap: bool = False
    peer_timeout: float = 0.5
    claim_window: float = 0.05
    claim_wait: float = 2.0

    @property
    def identity_path(self) -> Path:
        return self.cache_dir / "p2p-identity.key"

    @property
    def db_path(self) -> Path:
        return self.cache_dir / "cache.db"

    @property
    def socket_path(self) -> Path:
        """Unix socket for the proxy; a short fallback when CACHE_DIR is too deep for AF_UNIX (108 bytes)."""
        if self.socket is not None:
            return self.socket
        candidate = self.cache_dir / "proxy.sock"
        if len(str(candidate)) < 100:
            return candidate
        import hashlib

        digest = hashlib.sha256(str(self.cache_dir.resolve()).encode()).hexdigest()[:16]
        return Path("/tmp") / f"fleetci-{digest}.sock"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"


def cache_settings(
    flags: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> CacheSettings:
    """Build :class:`CacheSettings` from flags, environment and the ``cache:`` section of the config file."""
    section = dict((config or {}).get("cache") or {})
    r = Resolver(flags, section, env)
    upstream = r.get("upstream", DEFAULT_UPSTREAM, str, env=("CACHE_UPSTREAM", "GITHUB_API_URL")).rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise UsageError(f"invalid upstream {upstream!r}: expected an http:// or https:// URL")
    socket_raw = r.get("socket", "", str, env=("CACHE_SOCKET", "FLEETCI_CACHE_SOCKET"))
    rules = parse_ttl_rules(section.get("ttl"))
    return CacheSettings(
        upstream=upstream,
        host=r.get("host", "127.0.0.1", str, env=("CACHE_PROXY_HOST",)),
        proxy_port=r.get("proxy_port", 9101, parse_port, env=("CACHE_PROXY_PORT",)),
        listen_port=r.get("listen_port", 9100, parse_port, env=("CACHE_LISTEN_PORT",)),
        cache_dir=Path(r.get("cache_dir", str(default_cache_dir()), str, env=("CACHE_DIR",))).expanduser(),
        socket=Path(socket_raw) if socket_raw else None,
        default_ttl=r.get("default_ttl", 300.0, float, env=("CACHE_DEFAULT_TTL",)),
        max_entries=r.get("max_entries", 10_000, parse_positive_int, env=("CACHE_MAX_ENTRIES",)),
        max_bytes=r.get("max_bytes", 256 * 1024 * 1024, parse_positive_int, env=("CACHE_MAX_BYTES",)),
        memory_bytes=r.get("memory_bytes", MEMORY_BYTES, parse_positive_int, env=("CACHE_MEMORY_BYTES",)),
        max_concurrency=r.get("max_concurrency", 20, parse_positive_int, env=("CACHE_MAX_CONCURRENCY",)),
        max_stale=r.get("max_stale", 24 * 3600, int, env=("CACHE_MAX_STALE",)),
        upstream_timeout=r.get("upstream_timeout", 30.0, float, env=("CACHE_UPSTREAM_TIMEOUT",)),
        enable_p2p=r.get("enable_p2p", False, parse_bool, env=("CACHE_ENABLE_P2P",)),
        bootstrap_peers=r.get("bootstrap_peers", (), parse_csv, env=("CACHE_BOOTSTRAP_PEERS",)),
        ttl_rules=rules,
        secret=r.get("secret", "", str, env=("FLEETCI_CACHE_SECRET",)),
        peer_registry=Path(registry)
        if (registry := r.get("peer_registry", "", str, env=("CACHE_PEER_REGISTRY",)))
        else None,
        p2p_host=r.get("p2p_host", "0.0.0.0", str, env=("CACHE_P2P_HOST",)),
        shared_scope=r.get("shared_scope", "", str, env=("CACHE_SHARED_SCOPE",)),
        fleet=r.get("fleet", "", str, env=("CACHE_FLEET",)),
        public_bootstrap=r.get("public_bootstrap", False, parse_bool, env=("CACHE_PUBLIC_BOOTSTRAP",)),
        peer_timeout=r.get("peer_timeout", 0.5, float, env=("CACHE_PEER_TIMEOUT",)),
        claim_window=r.get("claim_window_ms", 50.0, float, env=("CACHE_CLAIM_WINDOW_MS",)) / 1000,
        claim_wait=r.get("claim_wait", 2.0, float, env=("CACHE_CLAIM_WAIT",)),
    )


def github_token(flag: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The GitHub token by the usual precedence: flag, then GH_TOKEN, then GITHUB_TOKEN."""
    environ = os.environ if env is None else env
    return flag or environ.get("GH_TOKEN") or environ.get("GITHUB_TOKEN") or None
