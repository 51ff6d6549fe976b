"""The proxy as a background process of this runner: ``fleetci cache start|stop|verify``.

:func:`start` runs ``fleetci cache serve`` in its own session (logging to a 0600 file: the log may echo
request paths of private repositories), waits until it answers on its unix socket, records its pid,
routes the gh CLI through it and exports where later steps find it. :func:`stop` ends it by that pid;
:func:`verify` checks a running one end to end.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci import gha
from fleetci.cache.api import HEALTH_PATH
from fleetci.cache.client import LocalProxy
from fleetci.cache.hostproxy import HostProxy, find_host_proxy, forget, remember
from fleetci.cache.settings import CacheOptions, CacheSettings
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, private_fd, write_private
from fleetci.http import wait_healthy
from fleetci.process import alive, fleetci_argv, stop_process
from fleetci.wait import WaitTimeout, wait_until

STOP_WAIT_S = 10.0  # how long ``stop`` waits for the proxy to exit after SIGTERM (then it stops waiting)


@dataclass(frozen=True)
class Started:
    """A proxy that ``start`` left running."""

    pid: int
    api_url: str
    socket: Path
    log: Path
    peer_id: str
    p2p_off: str  # why sharing is off although it was asked for; "" when it runs or was not asked for
    shared: bool = False  # the host's proxy (issue 16): ``stop`` leaves it running
    note: str = ""  # why a host proxy that was found is not used, or what to know about the one used


def serve_argv(flags: Mapping[str, Any], config: str | None = None, probe: bool = True) -> list[str]:
    """``fleetci cache serve`` with the flags ``start`` was given (the child reads env and config itself)."""
    argv = fleetci_argv(*(["--config", config] if config else []), "cache", "serve")
    for s in CacheOptions.settings:
        value = flags.get(s.name)
        if s.flag and value is not None:
            argv += [s.option] if s.switch else [s.option, str(value)]
    if not probe:
        argv.append("--no-probe")
    return argv


def start(
    settings: CacheSettings,
    flags: Mapping[str, Any],
    config: str | None = None,
    *,
    log_file: Path | None = None,
    timeout: float = 30.0,
    probe: bool = True,
) -> Started:
    host, note = find_host_proxy(settings)  # issue 16: one proxy per host when the host runs one
    if host is not None:
        return _use_host_proxy(settings, host, note)
    try:
        ensure_private_dir(settings.cache_dir)
    except OSError as exc:
        raise FleetciError(f"cache dir {settings.cache_dir} is not usable: {exc.strerror or exc}") from exc
    log_path = log_file or settings.cache_dir / "proxy.log"
    try:
        log_fd = private_fd(log_path)
    except OSError as exc:
        raise FleetciError(f"cannot write the proxy log {log_path}: {exc.strerror or exc}") from exc
    try:
        proc = subprocess.Popen(
            serve_argv(flags, config, probe),
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # it outlives this command (and the step that ran it)
        )
    finally:
        os.close(log_fd)
    try:
        health = wait_healthy(HEALTH_PATH, uds=settings.socket_path, timeout=timeout, alive=proc)
    except FleetciError as exc:
        stop_process(proc)
        if gha.in_actions():
            with gha.group(f"fleetci proxy log ({log_path})"):
                print(log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else "")
        raise FleetciError(f"cache proxy did not start: {_last_line(log_path) or exc}") from exc
    write_private(settings.pid_path, str(proc.pid))
    forget(settings)  # a host-proxy marker an earlier job left here: stop now stops this proxy
    api_url = str(health.get("proxy_url") or settings.proxy_url)
    gh_dir = _write_gh_config(settings)
    peer_id = str(health.get("peer_id") or "")
    p2p_off = ""
    if settings.enable_p2p and health.get("p2p") != "active":
        p2p_off = _last_line(log_path, "warning: peer-to-peer") or "see the proxy log"
    # Later steps (fleetci cache stats|stop, gh, any REST client) find this proxy through these.
    gha.set_env("CACHE_DIR", str(settings.cache_dir))
    gha.set_env("FLEETCI_CACHE_SOCKET", str(settings.socket_path))
    gha.set_env("FLEETCI_API_URL", api_url)
    gha.set_env("GH_CONFIG_DIR", str(gh_dir))
    gha.set_output("api-url", api_url)
    gha.set_output("socket", str(settings.socket_path))
    gha.set_output("peer-id", peer_id)
    return Started(proc.pid, api_url, settings.socket_path, log_path, peer_id, p2p_off, note=note)


def _use_host_proxy(settings: CacheSettings, host: HostProxy, note: str = "") -> Started:
    """The job's exports and outputs, pointing at the host proxy (the same names as for its own)."""
    remember(settings, host)
    socket = host.socket
    gha.set_env("CACHE_DIR", str(settings.cache_dir))
    if socket is not None:
        gh_dir = _write_gh_config(settings, socket)
        gha.set_env("FLEETCI_CACHE_SOCKET", str(socket))
        gha.set_env("GH_CONFIG_DIR", str(gh_dir))
    gha.set_env("FLEETCI_API_URL", host.api_url)
    gha.set_output("api-url", host.api_url)
    gha.set_output("socket", str(socket or ""))
    gha.set_output("peer-id", host.peer_id)
    p2p_off = ""
    if settings.enable_p2p and host.p2p != "active":
        p2p_off = f"the host proxy runs with peer-to-peer {host.p2p}"
    where = socket or Path("")
    return Started(host.pid, host.api_url, where, Path(""), host.peer_id, p2p_off, shared=True, note=note)


