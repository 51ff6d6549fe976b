"""The chroot backend: a cached Debian rootfs, QEMU through binfmt_misc, no docker daemon.

Each run unpacks a fresh guest (about a second), bind-mounts the project at ``/project`` inside a
private mount namespace (``unshare --mount``: the mounts vanish with the process even on ``kill -9``)
and runs the command with a clean environment. Test dependencies installed with pip in the guest are
cached as a layer keyed by the requirements' content, so pip (slow under emulation) runs once.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import py_compile
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from fleetci import files, retry
from fleetci.errors import FleetciError
from fleetci.multiarch.arch import SUITE_PYTHON, Arch, host_arch, suite_for
from fleetci.multiarch.binfmt import ensure_binfmt
from fleetci.multiarch.rootfs import (
    Progress,
    RootfsSpec,
    build_lock,
    ensure_rootfs,
    remove_tree,
    sha256_file,
    sidecar,
    stderr_progress,
    unpack,
)
from fleetci.multiarch.settings import MultiarchSettings

# Guest pip (slow under emulation) with safe-install's rule: transient failures retried 3 times.
GUEST_PIP_RETRIES = retry.Backoff(retries=3, initial=2.0, most=30.0)
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
GUEST_PROJECT = "/project"
# Host CA bundles: the guest's pip must trust the same (possibly private) CAs as the host.
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_EXTRA_CAS = Path("/usr/local/share/ca-certificates")

# Runs as root in a private mount namespace: "$1" guest root, "$2" project, "$3" pip cache, "$4"-"$6"
# overlay lower/upper/work dirs ("-" when the guest is a plain unpacked tree), then the argv that enters
# the guest (see Guest._enter).
MOUNT_SCRIPT = r"""
set -e
root=$1 project=$2 pipcache=$3 lower=$4 upper=$5 work=$6
shift 6
if [ "$lower" != - ]; then
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$root"
fi
mount --bind "$project" "$root/project"
mount -t proc proc "$root/proc"
mount --rbind /dev "$root/dev"
mount --rbind /sys "$root/sys"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount --bind "$pipcache" "$root/root/.cache/pip"
exec "$@"
"""
# What the guest's environment gets beyond guest_env(): the variables the shell that used to start
# every command (``sh -c 'cd /project && exec "$@"'``) left behind, so commands see the same environment.
SHELL_CD_ENV = {"PWD": GUEST_PROJECT, "OLDPWD": "/"}


MOUNT_POINTS = ("project", "proc", "dev", "sys", "tmp", "root/.cache/pip")
_OVERLAY: dict[Path, bool] = {}


def overlay_supported(cache_dir: Path) -> bool:
    """Can this kernel/filesystem overlay-mount under ``cache_dir``? Tried once per process."""
    if cache_dir in _OVERLAY:
        return _OVERLAY[cache_dir]
    probe = cache_dir / "run" / f".overlay-probe-{os.getpid()}"
    dirs = [probe / d for d in ("lower", "upper", "work", "merged")]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={dirs[0]},upperdir={dirs[1]},workdir={dirs[2]}"
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            opts,
            str(dirs[3]),
        ],
        capture_output=True,
    )
    remove_tree(probe)
    _OVERLAY[cache_dir] = proc.returncode == 0
    return _OVERLAY[cache_dir]


def ensure_tree(archive: Path, trees_dir: Path, progress: Progress) -> Path:
    """The archive unpacked once into ``trees_dir`` (reused while the archive's checksum is unchanged)."""
    digest = sidecar(archive).read_text(encoding="utf-8").split()[0]
    tree = trees_dir / archive.name.removesuffix(".tar.zst")
    marker = tree / ".fleetci-tree"
    if marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest:
        return tree
    with build_lock(trees_dir, tree.name):
        if marker.is_file() and marker.read_text(encoding="utf-8").strip() == digest:
            return tree
        partial = trees_dir / f".{tree.name}.{os.getpid()}"
        remove_tree(partial)
        seconds = unpack(archive, partial, progress)
        for d in MOUNT_POINTS:
            (partial / d).mkdir(parents=True, exist_ok=True)
        (partial / ".fleetci-tree").write_text(digest + "\n", encoding="utf-8")
        remove_tree(tree)
        files.move_into_place(partial, tree)
        progress(f"unpacked {archive.name} in {seconds:.1f} s (once per machine)")
    return tree


@dataclass
class Timings:
    """Where a run's wall time went (the bench and the step summary report these)."""

    rootfs_s: float = 0.0
    rootfs_built: bool = False
    unpack_s: float = 0.0
    deps_s: float = 0.0
    deps_cached: bool = False
    precompile_s: float = 0.0
    command_s: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


_NATIVE_ENTER: list[tuple[str, str] | None] = []


def native_enter_tools() -> tuple[str, str] | None:
    """The host's ``env`` and an ``unshare`` that has ``--root``/``--wd`` (util-linux >= 2.36), or None."""
    if not _NATIVE_ENTER:
        host_env, unshare = shutil.which("env"), shutil.which("unshare")
        found = None
        if host_env and unshare:
            proc = subprocess.run([unshare, "--help"], capture_output=True, text=True, check=False)
            if "--root" in proc.stdout and "--wd" in proc.stdout:
                found = (host_env, unshare)
        _NATIVE_ENTER.append(found)
    return _NATIVE_ENTER[0]


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise FleetciError(
            f"{what} needs root (mmdebstrap, mount and chroot); run it with sudo or use --backend docker"
        )


def guest_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The guest's whole environment: nothing from the host leaks in (host PIP_* settings break pip)."""
    env = {
        "PATH": GUEST_PATH,
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "PIP_BREAK_SYSTEM_PACKAGES": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_ROOT_USER_ACTION": "ignore",
        "PIP_NO_WARN_SCRIPT_LOCATION": "1",
    }
    env.update(extra or {})
    return env


def assignments(env: dict[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in sorted(env.items())]


def guest_env(extra: dict[str, str] | None = None) -> list[str]:
    """``env -i`` arguments (the guest's own env binary) for :func:`guest_environment`."""
    return ["/usr/bin/env", "-i", *assignments(guest_environment(extra))]


# -- native precompile of pytest's rewritten test modules (see Guest.start_pytest_rewrite) ---------
REWRITE_HELPER = Path(__file__).with_name("pytest_rewrite.py")
PASS_HOOK = b"enable_assertion_pass_hook"
DEBIAN_SITE = "usr/lib/python3/dist-packages"  # Debian's packages; pip puts everything in /usr/local
# Never descended into: VCS data, caches, virtualenvs and node_modules (as compileall is told above).
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", "node_modules"})
SCAN_MAX_FILES = 20_000
# Below this many modules compileall runs in-process: a worker pool costs more than it saves.
PARALLEL_COMPILE_FROM = 200
REWRITE_TIMEOUT = 120.0
SCAN_MAX_FILE_BYTES = 1 << 20
# Not read when looking for the setting: archives, images, compiled and data files.
_BINARY = (
    ".7z .a .bin .bmp .bz2 .class .csv .dat .db .dll .exe .gif .gz .h5 .ico .jar .jpeg .jpg .mo .npy .npz .o "
    ".onnx .parquet .pdf .pkl .png .pt .pyc .pyo .safetensors .so .sqlite .tar .tgz .tsv .ttf .webp .whl "
    ".woff .woff2 .xz .zip .zst"
)
BINARY_SUFFIXES = frozenset(_BINARY.split())


@dataclass
class ProjectScan:
    test_files: list[Path]  # what pytest rewrites by default: conftest.py, test_*.py, *_test.py
    mentions_pass_hook: bool
    python_files: int = 0  # counted until the walk ends (or stops at a mention of the pass hook)


def is_test_module(name: str) -> bool:
    return name == "conftest.py" or (
        name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))
    )


