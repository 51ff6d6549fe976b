"""Shared fixtures: real servers on 127.0.0.1, started per test and torn down after.

Helpers that are not fixtures live in ``support.py``; the integration marker is applied by directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Proxy, RunCli, clean_env, start_proxy

# Fixtures shared by a capability's unit and integration modules.
pytest_plugins = [
    "support.buildfarm_hostile",
    "support.emulator",
    "support.registry",
    "support.registry_resume",
]

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The marker follows the directory: tests/integration/ starts real components, tests/unit/ does not."""
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def fleetci_in_process(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> RunCli:
    """:func:`run_fleetci` without a new interpreter: ``fleetci.cli.main(args)`` in this process.

    Same environment (``env``, else :func:`clean_env`), same result (exit code, stdout, stderr; captured
    at the file descriptors, so child processes' output is included). For commands that need no
    process of their own (no daemon, no signal, no other user).
    """
    from fleetci.cli import main

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        wanted = env or clean_env()
        with monkeypatch.context() as m:
            for key in [k for k in os.environ if k not in wanted]:
                m.delenv(key)
            for key, value in wanted.items():
                m.setenv(key, value)
            capfd.readouterr()
            code = main(list(args))
            out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["fleetci", *args], code, out, err)

    return run


@pytest.fixture
def emulator() -> Iterator[object]:
    from fleetci.testing import EmulatorConfig, EmulatorServer, GitHubEmulator

    server = EmulatorServer(GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=7)))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def proxy_factory(tmp_path: Path) -> Iterator[object]:
    started: list[Proxy] = []

    def factory(
        upstream: str, *args: str, cache_dir: Path | None = None, env: dict[str, str] | None = None
    ) -> Proxy:
        p = start_proxy(upstream, cache_dir or tmp_path / "cache", *args, env=env)
        started.append(p)
        return p

    yield factory
    for p in started:
        p.stop(signal.SIGKILL if p.proc.poll() is None else signal.SIGTERM)


@pytest.fixture
def proxy(emulator: object, proxy_factory: object) -> Proxy:
    return proxy_factory(emulator.url)  # type: ignore[attr-defined,operator,no-any-return]


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Server log records, with fresh rate-limit windows: an earlier test's line must not hide this one's.

    Only removes the filters; installing them is the server's job (that is what such tests check).
    """
    import logging

    from fleetci.logs import SERVER_LOGGERS, OneLineRateLimited

    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        for f in [f for f in logger.filters if isinstance(f, OneLineRateLimited)]:
            logger.removeFilter(f)
    caplog.set_level(logging.WARNING)
    return caplog
