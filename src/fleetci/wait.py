"""The one "wait until" loop: poll a check until it returns something truthy, or give up with a reason.

Every start-up wait (a server listening, a job finished, a peer seen) goes through here, so each has a
deadline, a poll interval and a one-line error that says what was awaited and what was last seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

from fleetci.errors import FleetciError

T = TypeVar("T")


class WaitTimeout(FleetciError, TimeoutError):
    """The awaited condition did not hold in time (exit 1, one line)."""


def _message(what: str, timeout: float, last: object) -> str:
    seen = f" (last: {last})" if last not in (None, "", False) else ""
    return f"timed out after {timeout:g}s waiting for {what}{seen}"


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    last: Callable[[], object] | None = None,
) -> T:
    """Call ``check()`` every ``interval`` seconds; return its first truthy result.

    ``check`` may raise :class:`WaitTimeout`-free exceptions of its own to stop at once (a process that
    exited, a refused token). ``last`` describes the latest state for the error message.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise WaitTimeout(_message(what, timeout, last() if last else None))
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


@overload
async def wait_until_async(
    check: Callable[[], Awaitable[T | None]],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    last: Callable[[], object] | None = None,
) -> T: ...
@overload
async def wait_until_async(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    last: Callable[[], object] | None = None,
) -> T: ...
async def wait_until_async(
    check: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
    last: Callable[[], object] | None = None,
) -> T:
    """:func:`wait_until` inside an event loop (``check`` may be a coroutine function).

    (The overloads let mypy infer ``T`` for a coroutine check also where the result is not used.)
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise WaitTimeout(_message(what, timeout, last() if last else None))
        await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))


def wait_stepwise(step: Callable[[float], T | None], *, timeout: float) -> T | None:
    """Call ``step(remaining_seconds)`` until it returns something truthy; None once ``timeout`` passed.

    For waits whose step blocks by itself for up to ``remaining`` (a long poll, an event's ``wait``):
    the loop only keeps the deadline, so no step runs past it.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        result = step(remaining)
        if result:
            return result


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, or :class:`asyncio.TimeoutError` after ``timeout`` seconds. On Python >= 3.11
    without the task ``asyncio.wait_for`` wraps each call in (one more loop pass per call: on a cache hit
    that waits on Redis, a measurable share of the answer)."""
    timer = getattr(asyncio, "timeout", None)
    if timer is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, timeout)
    async with timer(timeout):
        return await awaitable
