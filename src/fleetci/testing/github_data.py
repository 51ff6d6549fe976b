"""The emulated GitHub world: plain records, a seeded dataset and builders of GitHub-shaped JSON.

The builders mirror the fields GitHub really sends (checked against the official OpenAPI description in the
tests), with every API URL built from the base URL the client used, so Link headers and ``url`` fields lead
back to whatever emulator (or proxy in front of it) the client talks to.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

JSON = dict[str, Any]

#: World clock origin: data timestamps are reproducible, independent of when the emulator starts.
WORLD_EPOCH = 1741000000.0  # 2025-03-03T11:06:40Z
ACTIONS_DOCS = "https://docs.github.com/rest/actions"
RUNNER_VERSION = "2.322.0"


def iso(ts: float) -> str:
    """ISO-8601 in UTC with a ``Z``, second precision, as GitHub's REST API writes timestamps."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def node_id(kind: str, ident: int) -> str:
    """GitHub's legacy global node id: base64 of ``<len>:<Type><id>`` (e.g. ``MDEwOlJlcG9zaXRvcnkx``)."""
    return base64.b64encode(f"{len(kind):03d}:{kind}{ident}".encode()).decode()


# -- records -----------------------------------------------------------------------------------------


@dataclass
class User:
    login: str
    id: int
    type: Literal["User", "Organization"] = "User"
    name: str | None = None
    company: str | None = None
    location: str | None = None
    bio: str | None = None
    created_at: float = WORLD_EPOCH - 86400 * 900


@dataclass
class Repo:
    id: int
    owner: str
    name: str
    private: bool
    description: str | None
    language: str | None
    topics: list[str]
    created_at: float
    updated_at: float
    pushed_at: float
    default_branch: str = "main"
    size: int = 0
    stargazers: int = 0
    forks: int = 0
    open_issues: int = 0
    homepage: str | None = None
    license: str | None = "mit"

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def last_modified(self) -> float:
        return max(self.updated_at, self.pushed_at)


@dataclass
class Workflow:
    id: int
    repo_id: int
    name: str
    path: str
    created_at: float


@dataclass
class Step:
    name: str
    number: int
    status: str
    conclusion: str | None
    started_at: float | None
    completed_at: float | None


@dataclass
class Job:
    id: int
    run_id: int
    name: str
    status: str
    conclusion: str | None
    created_at: float
    started_at: float
    completed_at: float | None
    labels: list[str]
    runner_id: int | None = None
    runner_name: str | None = None
    runner_group_id: int | None = None
    runner_group_name: str | None = None
    steps: list[Step] = field(default_factory=list)


@dataclass
class Run:
    id: int
    repo_id: int
    workflow_id: int
    run_number: int
    event: str
    status: str
    conclusion: str | None
    head_branch: str
    head_sha: str
    display_title: str
    actor: str
    created_at: float
    updated_at: float
    run_started_at: float
    check_suite_id: int
    run_attempt: int = 1
    job_ids: list[int] = field(default_factory=list)


@dataclass
class Runner:
    id: int
    name: str
    os: str
    status: str
    busy: bool
    labels: list[tuple[int, str, str]]  # (id, name, "read-only" | "custom")
    org: str
    repo_id: int | None = None  # None: an organization runner
    runner_group_id: int = 1
    ephemeral: bool = False


@dataclass
class Artifact:
    id: int
    repo_id: int
    run_id: int
    name: str
    data: bytes  # the zip archive
    created_at: float
    expires_at: float

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()


def make_zip(files: dict[str, bytes]) -> bytes:
    """A real, byte-for-byte reproducible zip archive (fixed timestamps)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2025, 3, 3, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buf.getvalue()


@dataclass
class World:
    """Everything the emulator serves; mutated only under the emulator's lock."""

    now: float
    users: dict[str, User] = field(default_factory=dict)
    org_members: dict[str, set[str]] = field(default_factory=dict)
    repos: dict[str, Repo] = field(default_factory=dict)  # key: lower-case full name
    repos_by_id: dict[int, Repo] = field(default_factory=dict)
    workflows: dict[int, Workflow] = field(default_factory=dict)
    runs: dict[int, Run] = field(default_factory=dict)
    jobs: dict[int, Job] = field(default_factory=dict)
    runners: dict[int, Runner] = field(default_factory=dict)
    artifacts: dict[int, Artifact] = field(default_factory=dict)
    job_logs: dict[int, str] = field(default_factory=dict)
    next_id: dict[str, int] = field(default_factory=dict)

    def new_id(self, kind: str) -> int:
        n = self.next_id[kind]
        self.next_id[kind] = n + 1 + (n % 7)  # gaps, like real ids from a shared sequence
        return n

    def add_repo(self, repo: Repo) -> None:
        self.repos[repo.full_name.lower()] = repo
        self.repos_by_id[repo.id] = repo

    def repo(self, owner: str, name: str) -> Repo | None:
        return self.repos.get(f"{owner}/{name}".lower())

    def can_see(self, login: str | None, repo: Repo) -> bool:
        return not repo.private or self.is_member(login, repo.owner)

    def is_member(self, login: str | None, owner: str) -> bool:
        """Owner of a user account, or member of an organization: full access to its repos and runners."""
        if login is None:
            return False
        return login.lower() == owner.lower() or login in self.org_members.get(owner.lower(), set())

    def ensure_user(self, login: str) -> User:
        user = self.users.get(login.lower())
        if user is None:
            digest = int(hashlib.sha256(login.encode()).hexdigest()[:8], 16)
            user = User(
                login=login,
                id=20_000_000 + digest % 80_000_000,
                name=login.title(),
                created_at=self.now - 86400 * (400 + digest % 1000),
            )
            self.users[login.lower()] = user
        return user


