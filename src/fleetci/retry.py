"""The one retry policy: exponential backoff with jitter, for transient failures only.

Callers classify their failures (a mirror blinking is :class:`Transient`; a missing package, a 401 or a
bad digest is not) and get the attempt count back in the exception, so a report can say "failed after
3 attempts". Built on tenacity, so nobody hand-writes a retry loop again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

T = TypeVar("T")

RetryHook = Callable[[int, float, BaseException], None]


class Transient(Exception):
    """Worth retrying: the network, a mirror or a peer blinked."""


class Permanent(Exception):
    """Retrying cannot help: fail at once."""


@dataclass(frozen=True)
class Backoff:
    """How patiently to retry: ``retries`` extra attempts, waits growing from ``initial`` to ``most``.

    ``retries=None`` sets no count: the caller's ``give_up`` decides (a worker waiting for its master).
    """

    retries: int | None = 3
    initial: float = 1.0
    most: float = 30.0
    jitter: float | None = None  # default: as large as ``initial``

    def waits(self) -> tenacity.wait.wait_base:
        jitter = self.initial if self.jitter is None else self.jitter
        return _ExponentialJitter(self.initial, self.most, jitter)

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt ``attempt`` (1, 2, …), for a loop that schedules its own retries
        (the p2p node re-dials many peers, each on its own schedule, inside one trio task)."""
        jitter = self.initial if self.jitter is None else self.jitter
        return _ExponentialJitter(self.initial, self.most, jitter).after(attempt)


class _ExponentialJitter(tenacity.wait.wait_base):
    """``min(initial * 2**(n-1) + uniform(0, jitter), most)`` before retry n: tenacity's
    ``wait_exponential_jitter`` without its ``initial=`` argument (deprecated in 9.x, a warning on every
    call) or ``multiplier=`` (missing before 9.x)."""

    def __init__(self, initial: float, most: float, jitter: float) -> None:
        self.initial, self.most, self.jitter = initial, most, jitter

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.after(retry_state.attempt_number)

    def after(self, attempt: int) -> float:
        try:
            wait = self.initial * 2.0 ** (attempt - 1) + random.uniform(0, self.jitter)
        except OverflowError:
            wait = self.most
        return max(0.0, min(wait, self.most))


def _settings(
    policy: Backoff,
    retry_on: type[BaseException] | tuple[type[BaseException], ...],
    on_retry: RetryHook | None,
    give_up: Callable[[], bool] | None = None,
) -> dict[str, object]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is not None:
            exc = state.outcome.exception() if state.outcome else None
            on_retry(state.attempt_number, float(state.upcoming_sleep), exc or Exception("?"))

    stop: tenacity.stop.stop_base = (
        tenacity.stop_never if policy.retries is None else tenacity.stop_after_attempt(policy.retries + 1)
    )
    if give_up is not None:
        stop = tenacity.stop_any(stop, _GiveUp(give_up))
    return {
        "retry": tenacity.retry_if_exception_type(retry_on),
        "stop": stop,
        "wait": policy.waits(),
        "reraise": True,
        "before_sleep": before_sleep,
    }


class _GiveUp(tenacity.stop.stop_base):
    def __init__(self, give_up: Callable[[], bool]) -> None:
        self.give_up = give_up

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        return self.give_up()


def call(
    action: Callable[[int], T],
    policy: Backoff,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Transient,
    on_retry: RetryHook | None = None,
    sleep: Callable[[float], None] = time.sleep,
    give_up: Callable[[], bool] | None = None,
) -> T:
    """Call ``action(attempt)`` (attempt counts from 1) until it succeeds or a non-retryable error.

    ``give_up()``, asked after each failed attempt, ends the retries early when it returns True
    (stopping, or failing for too long). The last exception is re-raised as it was, with ``attempts``
    set on it when it allows attributes.
    """
    attempts = 0

    def once() -> T:
        nonlocal attempts
        attempts += 1
        return action(attempts)

    try:
        return tenacity.Retrying(sleep=sleep, **_settings(policy, retry_on, on_retry, give_up))(once)  # type: ignore[arg-type]
    except BaseException as exc:
        _note_attempts(exc, attempts)
        raise


async def call_async(
    action: Callable[[int], Awaitable[T]],
    policy: Backoff,
    *,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Transient,
    on_retry: RetryHook | None = None,
) -> T:
    """:func:`call` for coroutines (the waits are ``asyncio.sleep``, so the event loop keeps running)."""
    attempts = 0

    async def once() -> T:
        nonlocal attempts
        attempts += 1
        return await action(attempts)

    try:
        retrying = tenacity.AsyncRetrying(sleep=asyncio.sleep, **_settings(policy, retry_on, on_retry))  # type: ignore[arg-type]
        return await retrying(once)
    except BaseException as exc:
        _note_attempts(exc, attempts)
        raise


def _note_attempts(exc: BaseException, attempts: int) -> None:
    try:
        if getattr(exc, "attempts", None) is None:
            exc.attempts = attempts  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
