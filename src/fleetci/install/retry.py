"""One retry policy for apt and pip: exponential backoff with jitter, only for transient failures."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import tenacity

T = TypeVar("T")


class InstallFailure(Exception):
    """A failed install step; ``attempts`` carries the caller's counters to whoever reports it."""

    attempts: object = None


class TransientFailure(InstallFailure):
    """Worth retrying: the network or a mirror blinked."""


class PermanentFailure(InstallFailure):
    """Retrying cannot help (missing package, conflict, bad syntax): fail at once."""


def first_match(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> str | None:
    """The label of the first pattern found in ``text`` (labels may use the match's groups)."""
    for pattern, label in patterns:
        m = pattern.search(text)
        if m:
            return m.expand(label).strip()
    return None


def with_retries(
    action: Callable[[int], T],
    retries: int,
    backoff: float,
    backoff_max: float,
    on_retry: Callable[[int, float, BaseException], None],
) -> T:
    """Call ``action(attempt)`` until it succeeds; retry TransientFailure up to ``retries`` times."""
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientFailure),
        stop=tenacity.stop_after_attempt(retries + 1),
        wait=tenacity.wait_exponential_jitter(initial=backoff, max=backoff_max, jitter=backoff),
        reraise=True,
        before_sleep=lambda state: on_retry(
            state.attempt_number,
            float(state.upcoming_sleep),
            state.outcome.exception() if state.outcome else Exception("?"),  # type: ignore[arg-type]
        ),
    )
    attempts = 0

    def once() -> T:
        nonlocal attempts
        attempts += 1
        return action(attempts)

    return retrying(once)