def scan_project(project: Path) -> ProjectScan | None:
    """One walk of the project: its test modules, and whether any file mentions the pass hook.

    None when the project is too big to read through quickly (then nothing is precompiled for pytest).
    """
    tests: list[Path] = []
    seen = python_files = 0
    for dirpath, dirnames, filenames in os.walk(project):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        hidden = any(part.startswith(".") for part in Path(dirpath).relative_to(project).parts)
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            seen += 1
            python_files += name.endswith(".py")
            if seen > SCAN_MAX_FILES:
                return None
            readable = path.suffix.lower() not in BINARY_SUFFIXES
            if readable and path.stat().st_size <= SCAN_MAX_FILE_BYTES and PASS_HOOK in path.read_bytes():
                return ProjectScan(tests, True, python_files)
            if not hidden and is_test_module(name):
                tests.append(path)
    return ProjectScan(sorted(tests), False, python_files)


def mentions_pass_hook(site_dir: Path) -> bool:
    """Any ``.py``/``.pth``/``.txt``/``.cfg``/``.toml`` in a site directory, outside pytest's own code."""
    for dirpath, dirnames, filenames in os.walk(site_dir):
        if Path(dirpath) == site_dir:
            dirnames[:] = [d for d in dirnames if d not in {"_pytest", "pytest", "__pycache__"}]
        else:
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith((".py", ".pth", ".txt", ".cfg", ".toml", ".ini")):
                path = Path(dirpath, name)
                try:
                    if PASS_HOOK in path.read_bytes():
                        return True
                except OSError:
                    continue
    return False


