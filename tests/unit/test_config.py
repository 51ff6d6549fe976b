"""One validation path for settings: sections are mappings, unknown keys are refused, numbers are finite.

Unit tests: the settings builders are called directly, and the CLI in-process through
``fleetci.cli.main``; each bad input must give exit 2 and exactly one ``fleetci: error:`` line.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from fleetci.autoscale.settings import AutoscaleSettings, autoscale_settings
from fleetci.buildfarm.settings import (
    ClientSettings,
    MasterSettings,
    WorkerSettings,
    client_settings,
    master_settings,
    worker_settings,
)
from fleetci.cache.settings import (
    CacheSettings,
    ServiceSettings,
    cache_settings,
    parse_ttl_rules,
    service_settings,
)
from fleetci.cli import build_parser
from fleetci.config import (
    MAX_SECONDS,
    Resolver,
    number,
    parse_port,
    parse_seconds,
    parse_timeout,
)
from fleetci.docsgen import load_tables
from fleetci.errors import UsageError
from fleetci.install.settings import InstallSettings, install_settings
from fleetci.multiarch.settings import multiarch_settings
from fleetci.registry.settings import RegistrySettings, registry_settings
from support import RunCli, clean_env

Builder = Callable[[Mapping[str, Any], Mapping[str, Any] | None, Mapping[str, str]], Any]


SETTING_PREFIXES = ("CACHE_", "INSTALL_", "MULTIARCH_", "REGISTRY_", "GH_SYNC_", "GITLAB_", "FLEETCI_")


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the machine; the default config file is an empty one."""
    for key in list(os.environ):
        if key.startswith(SETTING_PREFIXES):
            monkeypatch.delenv(key)
    empty = tmp_path / "empty.yml"
    empty.write_text("", encoding="utf-8")
    monkeypatch.setenv("FLEETCI_CONFIG", str(empty))


WORKER_ENV = {"FLEETCI_BUILD_MASTER": "http://127.0.0.1:1", "FLEETCI_BUILD_JOIN_TOKEN": "t"}


def _multiarch(project: Path) -> Builder:
    def build(flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str]) -> Any:
        return multiarch_settings({"project": str(project), "arch": "arm64", **flags}, config, env)

    return build


def _worker(flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str]) -> Any:
    return worker_settings(flags, config, {**WORKER_ENV, **env})


def _client(flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str]) -> Any:
    return client_settings(flags, config, {**WORKER_ENV, "FLEETCI_BUILD_TOKEN": "t", **env})


def one_line_usage_error(proc: CompletedProcess[str]) -> str:
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    lines = err.splitlines()
    assert code == 2, (proc.args, code, err)
    assert len(lines) == 1 and lines[0].startswith("fleetci: error: "), err
    assert "Traceback" not in err and "internal error" not in err and out == ""
    return lines[0]


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.yml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_extension_keys_hold_anchors_and_are_no_section(tmp_path: Path) -> None:
    from fleetci.cache.settings import cache_settings
    from fleetci.config import load_config_file

    text = "x-common: &ttl\n  default_ttl: 42\ncache:\n  <<: *ttl\n  proxy_port: 9555\n"
    config = load_config_file(write_config(tmp_path, text), env={})
    settings = cache_settings({}, config, {})
    assert (settings.default_ttl, settings.proxy_port) == (42.0, 9555)


