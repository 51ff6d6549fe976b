"""``fleetci multiarch run`` and ``fleetci matrix``."""

from __future__ import annotations

import argparse

from fleetci import gha
from fleetci.config import load_config_file, parse_csv
from fleetci.multiarch.settings import MultiarchOptions, MultiarchSettings, multiarch_settings


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("multiarch", help="run a command (a test suite) on amd64/arm64/armv7/riscv64")
    verbs = p.add_subparsers(dest="multiarch_verb", metavar="VERB", parser_class=type(p))
    verbs.required = True
    r = verbs.add_parser(
        "run",
        help="run CMD in the project on another architecture and return its exit code",
        usage="fleetci multiarch run --arch ARCH [options] -- CMD …",
    )
    g = r.add_argument_group("settings (flag > environment > config file 'multiarch:' > default)")
    MultiarchOptions.add_flags(g)
    r.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    r.set_defaults(func=cmd_run)

    m = sub.add_parser("matrix", help="write a GitHub Actions matrix over architectures × Python versions")
    m.add_argument("--arch", required=True, help="comma-separated architectures, e.g. amd64,arm64,armv7")
    m.add_argument("--python", required=True, help="comma-separated Python versions, e.g. 3.9,3.10,3.11")
    m.add_argument(
        "--prefer-native", action="store_true", help="use GitHub's native runners where they exist (arm64)"
    )
    m.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="ARCH or ARCH:X.Y to leave out (repeatable, comma-separated)",
    )
    m.set_defaults(func=cmd_matrix)


def settings_from(args: argparse.Namespace) -> MultiarchSettings:
    return multiarch_settings(
        MultiarchOptions.flag_values(args), load_config_file(getattr(args, "config", None))
    )


def cmd_run(args: argparse.Namespace) -> int:
    from fleetci.multiarch.runner import guest_command, run_command

    command = guest_command(args.command)
    run_command(settings_from(args), command)
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from fleetci.multiarch.matrix import build_matrix, matrix_json, matrix_summary

    entries = build_matrix(
        list(parse_csv(args.arch)), list(parse_csv(args.python)), args.prefer_native, args.exclude
    )
    matrix = matrix_json(entries)
    print(matrix)
    gha.set_output("matrix", matrix)
    gha.set_output("count", str(len(entries)))
    gha.append_step_summary(matrix_summary(entries))
    return 0
