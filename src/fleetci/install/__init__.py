"""``fleetci install``: apt and pip installs that survive dpkg locks and flaky package indexes.

:func:`run` is the whole capability (the CLI, the action and the benchmark call it): wait for apt's locks,
install apt packages, install pip requirements with retries and a one-by-one fallback, verify imports in
fresh interpreters, and return the JSON report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from fleetci.install.report import SCHEMA, platform_info
from fleetci.install.settings import InstallSettings, install_settings

__all__ = ["InstallSettings", "install_settings", "run"]


def run(
    settings: InstallSettings, progress: Callable[[str], None], describe_platform: bool = True
) -> dict[str, Any]:
    """Do everything the settings ask for; failures are recorded in the report, not raised.

    Lock timeouts and usage errors still raise :class:`fleetci.errors.FleetciError`: nothing was installed.
    """
    from fleetci.install import pip
    from fleetci.install.apt import apt_install

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.monotonic()
    plan = pip.build_plan(settings)  # validate requirement syntax and files before waiting on anything
    report: dict[str, Any] = {"schema": SCHEMA, "started": started, "packages": [], "verify": []}
    if settings.wants_apt:
        outcome = apt_install(settings, progress)
        report["apt"] = {"lock_wait_s": round(outcome.lock_wait_s, 3), "updated": outcome.updated}
        report["packages"] += [r.as_dict() for r in outcome.results]
    if plan.items:
        report["packages"] += [r.as_dict() for r in pip.install(settings, plan, progress)]
    modules = settings.verify_modules
    if modules:
        report["verify"] = [v.as_dict() for v in pip.verify(settings.python, modules, progress)]
    if describe_platform:  # one extra interpreter start: only when someone reads the report
        report["platform"] = platform_info(settings.python)
    report["failed"] = [p["name"] for p in report["packages"] if not p["ok"]]
    report["failed"] += [f"import:{v['module']}" for v in report["verify"] if not v["ok"]]
    report["ok"] = not report["failed"]
    report["duration_s"] = round(time.monotonic() - t0, 3)
    return report
