"""Start our own services as child processes and learn where they listen (benchmarks, demo, tests)."""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fleetci.errors import FleetciError
from fleetci.wait import WaitTimeout, wait_stepwise, wait_until

LISTENING = re.compile(r"listening on (http://[\w.\-]+:\d+)")


@dataclass
class Service:
    proc: subprocess.Popen[str]
    url: str
    banner: str

    def stop(self) -> None:
        stop_process(self.proc)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's starting value, kept fixed


def fix_malloc_thresholds() -> bool:
    """Pin glibc's mmap threshold at 128 KiB (and so turn off its sliding threshold); False where there
    is no glibc. glibc raises the threshold to the size of each mmapped block a process frees (up to 32
    MiB), after which every body of that size lands in the heap, fragments it and outlives its request
    there; pinned, a big body is its own mapping and goes back to the OS when freed. Set once, at the
    start of a long-running server (a proxy's RSS per runner is a target, issue 16)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD))


def release_free_memory() -> bool:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``); False where there is no glibc.

    A long-running server's heap keeps its high-water mark after a burst: glibc returns memory only
    from the top of each arena, so pages freed in the middle stay resident until trimmed. Twenty
    runners' proxies on one box each holding their worst minute is what this avoids.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs: our own exited child is reaped here, and a zombie counts as gone
    (a detached proxy that exited waits for init to reap it, and ``kill(pid, 0)`` alone says it lives)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(pid, 0) found it
    return state != "Z"


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it does not exit in ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fleetci_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetci", *args]


def spawn(argv: Sequence[str], timeout: float = 30.0, env: dict[str, str] | None = None) -> Service:
    """Run ``argv`` and wait for its ``listening on http://…`` line; its later output is discarded.

    Both pipes are drained by threads from the start: a chatty child (libp2p logs to stderr) must never
    block on a full pipe, and lines are read whole (select() on a buffered reader can miss lines).
    """
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=20)
    lines: queue.Queue[str | None] = queue.Queue()
    _drain(proc.stderr, tail.append)
    _drain(proc.stdout, lines.put, end=lambda: lines.put(None))
    seen: list[str] = []

    def listening() -> Service | None:
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            return None
        if line is None:
            raise _Exited
        seen.append(line)
        m = LISTENING.search(line)
        return Service(proc, m.group(1), line.strip()) if m else None

    with contextlib.suppress(WaitTimeout, _Exited):
        return wait_until(listening, timeout=timeout, what=f"{argv[0]} to listen", interval=0)
    stop_process(proc, timeout=2)
    errors = [ln for ln in tail if ln.startswith("fleetci: error:")]
    reason = (errors or list(tail) or seen or ["no output"])[-1].removeprefix("fleetci: error: ")
    raise FleetciError(f"{' '.join(argv[2:5])} did not start within {timeout:g}s: {reason}")


class _Exited(Exception):
    """The child closed its stdout without saying where it listens."""


def _drain(
    stream: IO[str] | None, sink: Callable[[str], object], end: Callable[[], object] | None = None
) -> None:
    def pump() -> None:
        with contextlib.suppress(Exception):
            for line in stream or ():
                sink(line.rstrip())
        if end is not None:
            end()

    threading.Thread(target=pump, daemon=True).start()


@contextlib.contextmanager
def running(
    argv: Sequence[str], timeout: float = 30.0, env: dict[str, str] | None = None
) -> Iterator[Service]:
    svc = spawn(argv, timeout, env)
    try:
        yield svc
    finally:
        svc.stop()


def spawn_logged(
    argv: Sequence[str], log: Path, ready: str, timeout: float = 30.0, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Run a third-party server (``redis-server``) with its output in ``log`` and wait for the line that
    says it is ready; one-line error with its last line when it exits or stays silent."""
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def up() -> bool:
        text = log.read_text(errors="replace") if log.exists() else ""
        if ready in text:
            return True
        if proc.poll() is not None:
            raise FleetciError(f"{argv[0]} exited ({proc.returncode}): {last_line(text)}")
        return False

    try:
        wait_until(up, timeout=timeout, what=f"{argv[0]} to be ready", interval=0.05)
    except BaseException:
        stop_process(proc, timeout=2)
        raise
    return proc


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "no output"


def run_with_input(
    argv: Sequence[str],
    stdin: str,
    timeout: float,
    env: dict[str, str] | None = None,
    cancel: threading.Event | None = None,
    grace: float = 10.0,
) -> subprocess.CompletedProcess[str]:
    """Run a command given by the operator (a hook such as ``--scale-cmd``) with ``stdin``, in its own
    session; on timeout its whole process group is killed. A command that cannot start or runs too long
    is a one-line :class:`FleetciError`; its exit status is the caller's to judge.

    ``cancel``: once set (the caller is stopping), the command may still finish within ``grace`` seconds;
    then its process group gets SIGTERM, and SIGKILL 2 s later, and the call fails in one line. Nothing of
    it is left running behind the caller."""
    import os
    import signal

    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise FleetciError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    finished, cancelled = threading.Event(), threading.Event()
    if cancel is not None:
        threading.Thread(
            target=_cancel_group,
            args=(proc, cancel, finished, cancelled, timeout, grace),
            daemon=True,
            name="fleetci-cancel-command",
        ).start()
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise FleetciError(f"{argv[0]} did not finish within {timeout:g}s (killed)") from None
    finally:
        finished.set()
    if cancelled.is_set():
        raise FleetciError(
            f"{argv[0]} stopped after {grace:g}s as fleetci is stopping (process group killed)"
        )
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _cancel_group(
    proc: subprocess.Popen[str],
    cancel: threading.Event,
    finished: threading.Event,
    cancelled: threading.Event,
    timeout: float,
    grace: float,
) -> None:
    """Watch ``cancel`` while ``proc`` runs; once set, give it ``grace`` seconds, then end its group."""
    import os
    import signal

    # cancel.wait in short steps: the watch must also end, without a signal, when the command finishes
    asked = wait_stepwise(lambda left: finished.is_set() or cancel.wait(min(left, 0.2)), timeout=timeout)
    if not asked or finished.is_set() or finished.wait(grace):
        return
    cancelled.set()
    for sig, then in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 0.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        if then and finished.wait(then):
            # the leader went; whatever else of the group is left goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            return
