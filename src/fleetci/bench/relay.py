"""A bandwidth-limited TCP relay on 127.0.0.1: the "real link" of ``fleetci bench registry --link-mbps``.

Every connection through the relay shares one token bucket per direction (the link's capacity), so a
pusher with several uploads in flight gets no more than one with a single upload. Buffers are bounded
(64 KiB reads, at most ``MAX_CONNECTIONS`` connections) and bytes are counted per direction, which is
how the benchmark compares what fleetci and skopeo put on the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass

READ = 64 * 1024
MAX_CONNECTIONS = 64


class TokenBucket:
    """``rate`` bytes/s with a burst of ``burst`` bytes; waiters take tokens in turn (one event loop)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = 0.0
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:  # first come, first served: no starvation between connections
            loop = asyncio.get_running_loop()
            while True:
                now = loop.time()
                if self.stamp:
                    self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= n:
                    self.tokens -= n
                    return
                await asyncio.sleep((n - self.tokens) / self.rate)


@dataclass
class Counts:
    up: int = 0  # client -> server
    down: int = 0
    first_up: float = 0.0  # time.monotonic() of the first / last upstream bytes (0: none yet)
    last_up: float = 0.0

    def busy_s(self) -> float:
        """Seconds from the first upstream byte to the last: the link's share of a push's wall time."""
        return self.last_up - self.first_up if self.first_up else 0.0


class LinkRelay:
    """Relay ``127.0.0.1:<port>`` -> ``target_host:target_port`` at ``mbps`` megabits/s each way."""

    def __init__(self, target_host: str, target_port: int, mbps: float) -> None:
        if mbps <= 0:
            raise ValueError("the link needs a positive rate in Mbit/s")
        self.target = (target_host, target_port)
        self.rate = mbps * 1e6 / 8
        self.counts = Counts()
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fleetci-relay", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def reset(self) -> Counts:
        """The counts so far; counting starts again from 0."""
        counts, self.counts = self.counts, Counts()
        return counts

    def start(self) -> LinkRelay:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        burst = max(READ, int(self.rate / 50))  # 20 ms of the link
        self._up, self._down = TokenBucket(self.rate, burst), TokenBucket(self.rate, burst)
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with self._slots:
                try:
                    up_r, up_w = await asyncio.open_connection(*self.target)
                except OSError:
                    writer.close()
                    return
                try:
                    await asyncio.gather(
                        self._pipe(reader, up_w, self._up, "up"),
                        self._pipe(up_r, writer, self._down, "down"),
                        return_exceptions=True,
                    )
                finally:
                    for w in (up_w, writer):
                        with contextlib.suppress(OSError, RuntimeError):
                            w.close()
        finally:
            self._tasks.discard(task)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, bucket: TokenBucket, way: str
    ) -> None:
        try:
            while data := await src.read(READ):
                await bucket.take(len(data))
                dst.write(data)
                await dst.drain()
                if way == "up":
                    now = time.monotonic()
                    self.counts.first_up = self.counts.first_up or now
                    self.counts.last_up = now
                    self.counts.up += len(data)
                else:
                    self.counts.down += len(data)
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()  # half-close: the other way may still carry the answer

    def stop(self) -> None:
        async def _stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.sleep(0)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> LinkRelay:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