@pytest.mark.parametrize(
    ("config", "argv", "expected"),
    [
        (
            "cache: [a, b]\n",
            ["cache", "stats"],
            "config section 'cache' must be a mapping (key: value), got a list",
        ),
        (
            "cache: proxy_port\n",
            ["cache", "stats"],
            "config section 'cache' must be a mapping (key: value), got a string",
        ),
        ("registry: [x]\n", ["registry", "gh-list"], "config section 'registry' must be a mapping"),
        ("registry: gitlab\n", ["registry", "gh-list"], "config section 'registry' must be a mapping"),
        (
            "install: 5\n",
            ["install", "alpha"],
            "config section 'install' must be a mapping (key: value), got a number",
        ),
        (
            "build: [x]\n",
            ["build", "status", "--master", "http://127.0.0.1:1"],
            "config section 'build' must",
        ),
        (
            "cache:\n  proxy_prot: 9000\n",
            ["cache", "stats"],
            "unknown config key 'cache.proxy_prot' (did you mean 'proxy_port'?)",
        ),
        (
            "cahce:\n  proxy_port: 9000\n",
            ["cache", "stats"],
            "unknown config section 'cahce' (did you mean 'cache'?)",
        ),
        (
            "cache:\n  ttl: [{pattern: x, seconds: .nan}]\n",
            ["cache", "stats"],
            "invalid value for config key 'cache.ttl[0].seconds'",
        ),
        (
            "install:\n  retries: .inf\n",
            ["install", "alpha"],
            "invalid value for config key 'install.retries'",
        ),
    ],
)
def test_bad_config_files_are_one_line_usage_errors(
    config: str, argv: list[str], expected: str, tmp_path: Path, fleetci: RunCli
) -> None:
    line = one_line_usage_error(fleetci("--config", write_config(tmp_path, config), *argv))
    assert expected in line, line


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        (
            {},
            ["cache", "stats", "--default-ttl", "-5"],
            "invalid value for --default-ttl: expected a number of",
        ),
        ({"CACHE_DEFAULT_TTL": "nan"}, ["cache", "stats"], "invalid value for $CACHE_DEFAULT_TTL"),
        ({"CACHE_MAX_STALE": "-100"}, ["cache", "stats"], "invalid value for $CACHE_MAX_STALE"),
        ({"CACHE_UPSTREAM_TIMEOUT": "0"}, ["cache", "stats"], "invalid value for $CACHE_UPSTREAM_TIMEOUT"),
        # an unusable state dir: had the TTL been accepted, the master would fail at once instead of serving
        (
            {},
            ["build", "master", "--heartbeat-ttl", "inf", "--state-dir", "/dev/null/state"],
            "invalid value for --heartbeat-ttl",
        ),
        ({}, ["cache", "verify", "--wait", "inf"], "argument --wait: expected a number of seconds"),
        ({"INSTALL_LOCK_TIMEOUT": "inf"}, ["install", "alpha"], "invalid value for $INSTALL_LOCK_TIMEOUT"),
        ({"REGISTRY_TIMEOUT": "nan"}, ["registry", "gh-list"], "invalid value for $REGISTRY_TIMEOUT"),
    ],
)
def test_bad_numbers_are_one_line_usage_errors(
    env: dict[str, str],
    argv: list[str],
    expected: str,
    fleetci: RunCli,
) -> None:
    line = one_line_usage_error(fleetci(*argv, env=clean_env(**env)))
    assert expected in line, line


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["bench", "build", "--heartbeat-ttl", "inf"],
            "argument --heartbeat-ttl: expected a number of seconds",
        ),
        (["bench", "build", "--workers", "0"], "argument --workers: expected a whole number >= 1"),
        (["bench", "fleet", "--hours", "nan"], "argument --hours"),
        (["bench", "fleet", "--poll", "0"], "argument --poll"),
        (["bench", "cache", "--churn-every", "-1"], "argument --churn-every"),
        (["bench", "install", "--lock-hold", "inf"], "argument --lock-hold"),
        (["bench", "install", "--faulty-first", "-1"], "argument --faulty-first"),
        (["bench", "registry", "--chunk-mb", "nan"], "argument --chunk-mb"),
        (["demo", "--time-scale", "inf"], "argument --time-scale"),
        (["demo", "--runners", "1.5"], "argument --runners"),
        (["cache", "start", "--timeout", "nan"], "argument --timeout"),
        (["cache", "verify", "--min-peers", "-1"], "argument --min-peers"),
        (["registry", "daemon", "--interval", "inf", "--once"], "argument --interval"),
        (["build", "submit", "x", "--timeout", "-1"], "argument --timeout"),
        (["build", "tree", "x", "--partitions", "0"], "argument --partitions"),
        (["build", "status", "--build", "nan"], "argument --build"),
        (["build", "log", "0"], "argument job"),
    ],
)
def test_numeric_flags_are_refused_while_parsing(argv: list[str], expected: str) -> None:
    """Parsed only, never run: a flag that slipped through must not start a benchmark or a server."""
    with pytest.raises(UsageError) as error:
        build_parser().parse_args(argv)
    assert expected in str(error.value) and error.value.exit_code == 2, error.value


