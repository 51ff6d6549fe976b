"""Runner pools and the scaling decision: pure logic, no I/O (unit-tested on its own).

A pool is a label set with bounds, ``self-hosted,linux,x64:min=0:max=10``. GitHub gives a job to a runner
that has *all* the job's labels (compared case-insensitively), and every self-hosted runner also carries
GitHub's default labels: ``self-hosted``, its OS (``Linux``/``Windows``/``macOS``) and its architecture
(``X64``/``ARM64``/``ARM``). So a pool's runners have its labels plus ``self-hosted``, plus any OS or
architecture when the pool names none (a job asking for default labels only goes to a pool of default
labels only, never to ``self-hosted,gpu``). A queued job counts for the pool that serves it with the fewest
labels beyond the job's (then the fewest such implied defaults, then the first configured); a job no pool
can serve, or with no labels at all, is counted and logged, never scaled for.

A runner belongs to the pool whose own (non-default) labels it carries most of, then the one with the most
labels it carries: a GPU runner ``self-hosted,Linux,X64,gpu`` is in pool ``self-hosted,gpu``, not in
``self-hosted,linux,x64``.

Desired count: ``clamp(min, max, queued + busy)``. Growing happens at once; shrinking only after a lower
count has held for ``scale_down_delay`` seconds, and then only to the highest count wanted during that
window, so a burst that drains between two polls does not tear runners down and start them again. The
first cycle (a restart) starts from the runners that exist and holds them for the delay too.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

MAX_POOLS = 100
MAX_RUNNERS = 10_000
_LABEL = re.compile(r"[^\s,:;]{1,100}")
# GitHub's default labels of a self-hosted runner (lower case): every runner has one of each group
SELF_HOSTED = "self-hosted"
OS_LABELS = frozenset({"linux", "windows", "macos"})
ARCH_LABELS = frozenset({"x64", "arm64", "arm"})
DEFAULT_LABELS = frozenset({SELF_HOSTED}) | OS_LABELS | ARCH_LABELS


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

    @property
    def own(self) -> frozenset[str]:
        """The pool's labels that are not GitHub's default labels (``gpu`` of ``self-hosted,gpu``)."""
        return self.key - DEFAULT_LABELS

    def implied(self, job_labels: Iterable[str]) -> int | None:
        """None when the pool's runners lack a label of the job, else how many of the job's labels only
        the runners' default labels provide (``self-hosted``; an OS or arch the pool does not name)."""
        want = {label.lower() for label in job_labels}
        if self.own and not want - DEFAULT_LABELS:
            return None  # a job asking only for default labels is not worth starting a special runner
        missing = want - self.key
        for label in missing:
            if label == SELF_HOSTED:
                continue
            if label in OS_LABELS and not self.key & OS_LABELS:
                continue
            if label in ARCH_LABELS and not self.key & ARCH_LABELS:
                continue
            return None
        if len(missing & OS_LABELS) > 1 or len(missing & ARCH_LABELS) > 1:
            return None  # a runner has one OS and one architecture
        return len(missing)

    def serves(self, job_labels: Iterable[str]) -> bool:
        return self.implied(job_labels) is not None

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
    """The pool serving the job with the fewest labels beyond the job's, then the fewest implied default
    labels (the first configured on a tie); None for a job with no labels (nothing to match)."""
    want = {label.lower() for label in job_labels}
    if not want:
        return None
    best: tuple[int, int, int] | None = None
    found: Pool | None = None
    for i, pool in enumerate(pools):
        implied = pool.implied(want)
        if implied is None:
            continue
        rank = (len(pool.key - want), implied, i)
        if best is None or rank < best:
            best, found = rank, pool
    return found


def pool_for_runner(pools: Sequence[Pool], runner_labels: Iterable[str]) -> Pool | None:
    """The pool whose labels the runner has (``self-hosted`` implied) with the most of its own labels,
    then the most labels (the first configured on a tie)."""
    have = {label.lower() for label in runner_labels} | {SELF_HOSTED}
    fitting = [p for p in pools if p.key <= have]
    return max(fitting, key=lambda p: (len(p.own), len(p.key))) if fitting else None


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
    provided_at: float | None = None  # when it accepted it
    low_since: float | None = None  # when ``wanted`` first fell below ``applied``
    # (time, wanted) of the last ``scale_down_delay`` seconds, wanted strictly decreasing: the front is the
    # window's highest count (a sliding-window maximum)
    window: deque[tuple[float, int]] = field(default_factory=deque)

    def remember(self, now: float, wanted: int, delay: float) -> int:
        """Add this cycle's count; the highest count wanted within the last ``delay`` seconds."""
        while self.window and self.window[-1][1] <= wanted:
            self.window.pop()
        self.window.append((now, wanted))
        while len(self.window) > 1 and self.window[0][0] <= now - delay:
            self.window.popleft()
        return self.window[0][1]


@dataclass
class Planner:
    """Desired counts per pool across cycles (the scale-down delay needs memory).

    The provider is asked when the desired count changed since it last accepted one, and again — at most
    every ``recall_after`` seconds — while the pool's online runners differ from it: ephemeral runners that
    finished leave the desired count flat while the pool empties, and a command provider must hear again.
    """

    pools: tuple[Pool, ...]
    scale_down_delay: float
    recall_after: float = 30.0
    _state: dict[frozenset[str], _State] = field(default_factory=dict)

    def plan(self, counts: dict[frozenset[str], Count], now: float) -> list[Decision]:
        out = []
        for pool in self.pools:
            c = counts.get(pool.key, Count())
            st = self._state.setdefault(pool.key, _State())
            wanted = pool.clamp(c.queued + c.busy)
            peak = st.remember(now, wanted, self.scale_down_delay)
            if st.applied is None:  # a (re)start: keep what exists for the delay, as after a burst
                st.applied = max(wanted, pool.clamp(c.current))
                st.low_since = now if st.applied > wanted else None
            elif wanted >= st.applied:
                st.applied, st.low_since = wanted, None
            else:
                if st.low_since is None:
                    st.low_since = now
                if now - st.low_since >= self.scale_down_delay:
                    # never below a count wanted within the delay: a dip followed by a rise is no lull
                    st.applied = max(wanted, min(st.applied, peak))
                    st.low_since = None if st.applied == wanted else st.low_since
            desired = st.applied
            call = desired != st.provided or (
                desired != c.current
                and st.provided_at is not None
                and now - st.provided_at >= self.recall_after
            )
            out.append(
                Decision(pool, c.queued, c.busy, c.idle, c.current, wanted, desired, call, desired > wanted)
            )
        return out

    def provided(self, pool: Pool, desired: int, now: float | None = None) -> None:
        """The provider applied ``desired`` (at ``now``): asked again when the desired count changes, or
        after ``recall_after`` seconds while the online runners still differ from it."""
        st = self._state.setdefault(pool.key, _State())
        st.provided = desired
        st.provided_at = now
