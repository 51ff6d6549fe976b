"""How apt and pip failures are told apart: transient ones are retried by :mod:`fleetci.retry`.

The retry loop itself is :func:`fleetci.retry.call`; this module holds what is install-specific: the
failure classes (subclasses of :class:`fleetci.retry.Transient` / :class:`~fleetci.retry.Permanent`),
the pattern-table matcher the apt and pip classifiers use, and the policy the settings ask for.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from fleetci.retry import Backoff, Permanent, Transient

if TYPE_CHECKING:
    from fleetci.install.settings import InstallSettings


class InstallFailure(Exception):
    """A failed install step; ``attempts`` carries the caller's counters to whoever reports it."""

    attempts: object = None


class TransientFailure(InstallFailure, Transient):
    """Worth retrying: the network or a mirror blinked."""


class PermanentFailure(InstallFailure, Permanent):
    """Retrying cannot help (missing package, conflict, bad syntax): fail at once."""


def first_match(text: str, patterns: list[tuple[re.Pattern[str], str]]) -> str | None:
    """The label of the first pattern found in ``text`` (labels may use the match's groups)."""
    for pattern, label in patterns:
        m = pattern.search(text)
        if m:
            return m.expand(label).strip()
    return None


def policy(settings: InstallSettings) -> Backoff:
    """``--retries`` extra attempts, waits from ``--backoff`` doubling to ``--backoff-max`` (+ jitter)."""
    return Backoff(retries=settings.retries, initial=settings.backoff, most=settings.backoff_max)