# -- the seeded dataset ------------------------------------------------------------------------------

ORG_REPOS: list[tuple[str, bool, str | None, str, list[str]]] = [
    # name, private, language, description, topics
    ("api", False, "Python", "Public REST API of the fleet dashboard", ["api", "python"]),
    ("web", False, "TypeScript", "Fleet dashboard front end", ["react", "dashboard"]),
    ("infra", True, "HCL", "Terraform for the build fleet", ["terraform"]),
    ("runner-images", True, "Shell", "Images for self-hosted runners", ["ci", "packer"]),
    ("docs", False, None, "User documentation", []),
    ("mobile", True, "Kotlin", "Android client", ["android"]),
    ("fleet-tools", False, "Go", "Small tools used across the fleet", ["go", "cli"]),
]
WORKFLOWS = [
    ("CI", ".github/workflows/ci.yml"),
    ("Release", ".github/workflows/release.yml"),
    ("Nightly", ".github/workflows/nightly.yml"),
]
JOB_SETS = [["build"], ["lint", "test"], ["build", "test (ubuntu-latest)", "test (arm64)"], ["docs"]]
EVENTS = ["push", "push", "push", "pull_request", "pull_request", "schedule", "workflow_dispatch"]
BRANCHES = ["main", "main", "main", "develop", "feature/cache", "fix/flaky-tests", "release/v2"]
TITLES = [
    "Bump actions/checkout to v4",
    "Fix flaky runner test",
    "Add ARM64 build",
    "Update README",
    "Speed up dependency install",
    "Refactor cache keys",
    "Nightly build",
    "Release v2.3.1",
]
CONCLUSIONS = ["success", "success", "success", "success", "failure", "cancelled", "skipped"]
STEP_NAMES = ["Set up job", "Run actions/checkout@v4", "Set up toolchain", "Run tests", "Complete job"]
RUNNER_SPECS = [
    ("fleet-linux-x64-01", "Linux", "X64", []),
    ("fleet-linux-x64-02", "Linux", "X64", []),
    ("fleet-linux-x64-03", "Linux", "X64", ["docker"]),
    ("fleet-linux-arm64-01", "Linux", "ARM64", []),
    ("fleet-linux-arm64-02", "Linux", "ARM64", ["docker"]),
    ("fleet-macos-arm64-01", "macOS", "ARM64", []),
    ("fleet-gpu-01", "Linux", "X64", ["gpu", "cuda-12"]),
    ("fleet-windows-x64-01", "Windows", "X64", []),
]
LABEL_IDS = {"self-hosted": 1, "Linux": 2, "linux": 2, "macOS": 3, "Windows": 4, "X64": 5, "ARM64": 6}


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def seed_world(seed: int, logins: list[str], now: float | None = None) -> World:
    """Build the reproducible dataset: one org with repos, runs, jobs, runners and artifacts, plus users."""
    rng = random.Random(seed)
    world = World(now=WORLD_EPOCH if now is None else float(int(now)))
    world.next_id = {
        "repo": 612_000_000 + rng.randrange(1000),
        "workflow": 61_000_000 + rng.randrange(1000),
        "run": 9_800_000_000 + rng.randrange(100_000),
        "job": 27_300_000_000 + rng.randrange(100_000),
        "check_suite": 22_100_000_000 + rng.randrange(100_000),
        "runner": 100 + rng.randrange(50),
        "artifact": 1_900_000_000 + rng.randrange(100_000),
    }
    world.users["octo-org"] = User(
        "octo-org",
        91_000_000 + rng.randrange(100_000),
        "Organization",
        name="Octo Org",
        location="Remote",
        created_at=world.now - 86400 * 1500,
    )
    for login, uid, name, age in [
        ("alice", 5_800_000, "Alice Liddell", 3100),
        ("bob", 7_300_000, "Bob Builder", 2800),
        ("fleet-bot", 140_000_000, "Fleet Bot", 600),
    ]:
        world.users[login] = User(
            login,
            uid + rng.randrange(100_000),
            name=name,
            company="@octo-org",
            created_at=world.now - 86400 * age,
        )
    for login in logins:
        world.ensure_user(login)
    world.org_members["octo-org"] = {"alice", "fleet-bot"}

    def repo(
        owner: str,
        name: str,
        private: bool,
        language: str | None,
        description: str,
        topics: list[str],
        age_days: int,
    ) -> Repo:
        created = world.now - 86400 * age_days
        pushed = world.now - rng.randrange(3600, 86400 * 20)
        r = Repo(
            world.new_id("repo"),
            owner,
            name,
            private,
            description,
            language,
            topics,
            created,
            pushed + rng.randrange(0, 3600),
            pushed,
            size=rng.randrange(50, 90_000),
            stargazers=0 if private else rng.randrange(0, 400),
            forks=0 if private else rng.randrange(0, 40),
            open_issues=rng.randrange(0, 30),
            license=None if private else rng.choice(["mit", "apache-2.0", "mit"]),
        )
        world.add_repo(r)
        return r

    org_repos = []
    for i, (name, private, language, description, topics) in enumerate(ORG_REPOS):
        org_repos.append(repo("octo-org", name, private, language, description, topics, 1000 - 90 * i))
    # Public first when sorted newest-created first: the youngest org repo is public (see ORG_REPOS order).
    secret = repo("alice", "secret-project", True, "Rust", "Nothing to see here", [], 200)
    repo("alice", "dotfiles", False, "Shell", "My dotfiles", ["dotfiles"], 700)
    repo("bob", "hello-fleet", False, "Python", "Trying out the fleet API", [], 100)
    repo("bob", "notes", True, None, "Private notes", [], 50)

    # self-hosted runners: organization level, plus two on a private repo
    for name, os_name, arch, extra in RUNNER_SPECS:
        labels = ["self-hosted", os_name, arch, *extra]
        rid = world.new_id("runner")
        world.runners[rid] = Runner(
            rid,
            name,
            os_name.lower() if os_name != "macOS" else "macOS",
            "online" if rng.random() < 0.75 else "offline",
            False,
            [
                (LABEL_IDS.get(lb, 100 + i), lb, "read-only" if lb in LABEL_IDS else "custom")
                for i, lb in enumerate(labels)
            ],
            "octo-org",
        )
    infra = org_repos[2]
    for n in (1, 2):
        rid = world.new_id("runner")
        world.runners[rid] = Runner(
            rid,
            f"infra-deployer-{n:02d}",
            "Linux",
            "online",
            False,
            [
                (1, "self-hosted", "read-only"),
                (2, "Linux", "read-only"),
                (5, "X64", "read-only"),
                (200 + n, "deploy", "custom"),
            ],
            "octo-org",
            repo_id=infra.id,
        )
    world.runners[min(world.runners)].status = "online"

    # workflows and runs
    for r in [*org_repos, secret, world.repos["bob/hello-fleet"]]:
        n_workflows = 1 if r.owner != "octo-org" else rng.choice([2, 3])
        flows = []
        for wname, path in WORKFLOWS[:n_workflows]:
            wf = Workflow(world.new_id("workflow"), r.id, wname, path, r.created_at + 86400)
            world.workflows[wf.id] = wf
            flows.append(wf)
        n_runs = rng.randrange(6, 10) if r.owner == "octo-org" else 3
        times = sorted(world.now - rng.randrange(600, 86400 * 10) for _ in range(n_runs))
        for k, created in enumerate(times):
            wf = rng.choice(flows)
            if k >= n_runs - 2 and rng.random() < 0.8:
                status = rng.choice(["queued", "in_progress"])
                created = world.now - rng.randrange(30, 900)
            else:
                status = "completed"
            add_run(world, rng, r, wf, status, created)
        r.pushed_at = max(r.pushed_at, max(times))
        r.updated_at = max(r.updated_at, r.pushed_at)

    # a few artifacts on successful runs
    for run in list(world.runs.values()):
        if run.conclusion == "success" and rng.random() < 0.6:
            kind = rng.choice(["dist", "coverage-report", "test-results"])
            files = {
                f"{kind}/README.txt": f"{kind} of run {run.id}\n".encode(),
                f"{kind}/data.json": f'{{"run_id": {run.id}, "sha": "{run.head_sha}"}}\n'.encode(),
            }
            add_artifact(world, run, kind, files)
    return world


