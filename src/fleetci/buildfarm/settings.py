"""Settings for ``fleetci build …`` (flag > environment > ``build:`` config section > default).

Each setting is described once, in :class:`MasterOptions`, :class:`WorkerOptions` or :class:`ClientOptions`;
the command's flags, the lookups below, the unknown-key check and the docs table all come from them. The
three share one config section, so a key of any of them is known to all three.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.config import (
    Resolver,
    Setting,
    SettingTable,
    default_cache_dir,
    parse_count,
    parse_port,
    parse_positive_int,
    parse_seconds,
    parse_timeout,
)
from fleetci.errors import UsageError

DEFAULT_PORT = 9300
DEFAULT_TTL = 60.0
# The distributed-build action's fallback for idle_timeout (its job must not hold the runner forever): read
# only when no flag, environment variable or config key sets it, so the precedence rule still holds.
ACTION_IDLE_ENV = "FLEETCI_BUILD_ACTION_IDLE_TIMEOUT"
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024
# JSON request bodies (a submission carries its sources base64-encoded; uploads have their own cap).
DEFAULT_MAX_BODY = 64 * 1024 * 1024


def _url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return url


# Shared by two tables (the same key, environment name and meaning in both).
MASTER_URL = Setting("", _url, env=("FLEETCI_BUILD_MASTER",), help="master URL")
# Secrets come from the environment or the config file only (flags show up in `ps`).
JOIN_TOKEN = Setting(
    "",
    str,
    env=("FLEETCI_BUILD_JOIN_TOKEN",),
    flag=False,
    help="the token workers register with (a master without one writes join.token)",
)


class MasterOptions(SettingTable):
    """``fleetci build master``."""

    section = "build"
    host = Setting("127.0.0.1", str, env=("FLEETCI_BUILD_HOST",), help="bind address")
    port = Setting(DEFAULT_PORT, parse_port, env=("FLEETCI_BUILD_PORT",), help="TCP port, 0 = any")
    state_dir = Setting(
        "",
        str,
        env=("FLEETCI_BUILD_STATE_DIR",),
        help="database, keys, tokens, repository",
        doc_default="~/.cache/fleetci/build-master",
    )
    admin_token = Setting(
        "",
        str,
        env=("FLEETCI_BUILD_TOKEN",),
        flag=False,
        help="the admin token (unset: the master writes admin.token)",
    )
    join_token = JOIN_TOKEN
    heartbeat_ttl = Setting(
        DEFAULT_TTL,
        parse_timeout,
        env=("FLEETCI_BUILD_HEARTBEAT_TTL",),
        help="seconds without heartbeat before a worker is lost",
    )
    max_upload_bytes = Setting(
        DEFAULT_MAX_UPLOAD,
        parse_positive_int,
        env=("FLEETCI_BUILD_MAX_UPLOAD",),
        help="artifact size limit in bytes",
        doc_default="512 MiB",
    )
    max_attempts = Setting(
        3,
        parse_positive_int,
        env=("FLEETCI_BUILD_MAX_ATTEMPTS",),
        help="times a job is retried after its worker is lost",
    )
    max_body_bytes = Setting(
        DEFAULT_MAX_BODY,
        parse_positive_int,
        env=("FLEETCI_BUILD_MAX_BODY",),
        flag=False,
        help="size limit of a JSON request body in bytes (a submission carries its sources)",
        doc_default="64 MiB",
    )


class WorkerOptions(SettingTable):
    """``fleetci build worker``."""

    section = "build"
    master = MASTER_URL
    join_token = JOIN_TOKEN
    name = Setting(
        "",
        str,
        env=("FLEETCI_BUILD_WORKER_NAME",),
        help="worker name shown in status",
        doc_default="host name",
    )
    work_dir = Setting(
        "",
        str,
        env=("FLEETCI_BUILD_WORK_DIR",),
        help="key and build directories",
        doc_default="~/.cache/fleetci/build-worker",
    )
    # None: not set anywhere; the worker then uses the action's fallback, else 0 (see ACTION_IDLE_ENV).
    idle_timeout: Setting[float | None] = Setting(
        None,
        parse_seconds,
        env=("FLEETCI_BUILD_IDLE_TIMEOUT",),
        help="leave after this many idle seconds (0 = never)",
        doc_default="0; the distributed-build action: 300",
    )
    max_jobs = Setting(
        0, parse_count, env=("FLEETCI_BUILD_MAX_JOBS",), help="leave after this many jobs (0 = no limit)"
    )


class ClientOptions(SettingTable):
    """``fleetci build submit|status|remove|verify|log``."""

    section = "build"
    master = MASTER_URL
    token = Setting("", str, env=("FLEETCI_BUILD_TOKEN",), flag=False, help="the master's admin token")


TABLES = (MasterOptions, WorkerOptions, ClientOptions)


@dataclass(frozen=True)
class MasterSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    state_dir: Path = Path(".")
    admin_token: str | None = None
    join_token: str | None = None
    heartbeat_ttl: float = DEFAULT_TTL
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    max_attempts: int = 3
    max_body_bytes: int = DEFAULT_MAX_BODY


@dataclass(frozen=True)
class WorkerSettings:
    master: str
    join_token: str
    name: str
    work_dir: Path
    idle_timeout: float = 0.0
    max_jobs: int = 0


@dataclass(frozen=True)
class ClientSettings:
    master: str
    token: str | None


def _check_unknown(r: Resolver) -> None:
    """Master, worker and client share the ``build:`` section: a key of any of them is known to all."""
    r.check_unknown(s.name for table in TABLES for s in table.settings)


def default_state_dir() -> Path:
    return default_cache_dir() / "build-master"


def _path(text: str, default: Path) -> Path:
    return Path(text or default).expanduser()


def master_settings(
    flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
) -> MasterSettings:
    o = MasterOptions
    r = o.resolver(flags, config, env)
    settings = MasterSettings(
        host=r.value(o.host),
        port=r.value(o.port),
        state_dir=_path(r.value(o.state_dir), default_state_dir()),
        admin_token=r.value(o.admin_token) or None,
        join_token=r.value(o.join_token) or None,
        heartbeat_ttl=r.value(o.heartbeat_ttl),
        max_upload_bytes=r.value(o.max_upload_bytes),
        max_attempts=r.value(o.max_attempts),
        max_body_bytes=r.value(o.max_body_bytes),
    )
    _check_unknown(r)
    return settings


def _master(r: Resolver) -> str:
    url = r.value(MASTER_URL)
    if not url:
        raise UsageError("no master URL: pass --master or set $FLEETCI_BUILD_MASTER")
    return url


def _idle_timeout(value: float | None, env: Mapping[str, str]) -> float:
    if value is not None:
        return value
    fallback = env.get(ACTION_IDLE_ENV)
    if not fallback:
        return 0.0
    try:
        return parse_seconds(fallback)
    except ValueError as exc:
        raise UsageError(f"invalid value for ${ACTION_IDLE_ENV}: {exc}") from None


def worker_settings(
    flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
) -> WorkerSettings:
    o = WorkerOptions
    r = o.resolver(flags, config, env)
    master = _master(r)
    token = r.value(o.join_token)
    if not token:
        raise UsageError("no join token: set $FLEETCI_BUILD_JOIN_TOKEN (the master writes it to join.token)")
    settings = WorkerSettings(
        master=master,
        join_token=token,
        name=r.value(o.name) or socket.gethostname(),
        work_dir=_path(r.value(o.work_dir), default_cache_dir() / "build-worker"),
        idle_timeout=_idle_timeout(r.value(o.idle_timeout), r.env),
        max_jobs=r.value(o.max_jobs),
    )
    _check_unknown(r)
    return settings


def client_settings(
    flags: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    env: Mapping[str, str] | None = None,
    need_token: bool = True,
) -> ClientSettings:
    r = ClientOptions.resolver(flags, config, env)
    master = _master(r)
    token = r.value(ClientOptions.token) or None
    if need_token and not token:
        raise UsageError("no admin token: set $FLEETCI_BUILD_TOKEN (the master writes it to admin.token)")
    _check_unknown(r)
    return ClientSettings(master=master, token=token)
