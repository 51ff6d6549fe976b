"""Settings for ``fleetci build …`` (flag > environment > ``build:`` config section > default)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fleetci.config import (
    Resolver,
    default_cache_dir,
    parse_count,
    parse_port,
    parse_positive_int,
    parse_seconds,
    parse_timeout,
    section,
)
from fleetci.errors import UsageError

DEFAULT_PORT = 9300
DEFAULT_TTL = 60.0
DEFAULT_MAX_UPLOAD = 512 * 1024 * 1024
# JSON request bodies (a submission carries its sources base64-encoded; uploads have their own cap).
DEFAULT_MAX_BODY = 64 * 1024 * 1024


def _url(text: str) -> str:
    url = text.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return url


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


def _resolver(
    flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str] | None
) -> Resolver:
    return Resolver(flags, section(config, "build"), env, name="build")


def _check_unknown(r: Resolver) -> None:
    """Master, worker and client share the ``build:`` section: a key of any of them is known to all."""
    r.check_unknown(f.name for cls in (MasterSettings, WorkerSettings, ClientSettings) for f in fields(cls))


def default_state_dir() -> Path:
    return default_cache_dir() / "build-master"


def master_settings(
    flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
) -> MasterSettings:
    r = _resolver(flags, config, env)
    settings = MasterSettings(
        host=r.get("host", "127.0.0.1", str, env=("FLEETCI_BUILD_HOST",)),
        port=r.get("port", DEFAULT_PORT, parse_port, env=("FLEETCI_BUILD_PORT",)),
        state_dir=Path(
            r.get("state_dir", str(default_state_dir()), str, env=("FLEETCI_BUILD_STATE_DIR",))
        ).expanduser(),
        # Secrets come from the environment only (flags show up in `ps`).
        admin_token=r.get("admin_token", None, str, env=("FLEETCI_BUILD_TOKEN",)),
        join_token=r.get("join_token", None, str, env=("FLEETCI_BUILD_JOIN_TOKEN",)),
        heartbeat_ttl=r.get(
            "heartbeat_ttl", DEFAULT_TTL, parse_timeout, env=("FLEETCI_BUILD_HEARTBEAT_TTL",)
        ),
        max_upload_bytes=r.get(
            "max_upload_bytes", DEFAULT_MAX_UPLOAD, parse_positive_int, env=("FLEETCI_BUILD_MAX_UPLOAD",)
        ),
        max_attempts=r.get("max_attempts", 3, parse_positive_int, env=("FLEETCI_BUILD_MAX_ATTEMPTS",)),
        max_body_bytes=r.get(
            "max_body_bytes", DEFAULT_MAX_BODY, parse_positive_int, env=("FLEETCI_BUILD_MAX_BODY",)
        ),
    )
    _check_unknown(r)
    return settings


def _master(r: Resolver) -> str:
    url = r.get("master", "", _url, env=("FLEETCI_BUILD_MASTER",))
    if not url:
        raise UsageError("no master URL: pass --master or set $FLEETCI_BUILD_MASTER")
    return url


def worker_settings(
    flags: Mapping[str, Any], config: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
) -> WorkerSettings:
    import socket

    r = _resolver(flags, config, env)
    master = _master(r)
    token = r.get("join_token", "", str, env=("FLEETCI_BUILD_JOIN_TOKEN",))
    if not token:
        raise UsageError("no join token: set $FLEETCI_BUILD_JOIN_TOKEN (the master writes it to join.token)")
    settings = WorkerSettings(
        master=master,
        join_token=token,
        name=r.get("name", socket.gethostname(), str, env=("FLEETCI_BUILD_WORKER_NAME",)),
        work_dir=Path(
            r.get("work_dir", str(default_cache_dir() / "build-worker"), str, env=("FLEETCI_BUILD_WORK_DIR",))
        ).expanduser(),
        idle_timeout=r.get("idle_timeout", 0.0, parse_seconds, env=("FLEETCI_BUILD_IDLE_TIMEOUT",)),
        max_jobs=r.get("max_jobs", 0, parse_count, env=("FLEETCI_BUILD_MAX_JOBS",)),
    )
    _check_unknown(r)
    return settings


def client_settings(
    flags: Mapping[str, Any],
    config: Mapping[str, Any] | None,
    env: Mapping[str, str] | None = None,
    need_token: bool = True,
) -> ClientSettings:
    r = _resolver(flags, config, env)
    master = _master(r)
    token = r.get("token", "", str, env=("FLEETCI_BUILD_TOKEN",)) or None
    if need_token and not token:
        raise UsageError("no admin token: set $FLEETCI_BUILD_TOKEN (the master writes it to admin.token)")
    _check_unknown(r)
    return ClientSettings(master=master, token=token)