NOT_FINITE = ("nan", "NaN", "inf", "-inf", "Infinity", "1e400")


NEGATIVE = ("-1", "-0.5", "-100")


NOT_A_NUMBER = ("abc", "1,5", "true")


FRACTION = ("1.5",)


ZERO = ("0",)


HUGE_PORT = ("65536", "100000")


# builder name -> (builder, section) ; a numeric setting -> (field, config key, env var, refused values)
NUMERIC: list[tuple[str, str, str, str, tuple[str, ...]]] = [
    ("cache", "proxy_port", "proxy_port", "CACHE_PROXY_PORT", NOT_FINITE + NEGATIVE + HUGE_PORT + FRACTION),
    ("cache", "listen_port", "listen_port", "CACHE_LISTEN_PORT", NOT_FINITE + NEGATIVE + HUGE_PORT),
    ("service", "port", "service_port", "CACHE_SERVICE_PORT", NOT_FINITE + NEGATIVE + HUGE_PORT + FRACTION),
    ("cache", "default_ttl", "default_ttl", "CACHE_DEFAULT_TTL", NOT_FINITE + NEGATIVE + NOT_A_NUMBER),
    (
        "cache",
        "graphql_default_ttl",
        "graphql_default_ttl",
        "CACHE_GRAPHQL_DEFAULT_TTL",
        NOT_FINITE + NEGATIVE + NOT_A_NUMBER,
    ),
    ("cache", "max_entries", "max_entries", "CACHE_MAX_ENTRIES", NOT_FINITE + NEGATIVE + ZERO + FRACTION),
    ("cache", "max_bytes", "max_bytes", "CACHE_MAX_BYTES", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "memory_bytes", "memory_bytes", "CACHE_MEMORY_BYTES", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "max_concurrency", "max_concurrency", "CACHE_MAX_CONCURRENCY", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "max_stale", "max_stale", "CACHE_MAX_STALE", NOT_FINITE + NEGATIVE),
    ("cache", "upstream_timeout", "upstream_timeout", "CACHE_UPSTREAM_TIMEOUT", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "peer_timeout", "peer_timeout", "CACHE_PEER_TIMEOUT", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "claim_window", "claim_window_ms", "CACHE_CLAIM_WINDOW_MS", NOT_FINITE + NEGATIVE),
    ("cache", "claim_wait", "claim_wait", "CACHE_CLAIM_WAIT", NOT_FINITE + NEGATIVE),
    ("cache", "max_body_bytes", "max_body_bytes", "CACHE_MAX_BODY_BYTES", NOT_FINITE + NEGATIVE + ZERO),
    ("cache", "webhook_port", "webhook_port", "CACHE_WEBHOOK_PORT", NOT_FINITE + NEGATIVE + HUGE_PORT),
    (
        "cache",
        "webhook_reconcile_interval",
        "webhook_reconcile_interval",
        "CACHE_WEBHOOK_RECONCILE_INTERVAL",
        NOT_FINITE + NEGATIVE,
    ),
    ("cache", "prewarm_lead", "prewarm_lead", "CACHE_PREWARM_LEAD", NOT_FINITE + NEGATIVE),
    (
        "cache",
        "prewarm_reserve",
        "prewarm_reserve",
        "CACHE_PREWARM_RESERVE",
        NOT_FINITE + NEGATIVE + FRACTION,
    ),
    (
        "cache",
        "shared_push_bytes",
        "shared_push_bytes",
        "CACHE_SHARED_PUSH_BYTES",
        NOT_FINITE + NEGATIVE + FRACTION + ("1048577",),
    ),
    ("install", "lock_timeout", "lock_timeout", "INSTALL_LOCK_TIMEOUT", NOT_FINITE + NEGATIVE),
    ("install", "retries", "retries", "INSTALL_RETRIES", NOT_FINITE + NEGATIVE + FRACTION),
    ("install", "backoff", "backoff", "INSTALL_BACKOFF", NOT_FINITE + NEGATIVE),
    ("install", "backoff_max", "backoff_max", "INSTALL_BACKOFF_MAX", NOT_FINITE + NEGATIVE),
    ("install", "pip_timeout", "pip_timeout", "INSTALL_PIP_TIMEOUT", NOT_FINITE + NEGATIVE + ZERO),
    ("install", "progress_every", "progress_every", "INSTALL_PROGRESS_INTERVAL", NOT_FINITE + NEGATIVE),
    ("registry", "limit", "limit", "GH_SYNC_LIMIT", NOT_FINITE + NEGATIVE + ZERO),
    ("registry", "chunk_size", "chunk_mb", "REGISTRY_CHUNK_MB", NOT_FINITE + NEGATIVE + ZERO + FRACTION),
    ("registry", "timeout", "timeout", "REGISTRY_TIMEOUT", NOT_FINITE + NEGATIVE + ZERO),
    ("registry", "parallel", "parallel", "REGISTRY_PARALLEL", NOT_FINITE + NEGATIVE + ZERO + FRACTION),
    (
        "registry",
        "compression_level",
        "compression_level",
        "REGISTRY_COMPRESSION_LEVEL",
        NOT_FINITE + NEGATIVE + FRACTION,
    ),
    ("master", "port", "port", "FLEETCI_BUILD_PORT", NOT_FINITE + NEGATIVE + HUGE_PORT),
    ("master", "heartbeat_ttl", "heartbeat_ttl", "FLEETCI_BUILD_HEARTBEAT_TTL", NOT_FINITE + NEGATIVE + ZERO),
    ("master", "max_upload_bytes", "max_upload_bytes", "FLEETCI_BUILD_MAX_UPLOAD", NOT_FINITE + ZERO),
    ("master", "max_attempts", "max_attempts", "FLEETCI_BUILD_MAX_ATTEMPTS", NOT_FINITE + NEGATIVE + ZERO),
    ("master", "max_body_bytes", "max_body_bytes", "FLEETCI_BUILD_MAX_BODY", NOT_FINITE + NEGATIVE + ZERO),
    ("worker", "idle_timeout", "idle_timeout", "FLEETCI_BUILD_IDLE_TIMEOUT", NOT_FINITE + NEGATIVE),
    ("worker", "max_jobs", "max_jobs", "FLEETCI_BUILD_MAX_JOBS", NOT_FINITE + NEGATIVE + FRACTION),
    ("autoscale", "poll_interval", "poll_interval", "AUTOSCALE_POLL_INTERVAL", NOT_FINITE + NEGATIVE + ZERO),
    (
        "autoscale",
        "scale_down_delay",
        "scale_down_delay",
        "AUTOSCALE_SCALE_DOWN_DELAY",
        NOT_FINITE + NEGATIVE,
    ),
    (
        "autoscale",
        "budget_reserve",
        "budget_reserve",
        "AUTOSCALE_BUDGET_RESERVE",
        NOT_FINITE + NEGATIVE + FRACTION,
    ),
    (
        "autoscale",
        "scale_cmd_timeout",
        "scale_cmd_timeout",
        "AUTOSCALE_SCALE_CMD_TIMEOUT",
        NOT_FINITE + NEGATIVE + ZERO,
    ),
]


