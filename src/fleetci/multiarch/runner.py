"""``fleetci multiarch run``: pick a backend, run the command, report where the time went."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from fleetci import gha
from fleetci.errors import FleetciError, UsageError
from fleetci.multiarch.arch import SUITE_PYTHON, host_arch, suite_for
from fleetci.multiarch.backends import docker_available, run_docker, run_native
from fleetci.multiarch.chroot import Guest, Timings
from fleetci.multiarch.rootfs import Progress, stderr_progress
from fleetci.multiarch.settings import MultiarchSettings


@dataclass(frozen=True)
class RunResult:
    backend: str
    exit_code: int
    seconds: float
    timings: Timings


def choose_backend(settings: MultiarchSettings) -> str:
    """auto: native on the same architecture, else chroot (root, Debian has that Python), else docker."""
    native = host_arch()
    same = native is not None and native.name == settings.arch.name
    if settings.backend == "native" and not same:
        have = native.name if native else "an unsupported architecture"
        raise UsageError(f"--backend native needs a {settings.arch.name} host; this host is {have}")
    if settings.backend != "auto":
        return settings.backend
    if same:
        return "native"
    chroot_python = (
        settings.suite is not None  # checked against the arch and python when the settings were read
        or settings.python is None
        or settings.python in {SUITE_PYTHON[s] for s in settings.arch.suites}
    )
    if os.geteuid() == 0 and chroot_python:
        return "chroot"
    if docker_available() is None:
        return "docker"
    if not chroot_python:
        suite_for(settings.arch, settings.python)  # raises the precise reason
    raise FleetciError(
        f"no backend can run {settings.arch.name} here: the chroot backend needs root and no docker daemon "
        "answers"
    )


NO_COMMAND = "no command given: fleetci multiarch run --arch ARCH -- CMD …"


def guest_command(argv: list[str]) -> list[str]:
    """The command after ``--``; none is a usage error (asked before any setting is read)."""
    command = argv[1:] if argv[:1] == ["--"] else list(argv)
    if not command:
        raise UsageError(NO_COMMAND)
    return command


def run_command(settings: MultiarchSettings, command: list[str]) -> RunResult:
    """``fleetci multiarch run``: :func:`run`, and the command's failure as one error with its exit code."""
    result = run(settings, command)
    if result.exit_code != 0:
        code = result.exit_code if result.exit_code > 0 else 128 - result.exit_code  # killed by a signal
        raise FleetciError(
            f"command failed with exit code {result.exit_code} on {settings.arch.name} ({result.backend}): "
            f"{' '.join(command)}",
            exit_code=code,
        )
    return result


def run(settings: MultiarchSettings, command: list[str], progress: Progress = stderr_progress) -> RunResult:
    """Run ``command`` in the project on ``settings.arch``; returns its exit code (never raises for it)."""
    if not command:
        raise UsageError(NO_COMMAND)
    backend = choose_backend(settings)
    started = time.monotonic()
    timings = Timings()
    label = f"{settings.arch.name} ({backend})"
    if backend == "native":
        with gha.group(f"fleetci multiarch: {' '.join(command)} on {label}"):
            rc = run_native(settings, command, progress)
        timings.command_s = time.monotonic() - started
    elif backend == "docker":
        with gha.group(f"fleetci multiarch: {' '.join(command)} on {label}"):
            rc = run_docker(settings, command, progress)
        timings.command_s = time.monotonic() - started
    else:
        guest = Guest(settings, progress)
        try:
            with gha.group(f"fleetci multiarch: prepare the {settings.arch.name} guest ({guest.suite})"):
                guest.prepare()
                guest.install_requirements()
                guest.precompile(command)
            with gha.group(f"fleetci multiarch: {' '.join(command)} on {label}"):
                t0 = time.monotonic()
                rc = guest.exec(command)
                guest.timings.command_s = time.monotonic() - t0
        finally:
            guest.close()
        timings = guest.timings
    result = RunResult(backend, rc, time.monotonic() - started, timings)
    summarize(settings, command, result)
    return result


def summarize(settings: MultiarchSettings, command: list[str], result: RunResult) -> None:
    t = result.timings
    rows = [
        ["architecture", settings.arch.name],
        ["backend", result.backend],
        ["command", "`" + " ".join(command).replace("|", "\\|") + "`"],
        ["exit code", str(result.exit_code)],
        ["total", f"{result.seconds:.1f} s"],
        ["command time", f"{t.command_s:.1f} s"],
    ]
    if result.backend == "chroot":
        rows += [
            ["rootfs", f"{'built' if t.rootfs_built else 'cached'} ({t.rootfs_s:.1f} s)"],
            ["unpack", f"{t.unpack_s:.1f} s"],
            [
                "test dependencies",
                "none"
                if not settings.requirements
                else f"{'cached layer' if t.deps_cached else 'pip in the guest'} ({t.deps_s:.1f} s)",
            ],
        ]
    gha.append_step_summary(
        f"### fleetci multiarch: {settings.arch.name}\n\n" + gha.markdown_table(["", ""], rows)
    )
