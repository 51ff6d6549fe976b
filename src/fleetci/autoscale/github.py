"""What the autoscaler reads from GitHub: each read is one plain GET, so a fleetci cache in front of the
API answers it (``HIT``) or revalidates it (a free 304) — the autoscaler never bypasses the cache.

Per cycle: the owner's repositories (``/orgs/{o}/repos``, or ``/users/{o}/repos`` for a user), each
repository's queued and in-progress runs (``/repos/{o}/{r}/actions/runs?status=queued``, ``…=in_progress``:
a run that started still holds matrix jobs waiting for a runner when the fleet is saturated), the queued
jobs of those runs (``…/runs/{id}/jobs?filter=latest``, with their ``labels``), and the runners
(``/orgs/{o}/actions/runners``, or per repository for a user). Transient failures (unreachable, 5xx)
are retried through :mod:`fleetci.retry`; everything else is one line.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx

from fleetci import retry
from fleetci.errors import FleetciError
from fleetci.http import ApiError, JsonApi, redact_url

PER_PAGE = 100
# runs whose jobs may wait for a runner: a queued run, and a started one whose other matrix jobs still wait
RUN_STATUSES = ("queued", "in_progress")
MAX_PAGES = 50  # 5,000 items of one list: more is a runaway pagination, not an organization
BACKOFF = retry.Backoff(retries=2, initial=0.3, most=3.0)
HEADERS = {
    "Accept": "application/vnd.github+json",
    "X-GitHub-Api-Version": "2022-11-28",
    "User-Agent": "fleetci-autoscale",
}


@dataclass(frozen=True)
class QueuedJob:
    repo: str
    run_id: int
    job_id: int
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Runner:
    name: str
    status: str  # online / offline
    busy: bool
    labels: tuple[str, ...]


@dataclass
class Budget:
    """The token's rate-limit budget as the answers it gets say (``X-RateLimit-Remaining``/``-Reset``: GitHub
    sends them on every answer, and a fleetci proxy puts the latest ones it saw on its cached answers too).
    Answers of one cycle arrive out of order: within one window the lowest count is kept."""

    remaining: int | None = None
    reset: float | None = None  # epoch seconds the window ends
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def observe(self, headers: Mapping[str, str]) -> None:
        try:
            remaining = int(headers.get("x-ratelimit-remaining", ""))
            reset = float(int(headers.get("x-ratelimit-reset", "")))
        except ValueError:
            return
        with self._lock:
            if self.remaining is None or reset != self.reset:  # the first answer, or a new window
                self.remaining, self.reset = remaining, reset
            else:
                self.remaining = min(self.remaining, remaining)


class GitHubReader:
    """The autoscaler's view of GitHub through ``api_url`` (a fleetci proxy or the API itself)."""

    def __init__(
        self, api_url: str, token: str, owner: str, timeout: float = 30.0, budget: Budget | None = None
    ) -> None:
        self.owner = owner
        self.budget = budget or Budget()  # the token's, whichever way it reads
        self.api = JsonApi(
            api_url, what=f"GitHub API {redact_url(api_url)}", token=token, headers=HEADERS, timeout=timeout
        )
        self.is_org: bool | None = None  # learnt from the first repository listing

    def close(self) -> None:
        self.api.close()

    def get(self, path: str) -> httpx.Response:
        """One GET; transient failures retried, then a one-line :class:`FleetciError`."""

        def attempt(_: int) -> httpx.Response:
            try:
                r = self.api.response("GET", path, ok=(500, 502, 503, 504))
            except ApiError:
                raise
            except FleetciError as exc:  # unreachable
                raise retry.Transient(str(exc)) from None
            if r.status_code >= 500:
                raise retry.Transient(f"{self.api.what}: GET {path.split('?')[0]}: HTTP {r.status_code}")
            self.budget.observe(r.headers)
            return r

        try:
            return retry.call(attempt, BACKOFF)
        except retry.Transient as exc:
            raise FleetciError(str(exc)) from None

    def pages(self, path: str, field: str | None) -> Iterator[dict[str, Any]]:
        """Items of a list over its ``Link: rel="next"`` pages (``field``: the list's key; None: an array);
        more than ``MAX_PAGES`` pages is a one-line :class:`~fleetci.http.ListTruncated`, never a cut list."""
        items = self.api.pages(path, field, max_pages=MAX_PAGES, get=lambda url, _: self.get(url))
        return (i for i in items if isinstance(i, dict))

    def repositories(self) -> list[str]:
        """``owner/name`` of the owner's repositories that are not archived."""
        o = quote(self.owner)
        if self.is_org is not False:
            try:
                repos = list(self.pages(f"/orgs/{o}/repos?per_page={PER_PAGE}", None))
                self.is_org = True
            except ApiError as exc:
                if exc.status != 404 or self.is_org:
                    raise
                self.is_org = False
        if not self.is_org:
            repos = list(self.pages(f"/users/{o}/repos?per_page={PER_PAGE}", None))
        return sorted(
            str(r["full_name"])
            for r in repos
            if isinstance(r.get("full_name"), str) and not r.get("archived")
        )

    def runs(self, repo: str, status: str = "queued") -> list[tuple[str, int]]:
        """``(repo, run id)`` of the repository's runs with ``status`` (one list, its pages followed)."""
        out: list[tuple[str, int]] = []
        for run in self.pages(
            f"/repos/{repo}/actions/runs?status={quote(status)}&per_page={PER_PAGE}", "workflow_runs"
        ):
            run_id = run.get("id")
            if isinstance(run_id, int) and not isinstance(run_id, bool) and run.get("status") == status:
                out.append((repo, run_id))
        return out

    def queued_runs(self, repo: str) -> list[tuple[str, int]]:
        """``(repo, run id)`` of the repository's queued runs."""
        return self.runs(repo, "queued")

    def waiting_runs(self, repo: str) -> list[tuple[str, int]]:
        """``(repo, run id)`` of the runs that may hold queued jobs: queued and in progress (no run twice)."""
        return list(dict.fromkeys(run for status in RUN_STATUSES for run in self.runs(repo, status)))

    def queued_jobs_of(self, run: tuple[str, int]) -> list[QueuedJob]:
        """Queued jobs of one run (its latest attempt), with the labels they ask for."""
        repo, run_id = run
        out: list[QueuedJob] = []
        for job in self.pages(
            f"/repos/{repo}/actions/runs/{run_id}/jobs?filter=latest&per_page={PER_PAGE}", "jobs"
        ):
            labels, job_id = job.get("labels"), job.get("id")
            if job.get("status") == "queued" and isinstance(labels, list) and isinstance(job_id, int):
                out.append(QueuedJob(repo, run_id, job_id, tuple(str(lb) for lb in labels)))
        return out

    def queued_jobs(self, repo: str) -> list[QueuedJob]:
        """Queued jobs of the repository's queued and in-progress runs."""
        return [job for run in self.waiting_runs(repo) for job in self.queued_jobs_of(run)]

    def runners(self, repos: list[str]) -> list[Runner]:
        """The organization's runners, or each repository's for a user."""
        paths = (
            [f"/orgs/{quote(self.owner)}/actions/runners?per_page={PER_PAGE}"]
            if self.is_org
            else [f"/repos/{repo}/actions/runners?per_page={PER_PAGE}" for repo in repos]
        )
        out: list[Runner] = []
        for path in paths:
            try:
                found = list(self.pages(path, "runners"))
            except ApiError as exc:
                if self.is_org or exc.status not in (403, 404):
                    raise
                continue  # a user's repository whose runners this token may not list
            for r in found:
                labels = tuple(
                    str(lb.get("name"))
                    for lb in r.get("labels") or []
                    if isinstance(lb, dict) and lb.get("name")
                )
                out.append(
                    Runner(str(r.get("name", "")), str(r.get("status", "")), bool(r.get("busy")), labels)
                )
        return out