def _write_gh_config(settings: CacheSettings, socket: Path | None = None) -> Path:
    """A private GH_CONFIG_DIR (0700; hosts.yml holds gh's token) routing gh through the unix socket."""
    gh_dir = ensure_private_dir(settings.cache_dir / "gh")
    write_private(gh_dir / "config.yml", f"http_unix_socket: {socket or settings.socket_path}\n")
    home_hosts = Path(os.environ.get("GH_CONFIG_DIR") or Path.home() / ".config" / "gh") / "hosts.yml"
    if home_hosts.is_file() and home_hosts.parent != gh_dir:
        write_private(gh_dir / "hosts.yml", home_hosts.read_bytes())
    return gh_dir


def _last_line(path: Path, containing: str = "") -> str:
    try:
        lines = [
            ln
            for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip() and containing in ln
        ]
    except OSError:
        return ""
    return lines[-1].removeprefix("fleetci: error: ").removeprefix("fleetci: warning: ") if lines else ""


def stop(settings: CacheSettings) -> int:
    """SIGTERM the proxy ``start`` recorded and wait (a while) for it to exit; its pid."""
    pid_file = settings.pid_path
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise FleetciError(f"no running proxy recorded in {pid_file}") from exc
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        raise FleetciError(f"proxy pid {pid} from {pid_file} is not running") from None
    with contextlib.suppress(WaitTimeout):  # it flushes its stats on the way out; not worth failing over
        wait_until(lambda: not alive(pid), timeout=STOP_WAIT_S, what=f"proxy pid {pid} to exit")
    pid_file.unlink(missing_ok=True)
    return pid


def verify(
    settings: CacheSettings,
    *,
    min_peers: int = 1,
    local_only: bool = False,
    wait: float = 0.0,
    say: Callable[[str], object] = print,
) -> None:
    """Proxy health, then (unless ``local_only``) connected peers and an entry shared end to end."""
    proxy = LocalProxy(settings)
    health = proxy.health()
    say(f"proxy healthy: upstream {health.get('upstream')}")
    if local_only:
        return
    state = health.get("p2p", "off")
    if state == "off":
        raise FleetciError(
            "cannot verify the fleet: this proxy runs without peer-to-peer sharing "
            "(start it with --enable-p2p or CACHE_ENABLE_P2P=true)"
        )
    if state != "active":
        why = str(health.get("p2p_reason") or "") or "the reason is in the proxy log"
        raise FleetciError(f"cannot verify the fleet: peer-to-peer sharing did not start: {why}")
    seen: list[str] = []

    def enough() -> bool:  # jobs that start together: their peers may connect a little later
        seen[:] = proxy.peers().get("connected", [])
        return len(seen) >= min_peers

    with contextlib.suppress(WaitTimeout):  # too few is reported below, with the count
        wait_until(enough, timeout=wait, what=f"{min_peers} connected peers", interval=0.5)
    say(f"connected peers: {len(seen)}")
    if len(seen) < min_peers:
        raise FleetciError(f"{len(seen)} connected peers, fewer than --min-peers {min_peers}")
    result = proxy.probe()
    shared = result.get("shared_with", [])
    say(f"entry {result.get('cid')} shared end to end with {len(shared)} of {len(seen)} peers")
    if len(shared) < min_peers:
        raise FleetciError(f"an announced entry came back from {len(shared)} peers, fewer than {min_peers}")
