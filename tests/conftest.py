"""Shared fixtures: real servers on 127.0.0.1, started per test and torn down after.

Helpers that are not fixtures live in ``support`` (tests/support/); the integration marker is applied
by directory.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import InProcess, Proxy, RunCli, start_proxy

# Fixtures shared by a capability's unit and integration modules.
pytest_plugins = [
    "support.buildfarm_hostile",
    "support.emulator",
    "support.multiarch",
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
def fleetci(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``fleetci(*args, env=None)``: :class:`support.InProcess`, output captured at ``sys.stdout``/``err``."""
    return InProcess(capsys)


@pytest.fixture
def fleetci_fd(capfd: pytest.CaptureFixture[str]) -> RunCli:
    """:func:`fleetci`, captured at the file descriptors: child processes' output is included."""
    return InProcess(capfd)


@pytest.fixture
def emulator() -> Iterator[object]:
    from support.emulator import quiet_emulator

    with quiet_emulator() as server:
        yield server


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
