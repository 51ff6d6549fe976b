"""Settings resolution shared by every capability.

One precedence rule everywhere: command-line flag > environment variable > config file > default.
Settings are frozen dataclasses built once at start-up, so nothing reads the environment later.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import yaml

from fleetci.errors import UsageError

T = TypeVar("T")
N = TypeVar("N", int, float)

CONFIG_ENV = "FLEETCI_CONFIG"
# The config file's top-level keys: one section per capability.
SECTIONS = ("cache", "install", "multiarch", "registry", "build")


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
    # ``x-…`` keys hold YAML anchors shared by sections (the docker compose convention): not settings.
    unknown = [str(k) for k in data if str(k) not in SECTIONS and not str(k).startswith("x-")]
    if unknown:
        raise UsageError(f"config file {p}: {_unknown_keys(unknown, SECTIONS, 'section')}")
    return data


def _unknown_keys(keys: Sequence[str], known: Iterable[str], what: str) -> str:
    """``unknown config key 'cache.proxy_prot' (did you mean 'proxy_port'?)``: typos get a hint."""
    choices = sorted(known)
    shown = []
    for key in keys:
        leaf = key.rsplit(".", 1)[-1]
        close = difflib.get_close_matches(leaf, choices, n=1)
        shown.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(shown) > 1 else ""
    return f"unknown config {what}{plural} {', '.join(shown)}"


def section(config: Mapping[str, Any] | None, name: str) -> dict[str, Any]:
    """One capability's section of the config file: a mapping or nothing (a list or a string is a typo)."""
    raw = (config or {}).get(name)
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise UsageError(f"config section {name!r} must be a mapping (key: value), got {_kind(raw)}")
    return {str(k): v for k, v in raw.items()}


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


# Durations above ten years are typos, and would overflow timeouts (threading.TIMEOUT_MAX is ~292 years).
MAX_SECONDS = 10 * 365 * 24 * 3600
# Counts and byte sizes end up in SQLite and C APIs: a signed 64-bit integer is the most they hold.
MAX_INT = 2**63 - 1


def number(
    kind: type[N],
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    unit: str = "",
) -> Callable[[str], N]:
    """A parser for one numeric setting: finite (no nan/inf) and in range, else a one-line ValueError.

    Every numeric setting and numeric flag is built from this, so ``nan``, ``inf`` and ``-5`` get the
    same refusal everywhere; the Resolver (or ``fleetci.cli.arg_type``) prefixes the flag/env/config key.
    """
    low, high = min, max
    parts = [f"{'a whole number' if kind is int else 'a number'}{f' of {unit}' if unit else ''}"]
    if low is not None and high is not None and min_inclusive and max_inclusive:
        parts.append(f"between {_num(low)} and {_num(high)}")
    else:
        if low is not None:
            parts.append(f"{'>=' if min_inclusive else '>'} {_num(low)}")
        if high is not None:
            parts.append(f"{'<=' if max_inclusive else '<'} {_num(high)}")
    expected = " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if parts[1:] else "")
    cap = MAX_INT if kind is int and high is None else None

    def parse(text: str) -> N:
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected {expected}, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected {expected}, got {text!r} (not a finite number)")
        too_low = low is not None and (value < low if min_inclusive else value <= low)
        too_high = high is not None and (value > high if max_inclusive else value >= high)
        if too_low or too_high:
            raise ValueError(f"expected {expected}, got {text!r}")
        if cap is not None and value > cap:
            raise ValueError(f"expected {expected} and <= {cap}, got {text!r}")
        return value

    parse.__name__ = f"parse_{kind.__name__}"
    return parse


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


parse_port = number(int, min=0, max=65535)
parse_positive_int = number(int, min=1)
parse_count = number(int, min=0)
# A duration that may be zero (a TTL, a stale window, "wait this long at most"), in seconds.
parse_seconds = number(float, min=0, max=MAX_SECONDS, unit="seconds")
# A timeout or an interval: zero would mean "fail at once" or "spin", so it must be positive.
parse_timeout = number(float, min=0, max=MAX_SECONDS, min_inclusive=False, unit="seconds")
parse_ms = number(float, min=0, max=MAX_SECONDS * 1000, unit="milliseconds")
parse_stale = number(int, min=0, max=MAX_SECONDS, unit="seconds")


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


def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


