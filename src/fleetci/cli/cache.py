"""``fleetci cache serve|start|stop|stats|clear``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fleetci import gha
from fleetci.cache.settings import CacheOptions, CacheSettings, cache_settings
from fleetci.cli import arg_type
from fleetci.config import (
    load_config_file,
    parse_count,
    parse_seconds,
    parse_timeout,
)
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, private_fd, write_private
from fleetci.http import client, describe, primary_ip, redact_url, wait_healthy

# Numeric flags outside the settings parse as the settings do: no nan, inf or negative values.
COUNT_0 = arg_type(parse_count)
SECONDS = arg_type(parse_seconds)
TIMEOUT = arg_type(parse_timeout)


def _add_settings_flags(p: argparse.ArgumentParser) -> None:
    CacheOptions.add_flags(p.add_argument_group("settings (flag > environment > config file > default)"))


def _settings(args: argparse.Namespace) -> CacheSettings:
    config = load_config_file(getattr(args, "config", None))
    return cache_settings(CacheOptions.flag_values(args), config)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="GitHub REST API caching proxy")
    verbs = p.add_subparsers(dest="cache_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    serve = verbs.add_parser("serve", help="run the caching proxy in the foreground")
    _add_settings_flags(serve)
    serve.add_argument("--no-probe", action="store_true", help="do not check the upstream at start-up")
    serve.set_defaults(func=cmd_serve)

    start = verbs.add_parser("start", help="start the proxy in the background and wait until it is healthy")
    _add_settings_flags(start)
    start.add_argument("--log-file", help="where the background proxy logs (default <cache-dir>/proxy.log)")
    start.add_argument("--timeout", type=TIMEOUT, default=30.0, help="seconds to wait for health (30)")
    start.add_argument("--no-probe", action="store_true", help="do not check the upstream at start-up")
    start.set_defaults(func=cmd_start)

    stop = verbs.add_parser("stop", help="stop a proxy started with 'fleetci cache start'")
    _add_settings_flags(stop)
    stop.set_defaults(func=cmd_stop)

    stats = verbs.add_parser("stats", help="hit/miss counters of the running proxy (or the last saved ones)")
    _add_settings_flags(stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument(
        "--summary", action="store_true", help="append a Markdown table to $GITHUB_STEP_SUMMARY"
    )
    stats.add_argument("--url", help="query this proxy URL instead of the unix socket")
    stats.set_defaults(func=cmd_stats)

    peers = verbs.add_parser(
        "peers", help="list peers; 'init' creates this runner's identity, 'discover' finds others"
    )
    _add_settings_flags(peers)
    peers.add_argument("action", nargs="?", choices=("list", "init", "discover"), default="list")
    peers.add_argument("--json", action="store_true", help="print one JSON object")
    peers.set_defaults(func=cmd_peers)

    verify = verbs.add_parser("verify", help="check proxy health, connected peers and end-to-end sharing")
    _add_settings_flags(verify)
    verify.add_argument(
        "--min-peers", type=COUNT_0, default=1, help="peers that must be connected and share (1)"
    )
    verify.add_argument("--local-only", action="store_true", help="only check the proxy, not peers")
    verify.add_argument(
        "--wait",
        type=SECONDS,
        default=0.0,
        help="seconds to wait for --min-peers to connect, for jobs that start together (0)",
    )
    verify.set_defaults(func=cmd_verify)

    clear = verbs.add_parser("clear", help="delete cached entries")
    _add_settings_flags(clear)
    clear.add_argument("--stale", action="store_true", help="only entries past their fresh window")
    clear.set_defaults(func=cmd_clear)


def cmd_serve(args: argparse.Namespace) -> int:
    from fleetci.cache.server import run

    settings = _settings(args)
    if settings.enable_p2p:
        from fleetci.p2p import slim

        slim.install(public_peers=settings.public_bootstrap)  # before anything imports libp2p
    return run(settings, probe=not args.no_probe)


def _pid_file(settings: CacheSettings) -> Path:
    return settings.cache_dir / "proxy.pid"


def _serve_argv(args: argparse.Namespace) -> list[str]:
    argv = [sys.executable, "-m", "fleetci"]
    if getattr(args, "config", None):
        argv += ["--config", args.config]
    argv += ["cache", "serve"]
    for s in CacheOptions.settings:
        value = getattr(args, s.name, None)
        if s.flag and value is not None:
            argv += [s.option] if s.switch else [s.option, str(value)]
    if args.no_probe:
        argv.append("--no-probe")
    return argv


def _write_gh_config(settings: CacheSettings) -> Path:
    """A private GH_CONFIG_DIR (0700; hosts.yml holds gh's token) routing gh through the unix socket."""
    gh_dir = ensure_private_dir(settings.cache_dir / "gh")
    write_private(gh_dir / "config.yml", f"http_unix_socket: {settings.socket_path}\n")
    home_hosts = Path(os.environ.get("GH_CONFIG_DIR") or Path.home() / ".config" / "gh") / "hosts.yml"
    if home_hosts.is_file() and home_hosts.parent != gh_dir:
        write_private(gh_dir / "hosts.yml", home_hosts.read_bytes())
    return gh_dir


def cmd_start(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        ensure_private_dir(settings.cache_dir)
    except OSError as exc:
        raise FleetciError(f"cache dir {settings.cache_dir} is not usable: {exc.strerror or exc}") from exc
    log_path = Path(args.log_file) if args.log_file else settings.cache_dir / "proxy.log"
    try:
        log_fd = private_fd(log_path)  # 0600: the log may echo request paths of private repositories
    except OSError as exc:
        raise FleetciError(f"cannot write the proxy log {log_path}: {exc.strerror or exc}") from exc
    try:
        proc = subprocess.Popen(
            _serve_argv(args),
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    try:
        health = wait_healthy("/_fleetci/health", uds=settings.socket_path, timeout=args.timeout, alive=proc)
    except FleetciError as exc:
        if proc.poll() is None:
            proc.terminate()
        if gha.in_actions():
            with gha.group(f"fleetci proxy log ({log_path})"):
                print(log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else "")
        tail = _last_line(log_path)
        raise FleetciError(f"cache proxy did not start: {tail or exc}") from exc
    write_private(_pid_file(settings), str(proc.pid))
    api_url = str(health.get("proxy_url") or settings.proxy_url)
    gh_dir = _write_gh_config(settings)
    peer_id = str(health.get("peer_id") or "")
    print(
        f"fleetci cache running (pid {proc.pid}) at {api_url} and unix:{settings.socket_path}; log {log_path}"
    )
    if settings.enable_p2p and health.get("p2p") != "active":
        reason = _last_line(log_path, "warning: peer-to-peer") or "see the proxy log"
        message = f"peer-to-peer sharing is off ({reason}); caching on this runner only"
        if gha.in_actions():
            print(f"::notice title=fleetci cache::{message}")
        else:
            print(f"fleetci: warning: {message}", file=sys.stderr)
    # Later steps (fleetci cache stats|stop, gh, any REST client) find this proxy through these.
    gha.set_env("CACHE_DIR", str(settings.cache_dir))
    gha.set_env("FLEETCI_CACHE_SOCKET", str(settings.socket_path))
    gha.set_env("FLEETCI_API_URL", api_url)
    gha.set_env("GH_CONFIG_DIR", str(gh_dir))
    gha.set_output("api-url", api_url)
    gha.set_output("socket", str(settings.socket_path))
    gha.set_output("peer-id", peer_id)
    return 0


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


def cmd_stop(args: argparse.Namespace) -> int:
    settings = _settings(args)
    pid_file = _pid_file(settings)
    try:
        pid = int(pid_file.read_text(encoding="utf-8").strip())
    except (OSError, ValueError) as exc:
        raise FleetciError(f"no running proxy recorded in {pid_file}") from exc
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        raise FleetciError(f"proxy pid {pid} from {pid_file} is not running") from None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    pid_file.unlink(missing_ok=True)
    print(f"fleetci cache stopped (pid {pid})")
    return 0


def fetch_stats(settings: CacheSettings, url: str | None = None) -> dict[str, Any]:
    """Live counters from the proxy; saved ones from the database when it is not running."""
    import httpx

    try:
        if url:
            with client(base_url=url.rstrip("/"), timeout=5) as http_client:
                r = http_client.get("/_fleetci/stats")
        else:
            with client(uds=settings.socket_path, timeout=5) as http_client:
                r = http_client.get("/_fleetci/stats")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        data["source"] = "live"
        return data
    except (httpx.HTTPError, ValueError) as exc:
        if url:
            raise FleetciError(f"cannot read stats from {redact_url(url)}: {describe(exc)}") from exc
    if not settings.db_path.exists():
        raise FleetciError(f"no proxy running on {settings.socket_path} and no cache at {settings.cache_dir}")
    from fleetci.cache import GitHubAPICache

    return GitHubAPICache(settings, repair=False).get_stats()


def cmd_stats(args: argparse.Namespace) -> int:
    from fleetci.cache.engine import SUMMARY_KEYS as STAT_ROWS

    settings = _settings(args)
    stats = fetch_stats(settings, args.url)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        width = max(len(k) for k in STAT_ROWS)
        for k in STAT_ROWS:
            v = stats.get(k)
            shown = (
                f"{v:.1%}" if k == "hit_rate" and isinstance(v, (int, float)) else ("-" if v is None else v)
            )
            print(f"{k:<{width}}  {shown}")
    if args.summary:
        rows = [[k, str(stats.get(k, "-"))] for k in STAT_ROWS]
        if not gha.append_step_summary(
            "### fleetci API cache\n\n" + gha.markdown_table(["metric", "value"], rows)
        ):
            raise FleetciError("--summary needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not settings.db_path.exists():
        raise FleetciError(f"no cache at {settings.cache_dir}")
    from fleetci.cache import GitHubAPICache

    cache = GitHubAPICache(settings, repair=False)
    n = cache.clear_stale() if args.stale else cache.clear()
    print(f"removed {n} {'stale ' if args.stale else ''}entries from {settings.db_path}")
    return 0


def _proxy_get(
    settings: CacheSettings, path: str, method: str = "GET", timeout: float = 10
) -> dict[str, Any]:
    import httpx

    try:
        with client(uds=settings.socket_path, timeout=timeout) as http_client:
            r = http_client.request(method, path)
        data: dict[str, Any] = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise FleetciError(f"no proxy answering on {settings.socket_path}: {describe(exc)}") from exc
    return data


def cmd_peers(args: argparse.Namespace) -> int:
    from fleetci.p2p.discovery import PeerRegistry

    settings = _settings(args)
    if args.action == "init":
        from fleetci.p2p.node import load_identity, peer_id_for

        peer_id = peer_id_for(load_identity(settings.identity_path))
        host = settings.p2p_host if settings.p2p_host not in ("0.0.0.0", "") else primary_ip()
        addr = f"/ip4/{host}/tcp/{settings.listen_port}/p2p/{peer_id}"
        if settings.peer_registry is not None:
            PeerRegistry(settings.peer_registry).register(peer_id, [addr])
        gha.set_output("peer-id", peer_id)
        gha.set_env("CACHE_ENABLE_P2P", "true")
        gha.set_env("CACHE_LISTEN_PORT", str(settings.listen_port))
        print(json.dumps({"peer_id": peer_id, "addr": addr}) if args.json else f"{peer_id} {addr}")
        return 0
    if args.action == "discover":
        if settings.peer_registry is None:
            raise FleetciError(
                "no peer registry: set CACHE_PEER_REGISTRY (or --peer-registry) to a shared directory"
            )
        own = ""
        if settings.identity_path.exists():
            from fleetci.p2p.node import load_identity, peer_id_for

            own = peer_id_for(load_identity(settings.identity_path))
        addrs = [
            a
            for rec in PeerRegistry(settings.peer_registry).active()
            if rec.peer_id != own
            for a in rec.addrs
        ]
        joined = ",".join(addrs)
        if addrs:
            gha.set_env("CACHE_BOOTSTRAP_PEERS", joined)
        print(json.dumps({"peers": addrs}) if args.json else (joined or "no peers registered"))
        return 0
    data = _proxy_get(settings, "/_fleetci/peers")
    if args.json:
        print(json.dumps(data, sort_keys=True))
        return 0
    print(f"p2p: {data.get('p2p')}  peer id: {data.get('peer_id') or '-'}")
    for addr in data.get("addrs", []):
        print(f"listening: {addr}")
    for peer in data.get("connected", []):
        print(f"connected: {peer}")
    if settings.peer_registry is not None:
        for rec in PeerRegistry(settings.peer_registry).active():
            print(f"registered: {rec.peer_id} {' '.join(rec.addrs)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    settings = _settings(args)
    health = _proxy_get(settings, "/_fleetci/health")
    print(f"proxy healthy: upstream {health.get('upstream')}")
    if args.local_only:
        return 0
    if health.get("p2p") != "active":
        raise FleetciError(f"peer-to-peer sharing is {health.get('p2p', 'off')} (see the proxy log)")
    deadline = time.monotonic() + args.wait
    while True:
        peers = _proxy_get(settings, "/_fleetci/peers").get("connected", [])
        if len(peers) >= args.min_peers or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    print(f"connected peers: {len(peers)}")
    if len(peers) < args.min_peers:
        raise FleetciError(f"{len(peers)} connected peers, fewer than --min-peers {args.min_peers}")
    result = _proxy_get(settings, "/_fleetci/p2p/probe", method="POST", timeout=30)
    shared = result.get("shared_with", [])
    print(f"entry {result.get('cid')} shared end to end with {len(shared)} of {len(peers)} peers")
    if len(shared) < args.min_peers:
        raise FleetciError(
            f"an announced entry came back from {len(shared)} peers, fewer than {args.min_peers}"
        )
    return 0
