"""``fleetci cache serve|start|stop|stats|dashboard|peers|verify|clear``: parse, call one function, print.

The proxy lives in ``fleetci.cache`` (server, daemon, client), peer identity and discovery in
``fleetci.p2p``; the flags of every verb come from ``fleetci.cache.settings.CacheOptions``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from fleetci import gha
from fleetci.cache.api import SUMMARY_KEYS, CacheStats
from fleetci.cache.settings import CacheOptions, CacheSettings, cache_settings
from fleetci.cli.args import arg_type
from fleetci.config import load_config_file, parse_count, parse_seconds, parse_timeout
from fleetci.errors import FleetciError

# Numeric flags outside the settings parse as the settings do: no nan, inf or negative values.
COUNT_0 = arg_type(parse_count)
SECONDS = arg_type(parse_seconds)
TIMEOUT = arg_type(parse_timeout)


def _settings(args: argparse.Namespace) -> CacheSettings:
    config = load_config_file(getattr(args, "config", None))
    return cache_settings(CacheOptions.flag_values(args), config)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("cache", help="GitHub REST API caching proxy")
    verbs = p.add_subparsers(dest="cache_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True

    def verb(name: str, help: str, func: object) -> argparse.ArgumentParser:
        v: argparse.ArgumentParser = verbs.add_parser(name, help=help)
        CacheOptions.add_flags(v.add_argument_group("settings (flag > environment > config file > default)"))
        v.set_defaults(func=func)
        return v

    serve = verb("serve", "run the caching proxy in the foreground", cmd_serve)
    serve.add_argument("--no-probe", action="store_true", help="do not check the upstream at start-up")

    start = verb("start", "start the proxy in the background and wait until it is healthy", cmd_start)
    start.add_argument("--log-file", help="where the background proxy logs (default <cache-dir>/proxy.log)")
    start.add_argument("--timeout", type=TIMEOUT, default=30.0, help="seconds to wait for health (30)")
    start.add_argument("--no-probe", action="store_true", help="do not check the upstream at start-up")
    start.add_argument(
        "--no-host-proxy",
        dest="host_proxy",
        action="store_const",
        const="off",
        help="start a proxy for this job even where the host runs one (same as --host-proxy off)",
    )

    verb("stop", "stop a proxy started with 'fleetci cache start'", cmd_stop)

    stats = verb("stats", "hit/miss counters of the running proxy (or the last saved ones)", cmd_stats)
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.add_argument(
        "--summary", action="store_true", help="append a Markdown table to $GITHUB_STEP_SUMMARY"
    )
    stats.add_argument("--url", help="query this proxy URL instead of the unix socket")

    board = verb("dashboard", "print the address of the running proxy's live dashboard", cmd_dashboard)
    board.add_argument("--url", help="that proxy's URL instead of asking the one on the unix socket")

    peers = verb(
        "peers", "list peers; 'init' creates this runner's identity, 'discover' finds others", cmd_peers
    )
    peers.add_argument("action", nargs="?", choices=("list", "init", "discover"), default="list")
    peers.add_argument("--json", action="store_true", help="print one JSON object")

    verify = verb("verify", "check proxy health, connected peers and end-to-end sharing", cmd_verify)
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

    clear = verb("clear", "delete cached entries", cmd_clear)
    clear.add_argument("--stale", action="store_true", help="only entries past their fresh window")

    from fleetci.cli import cache_service  # issue 16: the host service

    cache_service.register(verbs)


def cmd_serve(args: argparse.Namespace) -> int:
    from fleetci.cache.server import run

    settings = _settings(args)
    # libp2p, trio and cryptography load only for a proxy that joins a fleet or seals a shared store
    attach = None
    if settings.enable_p2p:
        from fleetci.p2p.attach import attacher

        attach = attacher(settings)
    shared = None
    if settings.backend:
        from fleetci.p2p.backend import shared_store

        shared = shared_store(settings)
    return run(settings, probe=not args.no_probe, attach=attach, shared=shared)


def cmd_start(args: argparse.Namespace) -> int:
    from fleetci.cache.daemon import start
    from fleetci.http import redact_url

    settings = _settings(args)
    log_file = Path(args.log_file) if args.log_file else None
    flags, config = CacheOptions.flag_values(args), getattr(args, "config", None)
    s = start(settings, flags, config, log_file=log_file, timeout=args.timeout, probe=not args.no_probe)
    if s.note:
        print(f"fleetci: note: {s.note}", file=sys.stderr)
    if s.shared:
        where = f" and unix:{s.socket}" if str(s.socket) not in ("", ".") else ""
        print(f"fleetci cache: using the host proxy (pid {s.pid}) at {redact_url(s.api_url)}{where}")
    else:
        print(f"fleetci cache running (pid {s.pid}) at {s.api_url} and unix:{s.socket}; log {s.log}")
    if s.p2p_off:
        message = f"peer-to-peer sharing is off ({s.p2p_off}); caching on this runner only"
        if gha.in_actions():
            print(f"::notice title=fleetci cache::{message}")
        else:
            print(f"fleetci: warning: {message}", file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from fleetci.cache.daemon import stop
    from fleetci.cache.hostproxy import release
    from fleetci.http import redact_url

    if (host := release(_settings(args))) is not None:
        print(
            f"fleetci cache: the host proxy at {redact_url(host)} keeps running (shared by this host's jobs)"
        )
        return 0
    print(f"fleetci cache stopped (pid {stop(_settings(args))})")
    return 0


def _shown(stats: CacheStats, key: str) -> object:
    v = stats.get(key)
    if key == "hit_rate" and isinstance(v, (int, float)):
        return f"{v:.1%}"
    return "-" if v is None else v


def cmd_stats(args: argparse.Namespace) -> int:
    from fleetci.cache.client import read_stats

    stats = read_stats(_settings(args), args.url)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        width = max(len(k) for k in SUMMARY_KEYS)
        for k in SUMMARY_KEYS:
            print(f"{k:<{width}}  {_shown(stats, k)}")
    if args.summary:
        rows = [[k, str(stats.get(k, "-"))] for k in SUMMARY_KEYS]
        table = gha.markdown_table(["metric", "value"], rows)
        if not gha.append_step_summary("### fleetci API cache\n\n" + table):
            raise FleetciError("--summary needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from fleetci.cache.client import dashboard_url

    print(dashboard_url(_settings(args), args.url))
    return 0


def cmd_clear(args: argparse.Namespace) -> int:
    from fleetci.cache.client import clear_cache

    settings = _settings(args)
    n = clear_cache(settings, stale_only=args.stale)
    print(f"removed {n} {'stale ' if args.stale else ''}entries from {settings.db_path}")
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    from fleetci.cache.client import LocalProxy
    from fleetci.p2p.discovery import discover_peers, init_peer, registered

    settings = _settings(args)
    if args.action == "init":
        me = init_peer(settings)
        print(json.dumps(dataclasses.asdict(me)) if args.json else f"{me.peer_id} {me.addr}")
        return 0
    if args.action == "discover":
        addrs = discover_peers(settings)
        print(json.dumps({"peers": addrs}) if args.json else (",".join(addrs) or "no peers registered"))
        return 0
    data = LocalProxy(settings).peers()
    if args.json:
        print(json.dumps(data, sort_keys=True))
        return 0
    print(f"p2p: {data.get('p2p')}  peer id: {data.get('peer_id') or '-'}")
    for addr in data.get("addrs", []):
        print(f"listening: {addr}")
    for peer in data.get("connected", []):
        print(f"connected: {peer}")
    for rec in registered(settings):
        print(f"registered: {rec.peer_id} {' '.join(rec.addrs)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from fleetci.cache.daemon import verify

    verify(_settings(args), min_peers=args.min_peers, local_only=args.local_only, wait=args.wait)
    return 0