class Setting(Generic[T]):
    """One setting, described once: its config key and flag, environment names, parser, default and help.

    A capability lists its settings in a :class:`SettingTable`; the argparse flags, the Resolver lookups,
    the unknown-key check and the docs tables are all derived from that list, so they cannot drift apart.
    """

    __slots__ = ("default", "doc_default", "env", "flag", "help", "name", "parse")

    def __init__(
        self,
        default: T,
        parse: Callable[[str], T],
        *,
        env: Sequence[str] = (),
        help: str,
        flag: bool = True,
        doc_default: str | None = None,
    ) -> None:
        self.name = ""  # set by the table (``__set_name__``)
        self.default = default
        self.parse = parse
        self.env = tuple(env)
        self.help = help
        self.flag = flag  # False: environment and config file only (a secret, a list of rules)
        self.doc_default = doc_default  # how docs and --help show a computed or unhelpful default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def option(self) -> str:
        return f"--{self.name.replace('_', '-')}"

    def shown_default(self) -> str:
        if self.doc_default is not None:
            return self.doc_default
        value = self.default
        if value is None or value == "" or value == ():
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)

    def flag_help(self) -> str:
        where = ", ".join(f"${e}" for e in self.env)
        return f"{self.help} ({where + '; ' if where else ''}default: {self.shown_default()})"


