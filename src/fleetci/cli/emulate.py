"""``fleetci emulate github``: the GitHub API emulator as a process, for demos, benchmarks and other tools."""

from __future__ import annotations

import argparse
import sys

from fleetci.cli.args import arg_type
from fleetci.config import number, parse_count, parse_ms_range, parse_port

_rate = arg_type(number(float, min=0, max=1))  # a fraction of requests
_count = arg_type(parse_count)
_port = arg_type(parse_port)


def _check_latency(text: str) -> tuple[float, float]:
    """``LOW-HIGH`` milliseconds the emulator can honour (its own check, said with the flag's name)."""
    from fleetci.testing.github import EmulatorConfig

    latency = parse_ms_range(text)
    EmulatorConfig(latency_ms=latency).check()
    return latency


_latency = arg_type(_check_latency)
_delay = arg_type(number(float, min=0, max=600_000))


def _token(text: str) -> tuple[str, str]:
    login, sep, token = text.partition("=")
    if not sep or not login.strip() or not token.strip() or any(c.isspace() for c in token.strip()):
        raise argparse.ArgumentTypeError(f"expected LOGIN=TOKEN, got {text!r}")
    return login.strip(), token.strip()


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "emulate",
        help="run a faithful emulator of an external service (tests, demos, benchmarks)",
        description="Run a faithful emulator of an external service.",
    )
    p.set_defaults(func=lambda args: _help(p))
    targets = p.add_subparsers(dest="emulate_target", metavar="SERVICE", parser_class=type(p))
    targets.required = True
    g = targets.add_parser(
        "github",
        help="the GitHub REST API (ETags, rate limits, pagination, latency, faults)",
        description="Serve an emulated GitHub REST API: org octo-org, its repos, workflow runs and runners. "
        "Tokens: see fleetci.testing.TOKENS (alice, bob, fleet-bot). Admin endpoints live under "
        "/_emulator/ (stats, config, reset, mutate).",
    )
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=_port, default=8080, help="port (default 8080; 0 picks a free one)")
    g.add_argument(
        "--latency-ms",
        type=_latency,
        default=(100.0, 500.0),
        metavar="LOW-HIGH",
        help="uniform random delay per request in milliseconds (default 100-500)",
    )
    g.add_argument("--error-rate", type=_rate, default=0.0, metavar="F", help="fraction answered 502/503")
    g.add_argument(
        "--drop-rate",
        type=_rate,
        default=0.0,
        metavar="F",
        help="fraction whose connection is closed without an answer",
    )
    g.add_argument(
        "--webhook-drop-rate",
        type=_rate,
        default=0.0,
        metavar="F",
        help="fraction of webhook deliveries lost (listed as failed, can be redelivered)",
    )
    g.add_argument(
        "--webhook-delay-ms",
        type=_delay,
        default=0.0,
        metavar="MS",
        help="delay of every webhook delivery in milliseconds (default 0)",
    )
    g.add_argument("--limit", type=_count, default=5000, metavar="N", help="requests per hour per token")
    g.add_argument("--anon-limit", type=_count, default=60, metavar="N", help="anonymous requests per hour")
    g.add_argument("--seed", type=int, default=None, help="seed for the dataset and the latency/fault dice")
    g.add_argument(
        "--token",
        type=_token,
        action="append",
        default=[],
        metavar="LOGIN=TOKEN",
        help="accept TOKEN for LOGIN (repeatable; adds to the built-in tokens)",
    )
    g.set_defaults(func=run_github)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_github(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; print the one ``listening on`` line once the port accepts connections."""
    from fleetci.testing.github import EmulatorConfig, emulator_server

    config = EmulatorConfig(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        primary_limit=args.limit,
        anon_limit=args.anon_limit,
        seed=args.seed,
        webhook_drop_rate=args.webhook_drop_rate,
        webhook_delay_ms=args.webhook_delay_ms,
    )
    server = emulator_server(config, host=args.host, port=args.port, extra_tokens=args.token)
    server.serve_until_signalled(lambda url: print(f"fleetci emulator listening on {url}", flush=True))
    sys.stdout.flush()
    return 0
