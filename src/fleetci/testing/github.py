"""A GitHub REST API emulator that follows GitHub's caching and rate-limit rules closely.

It exists so the caching proxy, the benchmarks and the demos can be measured against something that behaves
like api.github.com where it matters for cost: per-token ETags, free 304s, charged-call accounting that is
exact, primary and secondary rate limits, Link pagination, latency and faults. Bodies follow GitHub's
official OpenAPI response schemas (the tests check them).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import itertools
import json
import math
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

from aiohttp import web

from fleetci.errors import UsageError
from fleetci.http import error_response, guarded_app, loads_strict
from fleetci.testing import github_data as gd
from fleetci.testing.github_data import JSON, Job, Repo, Run, World
from fleetci.testing.github_hooks import Hook, HookError, Hooks
from fleetci.testing.server import BackgroundApp, plain_host, small_int

__all__ = ["DEFAULT_OWNER", "TOKENS", "EmulatorConfig", "EmulatorServer", "GitHubEmulator"]

#: Token string -> login. Shaped like classic personal access tokens (``ghp_`` + 36 characters).
TOKENS: dict[str, str] = {
    "ghp_emuAliceiqPyQL7nUEQ4wRTuppimk5hgl7vQ": "alice",
    "ghp_emuBobwIWeYFAZ5TOHAWXuJP0TEMUlGU4HiJ": "bob",
    "ghp_emuFleetBotoNC6EdL5ZVqBrnJm2I1jDqT6i": "fleet-bot",
}
DEFAULT_OWNER = "octo-org"
DATA_SEED = 20250303  # the dataset's seed when the config gives none: data stays reproducible

DOCS = "https://docs.github.com/rest"
RATE_DOCS = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api"
SECONDARY_DOCS = f"{RATE_DOCS}#about-secondary-rate-limits"
VARY = "Accept, Authorization, Cookie, X-GitHub-OTP, Accept-Encoding"
STATIC_HEADERS = {
    "Server": "github.com",
    "X-GitHub-Api-Version-Selected": "2022-11-28",
    "X-GitHub-Media-Type": "github.v3; format=json",
    "X-RateLimit-Resource": "core",
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": (
        "ETag, Link, Location, Retry-After, X-GitHub-OTP, X-RateLimit-Limit, X-RateLimit-Remaining, "
        "X-RateLimit-Used, X-RateLimit-Resource, X-RateLimit-Reset, X-OAuth-Scopes, X-Accepted-OAuth-Scopes, "
        "X-Poll-Interval, X-GitHub-Media-Type, X-GitHub-SSO, X-GitHub-Request-Id, Deprecation, Sunset"
    ),
    "Strict-Transport-Security": "max-age=31536000; includeSubdomains; preload",
    "X-Frame-Options": "deny",
    "X-Content-Type-Options": "nosniff",
    "X-XSS-Protection": "0",
    "Referrer-Policy": "origin-when-cross-origin, strict-origin-when-cross-origin",
    "Content-Security-Policy": "default-src 'none'",
}
JSON_TYPE = "application/json; charset=utf-8"
RUN_STATUSES = frozenset({"completed", "in_progress", "queued", "requested", "waiting", "pending"})
MAX_BODY_BYTES = 8 * 1024 * 1024  # request bodies: nothing a client sends the emulator comes close
MAX_LATENCY_MS = 600_000.0  # a delay the emulator can honour (longer would only hang its clients)
MATRIX_MAX = 256  # GitHub's limit of jobs a matrix may generate per workflow run
MUTATE_MAX = 1000  # world changes per admin call: each one holds the lock, a huge n would stall the server
T = TypeVar("T")


def _token_of(authorization: str) -> str:
    """The token in ``token T`` / ``Bearer T``, or the password of ``Basic base64(user:T)``, as GitHub
    accepts a token as the Basic password (``x-access-token:T``); "" for anything else."""
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme in ("token", "bearer"):
        return value
    if scheme == "basic":
        import base64
        import binascii

        try:
            return base64.b64decode(value, validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


@dataclass
class EmulatorConfig:
    """Knobs of the emulated service; all of them can also be changed at runtime (``configure``)."""

    latency_ms: tuple[float, float] = (100.0, 500.0)  # uniform random per request, like real cache misses
    error_rate: float = 0.0  # fraction of requests answered 502/503 (JSON body)
    drop_rate: float = 0.0  # fraction of requests whose TCP connection is closed with no response
    primary_limit: int = 5000  # per-token requests per window
    anon_limit: int = 60  # anonymous requests per window, keyed by client address
    secondary_concurrency: int = 100  # more in-flight requests than this for one token -> secondary limit
    seed: int | None = None  # seeds the dataset and the latency/fault dice; None: fixed dataset, random dice
    window_seconds: float = 3600.0  # length of a primary rate-limit window
    gzip: bool = True  # compress bodies >= 1 KiB when the client accepts gzip, as GitHub does
    epoch: float | None = None  # the world's "now" (epoch seconds); None: a fixed date, reproducible data
    webhook_drop_rate: float = 0.0  # fraction of first delivery attempts lost (listed as failed)
    webhook_delay_ms: float = 0.0  # every delivery leaves this much later
    graphql_limit: int = 5000  # GraphQL points per window and token (its own budget, as on GitHub)

    def check(self) -> None:
        """Raise ValueError (one line) for values the emulator cannot honour."""
        lo, hi = self.latency_ms
        if not (0 <= lo <= hi <= MAX_LATENCY_MS):
            raise ValueError(
                f"latency_ms must be 0 <= low <= high <= {MAX_LATENCY_MS:g}, got {list(self.latency_ms)}"
            )
        for name in ("error_rate", "drop_rate", "webhook_drop_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        for name in ("primary_limit", "anon_limit", "secondary_concurrency", "graphql_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.window_seconds < math.inf:  # NaN fails too: it would break every reset time
            raise ValueError(f"window_seconds must be a finite number > 0, got {self.window_seconds}")
        if not 0 <= self.webhook_delay_ms <= MAX_LATENCY_MS:
            raise ValueError(
                f"webhook_delay_ms must be between 0 and {MAX_LATENCY_MS:g}, got {self.webhook_delay_ms}"
            )
        if not isinstance(self.gzip, bool):
            raise ValueError(f"gzip must be true or false, got {self.gzip!r}")


@dataclass(slots=True)
class _Rendered:
    """One answer before per-request headers; cached per world version, base URL, viewer and path."""

    status: int
    body: bytes | None
    cacheable: bool = False
    last_modified: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    digest: str = ""
    gz: bytes | None = None

    def __post_init__(self) -> None:
        if self.body is not None and not self.digest:
            self.digest = hashlib.sha256(self.body).hexdigest()


class _Answer(Exception):
    """Raised by a renderer to answer early (an error body)."""

    def __init__(self, rendered: _Rendered) -> None:
        super().__init__(rendered.status)
        self.rendered = rendered


@dataclass(slots=True)
class _Window:
    reset: float
    used: int = 0


@dataclass(slots=True)
class _Ctx:
    base: str
    login: str | None
    match: dict[str, str]
    query: list[tuple[str, str]]
    path: str
    body: bytes
    doc: str
    key: str  # rate-limit key: the login, or ``anon:<address>``

    def q(self, name: str, default: str | None = None) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return default


Renderer = Callable[[_Ctx], _Rendered]


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _json(
    obj: Any,
    status: int = 200,
    *,
    cacheable: bool = True,
    headers: dict[str, str] | None = None,
    last_modified: float | None = None,
) -> _Rendered:
    return _Rendered(status, _dumps(obj), cacheable, last_modified, headers or {})


def _error(status: int, message: str, doc: str) -> _Rendered:
    return _Rendered(status, _dumps(gd.error(message, doc, status)))


def _etag_matches(header: str, etag: str) -> bool:
    if header.strip() == "*":
        return True
    bare = etag[2:] if etag.startswith("W/") else etag
    for candidate in header.split(","):
        c = candidate.strip()
        if c.startswith("W/"):
            c = c[2:]
        if c == bare:
            return True
    return False


def _github_shape(status: int, message: str) -> dict[str, object]:
    """Errors the guards answer (413, 500) in GitHub's shape, as the emulator's own errors are."""
    return gd.error(message, DOCS, status)


def _int_in(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _short_strings(value: object) -> bool:
    """A JSON list of 1..10 runner labels, each 1..100 characters."""
    return (
        isinstance(value, list)
        and 1 <= len(value) <= 10
        and all(isinstance(v, str) and 1 <= len(v) <= 100 for v in value)
    )


class GitHubEmulator:
    """State and rules of the emulated API. Thread-safe: tests drive it from their own thread."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        tokens: dict[str, str] | None = None,
        *,
        max_body: int = MAX_BODY_BYTES,
    ) -> None:
        self.config = config or EmulatorConfig()
        self.config.check()
        self.max_body = max_body
        self.tokens: dict[str, str] = dict(TOKENS if tokens is None else tokens)
        seed = DATA_SEED if self.config.seed is None else self.config.seed
        self._lock = threading.RLock()
        self._world: World = gd.seed_world(seed, sorted(set(self.tokens.values())), self.config.epoch)
        self._world_rng = random.Random(seed + 1)
        self._dice = random.Random(self.config.seed)
        self._version = 0
        self._render_cache: dict[tuple[str, str, str, str | None], _Rendered] = {}
        self._charged: dict[str, int] = {}
        self._graphql_points: dict[str, int] = {}  # login -> GraphQL points charged
        self._windows: dict[str, _Window] = {}
        self._inflight: dict[str, int] = {}
        self._peak_inflight: dict[str, int] = {}  # the most concurrent requests each caller had
        self._not_modified = 0
        self._requests = 0
        self._secondary_until = 0.0
        self._secondary_retry_after: int | None = 60
        self._request_ids = itertools.count(1)
        self._app: web.Application | None = None
        self.hooks = Hooks(self)  # webhooks (testing/github_hooks.py)

    # -- public control surface ------------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        if self._app is None:
            self._app = self.make_app()
        return self._app

    def charged(self, token: str | None) -> int:
        """Charged calls for a token (or a login); ``None``: all anonymous callers together."""
        with self._lock:
            if token is None:
                return sum(n for k, n in self._charged.items() if k.startswith("anon:"))
            return self._charged.get(self.tokens.get(token, token), 0)

    def peak_inflight(self, token: str) -> int:
        """The most requests a token (or a login) had in flight at once (a client's concurrency cap)."""
        with self._lock:
            return self._peak_inflight.get(self.tokens.get(token, token), 0)

    def graphql_points(self, token: str) -> int:
        """GraphQL points charged to a token (or a login): GitHub's separate GraphQL budget."""
        with self._lock:
            return self._graphql_points.get(self.tokens.get(token, token), 0)

    @property
    def total_charged(self) -> int:
        with self._lock:
            return sum(self._charged.values())

    def stats(self) -> JSON:
        with self._lock:
            by_login: dict[str, int] = {}
            for key, n in self._charged.items():
                name = "anonymous" if key.startswith("anon:") else key
                by_login[name] = by_login.get(name, 0) + n
            return {
                "charged": by_login,
                "total_charged": sum(self._charged.values()),
                "not_modified": self._not_modified,
                "requests": self._requests,
                "graphql_points": dict(self._graphql_points),
                "graphql_total_points": sum(self._graphql_points.values()),
                "webhooks_sent": self.hooks.sent,  # deliveries attempted (redeliveries included)
                "webhooks_dropped": self.hooks.dropped,  # first attempts lost (webhook_drop_rate)
            }

    def reset_counters(self) -> None:
        """Forget charged calls, 304 and request counts, rate windows and any forced secondary limit."""
        with self._lock:
            self._charged.clear()
            self._graphql_points.clear()
            self._windows.clear()
            self._not_modified = 0
            self._requests = 0
            self._secondary_until = 0.0

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Apply runtime changes (the admin endpoint's keys); raises ValueError, changing nothing, if bad."""
        return self._configure(changes)

    def _configure(self, changes: dict[str, Any]) -> EmulatorConfig:
        """``configure`` on a mapping: a JSON key such as ``self`` is an unknown setting, not a TypeError."""
        changes = dict(changes)
        with self._lock:
            trigger = changes.pop("secondary_for_seconds", None)
            retry_after = changes.pop("secondary_retry_after", self._secondary_retry_after)
            allowed = {f for f in EmulatorConfig.__dataclass_fields__ if f not in ("seed", "epoch")}
            unknown = set(changes) - allowed
            if unknown:
                raise ValueError(f"unknown setting(s): {', '.join(sorted(unknown))}")
            candidate = EmulatorConfig(**{**asdict(self.config), **changes})
            try:
                if not isinstance(candidate.latency_ms, list | tuple):  # "05" would unpack as (0, 5)
                    raise ValueError(f"latency_ms must be [low, high], got {candidate.latency_ms!r}")
                lo, hi = candidate.latency_ms
                candidate.latency_ms = (float(lo), float(hi))
                candidate.error_rate = float(candidate.error_rate)
                candidate.drop_rate = float(candidate.drop_rate)
                candidate.webhook_drop_rate = float(candidate.webhook_drop_rate)
                candidate.webhook_delay_ms = float(candidate.webhook_delay_ms)
                for name in ("primary_limit", "anon_limit", "secondary_concurrency", "graphql_limit"):
                    value = getattr(candidate, name)
                    if isinstance(value, bool) or int(value) != value:
                        raise ValueError(f"{name} must be an integer, got {value!r}")
                    setattr(candidate, name, int(value))
                candidate.window_seconds = float(candidate.window_seconds)
            except (TypeError, ValueError, OverflowError) as exc:
                raise ValueError(f"bad setting: {exc}") from None
            candidate.check()
            if retry_after is not None and (
                isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0
            ):
                raise ValueError(
                    f"secondary_retry_after must be a non-negative integer or null, got {retry_after!r}"
                )
            if trigger is not None and (
                isinstance(trigger, bool)
                or not isinstance(trigger, int | float)
                or not math.isfinite(trigger)
            ):
                raise ValueError(f"secondary_for_seconds must be a finite number, got {trigger!r}")
            self.config = candidate
            self._secondary_retry_after = retry_after
            if trigger is not None:
                self.trigger_secondary(float(trigger), retry_after)
            return candidate

    def set_latency(self, low_ms: float, high_ms: float) -> None:
        self.configure(latency_ms=(low_ms, high_ms))

    def set_faults(self, error_rate: float | None = None, drop_rate: float | None = None) -> None:
        changes = {k: v for k, v in (("error_rate", error_rate), ("drop_rate", drop_rate)) if v is not None}
        self.configure(**changes)

    def set_primary_limit(self, limit: int, window_seconds: float | None = None) -> None:
        """Change the per-token limit (and window length) now; windows already open keep their reset time."""
        changes: dict[str, Any] = {"primary_limit": limit}
        if window_seconds is not None:
            changes["window_seconds"] = window_seconds
        self.configure(**changes)

    def trigger_secondary(self, seconds: float, retry_after: int | None = 60) -> None:
        """Answer every charged request with a secondary-limit 403 for ``seconds`` (0 ends it)."""
        with self._lock:
            self._secondary_until = time.monotonic() + seconds if seconds > 0 else 0.0
            self._secondary_retry_after = retry_after

    def mutate(self, n: int = 1) -> None:
        """Change the world ``n`` times: new queued runs, runs starting and completing, runners flipping."""
        with self._lock:
            for _ in range(max(n, 0)):
                self._mutate_once()
            self._bump()

    def add_artifact(self, owner: str, repo: str, run_id: int, name: str, files: dict[str, bytes]) -> int:
        """Attach an artifact (a real zip of ``files``) to a run; returns the artifact id."""
        with self._lock:
            r = self._world.repo(owner, repo)
            run = self._world.runs.get(run_id)
            if r is None or run is None or run.repo_id != r.id:
                raise KeyError(f"no run {run_id} in {owner}/{repo}")
            art = gd.add_artifact(self._world, run, name, files)
            self._bump()
            return art.id

    def add_workflow(self, owner: str, repo: str, name: str, path: str) -> int:
        """Add a workflow file to a repository (or return the existing one's id)."""
        with self._lock:
            r = self._world.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            for wf in self._world.workflows.values():
                if wf.repo_id == r.id and wf.path == path:
                    return wf.id
            wf = gd.Workflow(self._world.new_id("workflow"), r.id, name, path, self._world.now)
            self._world.workflows[wf.id] = wf
            self._bump()
            return wf.id

    def add_completed_run(
        self, owner: str, repo: str, workflow_id: int, conclusion: str = "success", branch: str | None = None
    ) -> int:
        """A finished run of a workflow, newer than every other run (a build that just completed)."""
        with self._lock:
            r = self._world.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            self._world.now += 60
            run = gd.add_run(
                self._world,
                self._world_rng,
                r,
                self._world.workflows[workflow_id],
                "in_progress",
                self._world.now,
            )
            for job in gd.jobs_of(self._world, run):
                gd.finish_job(self._world, job, conclusion, self._world.now + 30)
            run.status, run.conclusion = "completed", conclusion
            run.updated_at = self._world.now + 30
            if branch is not None:
                run.head_branch = branch
            self._bump()
            return run.id

    def queue_run(
        self,
        owner: str,
        repo: str,
        labels: Sequence[str] | None = None,
        *,
        matrix: int | None = None,
        started: int = 0,
    ) -> int:
        """A new queued run (with queued jobs) of the repository's first workflow: a push just happened.
        ``labels``: every job of the run asks for these runner labels (``runs-on``): an autoscaler's pool.
        ``matrix``: the run has this many jobs (``test (1)``…), not one of the usual job sets.
        ``started``: its first ``started`` jobs already run and the run is ``in_progress``, while the
        others still wait for a runner (what a saturated fleet looks like).
        """
        if matrix is not None and not 1 <= matrix <= MATRIX_MAX:
            raise ValueError(f"matrix must be 1..{MATRIX_MAX} jobs")
        if started < 0 or started > (matrix or MATRIX_MAX):
            raise ValueError(f"started must be 0..{matrix or MATRIX_MAX} (jobs of the run already running)")
        with self._lock:
            r = self._world.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            flows = sorted(
                (f for f in self._world.workflows.values() if f.repo_id == r.id), key=lambda f: f.id
            )
            names = None if matrix is None else [f"test ({i})" for i in range(1, matrix + 1)]
            self._world.now += 30
            run = gd.add_run(self._world, self._world_rng, r, flows[0], "queued", self._world.now, names)
            jobs = gd.jobs_of(self._world, run)
            if labels is not None:
                for job in jobs:
                    job.labels = list(labels)
            if started:
                at = self._world.now + 3
                run.status, run.run_started_at, run.updated_at = "in_progress", at, at
                for job in jobs[: min(started, len(jobs))]:
                    gd.start_job(self._world, job, self._runner_for(job), at)
            self._bump()
            return run.id

    def start_run(self, run_id: int) -> None:
        """A queued run's jobs are picked up: the run and its jobs go ``in_progress`` (self-hosted jobs on
        an idle organization runner, which turns busy)."""
        with self._lock:
            run = self._world.runs.get(run_id)
            if run is None or run.status != "queued":
                raise KeyError(f"no queued run {run_id}")
            w = self._world
            w.now += 1
            run.status, run.run_started_at, run.updated_at = "in_progress", w.now, w.now
            for job in gd.jobs_of(w, run):
                gd.start_job(w, job, self._runner_for(job), w.now)
            self._bump()

    def complete_run(self, run_id: int) -> None:
        """An in-progress run finishes (its jobs complete, their runners turn idle)."""
        with self._lock:
            run = self._world.runs.get(run_id)
            if run is None or run.status != "in_progress":
                raise KeyError(f"no run {run_id} in progress")
            self._world.now += 1
            gd.complete_run(self._world, self._world_rng, run, self._world.now)
            self._bump()

    def run_states(self, owner: str, repo: str, limit: int = 30) -> list[tuple[int, str]]:
        """``(id, status)`` of a repository's newest runs, in the order its runs list shows them."""
        with self._lock:
            ids = self.run_ids(owner, repo)[: max(0, limit)]
            return [(i, self._world.runs[i].status) for i in ids]

    def delete_repo(self, owner: str, repo: str) -> None:
        """The repository is deleted (or transferred away): its pages, runs, jobs and runners answer 404."""
        with self._lock:
            w = self._world
            r = w.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            runs = {x.id for x in w.runs.values() if x.repo_id == r.id}
            for job_id in [j.id for j in w.jobs.values() if j.run_id in runs]:
                del w.jobs[job_id]
                w.job_logs.pop(job_id, None)
            for table in (w.runs, w.workflows, w.artifacts):
                for key in [k for k, v in table.items() if v.repo_id == r.id]:
                    del table[key]
            for key in [k for k, v in w.runners.items() if v.repo_id == r.id]:
                del w.runners[key]
            del w.repos[r.full_name.lower()], w.repos_by_id[r.id]
            self._bump()

    def set_job_log(self, job_id: int, text: str) -> None:
        """Set the log text served for a job (and inside its run's log archive)."""
        with self._lock:
            if job_id not in self._world.jobs:
                raise KeyError(f"no job {job_id}")
            self._world.job_logs[job_id] = text
            self._bump()

    def run_ids(self, owner: str, repo: str, status: str | None = None) -> list[int]:
        """Run ids of a repository, newest first (optionally with one status), for tests and demos."""
        with self._lock:
            r = self._world.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            runs = [x for x in self._world.runs.values() if x.repo_id == r.id and status in (None, x.status)]
            return [x.id for x in sorted(runs, key=lambda x: (x.created_at, x.id), reverse=True)]

    def job_ids(self, run_id: int) -> list[int]:
        with self._lock:
            return list(self._world.runs[run_id].job_ids)

    def workflow_ids(self, owner: str, repo: str) -> list[int]:
        with self._lock:
            r = self._world.repo(owner, repo)
            if r is None:
                raise KeyError(f"no repository {owner}/{repo}")
            return sorted(w.id for w in self._world.workflows.values() if w.repo_id == r.id)

    def token_for(self, login: str) -> str:
        return next(t for t, who in self.tokens.items() if who == login)

    # -- world changes ---------------------------------------------------------------------------------

    def _bump(self) -> None:
        self._version += 1
        self._render_cache.clear()
        self.hooks.after_change()  # deliveries of what changed, to registered hooks

    def _mutate_once(self) -> None:
        w, rng = self._world, self._world_rng
        w.now += rng.randrange(20, 90)
        queued = sorted((r for r in w.runs.values() if r.status == "queued"), key=lambda r: r.id)
        running = sorted((r for r in w.runs.values() if r.status == "in_progress"), key=lambda r: r.id)
        dice = rng.random()
        if dice < 0.3 or not (queued or running):
            repos = sorted((r for r in w.repos.values() if r.owner == DEFAULT_OWNER), key=lambda r: r.id)
            repo = rng.choice(repos)
            flows = sorted((f for f in w.workflows.values() if f.repo_id == repo.id), key=lambda f: f.id)
            run = gd.add_run(w, rng, repo, rng.choice(flows), "queued", w.now)
            if run.event == "push":
                repo.pushed_at = repo.updated_at = w.now
        elif dice < 0.6 and queued:
            run = queued[0]
            run.status, run.run_started_at, run.updated_at = "in_progress", w.now, w.now
            for job in gd.jobs_of(w, run):
                gd.start_job(w, job, self._runner_for(job), w.now)
        elif dice < 0.9 and running:
            gd.complete_run(w, rng, running[0], w.now)
        else:
            idle = sorted((r for r in w.runners.values() if not r.busy), key=lambda r: r.id)
            if idle:
                runner = rng.choice(idle)
                runner.status = "offline" if runner.status == "online" else "online"

    def _runner_for(self, job: Job) -> gd.Runner | None:
        """An organization runner carrying all the job's labels, preferring an idle one (None: hosted)."""
        if "self-hosted" not in job.labels:
            return None
        fitting = [
            r
            for r in sorted(self._world.runners.values(), key=lambda r: r.id)
            if r.repo_id is None and set(job.labels) <= {lb[1] for lb in r.labels}
        ]
        idle = [r for r in fitting if not r.busy]
        choices = idle or fitting
        return choices[0] if choices else None

    # -- the HTTP application --------------------------------------------------------------------------

    def make_app(self) -> web.Application:
        """A fresh aiohttp application serving this emulator (one per runner, as aiohttp requires)."""
        app = guarded_app(self.max_body, shape=_github_shape)
        r = app.router
        a = "actions"
        get: list[tuple[str, Renderer, str, bool]] = [
            ("/user", self._r_user, "users/users#get-the-authenticated-user", True),
            (
                "/user/repos",
                self._r_user_repos,
                "repos/repos#list-repositories-for-the-authenticated-user",
                True,
            ),
            ("/orgs/{org}/repos", self._r_org_repos, "repos/repos#list-organization-repositories", True),
            (
                "/users/{user}/repos",
                self._r_user_public_repos,
                "repos/repos#list-repositories-for-a-user",
                True,
            ),
            ("/repos/{owner}/{repo}", self._r_repo, "repos/repos#get-a-repository", True),
            ("/orgs/{org}", self._r_org, "orgs/orgs#get-an-organization", True),
            ("/users/{user}", self._r_public_user, "users/users#get-a-user", True),
            (
                "/repos/{owner}/{repo}/actions/workflows",
                self._r_workflows,
                f"{a}/workflows#list-repository-workflows",
                True,
            ),
            (
                "/repos/{owner}/{repo}/actions/workflows/{workflow_id}",
                self._r_workflow,
                f"{a}/workflows#get-a-workflow",
                True,
            ),
            (
                "/repos/{owner}/{repo}/actions/runs",
                self._r_runs,
                f"{a}/workflow-runs#list-workflow-runs-for-a-repository",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/runs/{run_id:\d+}",
                self._r_run,
                f"{a}/workflow-runs#get-a-workflow-run",
                True,
            ),
            (
                "/repos/{owner}/{repo}/actions/workflows/{workflow_id}/runs",
                self._r_workflow_runs,
                f"{a}/workflow-runs#list-workflow-runs-for-a-workflow",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/runs/{run_id:\d+}/jobs",
                self._r_run_jobs,
                f"{a}/workflow-jobs#list-jobs-for-a-workflow-run",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/jobs/{job_id:\d+}",
                self._r_job,
                f"{a}/workflow-jobs#get-a-job-for-a-workflow-run",
                True,
            ),
            (
                "/repos/{owner}/{repo}/actions/runners",
                self._r_repo_runners,
                f"{a}/self-hosted-runners#list-self-hosted-runners-for-a-repository",
                True,
            ),
            (
                "/orgs/{org}/actions/runners",
                self._r_org_runners,
                f"{a}/self-hosted-runners#list-self-hosted-runners-for-an-organization",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/runs/{run_id:\d+}/artifacts",
                self._r_run_artifacts,
                f"{a}/artifacts#list-workflow-run-artifacts",
                True,
            ),
            (
                "/repos/{owner}/{repo}/actions/artifacts",
                self._r_repo_artifacts,
                f"{a}/artifacts#list-artifacts-for-a-repository",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/artifacts/{artifact_id:\d+}",
                self._r_artifact,
                f"{a}/artifacts#get-an-artifact",
                True,
            ),
            (
                r"/repos/{owner}/{repo}/actions/artifacts/{artifact_id:\d+}/{archive_format}",
                self._r_artifact_zip,
                f"{a}/artifacts#download-an-artifact",
                False,
            ),
            (
                r"/repos/{owner}/{repo}/actions/runs/{run_id:\d+}/logs",
                self._r_run_logs,
                f"{a}/workflow-runs#download-workflow-run-logs",
                False,
            ),
            (
                r"/repos/{owner}/{repo}/actions/jobs/{job_id:\d+}/logs",
                self._r_job_logs,
                f"{a}/workflow-jobs#download-job-logs-for-a-workflow-run",
                False,
            ),
        ]
        for path, renderer, doc, cacheable in get:
            r.add_get(path, self._endpoint(renderer, f"{DOCS}/{doc}", cacheable=cacheable))
        r.add_get(
            "/rate_limit",
            self._endpoint(
                self._r_rate_limit, f"{DOCS}/rate-limit/rate-limit", cacheable=False, charged=False
            ),
        )
        r.add_post(
            "/repos/{owner}/{repo}/actions/runners/registration-token",
            self._endpoint(
                self._r_repo_reg_token,
                f"{DOCS}/{a}/self-hosted-runners#create-a-registration-token-for-a-repository",
                cacheable=False,
            ),
        )
        r.add_post(
            "/orgs/{org}/actions/runners/registration-token",
            self._endpoint(
                self._r_org_reg_token,
                f"{DOCS}/{a}/self-hosted-runners#create-a-registration-token-for-an-organization",
                cacheable=False,
            ),
        )
        r.add_post(
            "/api/graphql",  # where GitHub Enterprise Server serves it (its REST API is under /api/v3)
            self._endpoint(
                self._r_graphql, "https://docs.github.com/graphql", cacheable=False, charged=False
            ),
        )
        r.add_post(
            "/graphql",
            # charged in points against its own budget by the renderer, not as one REST call
            self._endpoint(
                self._r_graphql, "https://docs.github.com/graphql", cacheable=False, charged=False
            ),
        )
        self._add_hook_routes(app)
        r.add_get("/_emulator/stats", self._admin(self._a_stats))
        r.add_get("/_emulator/health", self._admin(self._a_health))
        r.add_get("/_emulator/config", self._admin(self._a_get_config))
        r.add_post("/_emulator/config", self._admin(self._a_config))
        r.add_post("/_emulator/reset", self._admin(self._a_reset))
        r.add_post("/_emulator/mutate", self._admin(self._a_mutate))
        r.add_post("/_emulator/queue", self._admin(self._a_queue))
        r.add_get("/_emulator/blobs/{kind}/{name}", self._admin(self._a_blob))
        r.add_route("*", "/_emulator/{tail:.*}", self._admin(self._a_not_found))
        r.add_route("*", "/{tail:.*}", self._endpoint(self._r_not_found, DOCS, cacheable=False))
        return app

    # -- webhooks (testing/github_hooks.py) --------------------------------------------------------------

    def _add_hook_routes(self, app: web.Application) -> None:
        doc = f"{DOCS}/repos/webhooks"
        odoc = f"{DOCS}/orgs/webhooks"
        for prefix, d in (("/repos/{owner}/{repo}", doc), ("/orgs/{org}", odoc)):
            h = prefix + r"/hooks/{hook_id:\d+}"
            routes: list[tuple[str, str, Callable[[_Ctx], _Rendered]]] = [
                ("GET", prefix + "/hooks", self._r_hooks),
                ("POST", prefix + "/hooks", self._r_hook_create),
                ("GET", h, self._r_hook),
                ("DELETE", h, self._r_hook_delete),
                ("POST", h + "/pings", self._r_hook_ping),
                ("GET", h + "/deliveries", self._r_hook_deliveries),
                ("GET", h + r"/deliveries/{delivery_id:\d+}", self._r_hook_delivery),
                ("POST", h + r"/deliveries/{delivery_id:\d+}/attempts", self._r_hook_redeliver),
            ]
            for method, path, renderer in routes:
                app.router.add_route(method, path, self._endpoint(renderer, d, cacheable=False))

    def _hook_owner(self, ctx: _Ctx) -> tuple[str, Repo | None]:
        if "repo" in ctx.match:
            repo = self._admin_repo(ctx)
            return repo.owner, repo
        return self._admin_org(ctx), None

    def _hooked(self, ctx: _Ctx) -> Hook:
        owner, repo = self._hook_owner(ctx)
        try:
            return self.hooks.find(owner, repo, small_int(ctx.match["hook_id"]))
        except HookError as exc:
            raise _Answer(_error(exc.status, str(exc), ctx.doc)) from None

    def _r_hooks(self, ctx: _Ctx) -> _Rendered:
        owner, repo = self._hook_owner(ctx)
        page, headers = self._page(ctx, self.hooks.listed(owner, repo))
        return _json([self.hooks.hook_json(h) for h in page], cacheable=False, headers=headers)

    def _r_hook_create(self, ctx: _Ctx) -> _Rendered:
        owner, repo = self._hook_owner(ctx)
        try:
            body = loads_strict(ctx.body) if ctx.body else {}
            hook = self.hooks.create(owner, repo, ctx.base, body)
        except ValueError:
            return _error(400, "Problems parsing JSON", ctx.doc)
        except HookError as exc:
            return _error(exc.status, str(exc), ctx.doc)
        return _json(self.hooks.hook_json(hook), 201, cacheable=False)

    def _r_hook(self, ctx: _Ctx) -> _Rendered:
        return _json(self.hooks.hook_json(self._hooked(ctx)), cacheable=False)

    def _r_hook_delete(self, ctx: _Ctx) -> _Rendered:
        self.hooks.delete(self._hooked(ctx))
        return _Rendered(204, None)

    def _r_hook_ping(self, ctx: _Ctx) -> _Rendered:
        self.hooks.ping(self._hooked(ctx))
        return _Rendered(204, None)

    def _r_hook_deliveries(self, ctx: _Ctx) -> _Rendered:
        page, headers = self._page(ctx, self.hooks.deliveries_of(self._hooked(ctx)))
        return _json([self.hooks.delivery_json(d) for d in page], cacheable=False, headers=headers)

    def _r_hook_delivery(self, ctx: _Ctx) -> _Rendered:
        hook = self._hooked(ctx)
        try:
            d = self.hooks.delivery(hook, small_int(ctx.match["delivery_id"]))
        except HookError as exc:
            return _error(exc.status, str(exc), ctx.doc)
        return _json(self.hooks.delivery_json(d, full=True), cacheable=False)

    def _r_hook_redeliver(self, ctx: _Ctx) -> _Rendered:
        hook = self._hooked(ctx)
        try:
            self.hooks.redeliver(hook, small_int(ctx.match["delivery_id"]) or 0)
        except HookError as exc:
            return _error(exc.status, str(exc), ctx.doc)
        return _json({}, 202, cacheable=False)

    def _admin(
        self, fn: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            with self._lock:
                self._requests += 1
            return await fn(request)

        return handler

    def _endpoint(
        self, renderer: Renderer, doc: str, *, cacheable: bool = True, charged: bool = True
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, renderer, doc, cacheable, charged)

        return handler

    async def _handle(
        self, request: web.Request, renderer: Renderer, doc: str, cacheable: bool, charged: bool
    ) -> web.StreamResponse:
        if not plain_host(request):  # it ends up in every URL of the body
            return error_response(
                400, "Bad Request: the Host header is not printable ASCII", shape=_github_shape
            )
        cfg = self.config
        auth = request.headers.get("Authorization")
        login: str | None = None
        bad_credentials = False
        if auth:
            login = self.tokens.get(_token_of(auth))
            bad_credentials = login is None
        key = login if login is not None else f"anon:{request.remote}"
        with self._lock:
            self._requests += 1
            inflight = self._inflight.get(key, 0) + 1
            self._inflight[key] = inflight
            self._peak_inflight[key] = max(inflight, self._peak_inflight.get(key, 0))
            secondary = charged and (
                inflight > cfg.secondary_concurrency or time.monotonic() < self._secondary_until
            )
            retry_after = 60 if inflight > cfg.secondary_concurrency else self._secondary_retry_after
            dice_drop, dice_error = self._dice.random(), self._dice.random()
            lo, hi = cfg.latency_ms
            delay = self._dice.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
        try:
            if delay > 0:
                await asyncio.sleep(delay)
            rid = self._request_id()
            if charged and dice_drop < cfg.drop_rate:
                self._charge(key, login)
                if request.transport is not None:
                    request.transport.close()
                return web.Response(status=499)  # never written: the connection is gone
            if bad_credentials:
                self._charge(key, None)
                return self._respond(request, _error(401, "Bad credentials", DOCS), key, None, rid)
            if charged and dice_error < cfg.error_rate:
                self._charge(key, login)
                status = 502 if dice_error < cfg.error_rate / 2 else 503
                message = "Server Error" if status == 502 else "Service Unavailable"
                return self._respond(request, _error(status, message, DOCS), key, login, rid)
            if secondary:
                self._charge(key, login)
                body = _error(
                    403,
                    "You have exceeded a secondary rate limit. Please wait a few minutes before you "
                    f"try again. If you reach out to GitHub Support for help, please include the "
                    f"request ID {rid}.",
                    SECONDARY_DOCS,
                )
                if retry_after is not None:
                    body.headers["Retry-After"] = str(retry_after)
                return self._respond(request, body, key, login, rid)
            rendered = await self._render(request, renderer, doc, login, key, cacheable)
            etag = None
            if rendered.cacheable and rendered.status == 200 and request.method in ("GET", "HEAD"):
                etag = 'W/"' + hashlib.sha256(f"{auth or ''}\n{rendered.digest}".encode()).hexdigest() + '"'
                if self._not_modified_since(request, etag, rendered.last_modified):
                    with self._lock:
                        self._not_modified += 1
                    return self._respond(request, rendered, key, login, rid, etag=etag, not_modified=True)
            if charged and not self._charge(key, login):
                return self._respond(request, self._primary_exceeded(request, login, rid), key, login, rid)
            return self._respond(request, rendered, key, login, rid, etag=etag)
        finally:
            with self._lock:
                left = self._inflight[key] - 1
                if left:
                    self._inflight[key] = left
                else:
                    del self._inflight[key]

    @staticmethod
    def _not_modified_since(request: web.Request, etag: str, last_modified: float | None) -> bool:
        inm = request.headers.get("If-None-Match")
        if inm is not None:
            return _etag_matches(inm, etag)
        ims = request.headers.get("If-Modified-Since")
        if ims and last_modified is not None:
            try:
                since = parsedate_to_datetime(ims).timestamp()
            except (TypeError, ValueError, IndexError, OverflowError):
                return False
            return int(last_modified) <= since
        return False

    def _request_id(self) -> str:
        n = next(self._request_ids)
        return (
            f"{os.getpid() & 0xFFFF:04X}:{(n * 2654435761) & 0xFFFFF:05X}:{(n * 40503) & 0xFFFFFFF:07X}:"
            f"{n & 0xFFFFFFF:07X}:{int(time.time()) & 0xFFFFFFFF:08X}"
        )

    def _limit_for(self, key: str) -> int:
        return self.config.anon_limit if key.startswith("anon:") else self.config.primary_limit

    def _window(self, key: str, now: float, create: bool) -> _Window:
        w = self._windows.get(key)
        if w is None or now >= w.reset:
            w = _Window(reset=math.ceil(now + self.config.window_seconds))
            if create:
                self._windows[key] = w
        return w

    def _charge(self, key: str, login: str | None) -> bool:
        """Count one call against ``key``'s window; False (and nothing counted) once the limit is used up."""
        with self._lock:
            w = self._window(key, time.time(), create=True)
            if w.used >= self._limit_for(key):
                return False
            w.used += 1
            self._charged[key] = self._charged.get(key, 0) + 1
            return True

    def _primary_exceeded(self, request: web.Request, login: str | None, rid: str) -> _Rendered:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
        support = (
            "If you reach out to GitHub Support for help, please include the request ID "
            f"{rid} and timestamp {stamp}."
        )
        if login is None:
            message = (
                f"API rate limit exceeded for {request.remote}. (But here's the good news: Authenticated "
                f"requests get a higher rate limit. Check out the documentation for more details.) {support}"
            )
        else:
            with self._lock:
                uid = self._world.ensure_user(login).id
            message = f"API rate limit exceeded for user ID {uid}. {support}"
        return _error(403, message, f"{RATE_DOCS}#about-primary-rate-limits")

    async def _render(
        self, request: web.Request, renderer: Renderer, doc: str, login: str | None, key: str, cacheable: bool
    ) -> _Rendered:
        base = f"{request.scheme}://{request.host}"
        cache_key = (request.method, request.path_qs, base, login)
        if cacheable:
            with self._lock:
                hit = self._render_cache.get(cache_key)
            if hit is not None:
                return hit
        body = await request.read() if request.can_read_body else b""
        ctx = _Ctx(
            base, login, dict(request.match_info), list(request.query.items()), request.path, body, doc, key
        )
        with self._lock:
            version = self._version
            try:
                rendered = renderer(ctx)
            except _Answer as answer:
                rendered = answer.rendered
            if cacheable and version == self._version:
                if len(self._render_cache) > 20_000:
                    self._render_cache.clear()
                self._render_cache[cache_key] = rendered
        return rendered

    def _respond(
        self,
        request: web.Request,
        rendered: _Rendered,
        key: str,
        login: str | None,
        rid: str,
        *,
        etag: str | None = None,
        not_modified: bool = False,
    ) -> web.Response:
        now = time.time()
        with self._lock:
            w = self._window(key, now, create=False)
            limit = self._limit_for(key)
            used = min(w.used, limit)
        headers = dict(STATIC_HEADERS)
        headers.update(
            {
                "X-RateLimit-Limit": str(limit),
                "X-RateLimit-Remaining": str(limit - used),
                "X-RateLimit-Used": str(used),
                "X-RateLimit-Reset": str(int(w.reset)),
                "X-GitHub-Request-Id": rid,
            }
        )
        if login is not None:
            headers["X-OAuth-Scopes"] = "admin:org, repo, workflow"
            headers["X-Accepted-OAuth-Scopes"] = "repo"
        if etag is not None:
            headers["ETag"] = etag
            headers["Cache-Control"] = (
                "private, max-age=60, s-maxage=60" if login else "public, max-age=60, s-maxage=60"
            )
            headers["Vary"] = VARY
            if rendered.last_modified is not None:
                headers["Last-Modified"] = gd.http_date(rendered.last_modified)
        else:
            headers["Cache-Control"] = "no-cache"
            headers["Vary"] = VARY
        if not_modified:
            return web.Response(status=304, headers=headers)
        headers.update(rendered.headers)
        headers["Content-Type"] = JSON_TYPE
        body = rendered.body
        if (
            body is not None
            and len(body) >= 1024
            and self.config.gzip
            and "gzip" in request.headers.get("Accept-Encoding", "")
        ):
            if rendered.gz is None:
                rendered.gz = gzip.compress(body, compresslevel=6, mtime=0)
            body = rendered.gz
            headers["Content-Encoding"] = "gzip"
        return web.Response(status=rendered.status, body=body, headers=headers)

    # -- lookups ---------------------------------------------------------------------------------------

    def _not_found(self, ctx: _Ctx) -> _Answer:
        return _Answer(_error(404, "Not Found", ctx.doc))

    def _visible_repo(self, ctx: _Ctx) -> Repo:
        repo = self._world.repo(ctx.match["owner"], ctx.match["repo"])
        if repo is None or not self._world.can_see(ctx.login, repo):
            raise self._not_found(ctx)
        return repo

    def _require_auth(self, ctx: _Ctx) -> str:
        if ctx.login is None:
            raise _Answer(_error(401, "Requires authentication", ctx.doc))
        return ctx.login

    def _page(self, ctx: _Ctx, items: Sequence[T]) -> tuple[Sequence[T], dict[str, str]]:
        """GitHub pagination: ``per_page`` (default 30, max 100), ``page``, and a ``Link`` header."""

        def number(name: str, default: int) -> int:
            try:
                return int(ctx.q(name) or default)
            except ValueError:
                return default

        per_page = number("per_page", 30)
        per_page = 30 if per_page < 1 else min(per_page, 100)
        page = max(number("page", 1), 1)
        last = max(1, math.ceil(len(items) / per_page))

        def url(p: int) -> str:
            query = [(k, v) for k, v in ctx.query if k != "page"] + [("page", str(p))]
            return f"{ctx.base}{ctx.path}?{urlencode(query)}"

        links = []
        if page > 1:
            links.append(f'<{url(min(page - 1, last))}>; rel="prev"')
        if page < last:
            links += [f'<{url(page + 1)}>; rel="next"', f'<{url(last)}>; rel="last"']
        if page > 1:
            links.append(f'<{url(1)}>; rel="first"')
        headers = {"Link": ", ".join(links)} if links else {}
        return items[(page - 1) * per_page : page * per_page], headers

    def _user_json(self, ctx: _Ctx, login: str) -> JSON:
        return gd.simple_user(ctx.base, self._world.ensure_user(login), ctx.base)

    def _repo_json(self, ctx: _Ctx, repo: Repo, kind: gd.RepoKind) -> JSON:
        perms = None
        if ctx.login is not None and kind != "embedded":
            admin = self._world.is_member(ctx.login, repo.owner)
            perms = {"admin": admin, "maintain": admin, "push": admin, "triage": admin, "pull": True}
        return gd.repository(ctx.base, ctx.base, repo, self._world.ensure_user(repo.owner), kind, perms)

    def _sorted_repos(self, ctx: _Ctx, repos: Iterable[Repo], default_sort: str) -> list[Repo]:
        sort = ctx.q("sort", default_sort) or default_sort
        keys: dict[str, Callable[[Repo], Any]] = {
            "created": lambda r: r.created_at,
            "updated": lambda r: r.updated_at,
            "pushed": lambda r: r.pushed_at,
            "full_name": lambda r: r.full_name.lower(),
        }
        if sort not in keys:
            raise _Answer(_error(422, "Validation Failed", ctx.doc))
        direction = ctx.q("direction", "asc" if sort == "full_name" else "desc")
        return sorted(repos, key=keys[sort], reverse=direction == "desc")

    def _repo_list(self, ctx: _Ctx, repos: list[Repo], kind: gd.RepoKind) -> _Rendered:
        page, headers = self._page(ctx, repos)
        return _json([self._repo_json(ctx, r, kind) for r in page], headers=headers)

    # -- renderers -------------------------------------------------------------------------------------

    def _r_not_found(self, ctx: _Ctx) -> _Rendered:
        raise self._not_found(ctx)

    def _r_user(self, ctx: _Ctx) -> _Rendered:
        login = self._require_auth(ctx)
        user = self._world.ensure_user(login)
        owned = [r for r in self._world.repos.values() if r.owner.lower() == login.lower()]
        private = sum(1 for r in owned if r.private)
        body = gd.private_user(ctx.base, user, ctx.base, len(owned) - private, private)
        return _json(body, last_modified=user.created_at + 86400 * 300)

    def _r_user_repos(self, ctx: _Ctx) -> _Rendered:
        login = self._require_auth(ctx)
        visibility = ctx.q("visibility", "all")
        affiliation = set((ctx.q("affiliation") or "owner,collaborator,organization_member").split(","))
        repos = []
        for r in self._world.repos.values():
            own = r.owner.lower() == login.lower()
            member = not own and self._world.is_member(login, r.owner)
            if not ((own and "owner" in affiliation) or (member and "organization_member" in affiliation)):
                continue
            if visibility in ("public", "private") and r.private != (visibility == "private"):
                continue
            repos.append(r)
        return self._repo_list(ctx, self._sorted_repos(ctx, repos, "full_name"), "repository")

    def _r_org_repos(self, ctx: _Ctx) -> _Rendered:
        org = self._world.users.get(ctx.match["org"].lower())
        if org is None or org.type != "Organization":
            raise self._not_found(ctx)
        kind = ctx.q("type", "all")
        repos = [
            r
            for r in self._world.repos.values()
            if r.owner == org.login
            and self._world.can_see(ctx.login, r)
            and (kind not in ("public", "private") or r.private == (kind == "private"))
        ]
        return self._repo_list(ctx, self._sorted_repos(ctx, repos, "created"), "minimal")

    def _r_user_public_repos(self, ctx: _Ctx) -> _Rendered:
        owner = self._world.users.get(ctx.match["user"].lower())
        if owner is None:
            raise self._not_found(ctx)
        repos = [
            r
            for r in self._world.repos.values()
            if r.owner == owner.login and self._world.can_see(ctx.login, r)
        ]
        return self._repo_list(ctx, self._sorted_repos(ctx, repos, "full_name"), "minimal")

    def _r_org(self, ctx: _Ctx) -> _Rendered:
        org = self._world.users.get(ctx.match["org"].lower())
        if org is None or org.type != "Organization":
            raise self._not_found(ctx)
        repos = [r for r in self._world.repos.values() if r.owner == org.login]
        private = sum(1 for r in repos if r.private)
        member = self._world.is_member(ctx.login, org.login)
        body = gd.organization(ctx.base, org, ctx.base, len(repos) - private, private if member else None)
        return _json(body, last_modified=org.created_at + 86400 * 30)

    def _r_public_user(self, ctx: _Ctx) -> _Rendered:
        user = self._world.users.get(ctx.match["user"].lower())
        if user is None:
            raise self._not_found(ctx)
        public = sum(1 for r in self._world.repos.values() if r.owner == user.login and not r.private)
        return _json(
            gd.public_user(ctx.base, user, ctx.base, public), last_modified=user.created_at + 86400 * 300
        )

    def _find_workflow(self, ctx: _Ctx, repo: Repo) -> gd.Workflow:
        wanted = ctx.match["workflow_id"]
        for wf in self._world.workflows.values():
            if wf.repo_id == repo.id and (str(wf.id) == wanted or wf.path.rsplit("/", 1)[-1] == wanted):
                return wf
        raise self._not_found(ctx)

    def _r_workflows(self, ctx: _Ctx) -> _Rendered:
        repo = self._visible_repo(ctx)
        flows = sorted(
            (w for w in self._world.workflows.values() if w.repo_id == repo.id), key=lambda w: w.id
        )
        page, headers = self._page(ctx, flows)
        body = {
            "total_count": len(flows),
            "workflows": [gd.workflow(ctx.base, ctx.base, w, repo) for w in page],
        }
        return _json(body, headers=headers)

    def _r_workflow(self, ctx: _Ctx) -> _Rendered:
        repo = self._visible_repo(ctx)
        return _json(gd.workflow(ctx.base, ctx.base, self._find_workflow(ctx, repo), repo))

    def _r_repo(self, ctx: _Ctx) -> _Rendered:
        repo = self._visible_repo(ctx)
        return _json(self._repo_json(ctx, repo, "full"), last_modified=repo.last_modified)

    def _run_json(self, ctx: _Ctx, run: Run, repo: Repo, embedded: JSON) -> JSON:
        wf = self._world.workflows[run.workflow_id]
        return gd.workflow_run(ctx.base, ctx.base, run, repo, embedded, wf, self._user_json(ctx, run.actor))

    def _runs_list(self, ctx: _Ctx, repo: Repo, workflow_id: int | None) -> _Rendered:
        status, branch, event = ctx.q("status"), ctx.q("branch"), ctx.q("event")
        actor, head_sha = ctx.q("actor"), ctx.q("head_sha")
        runs = [
            r
            for r in self._world.runs.values()
            if r.repo_id == repo.id
            and workflow_id in (None, r.workflow_id)
            and (status is None or (r.status == status if status in RUN_STATUSES else r.conclusion == status))
            and branch in (None, r.head_branch)
            and event in (None, r.event)
            and (actor is None or r.actor.lower() == actor.lower())
            and head_sha in (None, r.head_sha)
        ]
        runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        page, headers = self._page(ctx, runs)
        embedded = self._repo_json(ctx, repo, "embedded")
        body = {
            "total_count": len(runs),
            "workflow_runs": [self._run_json(ctx, r, repo, embedded) for r in page],
        }
        return _json(body, headers=headers)

    def _r_runs(self, ctx: _Ctx) -> _Rendered:
        return self._runs_list(ctx, self._visible_repo(ctx), None)

    def _r_workflow_runs(self, ctx: _Ctx) -> _Rendered:
        repo = self._visible_repo(ctx)
        return self._runs_list(ctx, repo, self._find_workflow(ctx, repo).id)

    def _visible_run(self, ctx: _Ctx) -> tuple[Repo, Run]:
        repo = self._visible_repo(ctx)
        run = self._world.runs.get(small_int(ctx.match["run_id"]) or 0)
        if run is None or run.repo_id != repo.id:
            raise self._not_found(ctx)
        return repo, run

    def _visible_job(self, ctx: _Ctx) -> tuple[Repo, Run, Job]:
        repo = self._visible_repo(ctx)
        job = self._world.jobs.get(small_int(ctx.match["job_id"]) or 0)
        run = None if job is None else self._world.runs[job.run_id]
        if job is None or run is None or run.repo_id != repo.id:
            raise self._not_found(ctx)
        return repo, run, job

    def _r_run(self, ctx: _Ctx) -> _Rendered:
        repo, run = self._visible_run(ctx)
        return _json(self._run_json(ctx, run, repo, self._repo_json(ctx, repo, "embedded")))

    def _job_json(self, ctx: _Ctx, job: Job, run: Run, repo: Repo) -> JSON:
        return gd.job(ctx.base, ctx.base, job, run, repo, self._world.workflows[run.workflow_id])

    def _r_run_jobs(self, ctx: _Ctx) -> _Rendered:
        repo, run = self._visible_run(ctx)
        jobs = gd.jobs_of(self._world, run)
        page, headers = self._page(ctx, jobs)
        body = {"total_count": len(jobs), "jobs": [self._job_json(ctx, j, run, repo) for j in page]}
        return _json(body, headers=headers)

    def _r_job(self, ctx: _Ctx) -> _Rendered:
        repo, run, job = self._visible_job(ctx)
        return _json(self._job_json(ctx, job, run, repo))

    def _runners_list(self, ctx: _Ctx, runners: list[gd.Runner]) -> _Rendered:
        name = ctx.q("name")
        runners = sorted((r for r in runners if name in (None, r.name)), key=lambda r: r.id)
        page, headers = self._page(ctx, runners)
        return _json({"total_count": len(runners), "runners": [gd.runner(r) for r in page]}, headers=headers)

    def _admin_repo(self, ctx: _Ctx) -> Repo:
        repo = self._visible_repo(ctx)
        login = self._require_auth(ctx)
        if not self._world.is_member(login, repo.owner):
            raise _Answer(_error(403, "Must have admin rights to Repository.", ctx.doc))
        return repo

    def _admin_org(self, ctx: _Ctx) -> str:
        org = self._world.users.get(ctx.match["org"].lower())
        if org is None or org.type != "Organization":
            raise self._not_found(ctx)
        login = self._require_auth(ctx)
        if not self._world.is_member(login, org.login):
            raise _Answer(
                _error(
                    403,
                    "You must be an org admin or have the manage_runners:org fine-grained permission.",
                    ctx.doc,
                )
            )
        return org.login

    def _r_repo_runners(self, ctx: _Ctx) -> _Rendered:
        repo = self._admin_repo(ctx)
        return self._runners_list(ctx, [r for r in self._world.runners.values() if r.repo_id == repo.id])

    def _r_org_runners(self, ctx: _Ctx) -> _Rendered:
        org = self._admin_org(ctx)
        return self._runners_list(
            ctx, [r for r in self._world.runners.values() if r.org == org and r.repo_id is None]
        )

    def _registration_token(self) -> _Rendered:
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
        token = "".join(self._dice.choice(alphabet) for _ in range(29))
        return _json({"token": token, "expires_at": gd.iso(time.time() + 3600)}, 201, cacheable=False)

    def _r_repo_reg_token(self, ctx: _Ctx) -> _Rendered:
        self._admin_repo(ctx)
        return self._registration_token()

    def _r_org_reg_token(self, ctx: _Ctx) -> _Rendered:
        self._admin_org(ctx)
        return self._registration_token()

    def _r_graphql(self, ctx: _Ctx) -> _Rendered:
        if ctx.login is None:
            raise _Answer(
                _error(
                    401,
                    "This endpoint requires you to be authenticated.",
                    "https://docs.github.com/graphql/guides/forming-calls-with-graphql"
                    "#authenticating-with-graphql",
                )
            )
        try:
            payload = loads_strict(ctx.body or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("query"), str):
            raise _Answer(_error(400, "Problems parsing JSON", ctx.doc))
        from fleetci.testing import github_graphql as gg

        try:
            schema = gg.load_schema(gg.find_schema())
        except gg.SchemaNotFound as exc:
            raise _Answer(_error(501, str(exc), ctx.doc)) from None
        login = ctx.login
        key = f"{login}:graphql"
        limit = self.config.graphql_limit

        def budget() -> tuple[int, int, float]:
            w = self._window(key, time.time(), create=False)
            return limit, min(w.used, limit), w.reset

        def charge(points: int) -> bool:
            w = self._window(key, time.time(), create=True)
            if w.used + points > limit:
                w.used = max(w.used, limit)
                return False
            w.used += points
            self._graphql_points[login] = self._graphql_points.get(login, 0) + points
            return True

        answer = gg.run_query(schema, payload, gg.View(self._world, login, budget), charge)
        lim, used, reset = budget()
        headers = {
            "X-RateLimit-Limit": str(lim),
            "X-RateLimit-Remaining": str(lim - used),
            "X-RateLimit-Used": str(used),
            "X-RateLimit-Reset": str(int(reset)),
            "X-RateLimit-Resource": "graphql",
        }
        return _json(answer.body, cacheable=False, headers=headers)

    def _artifacts_list(self, ctx: _Ctx, repo: Repo, run_id: int | None) -> _Rendered:
        name = ctx.q("name")
        arts = sorted(
            (
                a
                for a in self._world.artifacts.values()
                if a.repo_id == repo.id and run_id in (None, a.run_id) and name in (None, a.name)
            ),
            key=lambda a: a.id,
            reverse=True,
        )
        page, headers = self._page(ctx, arts)
        body = {
            "total_count": len(arts),
            "artifacts": [
                gd.artifact(ctx.base, a, self._world.runs[a.run_id], repo, self._world.now) for a in page
            ],
        }
        return _json(body, headers=headers)

    def _r_run_artifacts(self, ctx: _Ctx) -> _Rendered:
        repo, run = self._visible_run(ctx)
        return self._artifacts_list(ctx, repo, run.id)

    def _r_repo_artifacts(self, ctx: _Ctx) -> _Rendered:
        return self._artifacts_list(ctx, self._visible_repo(ctx), None)

    def _visible_artifact(self, ctx: _Ctx) -> tuple[Repo, gd.Artifact]:
        repo = self._visible_repo(ctx)
        art = self._world.artifacts.get(small_int(ctx.match["artifact_id"]) or 0)
        if art is None or art.repo_id != repo.id:
            raise self._not_found(ctx)
        return repo, art

    def _r_artifact(self, ctx: _Ctx) -> _Rendered:
        repo, art = self._visible_artifact(ctx)
        return _json(gd.artifact(ctx.base, art, self._world.runs[art.run_id], repo, self._world.now))

    def _blob_url(self, ctx: _Ctx, kind: str, name: str) -> _Rendered:
        sig = hashlib.sha256(f"{kind}/{name}/{self._version}".encode()).hexdigest()[:32]
        return _Rendered(
            302, None, headers={"Location": f"{ctx.base}/_emulator/blobs/{kind}/{name}?sig={sig}"}
        )

    def _r_artifact_zip(self, ctx: _Ctx) -> _Rendered:
        self._require_auth(ctx)
        _, art = self._visible_artifact(ctx)
        if ctx.match["archive_format"] != "zip":
            raise self._not_found(ctx)
        if art.expires_at <= self._world.now:
            raise _Answer(_error(410, "Artifact has expired", ctx.doc))
        return self._blob_url(ctx, "artifacts", f"{art.id}.zip")

    def _has_log(self, job: Job) -> bool:
        return job.status == "completed" or job.id in self._world.job_logs

    def _r_run_logs(self, ctx: _Ctx) -> _Rendered:
        self._require_auth(ctx)
        _, run = self._visible_run(ctx)
        if not any(self._has_log(j) for j in gd.jobs_of(self._world, run)):
            raise self._not_found(ctx)
        return self._blob_url(ctx, "run-logs", f"{run.id}.zip")

    def _r_job_logs(self, ctx: _Ctx) -> _Rendered:
        self._require_auth(ctx)
        _, _, job = self._visible_job(ctx)
        if not self._has_log(job):
            raise self._not_found(ctx)
        return self._blob_url(ctx, "job-logs", f"{job.id}.txt")

    def _r_rate_limit(self, ctx: _Ctx) -> _Rendered:
        w = self._window(ctx.key, time.time(), create=False)
        limit = self._limit_for(ctx.key)
        overview = gd.rate_limit_overview(limit, min(w.used, limit), int(w.reset))
        if ctx.login is not None:  # GraphQL's own window, in points (see _r_graphql)
            g = self._window(f"{ctx.login}:graphql", time.time(), create=False)
            glimit = self.config.graphql_limit
            used = min(g.used, glimit)
            overview["resources"]["graphql"] = {
                "limit": glimit,
                "used": used,
                "remaining": glimit - used,
                "reset": int(g.reset),
            }
        return _json(overview, cacheable=False)

    # -- admin -----------------------------------------------------------------------------------------

    async def _a_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _a_health(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True, "version": self._version})

    def _config_json(self) -> JSON:
        with self._lock:
            body = asdict(self.config)
            body["latency_ms"] = list(self.config.latency_ms)
            left = self._secondary_until - time.monotonic()
            body["secondary_for_seconds"] = max(round(left, 3), 0) if self._secondary_until else 0
            body["secondary_retry_after"] = self._secondary_retry_after
            return body

    async def _a_get_config(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._config_json())

    async def _a_config(self, request: web.Request) -> web.StreamResponse:
        try:
            changes = loads_strict(await request.read())
        except ValueError as exc:
            return error_response(400, f"Problems parsing JSON: {exc}")
        if not isinstance(changes, dict):
            return error_response(422, "expected a JSON object of settings")
        try:
            self._configure(changes)
        except ValueError as exc:
            return error_response(422, str(exc))
        return web.json_response(self._config_json())

    async def _a_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_counters()
        return web.json_response(self.stats())

    async def _a_mutate(self, request: web.Request) -> web.StreamResponse:
        n: Any = 1
        body = await request.read()
        if body.strip():
            try:
                payload = loads_strict(body)
            except ValueError as exc:
                return error_response(400, f"Problems parsing JSON: {exc}")
            n = payload.get("n", 1) if isinstance(payload, dict) else None
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MUTATE_MAX:
            return error_response(422, f'expected {{"n": <integer 0..{MUTATE_MAX}>}}')
        self.mutate(n)
        return web.json_response({"mutated": n, "version": self._version})

    async def _a_queue(self, request: web.Request) -> web.StreamResponse:
        """``{"owner", "repo", "labels": [...], "matrix": N, "started": K}``: queue a run whose jobs ask for
        ``labels`` (benchmarks); ``matrix``/``started`` as in :meth:`queue_run` (optional)."""
        try:
            payload = loads_strict(await request.read())
        except ValueError as exc:
            return error_response(400, f"Problems parsing JSON: {exc}")
        body = payload if isinstance(payload, dict) else {}
        owner, repo, labels = body.get("owner"), body.get("repo"), body.get("labels")
        matrix, started = body.get("matrix"), body.get("started", 0)
        if (
            not isinstance(owner, str)
            or not isinstance(repo, str)
            or (labels is not None and not _short_strings(labels))
            or not (matrix is None or _int_in(matrix, 1, MATRIX_MAX))
            or not _int_in(started, 0, matrix if isinstance(matrix, int) else MATRIX_MAX)
        ):
            return error_response(
                422,
                'expected {"owner": str, "repo": str, "labels": [str, ...] (1..10), '
                f'"matrix": 1..{MATRIX_MAX} (optional), "started": 0..matrix (optional)}}',
            )
        try:
            run_id = self.queue_run(owner, repo, labels, matrix=matrix, started=started)
        except KeyError as exc:
            return error_response(404, str(exc.args[0]))
        return web.json_response({"run_id": run_id, "job_ids": self.job_ids(run_id)}, status=201)

    async def _a_not_found(self, request: web.Request) -> web.StreamResponse:
        return error_response(404, "Not Found")

    async def _a_blob(self, request: web.Request) -> web.StreamResponse:
        kind, name = request.match_info["kind"], request.match_info["name"]
        stem, _, ext = name.partition(".")
        number = small_int(stem)
        with self._lock:
            w = self._world
            if kind == "artifacts" and ext == "zip" and number in w.artifacts:
                art = w.artifacts[number]
                return web.Response(
                    body=art.data,
                    content_type="application/zip",
                    headers={"Content-Disposition": f"attachment; filename={art.name}.zip"},
                )
            if kind == "run-logs" and ext == "zip" and number in w.runs:
                files: dict[str, bytes] = {}
                for i, job in enumerate(gd.jobs_of(w, w.runs[number])):
                    if not self._has_log(job):
                        continue
                    safe = job.name.replace("/", "_")
                    text = w.job_logs.get(job.id) or gd.default_log(w, job)
                    files[f"{i}_{safe}.txt"] = text.encode()
                    for step in job.steps:
                        files[f"{safe}/{step.number}_{step.name.replace('/', '_')}.txt"] = (
                            f"{step.name}: {step.conclusion or step.status}\n".encode()
                        )
                return web.Response(body=gd.make_zip(files), content_type="application/zip")
            if kind == "job-logs" and ext == "txt" and number in w.jobs:
                job = w.jobs[number]
                text = w.job_logs.get(job.id) or gd.default_log(w, job)
                return web.Response(text=text, content_type="text/plain", charset="utf-8")
        return web.Response(status=404, text="BlobNotFound", content_type="text/plain")


class EmulatorServer(BackgroundApp):
    """Runs a GitHubEmulator on its own event loop in a daemon thread, on a real TCP port."""

    def __init__(
        self, emulator: GitHubEmulator | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.emulator = emulator or GitHubEmulator()
        super().__init__(self.emulator.make_app, host, port)

    def start(self) -> EmulatorServer:
        self.emulator.hooks.open()
        super().start()
        return self

    def stop(self) -> None:
        """Stop listening, then end the webhook delivery thread (no thread outlives the server)."""
        super().stop()
        self.emulator.hooks.close()

    def __enter__(self) -> EmulatorServer:
        return self.start()


def emulator_server(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    extra_tokens: Iterable[tuple[str, str]] = (),
) -> EmulatorServer:
    """A server (not started) for ``fleetci emulate github``: the built-in :data:`TOKENS` plus
    ``(login, token)`` pairs; a config the emulator cannot honour is a one-line usage error."""
    tokens = dict(TOKENS)
    for login, token in extra_tokens:
        tokens[token] = login
    try:
        emulator = GitHubEmulator(config, tokens)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return EmulatorServer(emulator, host=host, port=port)