def _job_labels(rng: random.Random, world: World) -> tuple[list[str], Runner | None]:
    if rng.random() < 0.35:
        return [rng.choice(["ubuntu-latest", "ubuntu-24.04", "macos-14"])], None
    candidates = [r for r in world.runners.values() if r.repo_id is None]
    runner = rng.choice(candidates)
    return [lb[1] for lb in runner.labels[:3]], runner


def add_run(
    world: World,
    rng: random.Random,
    repo: Repo,
    wf: Workflow,
    status: str,
    created: float,
    job_names: Sequence[str] | None = None,
) -> Run:
    """A run whose jobs agree with it (queued jobs for a queued run, finished jobs for a finished one);
    ``job_names``: its jobs (a matrix), else one of the usual job sets."""
    number = 1 + sum(1 for r in world.runs.values() if r.workflow_id == wf.id)
    event = "schedule" if wf.name == "Nightly" else rng.choice(EVENTS)
    branch = (
        repo.default_branch if event in ("schedule", "push") and rng.random() < 0.7 else rng.choice(BRANCHES)
    )
    actor = rng.choice(["alice", "fleet-bot"]) if repo.owner == "octo-org" else repo.owner
    run = Run(
        world.new_id("run"),
        repo.id,
        wf.id,
        number,
        event,
        status,
        None,
        branch,
        _sha(rng),
        "Nightly build" if event == "schedule" else rng.choice(TITLES),
        actor,
        created,
        created,
        created,
        world.new_id("check_suite"),
    )
    world.runs[run.id] = run
    for name in rng.choice(JOB_SETS) if job_names is None else job_names:
        labels, runner = _job_labels(rng, world)
        job = Job(world.new_id("job"), run.id, name, "queued", None, created, created, None, labels)
        world.jobs[job.id] = job
        run.job_ids.append(job.id)
        job.steps = [Step(s, i + 1, "queued", None, None, None) for i, s in enumerate(STEP_NAMES)]
        if status != "queued":
            start_job(world, job, runner, created + rng.randrange(5, 60))
            if status == "completed":
                finish_job(world, job, rng.choice(CONCLUSIONS[:5]), job.started_at + rng.randrange(30, 900))
    if status != "queued":
        run.status = "in_progress"
        run.run_started_at = created + 3
        run.updated_at = max(j.started_at for j in jobs_of(world, run))
    if status == "completed":
        complete_run(world, rng, run, run.updated_at)
    return run


