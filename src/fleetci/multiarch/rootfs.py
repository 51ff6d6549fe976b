"""Minimal Debian root filesystems per architecture, built once with mmdebstrap and cached as .tar.zst.

A build takes minutes under emulation; unpacking the cached archive with the host's native zstd takes
about a second. Archives are keyed by (arch, suite, package set) and carry a SHA-256 sidecar, so a
truncated or corrupt download from ``actions/cache`` is noticed, moved aside (never deleted) and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetci import files
from fleetci.errors import FleetciError
from fleetci.multiarch.arch import Arch
from fleetci.retry import Backoff, Transient, call

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    print(f"multiarch: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RootfsSpec:
    """What a rootfs contains; its key names the cached archive."""

    arch: Arch
    suite: str
    packages: tuple[str, ...]
    mirror: str

    @property
    def key(self) -> str:
        # The mirror is not part of the key: the same suite from any mirror gives the same image.
        blob = json.dumps([self.arch.debian, self.suite, sorted(self.packages)]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def archive(self, rootfs_dir: Path) -> Path:
        return rootfs_dir / f"{self.arch.name}-{self.suite}-{self.key}.tar.zst"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar(archive: Path) -> Path:
    return archive.with_name(archive.name + ".sha256")


def log_path(archive: Path) -> Path:
    return archive.with_name(archive.name.removesuffix(".tar.zst") + ".log")


def move_aside(path: Path, why: str, progress: Progress) -> Path:
    """Keep a bad archive (and its checksum, as ``<kept>.sha256``) for inspection instead of deleting it."""
    target = files.move_aside(path)
    if target is None:  # another build moved it first (and its checksum with it)
        progress(f"warning: {path.name} {why}; already moved aside by another build, rebuilding")
        return path
    side = sidecar(path)
    if side.exists():
        files.move_into_place(side, target.with_name(target.name + ".sha256"))
    progress(f"warning: {path.name} {why}; moved to {target.name} and rebuilding")
    return target


def verify(archive: Path) -> str | None:
    """None when the archive matches its recorded SHA-256, else the reason it does not."""
    side = sidecar(archive)
    try:
        want = side.read_text(encoding="utf-8").split()[0]
    except (OSError, IndexError):
        return "has no checksum record"
    if sha256_file(archive) != want:
        return "does not match its SHA-256 (corrupt or truncated)"
    return None


@contextlib.contextmanager
def build_lock(rootfs_dir: Path, key: str) -> Iterator[None]:
    """One build per key at a time on this machine; a second caller waits and then reuses the result."""
    rootfs_dir.mkdir(parents=True, exist_ok=True)
    with (rootfs_dir / f".{key}.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass(frozen=True)
class RootfsResult:
    archive: Path
    built: bool
    seconds: float


def ensure_rootfs(spec: RootfsSpec, rootfs_dir: Path, progress: Progress = stderr_progress) -> RootfsResult:
    """The cached archive for ``spec``, built first when missing or corrupt."""
    archive = spec.archive(rootfs_dir)
    started = time.monotonic()
    with build_lock(rootfs_dir, spec.key):
        if archive.exists():
            problem = verify(archive)
            if problem is None:
                return RootfsResult(archive, False, time.monotonic() - started)
            move_aside(archive, problem, progress)
        build_with_retries(spec, archive, progress)
    return RootfsResult(archive, True, time.monotonic() - started)


def build(spec: RootfsSpec, archive: Path, progress: Progress) -> None:
    """Run mmdebstrap (progress lines and a heartbeat on stderr) and publish the archive atomically."""
    for tool in ("mmdebstrap", "zstd"):
        if not shutil.which(tool):
            raise FleetciError(f"{tool} is not installed (apt-get install mmdebstrap zstd arch-test)")
    partial = archive.with_name(f".building-{os.getpid()}-{archive.name}")
    log = log_path(archive)
    argv = [
        "mmdebstrap",
        f"--arch={spec.arch.debian}",
        "--variant=minbase",
        "--mode=root",
        f"--include={','.join(spec.packages)}",
        # Docs, man pages and locales are dead weight in a test guest.
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--aptopt=Acquire::Retries=3",
        spec.suite,
        str(partial),
        spec.mirror,
    ]
    progress(
        f"building the {spec.arch.name} rootfs ({spec.suite}: {', '.join(spec.packages)}) with mmdebstrap; "
        f"this takes a few minutes once, later runs reuse {archive.name}"
    )
    started = time.monotonic()
    env = {
        "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        "LANG": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
    }
    for var in ("http_proxy", "https_proxy", "no_proxy"):
        if var in os.environ:
            env[var] = os.environ[var]
    with log.open("w", encoding="utf-8") as log_fh:
        log_fh.write("$ " + " ".join(argv) + "\n")
        log_fh.flush()
        proc = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, errors="replace"
        )
        assert proc.stdout is not None
        done = threading.Event()

        def heartbeat() -> None:
            while not done.wait(20):
                progress(f"  … still building ({time.monotonic() - started:.0f} s)")

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        try:
            for line in proc.stdout:
                log_fh.write(line)
                log_fh.flush()
                if line.startswith(("I: ", "E: ", "W: ")):
                    progress(f"  {line.rstrip()} ({time.monotonic() - started:.0f} s)")
            rc = proc.wait()
        finally:
            done.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise FleetciError(
            f"rootfs build failed for {spec.arch.name}/{spec.suite} (mmdebstrap exit {rc}): "
            f"{log_tail(log)} (full log: {log})"
        )
    digest = sha256_file(partial)
    files.move_into_place(partial, archive)
    files.write_atomic(sidecar(archive), f"{digest}  {archive.name}\n")
    size = archive.stat().st_size / 1e6
    progress(f"rootfs {archive.name} built in {time.monotonic() - started:.0f} s ({size:.0f} MB)")


def log_tail(log: Path, lines: int = 3) -> str:
    """The last meaningful lines of a build log, joined into one line for the error message."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "no log"
    useful = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("$ ")]
    errors = [ln for ln in useful if ln.startswith("E: ")]
    # The first error is usually the cause (a failed fetch), the last one what gave up.
    picked = list(dict.fromkeys([errors[0], *errors[-(lines - 1) :]])) if errors else useful[-lines:]
    return " | ".join(ln[:240] for ln in picked) or "mmdebstrap printed nothing"


