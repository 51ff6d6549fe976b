"""The JSON install report, what the command prints from it, and the dependency matrix (arch × package)
rendered from several reports."""

from __future__ import annotations

import glob
import json
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from fleetci import gha
from fleetci.errors import FleetciError, UsageError
from fleetci.files import write_atomic
from fleetci.install.models import InstallReport, PlatformInfo

SCHEMA = "fleetci.install/1"
ARCH_NAMES = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "armv7",
    "armv8l": "armv7",
    "riscv64": "riscv64",
}

_PLATFORM = (
    "import json, platform, sys\n"
    "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(),"
    " 'implementation': platform.python_implementation(), 'libc': ' '.join(platform.libc_ver()).strip(),"
    " 'executable': sys.executable}))\n"
)


def platform_info(python: str) -> PlatformInfo:
    """Facts about the environment the packages went into (the target interpreter, not fleetci's)."""
    data: PlatformInfo = {}
    try:
        proc = subprocess.run([python, "-c", _PLATFORM], capture_output=True, text=True, timeout=60)
        data = json.loads(proc.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        data = {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "libc": " ".join(platform.libc_ver()).strip(),
            "executable": python,
        }
    data["arch"] = ARCH_NAMES.get(data.get("machine", ""), data.get("machine", "unknown"))
    data["system"] = platform.system()
    return data


# World-readable: the report holds no secret, and `fleetci install` often runs under sudo while the
# steps that read it (`fleetci install matrix`, the artifact upload) run as the runner's user.
REPORT_MODE = 0o644


def write_report(path: Path, report: Mapping[str, Any]) -> None:
    """Write the report atomically: a reader (or a crash) never sees half of it."""
    try:
        write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n", mode=REPORT_MODE)
    except OSError as exc:
        raise UsageError(f"cannot write report {path}: {exc.strerror or exc}") from exc


def load_report(path: str) -> InstallReport:
    """Read one report; anything that is not a fleetci install report is a one-line usage error."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read report {path}: {exc.strerror or exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"report {path} is not valid JSON: {str(exc).splitlines()[0]}") from exc
    if (
        not isinstance(data, dict)
        or data.get("schema") != SCHEMA
        or not isinstance(data.get("packages"), list)
    ):
        raise UsageError(f"{path} is not a fleetci install report (schema {SCHEMA!r})")
    return cast(InstallReport, data)


def load_reports(patterns: Sequence[str]) -> list[InstallReport]:
    """The reports named by paths or glob patterns (each pattern must match), in a stable order."""
    paths: list[str] = []
    for pattern in patterns:
        found = sorted(glob.glob(pattern)) if any(ch in pattern for ch in "*?[") else [pattern]
        if not found:
            raise UsageError(f"no report files match {pattern!r}")
        paths += found
    if not paths:
        raise UsageError("usage: fleetci install matrix REPORT.json [REPORT.json …] [--summary]")
    return [load_report(p) for p in paths]


def report_lines(report: InstallReport) -> list[str]:
    """One line per package and per import check, as ``fleetci install`` prints them."""
    lines = []
    for pkg in report["packages"]:
        state = f"{pkg['installed'] or '?'}" if pkg["ok"] else f"FAILED: {pkg['error']}"
        lines.append(
            f"{pkg['kind']:<4} {pkg['name']:<28} {state}  (attempts {pkg['attempts']}, {pkg['duration_s']}s)"
        )
    for v in report["verify"]:
        state = f"{v['version'] or '(no version)'}" if v["ok"] else f"FAILED: {v['error']}"
        lines.append(f"import {v['module']:<26} {state}")
    check = report.get("check")
    if check is not None:
        state = "no broken requirements" if check["ok"] else "FAILED: " + "; ".join(check["problems"])
        lines.append(f"pip check {'':<23} {state}")
    return lines


def failure_message(report: InstallReport) -> str:
    """``N failed: name: reason; import mod: reason`` (one line)."""
    failed = [p for p in report["packages"] if not p["ok"]]
    details = "; ".join(f"{p['name']}: {p['error']}" for p in failed)
    bad = [v for v in report["verify"] if not v["ok"]]
    details += ("; " if details and bad else "") + "; ".join(
        f"import {v['module']}: {v['error']}" for v in bad
    )
    check = report.get("check")
    if check is not None and not check["ok"]:
        details += ("; " if details else "") + "pip check: " + "; ".join(check["problems"])
    return f"{len(report['failed'])} failed: {details}"


def add_to_step_summary(markdown: str, *, required: bool) -> None:
    """Append to ``$GITHUB_STEP_SUMMARY``; with ``required`` (``--summary``), its absence is an error."""
    if not gha.append_step_summary(markdown) and required:
        raise FleetciError("--summary needs $GITHUB_STEP_SUMMARY (set by GitHub Actions)")


def _cell(pkg: Mapping[str, Any]) -> str:
    if pkg.get("ok"):
        text = f"✅ {pkg.get('installed') or pkg.get('version') or ''}".rstrip()
        retries = int(pkg.get("retries") or 0)
        return text + (f" ({retries} {'retry' if retries == 1 else 'retries'})" if retries else "")
    reason = str(pkg.get("error") or "failed").replace("|", "/")
    return f"❌ {reason[:80]}"


def matrix_rows(reports: Sequence[InstallReport]) -> tuple[list[str], list[list[str]]]:
    """Columns per arch (in first-seen order); a failure on any run of an arch wins over a success.

    Reports come from other runners' artifacts, so every field is read defensively.
    """
    arches: list[str] = []
    cells: dict[tuple[str, str], tuple[bool, str]] = {}
    names: list[str] = []
    for rep in reports:
        plat: Mapping[str, Any] = rep.get("platform") or {}
        arch = str(plat.get("arch") or "unknown")
        py = str(plat.get("python") or "")
        column = arch if not py else f"{arch} (py{'.'.join(py.split('.')[:2])})"
        if column not in arches:
            arches.append(column)
        entries: list[tuple[str, Mapping[str, Any]]] = [
            (f"{p.get('kind', 'pip')}:{p.get('name')}", p) for p in rep.get("packages", [])
        ]
        entries += [(f"import:{v.get('module')}", v) for v in rep.get("verify", [])]
        check: Mapping[str, Any] | None = rep.get("check")
        if isinstance(check, Mapping):
            problems = [str(p) for p in check.get("problems") or []]
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            cell = {
                "ok": check.get("ok"),
                "installed": "no conflicts",
                "error": (problems or ["?"])[0] + more,
            }
            entries.append(("pip check", cell))
        for key, entry in entries:
            if key not in names:
                names.append(key)
            ok = bool(entry.get("ok"))
            prev = cells.get((key, column))
            if prev is None or (prev[0] and not ok):
                cells[(key, column)] = (ok, _cell(entry))
    headers = ["package", *arches]
    rows = [[name, *(cells.get((name, a), (True, "—"))[1] for a in arches)] for name in names]
    return headers, rows


def render_matrix(reports: Sequence[InstallReport], title: str = "Dependency matrix") -> str:
    headers, rows = matrix_rows(reports)
    failed = sum(1 for r in reports if not r.get("ok"))
    head = f"### {title}\n\n{len(reports)} report(s), {failed} with failures.\n\n"
    return head + gha.markdown_table(headers, rows)


def render_summary(report: InstallReport) -> str:
    """The step summary of one ``fleetci install``: its matrix column, then what ``pip check`` found."""
    markdown = render_matrix([report], title="fleetci install")
    check = report.get("check")
    if check is not None and not check["ok"]:
        markdown += "\n**pip check** found broken requirements:\n\n"
        markdown += "".join(f"- {p.replace('|', '/')}\n" for p in check["problems"])
    return markdown
