"""Runner pools and the scaling decision: pure logic, no I/O (unit-tested on its own).

A pool is a label set with bounds, ``self-hosted,linux,x64:min=0:max=10``. GitHub gives a job to a runner
that has *all* the job's labels, so a queued job counts for the smallest configured pool whose labels
include the job's (labels compare case-insensitively, as GitHub's do); a job no pool can serve is
counted and logged, never scaled for. A runner belongs to the most specific pool whose labels it has.

Desired count: ``clamp(min, max, queued + busy)``. Growing happens at once; shrinking only after the
lower count has held for ``scale_down_delay`` seconds, so a burst that drains between two polls does not
tear runners down and start them again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_POOLS = 100
MAX_RUNNERS = 10_000
_LABEL = re.compile(r"[^\s,:;]{1,100}")


@dataclass(frozen=True)
class Pool:
    labels: tuple[str, ...]  # as configured (shown in logs and given to providers)
    min: int = 0
    max: int = 10

    @property
    def key(self) -> frozenset[str]:
        return frozenset(label.lower() for label in self.labels)

    @property
    def name(self) -> str:
        return ",".join(self.labels)

    def serves(self, job_labels: Iterable[str]) -> bool:
        return {label.lower() for label in job_labels} <= self.key

    def clamp(self, wanted: int) -> int:
        return max(self.min, min(self.max, wanted))


def parse_pool(text: str) -> Pool:
    """``label,label[:min=N][:max=M]``."""
    raw = text.strip()
    head, *options = raw.split(":")
    labels = tuple(p.strip() for p in head.split(",") if p.strip())
    if not labels:
        raise ValueError(f"pool {raw!r} has no labels (expected 'label,label:min=0:max=10')")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise ValueError(f"pool {raw!r}: label {label[:40]!r} is not a runner label")
    bounds = {"min": 0, "max": 10}
    for opt in options:
        name, sep, value = opt.strip().partition("=")
        if name not in bounds or not sep:
            raise ValueError(f"pool {raw!r}: expected min=N or max=N after ':', got {opt.strip()!r}")
        v = value.strip()
        if not (v.isascii() and v.isdigit()) or int(v) > MAX_RUNNERS:
            raise ValueError(f"pool {raw!r}: {name} must be a whole number 0..{MAX_RUNNERS}, got {v!r}")
        bounds[name] = int(v)
    if bounds["min"] > bounds["max"]:
        raise ValueError(f"pool {raw!r}: min {bounds['min']} is more than max {bounds['max']}")
    return Pool(labels, bounds["min"], bounds["max"])


def parse_pools(text: str) -> tuple[Pool, ...]:
    """Pools separated by ``;`` or new lines; label sets must differ."""
    pools = tuple(parse_pool(p) for p in re.split(r"[;\n]", text) if p.strip())
    if not pools:
        raise ValueError("no pool given (expected 'label,label:min=0:max=10')")
    if len(pools) > MAX_POOLS:
        raise ValueError(f"{len(pools)} pools; at most {MAX_POOLS}")
    seen: set[frozenset[str]] = set()
    for pool in pools:
        if pool.key in seen:
            raise ValueError(f"pool {pool.name!r} is given twice")
        seen.add(pool.key)
    return pools


def pool_for_job(pools: Sequence[Pool], job_labels: Iterable[str]) -> Pool | None:
    """The smallest pool that has every label of the job (the first configured on a tie)."""
    labels = list(job_labels)
    fitting = [p for p in pools if p.serves(labels)]
    return min(fitting, key=lambda p: len(p.key)) if fitting else None


def pool_for_runner(pools: Sequence[Pool], runner_labels: Iterable[str]) -> Pool | None:
    """The most specific pool whose labels the runner has (the first configured on a tie)."""
    have = {label.lower() for label in runner_labels}
    fitting = [p for p in pools if p.key <= have]
    return max(fitting, key=lambda p: len(p.key)) if fitting else None


@dataclass
class Count:
    """What one cycle saw of a pool: queued jobs, and its runners by state."""

    queued: int = 0
    busy: int = 0
    idle: int = 0

    @property
    def current(self) -> int:
        """Online runners of the pool (busy or idle)."""
        return self.busy + self.idle


@dataclass(frozen=True)
class Decision:
    pool: Pool
    queued: int
    busy: int
    idle: int
    current: int
    wanted: int  # clamp(min, max, queued + busy) now
    desired: int  # what the pool is scaled to (wanted, or the old count while a scale-down waits)
    call: bool  # the provider is asked to apply ``desired`` this cycle
    held: bool = False  # a scale-down waits for the delay

    def line(self) -> str:
        held = " (scale-down held)" if self.held else ""
        return (
            f"{self.pool.name}: queued={self.queued} busy={self.busy} current={self.current} "
            f"desired={self.desired}{held}"
        )


@dataclass
class _State:
    applied: int | None = None  # the desired count decided last
    provided: int | None = None  # the count the provider last accepted
    low_since: float | None = None  # when ``wanted`` first fell below ``applied``


@dataclass
class Planner:
    """Desired counts per pool across cycles (the scale-down delay needs memory)."""

    pools: tuple[Pool, ...]
    scale_down_delay: float
    _state: dict[frozenset[str], _State] = field(default_factory=dict)

    def plan(self, counts: dict[frozenset[str], Count], now: float) -> list[Decision]:
        out = []
        for pool in self.pools:
            c = counts.get(pool.key, Count())
            st = self._state.setdefault(pool.key, _State())
            wanted = pool.clamp(c.queued + c.busy)
            held = False
            if st.applied is None or wanted >= st.applied:
                st.applied, st.low_since = wanted, None
            else:
                if st.low_since is None:
                    st.low_since = now
                if now - st.low_since >= self.scale_down_delay:
                    st.applied, st.low_since = wanted, None
                else:
                    held = True
            desired = st.applied
            out.append(
                Decision(
                    pool, c.queued, c.busy, c.idle, c.current, wanted, desired, desired != st.provided, held
                )
            )
        return out

    def provided(self, pool: Pool, desired: int) -> None:
        """The provider applied ``desired``: not asked again until the desired count changes."""
        self._state.setdefault(pool.key, _State()).provided = desired
