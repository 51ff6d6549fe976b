"""What travels between the store, the master, its workers and its clients, as typed dictionaries.

These are the JSON shapes of the master's API (the answers ``api.py`` documents) and the rows the store
hands the master; key order is the order the master sends them in. Nothing here imports the rest of the
package, so every module can use them.
"""

from __future__ import annotations

from typing import Any, TypedDict


class RecipeJson(TypedDict):
    """A recipe as submitted and as handed to a worker (``Recipe.to_json``)."""

    name: str
    version: str
    build: str
    artifacts: list[str]
    depends: list[str]
    estimate_s: float | None
    timeout_s: float


# --- what the master hands a worker and what the worker sends back ---------------------------------------


class DepFile(TypedDict):
    name: str
    sha256: str
    url: str


class Dep(TypedDict):
    """A built dependency of a job: its files, to download into ``$FLEETCI_DEPS_DIR/<package>``."""

    package: str
    version: str
    release: int
    files: list[DepFile]


class Job(TypedDict):
    """One job as a worker gets it (``POST /api/v1/jobs/next``, or ``next`` of a result's answer)."""

    id: int
    package: str
    version: str
    release: int
    attempt: int
    recipe: RecipeJson
    source_url: str
    source: str | None  # small sources travel inline, base64
    deps: list[Dep]


class Outcome(TypedDict):
    """A finished build, kept in the worker's outbox until the master takes it."""

    ok: bool
    error: str | None
    log: str
    duration_s: float


class Registered(TypedDict):
    worker_id: str
    token: str
    heartbeat_ttl: float
    heartbeat_interval: float


class HeartbeatAnswer(TypedDict):
    worker_id: str
    state: str
    requeued: list[int]


class Unregistered(TypedDict):
    worker_id: str
    requeued: list[int]


class Uploaded(TypedDict):
    name: str
    sha256: str
    size: int


class ResultAnswer(TypedDict):
    job: int
    state: str
    error: str | None
    next: Job | None


# --- what admins see ---------------------------------------------------------------------------------


class QueuedJob(TypedDict):
    job: int
    package: str
    version: str
    release: int


class Queued(TypedDict):
    build: int
    jobs: list[QueuedJob]


class JobRow(TypedDict):
    """A job as ``status`` and ``builds/{id}`` list it."""

    id: int
    build_id: int
    package: str
    version: str
    release: int
    state: str
    priority: float
    worker_id: str | None
    attempts: int
    created_at: float
    ready_at: float | None
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    error: str | None
    depends_on: list[int]


class BuildInfo(TypedDict):
    build: int
    state: str  # running, done or failed
    jobs: list[JobRow]


class WorkerInfo(TypedDict):
    id: str
    name: str
    state: str
    registered_at: float
    last_seen: float
    jobs_done: int


class WorkerRow(WorkerInfo):
    """A worker as the store keeps it (``status`` shows it without its key)."""

    public_key: str


class RepoEntry(TypedDict):
    version: str
    release: int
    built_by: str


class Status(TypedDict):
    master_key: str
    heartbeat_ttl: float
    workers: list[WorkerInfo]
    counts: dict[str, int]
    jobs: list[JobRow]
    repository: dict[str, RepoEntry]


class Removed(TypedDict):
    removed: str
    cancelled_jobs: list[int]
    was_in_repository: bool


# --- the repository ----------------------------------------------------------------------------------


class ArtifactFile(TypedDict):
    """One file of a package in the repository (and in its signed index)."""

    name: str
    path: str
    sha256: str
    size: int
    signature: str


class Package(TypedDict):
    """A package in the repository, as the store keeps it (by name)."""

    version: str
    release: int
    depends: list[str]
    job_id: int
    worker_id: str
    worker_name: str
    worker_key: str
    built_at: float
    duration_s: float | None
    files: list[ArtifactFile]


class Upload(TypedDict):
    """An artifact a worker uploaded for the job it holds (staged until the result comes)."""

    job_id: int
    filename: str
    sha256: str
    size: int
    signature: str


class PendingApply(TypedDict):
    """A committed result whose files may not all be in ``repo/`` yet (the ``applying`` journal)."""

    job_id: int
    package: str
    rel: str
    stage: str
    files: list[str]


class Verified(TypedDict):
    """What ``fleetci build verify`` checked; ``index`` is the signed index itself."""

    packages: int
    files: int
    master_key: str
    index: dict[str, Any]
