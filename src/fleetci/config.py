"""Settings resolution shared by every capability.

One precedence rule everywhere: command-line flag > environment variable > config file > default.
Settings are frozen dataclasses built once at start-up, so nothing reads the environment later.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import yaml

from fleetci.errors import UsageError

T = TypeVar("T")
N = TypeVar("N", int, float)

CONFIG_ENV = "FLEETCI_CONFIG"
# The config file's top-level keys: one section per capability.
SECTIONS = ("cache", "install", "multiarch", "registry", "build", "autoscale")


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


def _parse_range(text: str, unit: str, example: str) -> tuple[float, float]:
    low, sep, high = text.partition("-")
    try:
        lo = float(low)
        hi = float(high) if sep else lo
    except ValueError:
        raise ValueError(f"expected LOW-HIGH {unit} such as {example}, got {text!r}") from None
    if not (0 <= lo <= hi < float("inf")):
        raise ValueError(f"expected 0 <= LOW <= HIGH {unit}, got {text!r}")
    return lo, hi


def parse_ms_range(text: str) -> tuple[float, float]:
    """``100-500`` (a uniform range) or ``250`` (fixed), in milliseconds."""
    return _parse_range(text, "milliseconds", "100-500")


def parse_s_range(text: str) -> tuple[float, float]:
    """``10-120`` (a uniform range) or ``60`` (fixed), in seconds."""
    lo, hi = _parse_range(text, "seconds", "10-120")
    if hi > MAX_SECONDS:
        raise ValueError(f"expected at most {MAX_SECONDS:g} seconds, got {text!r}")
    return lo, hi


def parse_csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


class Setting(Generic[T]):
    """One setting, described once: its config key and flag, environment names, parser, default and help.

    A capability lists its settings in a :class:`SettingTable`; the argparse flags, the Resolver lookups,
    the unknown-key check and the docs tables are all derived from that list, so they cannot drift apart.
    """

    __slots__ = (
        "default",
        "doc_default",
        "env",
        "flag",
        "flags",
        "help",
        "metavar",
        "name",
        "parse",
        "repeat",
        "switch",
    )

    def __init__(
        self,
        default: T,
        parse: Callable[[str], T],
        *,
        env: Sequence[str] = (),
        help: str,
        flag: bool = True,
        doc_default: str | None = None,
        flags: Sequence[str] = (),
        switch: bool = False,
        repeat: bool = False,
        metavar: str | None = None,
    ) -> None:
        self.name = ""  # set by the table (``__set_name__``)
        self.default = default
        self.parse = parse
        self.env = tuple(env)
        self.help = help
        self.flag = flag  # False: environment and config file only (a secret, a list of rules)
        self.doc_default = doc_default  # how docs and --help show a computed or unhelpful default
        self.flags = tuple(flags)  # option strings when not ``--<name>`` (``--port``, or aliases)
        self.switch = switch  # a flag without a value that means "true" (``--enable-p2p``)
        self.repeat = repeat  # the flag may be given several times: the values join with commas
        self.metavar = metavar  # how --help names the flag's value

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @property
    def option(self) -> str:
        return self.flags[0] if self.flags else f"--{self.name.replace('_', '-')}"

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
            if not s.flag:
                continue
            options, shown = s.flags or (s.option,), s.flag_help()
            if s.switch:  # no value: present means "true"
                parser.add_argument(*options, dest=s.name, action="store_const", const="true", help=shown)
            else:
                # a repeated flag gives a list, which the Resolver joins with commas
                more: dict[str, Any] = {"action": "append"} if s.repeat else {}
                if s.metavar:
                    more["metavar"] = s.metavar
                parser.add_argument(*options, dest=s.name, default=None, help=shown, **more)

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
        return self.get(setting.name, setting.default, setting.parse, setting.env, setting.option)

    def get(
        self,
        name: str,
        default: T,
        parse: Callable[[str], T],
        env: Sequence[str] = (),
        option: str = "",
    ) -> T:
        self.asked.add(name)
        flag = self.flags.get(name)
        if flag is not None:  # errors name the flag as it was typed (``--port``, not ``--proxy-port``)
            return self._coerce(flag, parse, option or f"--{name.replace('_', '-')}")
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


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fleetci"