def jobs_of(world: World, run: Run) -> list[Job]:
    return [world.jobs[j] for j in run.job_ids]


def start_job(world: World, job: Job, runner: Runner | None, at: float) -> None:
    job.status = "in_progress"
    job.started_at = at
    if runner is None:
        job.runner_id, job.runner_name, job.runner_group_id, job.runner_group_name = (
            1000 + job.id % 97,
            f"GitHub Actions {job.id % 97}",
            0,
            "GitHub Actions",
        )
    else:
        job.runner_id, job.runner_name, job.runner_group_id, job.runner_group_name = (
            runner.id,
            runner.name,
            runner.runner_group_id,
            "Default",
        )
        runner.busy = True
        runner.status = "online"
    for i, step in enumerate(job.steps):
        if i == 0:
            step.status, step.conclusion, step.started_at, step.completed_at = (
                "completed",
                "success",
                at,
                at + 1,
            )
        elif i == 1:
            step.status, step.started_at = "in_progress", at + 1


def finish_job(world: World, job: Job, conclusion: str, at: float) -> None:
    job.status, job.conclusion, job.completed_at = "completed", conclusion, max(at, job.started_at)
    last = len(job.steps) - 1
    span = max(job.completed_at - job.started_at, 1.0)
    for i, step in enumerate(job.steps):
        step.status = "completed"
        step.started_at = job.started_at + span * i / len(job.steps)
        step.completed_at = job.started_at + span * (i + 1) / len(job.steps)
        step.conclusion = (
            conclusion if i == last - 1 else ("skipped" if conclusion == "skipped" else "success")
        )
    if job.runner_id is not None and job.runner_id in world.runners:
        runner = world.runners[job.runner_id]
        runner.busy = any(j.status == "in_progress" and j.runner_id == runner.id for j in world.jobs.values())