def _autoscale(flags: Mapping[str, Any], config: Mapping[str, Any], env: Mapping[str, str]) -> Any:
    """The owner is required by the CLI; the range checks do not need one."""
    return autoscale_settings(flags, config, env, need_owner=False)


BUILDERS: dict[str, tuple[Builder, str, type]] = {
    "cache": (cache_settings, "cache", CacheSettings),
    "service": (service_settings, "cache", ServiceSettings),
    "install": (install_settings, "install", InstallSettings),
    "registry": (registry_settings, "registry", RegistrySettings),
    "master": (master_settings, "build", MasterSettings),
    "worker": (_worker, "build", WorkerSettings),
    "autoscale": (_autoscale, "autoscale", AutoscaleSettings),
}


def test_every_numeric_field_of_every_capability_is_checked_here() -> None:
    """A new int/float setting without an entry in NUMERIC fails here, so it cannot skip validation."""
    listed = {(builder, name) for builder, name, *_ in NUMERIC}
    for builder, (_, _, cls) in {**BUILDERS, "client": (_client, "build", ClientSettings)}.items():
        for f in fields(cls):
            if str(f.type) in ("int", "float"):
                assert (builder, f.name) in listed, f"{cls.__name__}.{f.name} has no range test"


@pytest.mark.parametrize(
    ("builder", "name", "key", "var", "bad"), NUMERIC, ids=[f"{b}.{n}" for b, n, *_ in NUMERIC]
)
def test_numeric_settings_refuse_non_finite_and_out_of_range_values(
    builder: str, name: str, key: str, var: str, bad: tuple[str, ...]
) -> None:
    build, section, _ = BUILDERS[builder]
    build({}, {}, {})  # the default is valid
    for value in bad:
        with pytest.raises(UsageError) as env_error:
            build({}, {}, {var: value})
        message = str(env_error.value)
        assert f"invalid value for ${var}: expected " in message and "\n" not in message, message
        with pytest.raises(UsageError) as config_error:
            build({}, {section: {key: yaml.safe_load(value) if value != "1e400" else value}}, {})
        assert f"invalid value for config key '{section}.{key}'" in str(config_error.value)
        # named as the user types the flag (``--port`` for proxy_port)
        options = {
            re.escape(s.option)
            for table in load_tables().tables
            if table.section == section
            for s in table.settings
            if s.name == key
        } or {re.escape(f"--{key.replace('_', '-')}")}
        with pytest.raises(UsageError, match=f"invalid value for ({'|'.join(options)}): "):
            build({key: value}, {}, {})


