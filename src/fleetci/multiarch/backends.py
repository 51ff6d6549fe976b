"""The native and docker backends (the chroot one lives in :mod:`fleetci.multiarch.chroot`)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.multiarch.arch import host_arch
from fleetci.multiarch.binfmt import ensure_binfmt
from fleetci.multiarch.rootfs import Progress
from fleetci.multiarch.settings import MultiarchSettings

# Exit code the docker guest script uses when pip fails, so it is not mistaken for the command's own.
PIP_FAILED = 222
# What scripts/install_fleetci.sh leaves in the virtualenv it makes for fleetci alone (the actions put its
# bin directory on PATH): that environment is fleetci's, never the Python under test.
INSTALL_MARKER = ".fleetci-install"


def _own_venv(bindir: str) -> bool:
    return bool(bindir) and (Path(bindir).parent / INSTALL_MARKER).is_file()


@contextlib.contextmanager
def _wrapper_dir(cache_dir: Path) -> Iterator[Path]:
    """A fresh directory for the native backend's python/python3 wrappers, removed after the run.

    The wrappers are executed, so they live under the multiarch cache dir (chroot runs execute from it
    too), never in TMPDIR: /tmp is often mounted noexec on hardened runners."""
    runs = cache_dir / "run"
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FleetciError(f"cannot create {runs} (multiarch cache dir): {exc.strerror or exc}") from exc
    with tempfile.TemporaryDirectory(prefix=f"native-{os.getpid()}-", dir=runs) as shim:
        yield Path(shim)


def run_native(settings: MultiarchSettings, command: list[str], progress: Progress) -> int:
    """Run on this machine; with --python, ``python``/``python3`` resolve to that interpreter.

    fleetci's own virtualenv (the one install_fleetci.sh made, on PATH in Actions) is left off the
    command's PATH: its python3 has fleetci's dependencies, and would shadow the tested one of the same
    version (setup-python's 3.11 when fleetci also installed with 3.11)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join(d for d in env.get("PATH", "").split(os.pathsep) if d and not _own_venv(d))
    with contextlib.ExitStack() as stack:
        if settings.python:
            interpreter = shutil.which(f"python{settings.python}", path=env["PATH"])
            if interpreter is None:
                current = f"{sys.version_info.major}.{sys.version_info.minor}"
                if current != settings.python:
                    raise FleetciError(
                        f"Python {settings.python} is not installed on this {settings.arch.name} host "
                        f"(no python{settings.python} on PATH; actions/setup-python can provide it)"
                    )
                own = _own_venv(str(Path(sys.prefix) / "bin"))
                interpreter = getattr(sys, "_base_executable", sys.executable) if own else sys.executable
            shim = stack.enter_context(_wrapper_dir(settings.cache_dir))
            # A wrapper that execs the interpreter by the path found, not a symlink to it: Python finds
            # its virtualenv (pyvenv.cfg) next to the path it was started as, so a symlink elsewhere
            # would run a venv's base interpreter instead (without the venv's packages).
            for name in ("python", "python3"):
                wrapper = shim / name
                wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(interpreter)} "$@"\n', encoding="utf-8")
                wrapper.chmod(0o755)
            env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
        for req in settings.requirements:
            progress(f"pip install -r {req.name} (native)")
            rc = subprocess.run(
                ["python3", "-m", "pip", "install", "--progress-bar", "off", "-r", str(req)],
                cwd=settings.project,
                env=env,
                check=False,
            ).returncode
            if rc != 0:
                raise FleetciError(f"installing test dependencies failed (pip exit {rc})", exit_code=rc)
        sys.stdout.flush()
        return subprocess.run(command, cwd=settings.project, env=env, check=False).returncode


def docker_available(env: dict[str, str] | None = None) -> str | None:
    """None when a docker daemon answers, else why not (one line)."""
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    try:
        proc = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=20,
            env=env,
        )
    except subprocess.TimeoutExpired:
        return "the docker daemon did not answer within 20 s"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return lines[-1] if lines else "docker version failed"
    return None


def docker_image(settings: MultiarchSettings) -> str:
    return settings.image or f"python:{settings.python or '3.11'}"


def run_docker(settings: MultiarchSettings, command: list[str], progress: Progress) -> int:
    """``docker run --platform linux/<arch>`` with the project mounted at /project."""
    problem = docker_available()
    if problem:
        host = os.environ.get("DOCKER_HOST", "the default socket")
        raise FleetciError(f"docker backend unavailable ({host}): {problem}")
    native = host_arch()
    if native is None or native.name != settings.arch.name:
        ensure_binfmt(settings.arch)
    image = docker_image(settings)
    platform = settings.arch.platform
    have = subprocess.run(["docker", "image", "inspect", image], capture_output=True, text=True)
    if have.returncode != 0:
        progress(f"docker pull --platform {platform} {image}")
        pulled = subprocess.run(
            ["docker", "pull", "--platform", platform, image], capture_output=True, text=True
        )
        if pulled.returncode != 0:
            lines = [ln for ln in pulled.stderr.strip().splitlines() if ln.strip()]
            raise FleetciError(
                f"cannot pull image {image} for {platform}: {lines[-1] if lines else 'docker pull failed'}"
            )
    reqs = " ".join(
        "-r " + shlex.quote("/project/" + str(r.relative_to(settings.project))) for r in settings.requirements
    )
    script = 'cd /project && exec "$@"'
    if reqs:  # pip's output is set-up progress: stderr; stdout belongs to the command
        script = (
            f"cd /project && {{ python3 -m pip install --progress-bar off {reqs} 1>&2 || "
            f'{{ echo "fleetci-guest: pip install failed" >&2; exit {PIP_FAILED}; }}; }} && exec "$@"'
        )
    argv = [
        "docker",
        "run",
        "--rm",
        "--platform",
        platform,
        "--network",
        "host",
        "-v",
        f"{settings.project}:/project",
        "-w",
        "/project",
        "-e",
        "PIP_BREAK_SYSTEM_PACKAGES=1",
        "-e",
        "PIP_DISABLE_PIP_VERSION_CHECK=1",
        "-e",
        "PIP_ROOT_USER_ACTION=ignore",
        "-e",
        "PYTHONUNBUFFERED=1",
        image,
        "/bin/sh",
        "-c",
        script,
        "fleetci-guest",
        *command,
    ]
    sys.stdout.flush()
    rc = subprocess.run(argv, check=False).returncode
    if reqs and rc == PIP_FAILED:
        raise FleetciError(
            f"installing test dependencies in the {settings.arch.name} container failed", exit_code=1
        )
    return rc