class SettingTable:
    """One capability's settings: subclass it, set ``section`` and declare :class:`Setting` attributes.

    Modelled on cibuildwheel's options: one list, everything else derived from it.
    """

    section: ClassVar[str] = ""
    settings: ClassVar[tuple[Setting[Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = [s for base in reversed(cls.__mro__[1:]) for s in getattr(base, "settings", ())]
        own = [v for v in vars(cls).values() if isinstance(v, Setting)]
        seen: dict[str, Setting[Any]] = {}
        for s in [*inherited, *own]:
            seen[s.name] = s
        cls.settings = tuple(seen.values())

    @classmethod
    def get(cls, name: str) -> Setting[Any]:
        for s in cls.settings:
            if s.name == name:
                return s
        raise KeyError(name)

    @classmethod
    def add_flags(
        cls,
        parser: argparse.ArgumentParser | argparse._ArgumentGroup,
        names: Iterable[str] | None = None,
    ) -> None:
        """Add ``--flag`` options (strings; the Resolver parses them, naming the flag in its errors)."""
        chosen = cls.settings if names is None else tuple(cls.get(n) for n in names)
        for s in chosen:
            if s.flag:
                parser.add_argument(s.option, dest=s.name, default=None, help=s.flag_help())

    @classmethod
    def flag_values(cls, args: argparse.Namespace) -> dict[str, Any]:
        return {s.name: getattr(args, s.name, None) for s in cls.settings}

    @classmethod
    def resolver(
        cls,
        flags: Mapping[str, Any] | None,
        config: Mapping[str, Any] | None,
        env: Mapping[str, str] | None = None,
    ) -> Resolver:
        """A Resolver over this table's config section; ``check_unknown`` knows every setting's key."""
        r = Resolver(flags, section(config, cls.section), env, name=cls.section)
        r.known.update(s.name for s in cls.settings)
        return r

    @classmethod
    def markdown(cls) -> str:
        """The settings table of this capability's docs page (flag > environment > config file > default)."""
        rows = [
            "| config key | flag | environment | default | meaning |",
            "|---|---|---|---|---|",
        ]
        for s in cls.settings:
            key = f"`{cls.section}.{s.name}`" if cls.section else f"`{s.name}`"
            flag = f"`{s.option}`" if s.flag else "–"
            env = ", ".join(f"`{e}`" for e in s.env) or "–"
            meaning = s.help.replace("|", "\\|")
            rows.append(f"| {key} | {flag} | {env} | `{s.shown_default()}` | {meaning} |")
        return "\n".join(rows) + "\n"


class Resolver:
    """Look a setting up in flags, then the environment, then one section of the config file.

    It remembers every name asked for, so :meth:`check_unknown` can refuse config keys nobody reads
    (a typo would otherwise fall back to the default without a word).
    """

    def __init__(
        self,
        flags: Mapping[str, Any] | None,
        section: Mapping[str, Any] | None,
        env: Mapping[str, str] | None = None,
        *,
        name: str = "",
    ) -> None:
        self.flags = dict(flags or {})
        self.section = {str(k): v for k, v in (section or {}).items()}
        self.env = os.environ if env is None else env
        self.name = name
        self.asked: set[str] = set()
        self.known: set[str] = set()  # keys a table declares, read or not

    def key(self, name: str) -> str:
        """The config key as the user wrote it: ``cache.default_ttl``."""
        return f"{self.name}.{name}" if self.name else name

    def raw(self, name: str) -> Any:
        """A config value that is not one flat setting (cache.ttl's list of rules); its key is known."""
        self.asked.add(name)
        return self.section.get(name)

    def check_unknown(self, known: Iterable[str] = ()) -> None:
        """Refuse config keys that no setting asked for (call it once, after every ``get``)."""
        names = self.asked | self.known | set(known)
        unknown = [self.key(k) for k in self.section if k not in names]
        if unknown:
            raise UsageError(_unknown_keys(unknown, names, "key"))

    def value(self, setting: Setting[T]) -> T:
        """A table's setting by the precedence rule: flag > environment > config file > default."""
        return self.get(setting.name, setting.default, setting.parse, setting.env)

    def get(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        env: Sequence[str] = (),
    ) -> T:
        self.asked.add(name)
        flag = self.flags.get(name)
        if flag is not None:
            return self._coerce(flag, parse, f"--{name.replace('_', '-')}")
        for var in env:
            raw = self.env.get(var)
            if raw is not None and raw != "":
                return self._coerce(raw, parse, f"${var}")
        if name in self.section and self.section[name] is not None:
            return self._coerce(self.section[name], parse, f"config key {self.key(name)!r}")
        return default

    @staticmethod
    def _coerce(value: Any, parse: Callable[[str], T], where: str) -> T:
        if isinstance(value, Mapping):
            raise UsageError(f"invalid value for {where}: expected a value or a list, got a mapping")
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
        raise UsageError("config key 'cache.ttl' must be a list of {pattern, seconds} mappings")
    rules = []
    for i, item in enumerate(raw):
        where = f"cache.ttl[{i}]"
        if not isinstance(item, Mapping) or item.get("pattern") is None or item.get("seconds") is None:
            raise UsageError(f"config key {where!r} needs 'pattern' and 'seconds'")
        r = Resolver(None, item, {}, name=where)  # the same checks as every other setting
        pattern = r.get("pattern", "", _regex)
        seconds = r.get("seconds", 0.0, parse_seconds)
        name = r.get("name", "custom", str)
        r.check_unknown()
        rules.append(TTLRule(pattern, seconds, name))
    return tuple(rules)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


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
    max_body_bytes: int = 16 * 1024 * 1024  # fleetci.http.DEFAULT_MAX_BODY_BYTES (config imports no asyncio)
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
    r = Resolver(flags, section(config, "cache"), env, name="cache")
    upstream = r.get("upstream", DEFAULT_UPSTREAM, str, env=("CACHE_UPSTREAM", "GITHUB_API_URL")).rstrip("/")
    if not upstream.startswith(("http://", "https://")):
        raise UsageError(f"invalid upstream {upstream!r}: expected an http:// or https:// URL")
    socket_raw = r.get("socket", "", str, env=("CACHE_SOCKET", "FLEETCI_CACHE_SOCKET"))
    rules = parse_ttl_rules(r.raw("ttl"))
    settings = CacheSettings(
        upstream=upstream,
        host=r.get("host", "127.0.0.1", str, env=("CACHE_PROXY_HOST",)),
        proxy_port=r.get("proxy_port", 9101, parse_port, env=("CACHE_PROXY_PORT",)),
        listen_port=r.get("listen_port", 9100, parse_port, env=("CACHE_LISTEN_PORT",)),
        cache_dir=Path(r.get("cache_dir", str(default_cache_dir()), str, env=("CACHE_DIR",))).expanduser(),
        socket=Path(socket_raw) if socket_raw else None,
        default_ttl=r.get("default_ttl", 300.0, parse_seconds, env=("CACHE_DEFAULT_TTL",)),
        max_entries=r.get("max_entries", 10_000, parse_positive_int, env=("CACHE_MAX_ENTRIES",)),
        max_bytes=r.get("max_bytes", 256 * 1024 * 1024, parse_positive_int, env=("CACHE_MAX_BYTES",)),
        memory_bytes=r.get("memory_bytes", MEMORY_BYTES, parse_positive_int, env=("CACHE_MEMORY_BYTES",)),
        max_body_bytes=r.get(
            "max_body_bytes", 16 * 1024 * 1024, parse_positive_int, env=("CACHE_MAX_BODY_BYTES",)
        ),
        max_concurrency=r.get("max_concurrency", 20, parse_positive_int, env=("CACHE_MAX_CONCURRENCY",)),
        max_stale=r.get("max_stale", 24 * 3600, parse_stale, env=("CACHE_MAX_STALE",)),
        upstream_timeout=r.get("upstream_timeout", 30.0, parse_timeout, env=("CACHE_UPSTREAM_TIMEOUT",)),
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
        peer_timeout=r.get("peer_timeout", 0.5, parse_timeout, env=("CACHE_PEER_TIMEOUT",)),
        claim_window=r.get("claim_window_ms", 50.0, parse_ms, env=("CACHE_CLAIM_WINDOW_MS",)) / 1000,
        claim_wait=r.get("claim_wait", 2.0, parse_seconds, env=("CACHE_CLAIM_WAIT",)),
    )
    r.check_unknown()
    return settings


def github_token(flag: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The GitHub token by the usual precedence: flag, then GH_TOKEN, then GITHUB_TOKEN."""
    environ = os.environ if env is None else env
    return flag or environ.get("GH_TOKEN") or environ.get("GITHUB_TOKEN") or None
