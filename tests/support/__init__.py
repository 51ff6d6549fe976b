"""Helpers the tests share (importable as ``support``; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest

from fleetci.http import free_port, wait_healthy

REPO_ROOT = Path(__file__).resolve().parents[2]


def fleetci_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetci", *args]


def clean_env(**extra: str) -> dict[str, str]:
    """The test process environment without variables that would change fleetci's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "FLEETCI_", "GITHUB_", "GH_"))}
    env.update(extra)
    return env


def run_fleetci(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fleetci_cmd(*args), env=env or clean_env(), capture_output=True, text=True, timeout=timeout
    )


class RunCli(Protocol):
    """``fleetci ARGS…`` by :func:`run_fleetci` or :class:`InProcess`: exit code, stdout, stderr."""

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]: ...


@dataclass(frozen=True)
class InProcess:
    """:func:`run_fleetci` without a new interpreter: ``fleetci.cli.main(args)`` in this process.

    Same environment (``env``, else :func:`clean_env`; set for the call only), same result (a
    CompletedProcess, so :func:`one_line_error` reads it the same way). ``capture`` is ``capsys``, or
    ``capfd`` when the output of child processes the command starts must be included. For commands that
    need no process of their own (no daemon, no signal, no other user); those use :func:`run_fleetci`.
    """

    capture: pytest.CaptureFixture[str]

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        from fleetci.cli import main

        wanted = clean_env() if env is None else env
        with pytest.MonkeyPatch.context() as m:
            for key in [k for k in os.environ if k not in wanted]:
                m.delenv(key)
            for key, value in wanted.items():
                m.setenv(key, value)
            self.capture.readouterr()  # what earlier steps printed is not this command's
            code = main(list(args))
            out, err = self.capture.readouterr()
        return subprocess.CompletedProcess(["fleetci", *args], code, out, err)


@dataclass
class Proxy:
    """A real ``fleetci cache serve`` process."""

    url: str
    socket: Path
    cache_dir: Path
    upstream: str
    proc: subprocess.Popen[str]
    log: Path
    extra_args: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc: object) -> None:
        """``with start_proxy(...) as p:`` stops it (SIGTERM, SIGKILL after 15 s) however the block ends."""
        self.stop()

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Accept": "application/vnd.github+json"}
        if token:
            headers["Authorization"] = f"token {token}"
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def stats(self) -> dict[str, object]:
        data: dict[str, object] = httpx.get(f"{self.url}/_fleetci/stats", timeout=10).json()
        return data


def start_proxy(
    upstream: str, cache_dir: Path, *args: str, env: dict[str, str] | None = None, port: int = 0
) -> Proxy:
    """A real proxy on ``port`` (0: a free one), healthy before this returns."""
    port = port or free_port()
    sock = cache_dir / "proxy.sock"
    log = cache_dir.parent / f"proxy-{port}.log"
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        proc = subprocess.Popen(
            fleetci_cmd(
                "cache",
                "serve",
                "--upstream",
                upstream,
                "--port",
                str(port),
                "--cache-dir",
                str(cache_dir),
                "--socket",
                str(sock),
                *args,
            ),
            env=env or clean_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/_fleetci/health", timeout=30, alive=proc)
    except Exception:
        proc.kill()
        raise AssertionError(f"proxy did not start: {log.read_text()}") from None
    return Proxy(f"http://127.0.0.1:{port}", sock, cache_dir, upstream, proc, log, list(args))


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed with exactly one ``fleetci: error:`` line and return it."""
    assert proc.returncode != 0, proc
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("fleetci: error:")]
    assert len(errors) == 1, f"expected one error line, got stderr={proc.stderr!r}"
    assert not any("Traceback" in ln for ln in lines), proc.stderr
    return errors[0]


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.05) -> bool:
    """``assert wait_until(...)``: True once ``predicate()`` holds, False after ``timeout`` (fleetci.wait)."""
    from fleetci.wait import WaitTimeout
    from fleetci.wait import wait_until as wait

    try:
        return bool(wait(predicate, timeout=timeout, what="the condition", interval=interval))
    except WaitTimeout:
        return False


LISTEN_RE = re.compile(r"listening on (http://[0-9.:]+)")


def server_lines_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    """The servers' own loggers (aiohttp's, ours) wrote one-line records only: no traceback."""
    records = [r for r in caplog.records if r.name.startswith(("aiohttp", "fleetci"))]
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in records), [
        r.getMessage()[:300] for r in records
    ]


@dataclass
class Answer:
    """An HTTP answer read off a raw socket (:func:`read_answer`): headers as sent, repeats kept."""

    status: int  # 0: the server closed the connection without a status line
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(sock: socket.socket) -> Answer:
    """Read one answer from ``sock`` (written by hand: hostile requests, bodies in several writes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if head else 0
    headers = [(k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in lines[1:])]
    length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
    while length is None or len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return Answer(status, headers, rest[:length] if length is not None else rest)


def raw_request(
    host: str,
    port: int,
    method: str,
    path: str,
    headers: dict[str, str | bytes] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request exactly as written (no path normalization, any header bytes): status, headers, body."""
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        given = {k.lower() for k in headers or {}}
        if "host" not in given:
            conn.putheader("Host", f"{host}:{port}")
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        if body is not None and "content-length" not in given:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()
