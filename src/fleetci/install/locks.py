"""Wait for the dpkg/apt locks the way apt itself sees them: POSIX ``fcntl`` write locks.

``lsof``/``fuser`` only show open files; apt decides with ``fcntl(F_SETLK, F_WRLCK)``. We ask the kernel
with ``F_GETLK`` (which never takes the lock, so we cannot starve or break a running apt) and get the
holder's pid back, then name it from ``/proc/<pid>/cmdline``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.wait import WaitTimeout, wait_until

# The locks apt-get/dpkg take, in the order apt takes them.
APT_LOCKS = (
    "var/lib/dpkg/lock-frontend",
    "var/lib/dpkg/lock",
    "var/lib/apt/lists/lock",
    "var/cache/apt/archives/lock",
)

# struct flock on Linux (64-bit off_t, also with _FILE_OFFSET_BITS=64 on 32-bit ARM):
# short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi"


@dataclass(frozen=True)
class Holder:
    path: Path
    pid: int
    command: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid > 0 else "another process"
        return f"{self.path} held by {who}" + (f" ({self.command})" if self.command else "")


def lock_paths(root: Path) -> tuple[Path, ...]:
    return tuple(root / p for p in APT_LOCKS)


def command_of(pid: int) -> str:
    """The holder's command line, shortened to one line (empty when it is gone or hidden)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    text = " ".join(p.decode(errors="replace") for p in raw.split(b"\0") if p)
    return text if len(text) <= 120 else text[:117] + "..."


def holder(path: Path) -> Holder | None:
    """Who holds a write-conflicting fcntl lock on ``path``; None when apt could take it now."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None  # apt creates the file when it locks; no file, no holder
    except OSError as exc:
        raise FleetciError(f"cannot open lock file {path}: {exc.strerror or exc}") from exc
    try:
        query = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    finally:
        os.close(fd)
    l_type, _, _, _, pid = struct.unpack(_FLOCK, answer)
    if l_type == fcntl.F_UNLCK:
        return None
    return Holder(path, pid, command_of(pid) if pid > 0 else "")


def current_holder(paths: tuple[Path, ...]) -> Holder | None:
    for path in paths:
        found = holder(path)
        if found is not None:
            return found
    return None


def wait_for_locks(
    paths: tuple[Path, ...],
    timeout: float,
    progress: Callable[[str], None],
    every: float = 5.0,
    poll: float = 0.2,
) -> float:
    """Block until no path is locked; return the seconds waited. Raise after ``timeout`` naming the holder.

    While it waits, a progress line names the holder when it changes and every ``every`` seconds.
    """
    start = time.monotonic()
    last_report = -every
    announced: Holder | None = None
    found: Holder | None = None

    def free() -> bool:
        nonlocal announced, last_report, found
        found = current_holder(paths)
        if found is None:
            return True
        waited = time.monotonic() - start
        if waited < timeout and (found != announced or waited - last_report >= every):
            progress(f"waiting for {found.describe()}: {waited:.0f}s of {timeout:g}s")
            announced, last_report = found, waited
        return False

    try:
        wait_until(free, timeout=timeout, what="the apt/dpkg locks", interval=poll)
    except WaitTimeout:
        waited = time.monotonic() - start
        who = found.describe() if found else "locked"
        raise WaitTimeout(f"gave up after {waited:.0f}s (--lock-timeout {timeout:g}): {who}") from None
    waited = time.monotonic() - start
    if announced is not None:
        progress(f"apt/dpkg locks are free after {waited:.1f}s")
    return waited


_HOLD = (
    "import fcntl, os, sys, time\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX)\n"  # lockf is fcntl(F_SETLKW, F_WRLCK): the lock apt takes
    "print('locked', flush=True)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


@contextlib.contextmanager
def held(path: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A child process that holds ``path``'s apt-style lock for ``seconds`` (tests, benchmarks, demos)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "locked":
            raise FleetciError(f"could not take the lock on {path} for the benchmark/test")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
