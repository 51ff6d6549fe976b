"""Jobs reuse the host's proxy (issue 16): one proxy (and one peer) per host, not one per job.

``fleetci cache start`` asks :func:`find_host_proxy` first. A healthy host proxy (the host service's
well-known socket, or ``CACHE_HOST_PROXY``/``FLEETCI_HOST_PROXY`` naming a URL or a socket) that fronts
the same upstream is used as is: the job gets the same exports and outputs as with a proxy of its own,
and a marker in its cache directory tells ``fleetci cache stop`` to leave the shared proxy running.
Sharing is safe because entries are partitioned by credential (``fleetci.cache.policy.scope_of``): a job
only ever reads what its own token fetched, or a fresh 304-validated copy under that token.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from fleetci.cache.api import HEALTH_PATH
from fleetci.cache.settings import WELL_KNOWN_SOCKET, CacheSettings
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, write_private
from fleetci.http import client, describe, redact_url

MARKER = "host-proxy"  # in the job's cache dir: the proxy this job used belongs to the host
PROBE_TIMEOUT_S = 2.0
MAX_HEALTH_BYTES = 64 * 1024


@dataclass(frozen=True)
class HostProxy:
    """A running host proxy as this job reaches it."""

    api_url: str  # for REST clients (FLEETCI_API_URL): the proxy's loopback TCP port
    socket: Path | None  # its unix socket when this job may use it (gh's http_unix_socket, stats)
    pid: int
    peer_id: str
    p2p: str


def _health(url: str, uds: Path | None) -> dict[str, object]:
    """One GET of the health endpoint (no retries: a host proxy that does not answer now is not used)."""
    try:
        with client(uds=uds, timeout=PROBE_TIMEOUT_S) as http:
            r = http.get(url + HEALTH_PATH)
    except Exception as exc:  # httpx errors, a socket we may not open: all mean "not usable"
        raise FleetciError(describe(exc)) from None
    if r.status_code != 200:
        raise FleetciError(f"HTTP {r.status_code}")
    if len(r.content) > MAX_HEALTH_BYTES:  # whatever listens there, it is not a fleetci proxy
        raise FleetciError(f"its health answer is over {MAX_HEALTH_BYTES} bytes")
    try:
        data = r.json()
    except ValueError:
        raise FleetciError("its health answer is not JSON") from None
    # "degraded": its shared store (CACHE_BACKEND) is down, and it still serves from its own tiers
    if not isinstance(data, dict) or data.get("status") not in ("ok", "degraded"):
        raise FleetciError("its health answer is not a fleetci proxy's")
    return data


def _usable_socket(path: object) -> Path | None:
    if not isinstance(path, str) or not path:
        return None
    sock = Path(path)
    with contextlib.suppress(OSError):
        if sock.is_socket():
            with client(uds=sock, timeout=PROBE_TIMEOUT_S) as http:
                if http.get("http://localhost" + HEALTH_PATH).status_code == 200:
                    return sock
    return None


def _planted(sock: Path) -> str:
    """Why a socket found by itself may have been put there by anyone ("" when it may not): jobs send it
    their tokens, so a directory every user can write to (and so plant a socket in) is not trusted."""
    try:
        mode = sock.parent.stat().st_mode
    except OSError as exc:
        return describe(exc)
    return f"{sock.parent} is writable by every user" if mode & 0o002 else ""


def find_host_proxy(settings: CacheSettings) -> tuple[HostProxy | None, str]:
    """The host proxy this job should use, or None and why not ("" when there is none to speak of).

    Named explicitly (a URL or a socket), a host proxy that does not answer or fronts another upstream
    is an error; found at the well-known socket, it is only a note and the job starts its own proxy.
    """
    choice = settings.host_proxy
    if choice == "off":
        return None, ""
    explicit = choice != ""
    where = choice or WELL_KNOWN_SOCKET
    if not explicit and not Path(WELL_KNOWN_SOCKET).is_socket():
        return None, ""
    if not explicit and (why := _planted(Path(WELL_KNOWN_SOCKET))):
        return (
            None,
            f"host proxy socket {WELL_KNOWN_SOCKET} is not trusted ({why}); starting a proxy for this job",
        )
    is_url = where.startswith(("http://", "https://"))
    uds = None if is_url else Path(where)
    try:
        health = _health(where if is_url else "http://localhost", uds)
        theirs, ours = health.get("upstream"), redact_url(settings.upstream)
        if theirs != ours:
            raise FleetciError(f"it caches {theirs}, this job wants {ours}")
    except FleetciError as exc:
        reason = f"host proxy {redact_url(where)} is not usable ({exc})"
        if explicit:
            raise FleetciError(f"{reason}; CACHE_HOST_PROXY=off starts a proxy for this job") from None
        return None, f"{reason}; starting a proxy for this job"
    api_url = where if is_url else str(health.get("proxy_url") or "")
    socket = uds if uds is not None else _usable_socket(health.get("socket"))
    pid = health.get("pid")
    return (
        HostProxy(
            api_url=api_url,
            socket=socket,
            pid=pid if isinstance(pid, int) else 0,
            peer_id=str(health.get("peer_id") or ""),
            p2p=str(health.get("p2p") or "off"),
        ),
        "",
    )


def remember(settings: CacheSettings, host: HostProxy) -> None:
    """Mark the job's cache dir: ``fleetci cache stop`` then leaves the host proxy running."""
    ensure_private_dir(settings.cache_dir)
    write_private(settings.cache_dir / MARKER, host.api_url)


def forget(settings: CacheSettings) -> None:
    """The job started a proxy of its own: a marker an earlier job left no longer applies."""
    (settings.cache_dir / MARKER).unlink(missing_ok=True)


def release(settings: CacheSettings) -> str | None:
    """The host proxy this job used (its URL), forgotten; None when the job used no host proxy."""
    marker = settings.cache_dir / MARKER
    if settings.pid_path.exists():
        return None
    try:
        url = marker.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    marker.unlink(missing_ok=True)
    return url or "(unknown)"
