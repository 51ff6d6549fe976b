"""``fleetci install [PACKAGE …]`` and ``fleetci install matrix REPORT …``."""

from __future__ import annotations

import argparse
import glob
import sys

from fleetci import gha
from fleetci.config import load_config_file
from fleetci.errors import FleetciError, UsageError
from fleetci.install.settings import InstallOptions

# The settings that say what to install; the others say how (the "behaviour" group of --help).
WHAT = [
    "apt",
    "requirements",
    "constraints",
    "project",
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


def cmd_install(args: argparse.Namespace) -> int:
    if args.packages[:1] == ["matrix"]:
        return cmd_matrix(args)
    from fleetci.install import install_settings, run
    from fleetci.install.report import write_report

    config = load_config_file(getattr(args, "config", None))
    flags = InstallOptions.flag_values(args)
    flags["packages"] = args.packages or None  # no PACKAGE arguments: $INSTALL_PACKAGES, the config file
    settings = install_settings(flags, config)
    if not (settings.wants_apt or settings.pip_specs or settings.requirements or settings.verify_modules):
        raise UsageError("nothing to install: give packages, --apt, -r, -e, --preset or --verify")
    with gha.group("fleetci install"):
        report = run(settings, _progress, describe_platform=bool(settings.report) or gha.in_actions())
    if settings.report:
        write_report(settings.report, report)
        gha.set_output("report-path", str(settings.report))
    gha.set_output("failed", ",".join(report["failed"]))
    for pkg in report["packages"]:
        state = f"{pkg['installed'] or '?'}" if pkg["ok"] else f"FAILED: {pkg['error']}"
        print(
            f"{pkg['kind']:<4} {pkg['name']:<28} {state}  (attempts {pkg['attempts']}, {pkg['duration_s']}s)"
        )
    for v in report["verify"]:
        state = f"{v['version'] or '(no version)'}" if v["ok"] else f"FAILED: {v['error']}"
        print(f"import {v['module']:<26} {state}")
    if args.summary or gha.in_actions():
        from fleetci.install.report import render_matrix

        written = gha.append_step_summary(
            render_matrix([report]).replace("Dependency matrix", "fleetci install")
        )
        if args.summary and not written:
            raise FleetciError("--summary needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")
    if not report["ok"]:
        failed = [p for p in report["packages"] if not p["ok"]]
        details = "; ".join(f"{p['name']}: {p['error']}" for p in failed)
        bad = [v for v in report["verify"] if not v["ok"]]
        details += ("; " if details and bad else "") + "; ".join(
            f"import {v['module']}: {v['error']}" for v in bad
        )
        raise FleetciError(f"{len(report['failed'])} failed: {details}")
    return 0


def cmd_matrix(args: argparse.Namespace) -> int:
    from fleetci.install.report import load_report, render_matrix

    extra = [
        n
        for n in ("apt", "requirements", "constraints", "project", "extras", "verify", "preset", "report")
        if getattr(args, n, None)
    ]
    if extra:
        raise UsageError(f"'fleetci install matrix' takes only report files and --summary, not --{extra[0]}")
    paths: list[str] = []
    for pattern in args.packages[1:]:
        found = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not found:
            raise UsageError(f"no report files match {pattern!r}")
        paths += found
    if not paths:
        raise UsageError("usage: fleetci install matrix REPORT.json [REPORT.json …] [--summary]")
    markdown = render_matrix([load_report(p) for p in paths])
    print(markdown, end="")
    if args.summary and not gha.append_step_summary(markdown):
        raise FleetciError("--summary needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")
    return 0