@pytest.mark.parametrize(
    ("builder", "var", "text", "expected"),
    [
        ("cache", "CACHE_DEFAULT_TTL", "0", ("default_ttl", 0.0)),
        ("cache", "CACHE_DEFAULT_TTL", " 1e3 ", ("default_ttl", 1000.0)),
        ("cache", "CACHE_PROXY_PORT", "0", ("proxy_port", 0)),
        ("cache", "CACHE_MAX_STALE", "0", ("max_stale", 0)),
        ("cache", "CACHE_CLAIM_WINDOW_MS", "0", ("claim_window", 0.0)),
        ("install", "INSTALL_RETRIES", "0", ("retries", 0)),
        ("install", "INSTALL_LOCK_TIMEOUT", "0", ("lock_timeout", 0.0)),
        ("registry", "REGISTRY_TIMEOUT", "0.5", ("timeout", 0.5)),
        ("master", "FLEETCI_BUILD_PORT", "65535", ("port", 65535)),
        ("worker", "FLEETCI_BUILD_MAX_JOBS", "0", ("max_jobs", 0)),
    ],
)
def test_boundary_values_that_mean_something_are_accepted(
    builder: str, var: str, text: str, expected: tuple[str, object]
) -> None:
    build, _, _ = BUILDERS[builder]
    assert getattr(build({}, {}, {var: text}), expected[0]) == expected[1]


float_texts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers().map(str),
    st.sampled_from(["nan", "-nan", "+inf", "Infinity", "1e999", "-0", "0x10", "1_000", " 7 ", "", "1e-400"]),
    st.text(alphabet="0123456789.-+eEinfa_ ", max_size=12),
)


