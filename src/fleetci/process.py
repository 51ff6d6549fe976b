"""Start our own services as child processes and learn where they listen (benchmarks, demo, tests)."""

from __future__ import annotations

import contextlib
import re
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from fleetci.errors import FleetciError

LISTENING = re.compile(r"listening on (http://[\w.\-]+:\d+)")


@dataclass
class Service:
    proc: subprocess.Popen[str]
    url: str
    banner: str

    def stop(self) -> None:
        stop_process(self.proc)


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
    """Run ``argv`` and wait for its ``listening on http://…`` line; its later output is discarded."""
    proc = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while time.monotonic() < deadline:
        if not sel.select(timeout=0.1):
            if proc.poll() is not None:
                break
            continue
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line.rstrip())
        m = LISTENING.search(line)
        if m:
            # keep draining the pipes so the child never blocks on a full pipe
            for stream in (proc.stdout, proc.stderr):
                _drain(stream)
            return Service(proc, m.group(1), line.strip())
    proc.kill()
    err = proc.stderr.read().strip().splitlines() if proc.poll() is not None else []
    reason = (err[-1] if err else "") or (seen[-1] if seen else "no output")
    raise FleetciError(f"{' '.join(argv[2:5])} did not start: {reason}")


def _drain(stream: object) -> None:
    import threading

    def pump() -> None:
        with contextlib.suppress(Exception):
            for _ in stream:  # type: ignore[attr-defined]
                pass

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
