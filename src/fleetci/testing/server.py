"""Run an aiohttp application on its own event loop in a daemon thread, on a real TCP port.

The emulators (GitHub, GitLab) are real HTTP servers that tests, benchmarks and the demo start in-process.
Their apps are built on :func:`fleetci.http.guarded_app` and run with ``RUNNER_OPTIONS`` like every other
server of ours: a hostile client meets the same body cap, one-line errors and quiet logs.
"""

from __future__ import annotations

import asyncio
import errno
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from aiohttp import web

from fleetci.errors import FleetciError
from fleetci.http import RUNNER_OPTIONS, parse_id


class BackgroundApp:
    """Start/stop an app built by ``make_app``; ``start()`` returns once the port accepts connections."""

    def __init__(
        self, make_app: Callable[[], web.Application], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._make_app = make_app
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Any:
        """Start listening (raises OSError if it cannot bind); returns self."""
        if self._thread is not None:
            return self
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, name=f"{type(self).__name__}-{self.port}", daemon=True
        )
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as exc:  # reported to start()'s caller
            self._error = exc
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            # Connections still open (keep-alive, a body being refused) end here, not as asyncio's
            # multi-line "Task was destroyed but it is pending!" when the closed loop is collected.
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self) -> None:
        runner = web.AppRunner(
            self._make_app(),
            handle_signals=False,
            shutdown_timeout=0.5,
            **RUNNER_OPTIONS,  # type: ignore[arg-type]
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        for addr in runner.addresses:
            if isinstance(addr, tuple):
                self.port = int(addr[1])
                break

    def stop(self) -> None:
        """Stop listening and end the thread (idempotent)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def listen(self) -> Any:
        """:meth:`start` for a command: a port that cannot be bound is a one-line :class:`FleetciError`."""
        try:
            return self.start()
        except OSError as exc:
            reason = "address already in use" if port_in_use(exc) else (exc.strerror or str(exc))
            raise FleetciError(f"cannot listen on {self.host}:{self.port}: {reason}") from None

    def serve_until_signalled(self, announce: Callable[[str], None]) -> None:
        """Listen, ``announce(url)`` once the port accepts connections, serve until SIGINT/SIGTERM, stop."""
        self.listen()
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            announce(self.url)
            while not stop.wait(0.5):
                pass
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.stop()


def port_in_use(exc: OSError) -> bool:
    return exc.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1))


def plain_host(request: web.Request) -> bool:
    """Whether the Host header is printable ASCII: the emulators echo it into URLs in bodies and headers."""
    host = request.host
    return host.isascii() and host.isprintable()


# An id from a URL: ASCII digits that fit 64 bits, else None (a 404, never int()'s ValueError).
small_int = parse_id
