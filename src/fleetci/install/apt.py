"""apt-get installs that wait for dpkg/apt locks instead of failing, and retry flaky mirrors.

The lock wait is ours (fcntl, with progress and the holder's name); apt-get also gets
``-o DPkg::Lock::Timeout=<what is left>`` so a lock grabbed between our check and apt's own is waited for.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fleetci import retry
from fleetci.errors import FleetciError
from fleetci.install.locks import lock_paths, wait_for_locks
from fleetci.install.pip import PackageResult
from fleetci.install.retry import PermanentFailure, TransientFailure, first_match, policy
from fleetci.install.settings import InstallSettings, apt_name

Progress = Callable[[str], None]

TRANSIENT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Temporary failure resolving '([^']+)'"), r"DNS failure for \1"),
    (re.compile(r"Could not connect to (\S+)"), r"cannot connect to \1"),
    (re.compile(r"Connection timed out|Connection failed|Unable to connect", re.I), "connection failed"),
    (re.compile(r"Hash Sum mismatch|File has unexpected size"), "mirror sync in progress (hash mismatch)"),
    (re.compile(r"\b(5\d\d)\s+[A-Z][A-Za-z ]+\s*\[IP"), r"mirror answered HTTP \1"),
    (re.compile(r"Failed to fetch (\S+)"), r"failed to fetch \1"),
]
PERMANENT: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"Unable to locate package (\S+)"), r"no apt package \1"),
    (re.compile(r"Package '?(\S+?)'? has no installation candidate"), r"apt package \1 has no candidate"),
    (
        re.compile(r"Could not get lock (\S+)\. It is held by process (\d+) \(([^)]*)\)"),
        r"\1 still held by pid \2 (\3)",
    ),
    (re.compile(r"Unmet dependencies"), "unmet dependencies"),
]


@dataclass
class AptOutcome:
    results: list[PackageResult]
    lock_wait_s: float
    updated: bool


def _lists_present() -> bool:
    lists = Path("/var/lib/apt/lists")
    return lists.is_dir() and any(lists.glob("*_Packages*"))


def _apt_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DEBIAN_FRONTEND"] = "noninteractive"
    env.setdefault("NEEDRESTART_MODE", "a")
    return env


def _run(argv: list[str], label: str, progress: Progress) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, env=_apt_env(), timeout=3600)
    if proc.returncode == 0:
        return
    text = proc.stdout + proc.stderr
    transient = first_match(text, TRANSIENT)
    if transient and "Unable to locate package" not in text:
        progress(f"apt-get {label} failed: {transient}")
        raise TransientFailure(transient)
    reason = first_match(text, PERMANENT)
    if reason is None:
        errors = [ln[2:].strip() for ln in text.splitlines() if ln.startswith("E:")]
        reason = errors[-1] if errors else f"exit code {proc.returncode}"
    raise PermanentFailure(reason)


def apt_install(settings: InstallSettings, progress: Progress) -> AptOutcome:
    """Wait for the locks, refresh lists when needed (with retries), install; one result per package.

    The package names were checked when ``settings`` was created (``InstallSettings.__post_init__``).
    """
    start = time.monotonic()
    deadline = start + settings.lock_timeout
    waited = wait_for_locks(
        lock_paths(settings.lock_root), settings.lock_timeout, progress, every=settings.progress_every
    )
    if not settings.apt_packages:
        return AptOutcome([], waited, False)
    if shutil.which("apt-get") is None:
        raise FleetciError("apt-get not found: --apt needs a Debian/Ubuntu runner")
    if os.geteuid() != 0:
        raise FleetciError("--apt needs root (run fleetci with sudo, or as root in the container)")

    def lock_opt() -> list[str]:
        remaining = max(1, int(deadline - time.monotonic()))
        return ["-o", f"DPkg::Lock::Timeout={remaining}"]

    attempts = 0
    retries = 0
    updated = False

    def on_retry(n: int, sleep: float, exc: BaseException) -> None:
        nonlocal retries
        retries += 1
        progress(f"apt-get: transient failure ({exc}); retry {n}/{settings.retries} in {sleep:.1f}s")

    def update(n: int) -> None:
        nonlocal attempts
        attempts += 1
        progress(f"apt-get update (attempt {n})")
        _run(["apt-get", "-q", *lock_opt(), "--error-on=any", "update"], "update", progress)

    def install(n: int) -> None:
        nonlocal attempts
        attempts += 1
        argv = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *lock_opt()]
        argv += ["-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold"]
        _run([*argv, "--", *settings.apt_packages], "install", progress)  # "--": never an option

    def retried(step: Callable[[int], None]) -> None:
        retry.call(step, policy(settings), retry_on=TransientFailure, on_retry=on_retry)

    error: str | None = None
    try:
        if settings.apt_update == "always" or (settings.apt_update == "auto" and not _lists_present()):
            retried(update)
            updated = True
        progress(f"apt-get install {' '.join(settings.apt_packages)}")
        try:
            retried(install)
        except PermanentFailure as exc:
            if settings.apt_update != "auto" or updated or "no apt package" not in str(exc):
                raise
            progress(f"{exc}: refreshing package lists and trying again")
            retried(update)
            updated = True
            retried(install)
    except (TransientFailure, PermanentFailure) as exc:
        error = str(exc)
    versions = _dpkg_versions(settings.apt_packages)
    elapsed = round(time.monotonic() - start, 3)
    results = []
    for pkg in settings.apt_packages:
        name = apt_name(pkg)
        ok = error is None and name in versions
        results.append(
            PackageResult(
                name=name,
                requested=pkg,
                installed=versions.get(name),
                attempts=attempts,
                retries=retries,
                duration_s=elapsed,
                phase="apt",
                ok=ok,
                error=None if ok else (error or "not installed after apt-get install"),
                kind="apt",
            )
        )
    return AptOutcome(results, waited, updated)


def _dpkg_versions(packages: tuple[str, ...]) -> dict[str, str]:
    names = [apt_name(p) for p in packages]
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${Version}\t${db:Status-Status}\n", "--", *names],
        capture_output=True,
        text=True,
    )
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] == "installed":
            out[parts[0]] = parts[1]
    return out
