"""The ``fleetci`` command: a thin map from verbs to capability functions.

Every failure ends as one ``fleetci: error: …`` line on stderr and a non-zero exit code; a bug we did not
foresee says ``internal error`` in that line (``FLEETCI_DEBUG=1`` shows its traceback).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from fleetci import __version__
from fleetci.cli.args import Parser, arg_type
from fleetci.errors import FleetciError

# Parser, arg_type: see fleetci.cli.args
__all__ = ["Parser", "arg_type", "build_parser", "main", "prepare_process"]


def _verb(argv: Sequence[str]) -> str | None:
    """The verb of a command line (the first word that is neither an option nor ``--config``'s value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--config":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def prepare_process(verb: str | None) -> None:
    """What the ``fleetci`` process sets for itself before it imports ``verb`` (``main`` only: a library
    caller's environment is its own)."""
    if verb == "cache":
        # frozenlist's C++ extension loads libstdc++ (~0.9 MB RSS) for a class aiohttp uses at start-up
        # only; its pure-Python twin is the library's own switch (issue 16: a proxy within 50 MB).
        os.environ.setdefault("FROZENLIST_NO_EXTENSIONS", "1")


def build_parser(verb: str | None = None) -> Parser:
    """All verbs; for ``cache`` only its own, so a long-running proxy does not hold every other
    capability's modules in memory (issue 16: a host proxy within 50 MB)."""
    if verb == "cache":
        from fleetci.cli import cache

        modules: tuple[Any, ...] = (cache,)
    else:
        from fleetci.cli import autoscale, bench, build, cache, demo, emulate, install, multiarch, registry

        modules = (cache, emulate, install, build, multiarch, registry, autoscale, bench, demo)
    parser = Parser(prog="fleetci", description="Make CI fleets cheaper and less flaky.")
    parser.add_argument("--version", action="version", version=f"fleetci {__version__}")
    parser.add_argument(
        "--config", help="YAML config file (default $FLEETCI_CONFIG or ~/.config/fleetci/config.yml)"
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=Parser)
    sub.required = True
    for module in modules:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--version"]:  # answer even when a capability module fails to import
        print(f"fleetci {__version__}")
        return 0
    try:
        verb = _verb(argv)
        prepare_process(verb)
        parser = build_parser(verb)
        args = parser.parse_args(argv)
        func: Any = args.func
        return int(func(args) or 0)
    except FleetciError as exc:
        print(f"fleetci: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fleetci: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("FLEETCI_DEBUG"):
            raise
        text = " ".join(str(exc).split())[:300]
        print(
            f"fleetci: error: internal error: {type(exc).__name__}: {text} "
            "(FLEETCI_DEBUG=1 shows the traceback; please report it)",
            file=sys.stderr,
        )
        return 1