@given(float_texts)
def test_seconds_parser_accepts_exactly_the_finite_values_in_range(text: str) -> None:
    try:
        value = parse_seconds(text)
    except ValueError as exc:
        assert "\n" not in str(exc) and repr(text) in str(exc)
        try:
            plain = float(text)
        except ValueError:
            return
        assert not (math.isfinite(plain) and 0 <= plain <= MAX_SECONDS)
        return
    assert math.isfinite(value) and 0 <= value <= MAX_SECONDS and value == float(text)


@given(float_texts)
def test_timeout_settings_are_finite_and_positive_or_a_usage_error(text: str) -> None:
    try:
        settings = cache_settings({}, {}, {"CACHE_UPSTREAM_TIMEOUT": text, "CACHE_DEFAULT_TTL": text})
    except UsageError as exc:
        assert "\n" not in str(exc) and "$CACHE_" in str(exc)
        return
    if text.strip():
        assert math.isfinite(settings.upstream_timeout) and settings.upstream_timeout > 0
        assert math.isfinite(settings.default_ttl) and settings.default_ttl >= 0


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_port_parser_accepts_exactly_0_to_65535(port: int) -> None:
    try:
        assert parse_port(str(port)) == port and 0 <= port <= 65535
    except ValueError:
        assert not 0 <= port <= 65535


def test_number_factory_messages_name_the_rule() -> None:
    with pytest.raises(ValueError, match=r"expected a number of seconds > 0 and <= 315360000, got '0'"):
        parse_timeout("0")
    with pytest.raises(ValueError, match=r"got 'nan' \(not a finite number\)"):
        number(float)("nan")
    with pytest.raises(ValueError, match=r"expected a whole number between 1 and 3, got '4'"):
        number(int, min=1, max=3)("4")
    with pytest.raises(ValueError, match=r"<= 9223372036854775807"):
        number(int, min=0)(str(2**63))
    assert number(float, max=1, max_inclusive=False)("0.5") == 0.5
    with pytest.raises(ValueError, match="< 1"):
        number(float, max=1, max_inclusive=False)("1")


def all_builders(project: Path) -> list[tuple[str, Builder]]:
    return [
        ("cache", cache_settings),
        ("install", install_settings),
        ("multiarch", _multiarch(project)),
        ("registry", registry_settings),
        ("build", master_settings),
        ("build", _worker),
        ("build", _client),
    ]


@pytest.mark.parametrize("value", [["a", "b"], "text", 5, True, [], ""])
def test_a_section_that_is_not_a_mapping_is_one_line(value: object, tmp_path: Path) -> None:
    for section, build in all_builders(tmp_path):
        with pytest.raises(UsageError) as error:
            build({}, {section: value}, {})
        assert str(error.value).startswith(f"config section {section!r} must be a mapping (key: value), got ")


def test_empty_sections_are_fine(tmp_path: Path) -> None:
    for section, build in all_builders(tmp_path):
        build({}, {section: None}, {})
        build({}, {section: {}}, {})


@pytest.mark.parametrize(
    ("section", "typo", "hint"),
    [
        ("cache", "proxy_prot", "proxy_port"),
        ("cache", "defualt_ttl", "default_ttl"),
        ("install", "lock_timout", "lock_timeout"),
        ("multiarch", "backnd", "backend"),
        ("registry", "chunk_mbs", "chunk_mb"),
        ("build", "heartbeat_tll", "heartbeat_ttl"),
    ],
)
def test_unknown_keys_are_refused_with_a_did_you_mean_hint(
    section: str, typo: str, hint: str, tmp_path: Path
) -> None:
    for name, build in all_builders(tmp_path):
        if name != section:
            continue
        with pytest.raises(UsageError) as error:
            build({}, {section: {typo: 1}}, {})
        assert str(error.value) == f"unknown config key '{section}.{typo}' (did you mean {hint!r}?)"


def test_several_unknown_keys_are_all_named_and_a_far_typo_gets_no_hint() -> None:
    with pytest.raises(UsageError) as error:
        cache_settings({}, {"cache": {"proxy_prot": 1, "zzzz": 2, "default_ttl": 5}}, {})
    assert (
        str(error.value)
        == "unknown config keys 'cache.proxy_prot' (did you mean 'proxy_port'?), 'cache.zzzz'"
    )