def complete_run(world: World, rng: random.Random, run: Run, at: float) -> None:
    for job in jobs_of(world, run):
        if job.status != "completed":
            if job.status == "queued":
                start_job(world, job, None, at)
            finish_job(world, job, rng.choice(CONCLUSIONS[:5]), at)
    conclusions = {j.conclusion for j in jobs_of(world, run)}
    for c in ("failure", "cancelled", "success", "skipped"):
        if c in conclusions:
            run.conclusion = c
            break
    run.status = "completed"
    run.updated_at = max([at, *(j.completed_at or at for j in jobs_of(world, run))])


def add_artifact(world: World, run: Run, name: str, files: dict[str, bytes]) -> Artifact:
    created = run.updated_at
    art = Artifact(
        world.new_id("artifact"), run.repo_id, run.id, name, make_zip(files), created, created + 86400 * 90
    )
    world.artifacts[art.id] = art
    return art


def default_log(world: World, job: Job) -> str:
    """A plausible job log (timestamps, groups), used when no text was set for the job."""
    lines = []
    run = world.runs[job.run_id]
    for step in job.steps:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(step.started_at or job.started_at))
        lines.append(f"{ts} ##[group]{step.name}")
        lines.append(f"{ts} {step.name} for {job.name} at {run.head_sha[:7]}")
        lines.append(f"{ts} ##[endgroup]")
    return "\n".join(lines) + "\n"


# -- JSON builders -----------------------------------------------------------------------------------


def simple_user(base: str, user: User, html: str) -> JSON:
    u = f"{base}/users/{user.login}"
    return {
        "login": user.login,
        "id": user.id,
        "node_id": node_id(user.type, user.id),
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user.id}?v=4",
        "gravatar_id": "",
        "url": u,
        "html_url": f"{html}/{user.login}",
        "followers_url": f"{u}/followers",
        "following_url": f"{u}/following{{/other_user}}",
        "gists_url": f"{u}/gists{{/gist_id}}",
        "starred_url": f"{u}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{u}/subscriptions",
        "organizations_url": f"{u}/orgs",
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events{{/privacy}}",
        "received_events_url": f"{u}/received_events",
        "type": user.type,
        "user_view_type": "public",
        "site_admin": False,
    }


def private_user(base: str, user: User, html: str, public_repos: int, private_repos: int) -> JSON:
    """``GET /user``: the authenticated user's own view, with plan and private counters."""
    body = simple_user(base, user, html)
    body.update(
        {
            "user_view_type": "private",
            "name": user.name,
            "company": user.company,
            "blog": "",
            "location": user.location,
            "email": None,
            "hireable": None,
            "bio": user.bio,
            "twitter_username": None,
            "notification_email": None,
            "public_repos": public_repos,
            "public_gists": 0,
            "followers": 3,
            "following": 1,
            "created_at": iso(user.created_at),
            "updated_at": iso(user.created_at + 86400 * 300),
            "private_gists": 0,
            "total_private_repos": private_repos,
            "owned_private_repos": private_repos,
            "disk_usage": 10_240 + 17 * user.id % 5000,
            "collaborators": 0,
            "two_factor_authentication": True,
            "plan": {"name": "pro", "space": 976_562_499, "collaborators": 0, "private_repos": 9999},
        }
    )
    return body


PUBLIC_USER_KEYS = frozenset(
    {
        "login",
        "id",
        "user_view_type",
        "node_id",
        "avatar_url",
        "gravatar_id",
        "url",
        "html_url",
        "followers_url",
        "following_url",
        "gists_url",
        "starred_url",
        "subscriptions_url",
        "organizations_url",
        "repos_url",
        "events_url",
        "received_events_url",
        "type",
        "site_admin",
        "name",
        "company",
        "blog",
        "location",
        "email",
        "hireable",
        "bio",
        "twitter_username",
        "public_repos",
        "public_gists",
        "followers",
        "following",
        "created_at",
        "updated_at",
    }
)


def public_user(base: str, user: User, html: str, public_repos: int) -> JSON:
    """``GET /users/{username}``: the public profile (GitHub's schema allows no other fields)."""
    body = private_user(base, user, html, public_repos, 0)
    body["user_view_type"] = "public"
    return {k: v for k, v in body.items() if k in PUBLIC_USER_KEYS}