# Mirror hiccups worth another build attempt (apt already retries single downloads).
TRANSIENT_BUILD_ERRORS = (
    "Mirror sync in progress",
    "Temporary failure",
    "Connection timed out",
    "Hash Sum mismatch",
)


class MirrorHiccup(FleetciError, Transient):
    """A failed build whose log shows a transient mirror problem: worth building again."""


def build_with_retries(spec: RootfsSpec, archive: Path, progress: Progress, attempts: int = 3) -> None:
    """Build, retrying only when mmdebstrap's log shows a transient mirror problem (after 10 s, 20 s …)."""

    def attempt(n: int) -> None:
        try:
            build(spec, archive, progress)
        except FleetciError as exc:
            log = log_path(archive)
            text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
            if any(marker in text for marker in TRANSIENT_BUILD_ERRORS):
                raise MirrorHiccup(str(exc), exit_code=exc.exit_code) from exc
            raise

    def on_retry(n: int, sleep: float, exc: BaseException) -> None:
        progress(f"rootfs build hit a transient mirror error; retrying in {sleep:.0f} s ({n}/{attempts})")

    # waits of 10 s, 20 s, … (10 * 2**(n-1), no jitter: at most 20 s)
    policy = Backoff(retries=attempts - 1, initial=10.0, most=10.0 * (attempts - 1), jitter=0.0)
    call(attempt, policy, retry_on=MirrorHiccup, on_retry=on_retry)


def unpack(archive: Path, dest: Path, progress: Progress = stderr_progress) -> float:
    """Extract with the host's (native, multi-threaded) zstd; a broken archive is moved aside."""
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["tar", "--use-compress-program=zstd -d -T0", "-x", "-f", str(archive), "-C", str(dest)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        remove_tree(dest)
        reason = (proc.stderr.strip().splitlines() or ["tar failed"])[0]
        kept = move_aside(archive, f"cannot be unpacked ({reason})", progress)
        raise FleetciError(
            f"cached rootfs {archive.name} is corrupt ({reason}); kept as {kept}; run again to rebuild"
        )
    return time.monotonic() - started


def remove_tree(path: Path) -> None:
    """Delete an unpacked guest without crossing into anything still mounted inside it."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)
