"""``fleetci install``: apt and pip installs that survive dpkg locks and flaky package indexes.

:func:`run` is the whole capability (the benchmark calls it): wait for apt's locks, install apt packages,
install pip requirements with retries and a one-by-one fallback, verify imports in fresh interpreters,
and return the report. :func:`install` and :func:`conclude` are the command around it (a log group, the
report file, the step outputs and summary, the exit status).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone

from fleetci import gha
from fleetci.errors import FleetciError, UsageError
from fleetci.install.models import AptEntry, CheckEntry, InstallReport, PackageEntry, VerifyEntry
from fleetci.install.report import (
    SCHEMA,
    add_to_step_summary,
    failure_message,
    platform_info,
    render_summary,
    write_report,
)
from fleetci.install.settings import InstallSettings, install_settings

__all__ = ["InstallReport", "InstallSettings", "conclude", "install", "install_settings", "run"]


def run(
    settings: InstallSettings, progress: Callable[[str], None], describe_platform: bool = True
) -> InstallReport:
    """Do everything the settings ask for; failures are recorded in the report, not raised.

    Lock timeouts and usage errors still raise :class:`fleetci.errors.FleetciError`: nothing was installed.
    """
    from fleetci.install import pip
    from fleetci.install.apt import apt_install

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    plan = pip.build_plan(settings)  # validate requirement syntax and files before waiting on anything
    packages: list[PackageEntry] = []
    verify: list[VerifyEntry] = []
    apt: AptEntry | None = None
    if settings.wants_apt:
        outcome = apt_install(settings, progress)
        apt = {"lock_wait_s": round(outcome.lock_wait_s, 3), "updated": outcome.updated}
        packages += [r.as_dict() for r in outcome.results]
    if plan.items:
        packages += [r.as_dict() for r in pip.install(settings, plan, progress)]
    check: CheckEntry | None = None
    if settings.runs_pip_check:
        check = pip.pip_check(settings.python, progress)
    modules = settings.verify_modules
    project = pip.local_project(settings)
    if project is not None and not settings.verify:  # no explicit list: the project's own packages
        modules = tuple(dict.fromkeys(modules + pip.project_modules(project)))
    if modules:
        verify = [v.as_dict() for v in pip.verify(settings.python, modules, progress)]
    # one extra interpreter start: only when someone reads the report
    described = platform_info(settings.python) if describe_platform else None
    failed = [p["name"] for p in packages if not p["ok"]]
    failed += [f"import:{v['module']}" for v in verify if not v["ok"]]
    if check is not None and not check["ok"]:
        failed.append("pip-check")
    report: InstallReport = {
        "schema": SCHEMA,
        "started": started,
        "packages": packages,
        "verify": verify,
        "failed": failed,
        "ok": not failed,
        "duration_s": round(time.monotonic() - t0, 3),
    }
    if apt is not None:
        report["apt"] = apt
    if check is not None:
        report["check"] = check
    if described is not None:
        report["platform"] = described
    return report


def install(settings: InstallSettings, progress: Callable[[str], None]) -> InstallReport:
    """``fleetci install``: run in a log group, write ``--report``, set the step outputs."""
    if not settings.wants_anything:
        raise UsageError(
            "nothing to install: give packages, --apt, -r, -e DIR, --preset or --verify "
            "(or --default-project DIR for a directory with pyproject.toml, setup.py or requirements*.txt)"
        )
    with gha.group("fleetci install"):
        report = run(settings, progress, describe_platform=bool(settings.report) or gha.in_actions())
    if settings.report:
        write_report(settings.report, report)
        gha.set_output("report-path", str(settings.report))
    gha.set_output("failed", ",".join(report["failed"]))
    return report


def conclude(report: InstallReport, *, summary: bool = False) -> None:
    """The step summary (always in Actions; ``summary``: required) and one error line when anything failed."""
    if summary or gha.in_actions():
        add_to_step_summary(render_summary(report), required=summary)
    if not report["ok"]:
        raise FleetciError(failure_message(report))
