"""Jobs reuse the host's proxy (issue 16): one proxy (and one peer) per host, not one per job.

``fleetci cache start`` asks :func:`find_host_proxy` first. A healthy host proxy (the host service's
well-known socket, or ``CACHE_HOST_PROXY``/``FLEETCI_HOST_PROXY`` naming a URL or a socket) that fronts
the same upstream is used as is: the job gets the same exports and outputs as with a proxy of its own,
and a marker in its cache directory tells ``fleetci cache stop`` to leave the shared proxy running.
Sharing is safe because entries are partitioned by credential (``fleetci.cache.policy.scope_of``): a job
only ever reads what its own token fetched, or a fresh 304-validated copy under that token. A proxy that
declares tokens equivalent (``CACHE_SHARED_SCOPE``) breaks that promise, so it is never reused.

Trust: the unix socket's permissions (the service's group) say who the host proxy is; REST clients get
its loopback TCP port, which any local user could bind while the service restarts. So the job checks
that the TCP port answers with the same per-process ``instance`` as the socket before it exports it.
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from fleetci import gha
from fleetci.cache.api import HEALTH_PATH, Health
from fleetci.cache.settings import WELL_KNOWN_SOCKET, CacheSettings
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, write_private
from fleetci.http import describe, get_health, redact_url

MARKER = "host-proxy"  # in the job's cache dir: the proxy this job used belongs to the host
JOB_ENV = "FLEETCI_CACHE_JOB"  # exported by start for stop: which marker is this job's
PROBE_TIMEOUT_S = 2.0


PROXY_STATES = ("ok", "degraded")  # "degraded": its shared store (CACHE_BACKEND) is down; it still serves


def proxy_health(url: str = "http://localhost", uds: Path | None = None, timeout: float = 2.0) -> Health:
    """The health of the fleetci proxy at ``url`` (or on the unix socket ``uds``): one probe, no retries.

    A proxy whose shared store is down reports ``degraded`` and still serves, so it counts; what answers
    is recognised as a fleetci proxy by its fields (status, pid, upstream, a per-process instance id),
    anything else is a one-line :class:`FleetciError`.
    """
    data = get_health(url if url.endswith(HEALTH_PATH) else url.rstrip("/") + HEALTH_PATH, uds, timeout)
    if (
        data.get("status") not in PROXY_STATES
        or not isinstance(data.get("pid"), int)
        or not isinstance(data.get("upstream"), str)
        or not isinstance(data.get("instance"), str)
    ):
        raise FleetciError("its health answer is not a fleetci proxy's")
    return cast(Health, data)


@dataclass(frozen=True)
class HostProxy:
    """A running host proxy as this job reaches it."""

    api_url: str  # for REST clients (FLEETCI_API_URL): the proxy's loopback TCP port
    socket: Path | None  # its unix socket when this job may use it (gh's http_unix_socket, stats)
    pid: int
    peer_id: str
    p2p: str


def _socket_health(path: object) -> Health | None:
    """The health a socket the proxy named answers with, None when this job cannot reach it."""
    if not isinstance(path, str) or not path:
        return None
    sock = Path(path)
    with contextlib.suppress(OSError, FleetciError):
        if sock.is_socket():
            return proxy_health(uds=sock, timeout=PROBE_TIMEOUT_S)
    return None


def _same_process(tcp_url: str, anchor: Health) -> None:
    """The loopback TCP port jobs will send tokens to is the process the socket vouches for."""
    try:
        tcp = proxy_health(tcp_url, timeout=PROBE_TIMEOUT_S)
    except FleetciError as exc:
        raise FleetciError(f"its TCP address {redact_url(tcp_url)} does not answer as it: {exc}") from None
    if tcp.get("instance") != anchor.get("instance"):
        raise FleetciError(
            f"its TCP address {redact_url(tcp_url)} is answered by another process (not sending tokens there)"
        )


def planted(sock: Path) -> str:
    """Why a socket found by itself may have been put there by anyone ("" when it may not): jobs send it
    their tokens, so a directory every user can write to (and so plant a socket in) is not trusted."""
    try:
        mode = sock.parent.stat().st_mode
    except OSError as exc:
        return describe(exc)
    return f"{sock.parent} is writable by every user" if mode & 0o002 else ""


def find_host_proxy(settings: CacheSettings) -> tuple[HostProxy | None, str]:
    """The host proxy this job should use (or None) and a note to print ("" when there is none).

    Named explicitly (a URL or a socket), a host proxy that does not answer, fronts another upstream,
    shares entries between tokens or whose TCP port another process answers is an error; found at the
    well-known socket, it is only a note and the job starts its own proxy.
    """
    choice = settings.host_proxy
    if choice == "off":
        return None, ""
    explicit = choice != ""
    where = choice or WELL_KNOWN_SOCKET
    if not explicit and not Path(WELL_KNOWN_SOCKET).is_socket():
        return None, ""
    if not explicit and (why := planted(Path(WELL_KNOWN_SOCKET))):
        return (
            None,
            f"host proxy socket {WELL_KNOWN_SOCKET} is not trusted ({why}); starting a proxy for this job",
        )
    is_url = where.startswith(("http://", "https://"))
    notes: list[str] = []
    try:
        if is_url:
            health = proxy_health(where, timeout=PROBE_TIMEOUT_S)
            api_url = where
            anchor = _socket_health(health.get("socket"))
            socket = Path(str(health.get("socket"))) if anchor is not None else None
            if anchor is not None:  # the proxy on that socket must say this is its TCP address
                said = str(anchor.get("proxy_url") or "").rstrip("/")
                if said != where:
                    raise FleetciError(
                        f"the host proxy on its socket {health.get('socket')} says its TCP address is "
                        f"{redact_url(said)}, not {redact_url(where)}"
                    )
                _same_process(where, anchor)
            else:
                notes.append(
                    f"{redact_url(where)} could not be checked against the host proxy's socket (this job "
                    "cannot reach it): prefer CACHE_HOST_PROXY=<socket path>"
                )
        else:
            socket = Path(where)
            health = proxy_health(uds=socket, timeout=PROBE_TIMEOUT_S)
            api_url = str(health.get("proxy_url") or "")
            if not api_url.startswith("http://"):
                raise FleetciError("it did not say its TCP address")
            _same_process(api_url, health)
        theirs, ours = health.get("upstream"), redact_url(settings.upstream)
        if theirs != ours:
            raise FleetciError(f"it caches {theirs}, this job wants {ours}")
        if health.get("shared_scope"):
            raise FleetciError(
                "it shares entries between tokens (CACHE_SHARED_SCOPE): a job would read what other "
                "tokens fetched"
            )
    except FleetciError as exc:
        reason = f"host proxy {redact_url(where)} is not usable ({exc})"
        if explicit:
            raise FleetciError(f"{reason}; CACHE_HOST_PROXY=off starts a proxy for this job") from None
        return None, f"{reason}; starting a proxy for this job"
    if health.get("status") == "degraded":
        notes.append(
            f"host proxy {redact_url(where)} is degraded (its shared store {health.get('backend')} does "
            "not answer; it serves from its own cache and upstream): using it"
        )
    pid = health.get("pid")
    return (
        HostProxy(
            api_url=api_url,
            socket=socket,
            pid=pid if isinstance(pid, int) else 0,
            peer_id=str(health.get("peer_id") or ""),
            p2p=str(health.get("p2p") or "off"),
        ),
        "; ".join(notes),
    )


def _marker(settings: CacheSettings, job: str) -> Path:
    return settings.cache_dir / (f"{MARKER}-{job}" if job else MARKER)


def remember(settings: CacheSettings, host: HostProxy) -> None:
    """Mark this job's use of the host proxy, so ``fleetci cache stop`` leaves it running.

    In Actions the marker is keyed by a random token exported to the job's later steps: jobs sharing a
    cache dir (the default ~/.cache/fleetci) each release their own marker and never touch another's
    marker or another job's proxy pid file. Outside Actions there is one marker per cache dir.
    """
    ensure_private_dir(settings.cache_dir)
    job = secrets.token_hex(8)
    if not gha.set_env(JOB_ENV, job):
        job = ""
    write_private(_marker(settings, job), host.api_url)


def forget(settings: CacheSettings) -> None:
    """The job started a proxy of its own: its own marker (or the unkeyed one) no longer applies."""
    _marker(settings, settings.cache_job).unlink(missing_ok=True)
    if settings.cache_job:
        _marker(settings, "").unlink(missing_ok=True)
    gha.set_env(JOB_ENV, "")  # later steps of this job stop the proxy it started


def release(settings: CacheSettings) -> str | None:
    """The host proxy this job used (its URL), forgotten; None when the job used no host proxy."""
    if settings.cache_job:  # this job reused the host proxy: never stop a proxy recorded here
        marker = _marker(settings, settings.cache_job)
        try:
            url = marker.read_text(encoding="utf-8").strip()
        except OSError:
            raise FleetciError(
                f"no running proxy recorded for this job in {settings.cache_dir} (it used the host "
                "proxy and has released it already)"
            ) from None
        marker.unlink(missing_ok=True)
        return url or "(unknown)"
    marker = _marker(settings, "")
    if settings.pid_path.exists():
        return None
    try:
        url = marker.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    marker.unlink(missing_ok=True)
    return url or "(unknown)"