def organization(base: str, org: User, html: str, public_repos: int, private_repos: int | None) -> JSON:
    """``GET /orgs/{org}``; ``private_repos`` (members only) adds the counters GitHub shows to members."""
    u = f"{base}/orgs/{org.login}"
    body: JSON = {
        "login": org.login,
        "id": org.id,
        "node_id": node_id("Organization", org.id),
        "url": u,
        "repos_url": f"{u}/repos",
        "events_url": f"{u}/events",
        "hooks_url": f"{u}/hooks",
        "issues_url": f"{u}/issues",
        "members_url": f"{u}/members{{/member}}",
        "public_members_url": f"{u}/public_members{{/member}}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{org.id}?v=4",
        "description": "The build fleet of Octo Org",
        "name": org.name,
        "company": None,
        "blog": None,
        "location": org.location,
        "email": None,
        "twitter_username": None,
        "is_verified": False,
        "has_organization_projects": True,
        "has_repository_projects": True,
        "public_repos": public_repos,
        "public_gists": 0,
        "followers": 12,
        "following": 0,
        "html_url": f"{html}/{org.login}",
        "type": "Organization",
        "created_at": iso(org.created_at),
        "updated_at": iso(org.created_at + 86400 * 30),
        "archived_at": None,
    }
    for key in ("company", "blog", "email"):  # strings in GitHub's schema: absent rather than null
        if body[key] is None:
            del body[key]
    if private_repos is not None:
        body.update(
            {
                "total_private_repos": private_repos,
                "owned_private_repos": private_repos,
                "private_gists": 0,
                "disk_usage": 48_211,
                "collaborators": 0,
                "default_repository_permission": "read",
                "members_can_create_repositories": True,
                "two_factor_requirement_enabled": True,
                "members_allowed_repository_creation_type": "all",
                "web_commit_signoff_required": False,
                "plan": {
                    "name": "team",
                    "space": 976_562_499,
                    "private_repos": 999_999,
                    "filled_seats": 3,
                    "seats": 5,
                },
            }
        )
    return body


def workflow(base: str, html: str, wf: Workflow, repo: Repo) -> JSON:
    return {
        "id": wf.id,
        "node_id": node_id("Workflow", wf.id),
        "name": wf.name,
        "path": wf.path,
        "state": "active",
        "created_at": iso(wf.created_at),
        "updated_at": iso(wf.created_at + 3600),
        "url": f"{base}/repos/{repo.full_name}/actions/workflows/{wf.id}",
        "html_url": f"{html}/{repo.full_name}/blob/{repo.default_branch}/{wf.path}",
        "badge_url": f"{html}/{repo.full_name}/workflows/{wf.name}/badge.svg",
    }


LICENSES = {
    "mit": ("MIT License", "MIT", "MDc6TGljZW5zZTEz"),
    "apache-2.0": ("Apache License 2.0", "Apache-2.0", "MDc6TGljZW5zZTI="),
}

RepoKind = Literal["embedded", "minimal", "repository", "full"]