class Guest:
    """One unpacked rootfs, ready to run commands in; removed by :meth:`close`."""

    def __init__(self, settings: MultiarchSettings, progress: Progress = stderr_progress) -> None:
        self.settings = settings
        self.progress = progress
        self.arch: Arch = settings.arch
        self.suite = suite_for(settings.arch, settings.python, settings.suite)
        self.python = SUITE_PYTHON[self.suite]
        self.spec = RootfsSpec(self.arch, self.suite, settings.all_packages, settings.mirror)
        self.timings = Timings()
        self.root: Path | None = None  # what the guest sees as /
        self.upper: Path | None = None  # where the run's own files go (== root without overlay)
        self.lower: Path | None = None  # shared read-only tree (overlay mode)
        self.run_dir: Path | None = None
        self.archive: Path | None = None  # the cached rootfs archive the guest comes from
        self._rewrite: subprocess.Popen[str] | None = None  # the native pytest rewrite, while it runs

    # -- set-up ---------------------------------------------------------------------------------
    def prepare(self) -> None:
        require_root("the chroot backend")
        native = host_arch()
        if native is None or native.name != self.arch.name:
            ensure_binfmt(self.arch)
        result = ensure_rootfs(self.spec, self.settings.rootfs_dir, self.progress)
        self.timings.rootfs_s, self.timings.rootfs_built = result.seconds, result.built
        self.archive = result.archive
        if not result.built:
            self.progress(f"reusing cached rootfs {result.archive.name} (checked in {result.seconds:.1f} s)")
        run_dir = self.settings.cache_dir / "run" / f"{self.arch.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.run_dir = run_dir
        if overlay_supported(self.settings.cache_dir):
            # The archive is unpacked once per machine into a read-only lower tree; every run gets its
            # own writable overlay on top, so a warm start costs a mount instead of an unpack.
            t0 = time.monotonic()
            self.lower = ensure_tree(result.archive, self.settings.cache_dir / "trees", self.progress)
            self.root = run_dir / "merged"
            self.upper = run_dir / "upper"
            for d in (self.root, self.upper, run_dir / "work"):
                d.mkdir(parents=True, exist_ok=True)
            self.timings.unpack_s = time.monotonic() - t0
            self.progress(f"{self.arch.name} guest ready in {self.timings.unpack_s:.1f} s (overlay)")
        else:
            self.root = self.upper = run_dir / "root"
            self.timings.unpack_s = unpack(result.archive, self.root, self.progress)
            self.progress(f"unpacked {self.arch.name} guest in {self.timings.unpack_s:.1f} s")
        self._configure()

    def _configure(self) -> None:
        """Files the guest needs from the host, written where the run's changes go (upper layer)."""
        assert self.upper is not None
        for d in MOUNT_POINTS:
            (self.upper / d).mkdir(parents=True, exist_ok=True)
        certs = self.upper / "etc/ssl/certs"
        if HOST_CA_BUNDLE.is_file():
            certs.mkdir(parents=True, exist_ok=True)
            target = certs / "ca-certificates.crt"
            target.unlink(missing_ok=True)  # may be a symlink into the guest
            shutil.copyfile(HOST_CA_BUNDLE, target)
        if HOST_EXTRA_CAS.is_dir():
            dest = self.upper / "usr/local/share/ca-certificates"
            dest.mkdir(parents=True, exist_ok=True)
            for crt in HOST_EXTRA_CAS.glob("*.crt"):
                shutil.copyfile(crt, dest / crt.name)
        resolv = self.upper / "etc/resolv.conf"
        resolv.unlink(missing_ok=True)
        if Path("/etc/resolv.conf").exists():
            shutil.copyfile("/etc/resolv.conf", resolv)

    def pip_cache(self) -> Path:
        path = self.settings.cache_dir / "pip" / f"{self.arch.name}-{self.suite}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- running --------------------------------------------------------------------------------
    def exec(self, argv: list[str], env: dict[str, str] | None = None, stdout: TextIO | None = None) -> int:
        """Run ``argv`` in the guest (cwd /project); returns its exit code, output goes straight through."""
        outer = self._outer(argv, env)
        sys.stdout.flush()
        sys.stderr.flush()
        rc = subprocess.run(outer, check=False, stdout=stdout).returncode
        self.finish_pytest_rewrite()
        return rc

    def _enter(self, argv: list[str], env: dict[str, str] | None) -> list[str]:
        """How the mount script enters the guest and starts ``argv`` in /project with a clean environment.

        With util-linux ``unshare --root --wd`` the host's native ``env``/``unshare`` clear the environment,
        chroot and change directory, then exec the command: nothing but the command runs under QEMU.
        Otherwise the guest's own ``env`` and ``sh`` do it, two more emulated process starts (~0.13 s).
        """
        assert self.root is not None, "prepare() first"
        tools = native_enter_tools()
        if tools is not None:
            host_env, unshare = tools
            clean = assignments(guest_environment({**SHELL_CD_ENV, **(env or {})}))
            return [
                host_env,
                "-i",
                *clean,
                unshare,
                f"--root={self.root}",
                f"--wd={GUEST_PROJECT}",
                "--",
                *argv,
            ]
        inner = [*guest_env(env), "/bin/sh", "-c", 'cd "$0" && exec "$@"', GUEST_PROJECT, *argv]
        return ["chroot", str(self.root), *inner]

    def _outer(self, argv: list[str], env: dict[str, str] | None) -> list[str]:
        assert self.root is not None, "prepare() first"
        inner = self._enter(argv, env)
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            MOUNT_SCRIPT,
            "fleetci-guest",
            str(self.root),
            str(self.settings.project),
            str(self.pip_cache()),
            *(
                (str(self.lower), str(self.upper), str(self.run_dir / "work"))
                if self.lower is not None and self.run_dir is not None
                else ("-", "-", "-")
            ),
            *inner,
        ]

    def shell(self, command: str, env: dict[str, str] | None = None) -> int:
        return self.exec(["/bin/sh", "-c", command], env)

    # -- test dependencies ------------------------------------------------------------------------
    def deps_key(self) -> str | None:
        reqs = self.settings.requirements
        if not reqs:
            return None
        h = hashlib.sha256(self.spec.key.encode())
        for req in reqs:
            h.update(req.name.encode() + b"\0" + sha256_file(req).encode())
        return h.hexdigest()[:16]

    def install_requirements(self) -> None:
        """pip install -r … in the guest once; later runs unpack the saved layer instead of running pip."""
        key = self.deps_key()
        if key is None or self.root is None:
            return
        started = time.monotonic()
        layer = self.settings.cache_dir / "deps" / f"{self.arch.name}-{self.suite}-{key}.tar.zst"
        if layer.is_file():
            proc = subprocess.run(
                ["tar", "--use-compress-program=zstd -d -T0", "-x", "-f", str(layer), "-C", str(self.upper)],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                self.timings.deps_s, self.timings.deps_cached = time.monotonic() - started, True
                self.progress(
                    f"test dependencies from cached layer {layer.name} ({self.timings.deps_s:.1f} s)"
                )
                return
            files.move_aside(layer)
            self.progress(f"warning: dependency layer {layer.name} is corrupt; moved aside, running pip")
        args = " ".join(
            f"-r {shlex.quote(GUEST_PROJECT + '/' + str(r.relative_to(self.settings.project)))}"
            for r in self.settings.requirements
        )
        self.progress(f"pip install {args} inside the {self.arch.name} guest")
        self._pip_with_retries(f"python3 -m pip install --progress-bar off {args}")
        layer.parent.mkdir(parents=True, exist_ok=True)
        partial = layer.with_name(f".{layer.name}.{os.getpid()}")
        subprocess.run(
            [
                "tar",
                "--use-compress-program=zstd -T0",
                "-c",
                "-f",
                str(partial),
                "-C",
                str(self.upper),
                "usr/local",
            ],
            check=True,
        )
        files.move_into_place(partial, layer)
        self.timings.deps_s = time.monotonic() - started

    def _pip_with_retries(self, command: str) -> None:
        """Guest pip with safe-install's policy: retry transient failures, fail fast on others."""
        from fleetci.install.pip import classify
        from fleetci.install.retry import InstallFailure, TransientFailure

        def attempt(n: int) -> None:
            rc, output = self.exec_captured(["/bin/sh", "-c", command])
            if rc != 0:
                raise classify(output)

        def on_retry(n: int, sleep: float, exc: BaseException) -> None:
            self.progress(f"guest pip attempt {n} failed ({exc}); retrying in {sleep:.0f} s")

        try:
            retry.call(attempt, GUEST_PIP_RETRIES, retry_on=TransientFailure, on_retry=on_retry)
        except InstallFailure as exc:
            raise FleetciError(
                f"installing test dependencies in the {self.arch.name} guest failed: {exc}"
            ) from exc

    def exec_captured(self, argv: list[str]) -> tuple[int, str]:
        """Like :meth:`exec`, but keep the output (pip's, to classify its failures) and show it on stderr:
        set-up is progress, stdout belongs to the user's command."""
        outer = self._outer(argv, None)
        proc = subprocess.Popen(
            outer, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
        sys.stderr.flush()
        return proc.wait(), "".join(lines)

    # -- bytecode ---------------------------------------------------------------------------------
    def precompile(self, command: Sequence[str] = ()) -> None:
        """Compile the project's bytecode with the host's native interpreter when it matches the guest's.

        CPython bytecode does not depend on the CPU, only on the version, so a native compile replaces
        the guest's emulated one: plain ``.pyc`` files for every module (with the guest's paths as the
        code's file names: byte for byte what the guest's import would write), and pytest's
        assertion-rewritten ``.pyc`` for the test modules (:meth:`start_pytest_rewrite`, which runs
        while the guest starts). ``command`` is the command about to run.
        """
        if not self.settings.precompile:
            return
        host = f"{sys.version_info.major}.{sys.version_info.minor}"
        if host != self.python:
            return
        started = time.monotonic()
        scan = scan_project(self.settings.project)
        small = scan is not None and not scan.mentions_pass_hook and scan.python_files < PARALLEL_COMPILE_FROM
        compileall.compile_dir(
            str(self.settings.project),
            quiet=2,
            workers=1 if small else 0,
            rx=re.compile(r"/(\.git|\.venv|venv|node_modules|\.tox)/"),
            ddir=GUEST_PROJECT,
            invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP,
        )
        if scan is not None:
            self.start_pytest_rewrite(command, scan)
        self.timings.precompile_s = time.monotonic() - started

    def start_pytest_rewrite(self, command: Sequence[str], scan: ProjectScan) -> bool:
        """Start making pytest's rewritten-assertion cache for test modules and conftest.py natively.

        Under QEMU pytest spends ~0.3 s (sample suite) parsing, rewriting and compiling test modules
        in every fresh checkout. The host runs the *guest's* pytest code for it (pytest_rewrite.py, a
        native process that needs ~0.2 s, mostly importing pytest) and writes the same cache files,
        which the guest's pytest then loads. It runs while the guest starts: pytest reaches the test
        modules seconds later under emulation, and if it gets there first it rewrites them itself
        (pytest's cache files are written atomically and both sides write identical bytes). The
        rewrite depends on one setting, ``enable_assertion_pass_hook``: when that name appears
        anywhere (the command, the project's files, a package in the guest's site directories other
        than pytest), nothing is done. :meth:`finish_pytest_rewrite` collects the result.
        """
        if self.run_dir is None or scan.mentions_pass_hook or not scan.test_files:
            return False
        if any(PASS_HOOK in arg.encode() for arg in command):
            return False
        site = self.guest_site_dirs()
        if self.site_mentions_pass_hook(site):
            return False
        project = self.settings.project
        request = {
            "path": [str(d) for d in site],
            "files": [
                [str(f), f"{GUEST_PROJECT}/{f.relative_to(project).as_posix()}"] for f in scan.test_files
            ],
        }
        request_file = self.run_dir / "pytest-rewrite.json"
        request_file.write_text(json.dumps(request), encoding="utf-8")
        self._rewrite = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", str(REWRITE_HELPER), str(request_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        return True

    def finish_pytest_rewrite(self) -> int:
        """Wait for :meth:`start_pytest_rewrite`'s helper; returns the number of files it wrote."""
        proc, self._rewrite = self._rewrite, None
        if proc is None:
            return 0
        try:
            out, _ = proc.communicate(timeout=REWRITE_TIMEOUT)
            result = json.loads((out.strip().splitlines() or ["{}"])[-1])
        except (subprocess.TimeoutExpired, ValueError) as exc:
            proc.kill()
            proc.communicate()
            self.progress(f"pytest's assertion rewrite was left to the guest ({type(exc).__name__})")
            return 0
        written = int(result.get("written", 0))
        self.timings.extra["pytest_rewritten_files"] = float(written)
        if written:
            self.progress(
                f"pytest assertion rewrite compiled natively for {written} test files ({result['tag']})"
            )
        return written

    def guest_site_dirs(self) -> list[Path]:
        """The guest's site directories in its ``sys.path`` order, per layer (the run's own first)."""
        layers = [layer for layer in (self.upper, self.lower) if layer is not None]
        rels = (f"usr/local/lib/python{self.python}/dist-packages", DEBIAN_SITE)
        return [layer / rel for rel in rels for layer in layers if (layer / rel).is_dir()]

    def site_mentions_pass_hook(self, site: list[Path]) -> bool:
        """Does any package in ``site`` other than pytest itself mention ``enable_assertion_pass_hook``?

        Debian's site directory comes unchanged from the archive (pip installs into /usr/local), so its
        answer is kept per archive; /usr/local (test dependencies) is read every run.
        """
        base = [d for d in site if d.as_posix().endswith("/" + DEBIAN_SITE)]
        if any(mentions_pass_hook(d) for d in site if d not in base):
            return True
        if not base or self.archive is None:
            return False
        digest = sidecar(self.archive).read_text(encoding="utf-8").split()[0]
        marker = self.settings.cache_dir / "trees" / f"{self.archive.name.removesuffix('.tar.zst')}.pass-hook"
        try:
            kept_digest, answer = marker.read_text(encoding="utf-8").split()
            if kept_digest == digest:
                return answer == "1"
        except (OSError, ValueError):
            pass
        found = any(mentions_pass_hook(d) for d in base)
        files.write_atomic(marker, f"{digest} {int(found)}\n", durable=False)  # a cache: found again if lost
        return found

    def close(self) -> None:
        if self._rewrite is not None:
            self._rewrite.kill()
            self._rewrite.wait()
            self._rewrite = None
        if self.run_dir is not None:
            remove_tree(self.run_dir)
        self.root = self.upper = self.lower = self.run_dir = None