def test_build_keys_are_shared_by_master_worker_and_client() -> None:
    """One ``build:`` section serves three commands: a worker key is not a typo for the master."""
    config = {
        "build": {"heartbeat_ttl": 5, "idle_timeout": 3, "max_jobs": 1, "token": "x", "master": "http://h"}
    }
    assert master_settings({}, config, {}).heartbeat_ttl == 5
    assert _worker({}, config, {}).idle_timeout == 3
    assert client_settings({}, config, {}).master == "http://h"  # its token comes from the config


def test_worker_idle_timeout_falls_back_to_the_actions_default_last() -> None:
    """The action leaves idle-timeout empty (so a config file applies) and hands its own default of 300 in
    a separate variable, read only when nothing else sets it; the CLI's default stays 0 (never leave),
    also inside a GitHub Actions job."""
    assert _worker({}, {}, {}).idle_timeout == 0
    assert _worker({}, {}, {"GITHUB_ACTIONS": "true"}).idle_timeout == 0
    action = {"FLEETCI_BUILD_ACTION_IDLE_TIMEOUT": "300", "FLEETCI_BUILD_IDLE_TIMEOUT": ""}
    assert _worker({}, {}, action).idle_timeout == 300
    assert _worker({}, {"build": {"idle_timeout": 7}}, action).idle_timeout == 7
    assert _worker({}, {}, {**action, "FLEETCI_BUILD_IDLE_TIMEOUT": "0"}).idle_timeout == 0
    assert _worker({"idle_timeout": "12"}, {"build": {"idle_timeout": 7}}, action).idle_timeout == 12
    with pytest.raises(UsageError, match=r"\$FLEETCI_BUILD_ACTION_IDLE_TIMEOUT"):
        _worker({}, {}, {"FLEETCI_BUILD_ACTION_IDLE_TIMEOUT": "soon"})


def test_free_form_and_nested_values_use_the_same_path() -> None:
    rules = {"cache": {"ttl": [{"pattern": "^/x", "seconds": 5, "name": "x"}]}}
    assert cache_settings({}, rules, {}).ttl_rules[0].seconds == 5  # 'ttl' is a known key
    for item, expected in [
        ({"pattern": "x", "seconds": float("nan")}, "invalid value for config key 'cache.ttl[0].seconds'"),
        ({"pattern": "x", "seconds": float("inf")}, "not a finite number"),
        ({"pattern": "x", "seconds": -1}, "got '-1'"),
        ({"pattern": "(", "seconds": 1}, "invalid value for config key 'cache.ttl[0].pattern'"),
        (
            {"pattern": "x", "seconds": 1, "nmae": "n"},
            "unknown config key 'cache.ttl[0].nmae' (did you mean 'name'?)",
        ),
        ({"pattern": "x"}, "config key 'cache.ttl[0]' needs 'pattern' and 'seconds'"),
        ("x", "config key 'cache.ttl[0]' needs 'pattern' and 'seconds'"),
    ]:
        with pytest.raises(UsageError) as error:
            parse_ttl_rules([item])
        assert expected in str(error.value), error.value
    with pytest.raises(UsageError, match="must be a list"):
        parse_ttl_rules({"pattern": "x"})
    with pytest.raises(UsageError, match=r"config key 'cache.default_ttl': expected a value or a list"):
        cache_settings({}, {"cache": {"default_ttl": {"seconds": 5}}}, {})


def test_resolver_remembers_every_name_asked_for() -> None:
    r = Resolver({}, {"a": 1, "b": 2, "c": [1]}, {}, name="demo")
    assert r.get("a", 0, int) == 1
    assert r.raw("c") == [1]
    with pytest.raises(UsageError, match=r"^unknown config key 'demo.b'$"):
        r.check_unknown()
    r.check_unknown(known=("b",))