def repository(
    base: str, html: str, repo: Repo, owner: User, kind: RepoKind, permissions: dict[str, bool] | None
) -> JSON:
    """One repository in the shape of the endpoint that returns it.

    ``embedded``: the short form inside workflow runs; ``minimal``: org/user lists; ``repository``:
    ``/user/repos``; ``full``: ``GET /repos/{owner}/{repo}``.
    """
    u = f"{base}/repos/{repo.full_name}"
    body: JSON = {
        "id": repo.id,
        "node_id": node_id("Repository", repo.id),
        "name": repo.name,
        "full_name": repo.full_name,
        "private": repo.private,
        "owner": simple_user(base, owner, html),
        "html_url": f"{html}/{repo.full_name}",
        "description": repo.description,
        "fork": False,
        "url": u,
        "forks_url": f"{u}/forks",
        "keys_url": f"{u}/keys{{/key_id}}",
        "collaborators_url": f"{u}/collaborators{{/collaborator}}",
        "teams_url": f"{u}/teams",
        "hooks_url": f"{u}/hooks",
        "issue_events_url": f"{u}/issues/events{{/number}}",
        "events_url": f"{u}/events",
        "assignees_url": f"{u}/assignees{{/user}}",
        "branches_url": f"{u}/branches{{/branch}}",
        "tags_url": f"{u}/tags",
        "blobs_url": f"{u}/git/blobs{{/sha}}",
        "git_tags_url": f"{u}/git/tags{{/sha}}",
        "git_refs_url": f"{u}/git/refs{{/sha}}",
        "trees_url": f"{u}/git/trees{{/sha}}",
        "statuses_url": f"{u}/statuses/{{sha}}",
        "languages_url": f"{u}/languages",
        "stargazers_url": f"{u}/stargazers",
        "contributors_url": f"{u}/contributors",
        "subscribers_url": f"{u}/subscribers",
        "subscription_url": f"{u}/subscription",
        "commits_url": f"{u}/commits{{/sha}}",
        "git_commits_url": f"{u}/git/commits{{/sha}}",
        "comments_url": f"{u}/comments{{/number}}",
        "issue_comment_url": f"{u}/issues/comments{{/number}}",
        "contents_url": f"{u}/contents/{{+path}}",
        "compare_url": f"{u}/compare/{{base}}...{{head}}",
        "merges_url": f"{u}/merges",
        "archive_url": f"{u}/{{archive_format}}{{/ref}}",
        "downloads_url": f"{u}/downloads",
        "issues_url": f"{u}/issues{{/number}}",
        "pulls_url": f"{u}/pulls{{/number}}",
        "milestones_url": f"{u}/milestones{{/number}}",
        "notifications_url": f"{u}/notifications{{?since,all,participating}}",
        "labels_url": f"{u}/labels{{/name}}",
        "releases_url": f"{u}/releases{{/id}}",
        "deployments_url": f"{u}/deployments",
    }
    if kind == "embedded":
        return body
    host = html.split("://", 1)[-1]
    lic = LICENSES.get(repo.license or "")
    body.update(
        {
            "created_at": iso(repo.created_at),
            "updated_at": iso(repo.updated_at),
            "pushed_at": iso(repo.pushed_at),
            "git_url": f"git://{host}/{repo.full_name}.git",
            "ssh_url": f"git@{host.split(':')[0]}:{repo.full_name}.git",
            "clone_url": f"{html}/{repo.full_name}.git",
            "svn_url": f"{html}/{repo.full_name}",
            "homepage": repo.homepage,
            "size": repo.size,
            "stargazers_count": repo.stargazers,
            "watchers_count": repo.stargazers,
            "language": repo.language,
            "has_issues": True,
            "has_projects": True,
            "has_downloads": True,
            "has_wiki": not repo.private,
            "has_pages": False,
            "has_discussions": False,
            "forks_count": repo.forks,
            "mirror_url": None,
            "archived": False,
            "disabled": False,
            "open_issues_count": repo.open_issues,
            "license": None
            if lic is None
            else {
                "key": repo.license,
                "name": lic[0],
                "spdx_id": lic[1],
                "url": f"{base}/licenses/{repo.license}",
                "node_id": lic[2],
            },
            "allow_forking": not repo.private,
            "is_template": False,
            "web_commit_signoff_required": False,
            "topics": list(repo.topics),
            "visibility": "private" if repo.private else "public",
            "forks": repo.forks,
            "open_issues": repo.open_issues,
            "watchers": repo.stargazers,
            "default_branch": repo.default_branch,
        }
    )
    if permissions is not None:
        body["permissions"] = dict(permissions)
    if kind == "full":
        admin = bool(permissions and permissions.get("admin"))
        body.update(
            {
                "temp_clone_token": "" if not repo.private else None,
                "network_count": repo.forks,
                "subscribers_count": 2 + repo.stargazers // 10,
            }
        )
        if admin:
            body.update(
                {
                    "allow_squash_merge": True,
                    "allow_merge_commit": True,
                    "allow_rebase_merge": True,
                    "allow_auto_merge": False,
                    "delete_branch_on_merge": True,
                    "allow_update_branch": False,
                    "use_squash_pr_title_as_default": False,
                    "squash_merge_commit_message": "COMMIT_MESSAGES",
                    "squash_merge_commit_title": "COMMIT_OR_PR_TITLE",
                    "merge_commit_message": "PR_TITLE",
                    "merge_commit_title": "MERGE_MESSAGE",
                    "security_and_analysis": {
                        "secret_scanning": {"status": "enabled"},
                        "secret_scanning_push_protection": {"status": "enabled"},
                        "dependabot_security_updates": {"status": "disabled"},
                    },
                }
            )
        if owner.type == "Organization":
            body["organization"] = simple_user(base, owner, html)
    return body


def workflow_run(
    base: str, html: str, run: Run, repo: Repo, repo_embedded: JSON, wf: Workflow, actor: JSON
) -> JSON:
    u = f"{base}/repos/{repo.full_name}"
    title = run.display_title
    return {
        "id": run.id,
        "name": wf.name,
        "node_id": node_id("WorkflowRun", run.id),
        "head_branch": run.head_branch,
        "head_sha": run.head_sha,
        "path": wf.path,
        "display_title": title,
        "run_number": run.run_number,
        "event": run.event,
        "status": run.status,
        "conclusion": run.conclusion,
        "workflow_id": wf.id,
        "check_suite_id": run.check_suite_id,
        "check_suite_node_id": node_id("CheckSuite", run.check_suite_id),
        "url": f"{u}/actions/runs/{run.id}",
        "html_url": f"{html}/{repo.full_name}/actions/runs/{run.id}",
        "pull_requests": [],
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "actor": actor,
        "run_attempt": run.run_attempt,
        "referenced_workflows": [],
        "run_started_at": iso(run.run_started_at),
        "triggering_actor": actor,
        "jobs_url": f"{u}/actions/runs/{run.id}/jobs",
        "logs_url": f"{u}/actions/runs/{run.id}/logs",
        "check_suite_url": f"{u}/check-suites/{run.check_suite_id}",
        "artifacts_url": f"{u}/actions/runs/{run.id}/artifacts",
        "cancel_url": f"{u}/actions/runs/{run.id}/cancel",
        "rerun_url": f"{u}/actions/runs/{run.id}/rerun",
        "previous_attempt_url": None,
        "workflow_url": f"{u}/actions/workflows/{wf.id}",
        "head_commit": {
            "id": run.head_sha,
            "tree_id": hashlib.sha1(run.head_sha.encode()).hexdigest(),
            "message": title,
            "timestamp": iso(run.created_at - 40),
            "author": {"name": run.actor.title(), "email": f"{run.actor}@users.noreply.github.com"},
            "committer": {"name": "GitHub", "email": "noreply@github.com"},
        },
        "repository": repo_embedded,
        "head_repository": repo_embedded,
        "head_repository_id": repo.id,
    }


