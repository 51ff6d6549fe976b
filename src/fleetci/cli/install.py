"""``fleetci install [PACKAGE …]`` and ``fleetci install matrix REPORT …``."""

from __future__ import annotations

import argparse
import sys

from fleetci.config import load_config_file
from fleetci.errors import UsageError
from fleetci.install.settings import InstallOptions, InstallSettings, install_settings

# The settings that say what to install; the others say how (the "behaviour" group of --help).
WHAT = [
    "apt",
    "requirements",
    "constraints",
    "project",
    "default_project",
    "extras",
    "verify",
    "preset",
    "python",
    "index_url",
    "extra_index_url",
]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "install",
        help="apt/pip installs that wait for dpkg locks and retry transient index failures",
        description="Install apt and pip packages safely. 'fleetci install matrix REPORT…' renders the "
        "dependency matrix of several --report files.",
    )
    p.add_argument("packages", nargs="*", metavar="PACKAGE", help="pip requirements (or: matrix REPORT…)")
    what = p.add_argument_group("what to install (flag > $INSTALL_* > config 'install:')")
    InstallOptions.add_flags(what, names=WHAT)
    behaviour = p.add_argument_group("behaviour")
    InstallOptions.add_flags(behaviour, names=[s.name for s in InstallOptions.settings if s.name not in WHAT])
    behaviour.add_argument(
        "--summary", action="store_true", help="append a Markdown table to $GITHUB_STEP_SUMMARY"
    )
    p.set_defaults(func=cmd_install)


def _progress(message: str) -> None:
    print(f"install: {message}", file=sys.stderr, flush=True)


def settings_from(args: argparse.Namespace) -> InstallSettings:
    flags = InstallOptions.flag_values(args)
    flags["packages"] = args.packages or None  # no PACKAGE arguments: $INSTALL_PACKAGES, the config file
    return install_settings(flags, load_config_file(getattr(args, "config", None)))


def cmd_install(args: argparse.Namespace) -> int:
    if args.packages[:1] == ["matrix"]:
        return cmd_matrix(args)
    from fleetci.install import conclude, install
    from fleetci.install.report import report_lines

    report = install(settings_from(args), _progress)
    for line in report_lines(report):
        print(line)
    conclude(report, summary=args.summary)
    return 0


# What ``fleetci install matrix`` refuses: it reads reports, it installs nothing.
NOT_FOR_MATRIX = (
    "apt",
    "requirements",
    "constraints",
    "project",
    "default_project",
    "extras",
    "verify",
    "preset",
    "report",
)


def cmd_matrix(args: argparse.Namespace) -> int:
    from fleetci.install.report import add_to_step_summary, load_reports, render_matrix

    extra = [n.replace("_", "-") for n in NOT_FOR_MATRIX if getattr(args, n, None)]
    if extra:
        raise UsageError(f"'fleetci install matrix' takes only report files and --summary, not --{extra[0]}")
    markdown = render_matrix(load_reports(args.packages[1:]))
    print(markdown, end="")
    if args.summary:
        add_to_step_summary(markdown, required=True)
    return 0