def job(base: str, html: str, j: Job, run: Run, repo: Repo, wf: Workflow) -> JSON:
    u = f"{base}/repos/{repo.full_name}"
    return {
        "id": j.id,
        "run_id": run.id,
        "workflow_name": wf.name,
        "head_branch": run.head_branch,
        "run_url": f"{u}/actions/runs/{run.id}",
        "run_attempt": run.run_attempt,
        "node_id": node_id("CheckRun", j.id),
        "head_sha": run.head_sha,
        "url": f"{u}/actions/jobs/{j.id}",
        "html_url": f"{html}/{repo.full_name}/actions/runs/{run.id}/job/{j.id}",
        "status": j.status,
        "conclusion": j.conclusion,
        "created_at": iso(j.created_at),
        "started_at": iso(j.started_at),
        "completed_at": None if j.completed_at is None else iso(j.completed_at),
        "name": j.name,
        "steps": [
            {
                "name": s.name,
                "status": s.status,
                "conclusion": s.conclusion,
                "number": s.number,
                "started_at": None if s.started_at is None else iso(s.started_at),
                "completed_at": None if s.completed_at is None else iso(s.completed_at),
            }
            for s in j.steps
        ],
        "check_run_url": f"{u}/check-runs/{j.id}",
        "labels": list(j.labels),
        "runner_id": j.runner_id,
        "runner_name": j.runner_name,
        "runner_group_id": j.runner_group_id,
        "runner_group_name": j.runner_group_name,
    }


def runner(r: Runner) -> JSON:
    return {
        "id": r.id,
        "name": r.name,
        "os": r.os,
        "status": r.status,
        "busy": r.busy,
        "ephemeral": r.ephemeral,
        "runner_group_id": r.runner_group_id,
        "version": RUNNER_VERSION,
        "labels": [{"id": i, "name": n, "type": t} for i, n, t in r.labels],
    }


def artifact(base: str, a: Artifact, run: Run, repo: Repo, now: float) -> JSON:
    u = f"{base}/repos/{repo.full_name}/actions/artifacts/{a.id}"
    return {
        "id": a.id,
        "node_id": node_id("Artifact", a.id),
        "name": a.name,
        "size_in_bytes": len(a.data),
        "url": u,
        "archive_download_url": f"{u}/zip",
        "expired": a.expires_at <= now,
        "created_at": iso(a.created_at),
        "updated_at": iso(a.created_at),
        "expires_at": iso(a.expires_at),
        "digest": a.digest,
        "workflow_run": {
            "id": run.id,
            "repository_id": repo.id,
            "head_repository_id": repo.id,
            "head_branch": run.head_branch,
            "head_sha": run.head_sha,
        },
    }


def rate_limit_overview(limit: int, used: int, reset: int) -> JSON:
    """``GET /rate_limit``: ``core`` (and ``rate``) reflect the caller's window; other buckets are idle."""
    core = {"limit": limit, "used": used, "remaining": max(limit - used, 0), "reset": reset}

    def idle(n: int) -> JSON:
        return {"limit": n, "used": 0, "remaining": n, "reset": reset}

    return {
        "resources": {
            "core": core,
            "search": idle(30),
            "graphql": idle(limit),
            "integration_manifest": idle(5000),
            "source_import": idle(100),
            "code_scanning_upload": idle(limit),
            "actions_runner_registration": idle(10000),
            "scim": idle(15000),
            "dependency_snapshots": idle(100),
            "code_search": idle(10),
            "code_scanning_autofix": idle(10),
        },
        "rate": dict(core),
    }


def error(message: str, documentation_url: str, status: int) -> JSON:
    return {"message": message, "documentation_url": documentation_url, "status": str(status)}
