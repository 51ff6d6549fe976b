"""Every reference workflow under act as a copying user gets it (issue 18, "Tests").

No repository variables are set. The user's repository holds the copied workflow and has an ``origin`` on
GitHub (``octo-org/api``), so ``github.repository`` is what GitHub would give; ``GITHUB_API_URL`` points
at the GitHub API emulator the way GitHub points it at its own API on a real runner, and
``secrets.GITHUB_TOKEN`` is the token GitHub hands every run. act runs in host mode, offline, verbose so
that a job skipped by its ``if:`` is reported (``jobResult: skipped`` with that condition).

Each workflow runs with its default trigger; per job the test asserts it succeeded or was skipped by its
own ``if:``. What needs something only the user can provide (a GitLab token, a build master, the fleet
secret) is skipped by its own ``if:`` (a step's, where secrets decide: they cannot appear in an ``if:``,
so a step turns them into an output) and says what to set in a ``::notice::`` and the step summary.

The same gates opened, with the secret or variable provided, run against real components in
tests/integration/test_actions.py (and so are not repeated here): cache-fleet.yml's three-member fleet
(FLEETCI_CACHE_SECRET: "Join the fleet" runs and sees its peers), distributed-build.yml against a real
master (vars.FLEETCI_BUILD_MASTER: worker and submit run), presto's scheduled sync to a real registry
(GITLAB_TOKEN: the sync step runs); test_presto_workflow.py builds presto on workflow_dispatch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from integration.test_actions import stop_leftover_proxies
from support.actions import (
    REPO_ROOT,
    act_argv,
    act_events,
    action_checkout,
    base_env,
    load_yaml,
    run_act_process,
)

WORKFLOWS = REPO_ROOT / "workflows"
USER_REPO = "octo-org/api"  # the copying user's repository (the emulator knows it)


@dataclass
class UserRun:
    proc: subprocess.CompletedProcess[str]
    events: list[dict[str, Any]]

    def jobs(self) -> dict[str, list[str]]:
        """Job id -> the results act reported for it (one per matrix entry; "skipped" for an ``if:``)."""
        out: dict[str, list[str]] = {}
        for e in self.events:
            if "jobResult" in e:
                out.setdefault(str(e["jobID"]), []).append(str(e["jobResult"]))
        return out

    def skip_reasons(self) -> dict[str, str]:
        reasons = {}
        for e in self.events:
            m = re.fullmatch(r"Skipping job '[^']*' due to '(.*)'", str(e.get("msg", "")), re.S)
            if m and e.get("jobResult") == "skipped":
                reasons[str(e["jobID"])] = m.group(1)
        return reasons

    def step_results(self, job: str) -> dict[str, list[str]]:
        """Step name (as act reports it for the Main stage) -> results, for one job."""
        results: dict[str, list[str]] = {}
        for e in self.events:
            if "stepResult" in e and e.get("stage", "Main") == "Main" and e.get("jobID") == job:
                skipped = re.fullmatch(r"Skipping step '(.*)' due to '.*'", str(e["msg"]).strip(), re.S)
                if skipped:
                    results.setdefault(skipped.group(1), []).append(str(e["stepResult"]))
                    continue
                name = re.sub(r"\s*\[[^\]]*\]\s*$", "", str(e["msg"]).split(" - ", 1)[-1].strip())
                results.setdefault(name.removeprefix("Main "), []).append(str(e["stepResult"]))
        return results

    def summaries(self, job: str) -> str:
        """The step summaries the job wrote, one after another."""
        return "".join(
            str(e.get("content", ""))
            for e in self.events
            if e.get("command") == "summary" and e.get("jobID") == job
        )

    def lines(self, job: str | None = None) -> list[str]:
        return [
            str(e["msg"]).rstrip("\n")
            for e in self.events
            if e.get("raw_output") and (job is None or e.get("jobID") == job)
        ]

    def describe(self) -> str:
        shown = [
            str(e.get("msg", "")).rstrip()
            for e in self.events
            if e.get("level") != "debug" or "jobResult" in e
        ]
        return (
            f"act exit {self.proc.returncode}\n--- log\n"
            + "\n".join(shown[-150:])
            + (f"\n--- stderr\n{self.proc.stderr[-3000:]}")
        )


NEVER_RUN_STUB = """name: stand-in for an action the workflow skips under act
description: never runs
runs:
  using: composite
  steps:
    - shell: bash
      run: echo "::error::a stand-in ran" && exit 1
"""


def act_as_user(
    workflow: Path,
    tmp_path: Path,
    event: str,
    api_url: str,
    secrets: dict[str, str],
    *extra: str,
    timeout: float = 200,
    files: dict[str, str] | None = None,
    skipped_actions: tuple[str, ...] = (),
    runner: Path | None = None,
    path_first: tuple[Path, ...] = (),
) -> UserRun:
    """``act <event>`` of the copied workflow in a user's repository, no repository variables set.

    ``runner`` holds the action's checkout and act's action and tool cache (default: under tmp_path); a
    shared one is a self-hosted runner that keeps fleetci's virtualenv between jobs. ``path_first`` go
    first on the runner's PATH (as setup-python's directory does)."""
    runner = runner or tmp_path
    action_root = runner / "fleetci-action"
    if not action_root.exists():
        action_checkout(action_root)
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(workflow, repo / ".github" / "workflows" / workflow.name)
    for rel, text in (files or {}).items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text, encoding="utf-8")
    git = ["git", "-C", str(repo), "-c", "user.name=fleetci-test", "-c", "user.email=test@fleetci.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "copied workflow"], check=True, capture_output=True)
    subprocess.run(
        [*git, "remote", "add", "origin", f"https://github.com/{USER_REPO}.git"],
        check=True,
        capture_output=True,
    )
    # act resolves every action of a job before running it, also those whose `if:` skips them under act;
    # offline, GitHub's own cannot be fetched, so a local stand-in (that fails if it ever runs) answers.
    stub = tmp_path / "never-run-stub"
    stub.mkdir(exist_ok=True)
    (stub / "action.yml").write_text(NEVER_RUN_STUB, encoding="utf-8")
    labels: list[str] = []
    for job in load_yaml(workflow)["jobs"].values():
        runs_on = job["runs-on"]
        if isinstance(runs_on, str) and "${{" not in runs_on:
            labels.append(runs_on)
        elif isinstance(runs_on, list):
            labels += runs_on
    labels.append("ubuntu-latest")  # the default of an input-chosen runner label
    argv = act_argv(
        event,
        repo / ".github" / "workflows" / workflow.name,
        action_root,
        runner / "act-cache",
        platforms=labels,
        local={action: stub for action in skipped_actions},
        env={"GITHUB_API_URL": api_url},
        secrets=secrets,
        extra=("-v", *extra),
    )
    path = os.pathsep.join([*map(str, path_first), user_path()])
    done = run_act_process(argv, repo, base_env(ACT_DISABLE_VERSION_CHECK="1", PATH=path), timeout)
    return UserRun(done, act_events(done.stdout))


def user_path() -> str:
    """PATH without directories holding a fleetci (this suite's .venv): the actions install their own."""
    dirs = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(d for d in dirs if d and not (Path(d) / "fleetci").exists())


def job_ifs(workflow: Path) -> dict[str, str]:
    return {name: str(job["if"]) for name, job in load_yaml(workflow)["jobs"].items() if "if" in job}


def assert_passed_or_skipped_by_if(
    run: UserRun, workflow: Path, expect_run: set[str], only: set[str] | None = None
) -> None:
    """Every job of the workflow (or ``only`` those): in ``expect_run`` it succeeded (each matrix entry),
    else its own ``if:`` skipped it."""
    jobs, reasons, ifs = run.jobs(), run.skip_reasons(), job_ifs(workflow)
    for name in only or load_yaml(workflow)["jobs"]:
        if name in expect_run:
            assert jobs.get(name) and set(jobs[name]) == {"success"}, (
                f"{name}: {jobs.get(name)}\n{run.describe()}"
            )
        else:  # once per matrix entry
            assert jobs.get(name) and set(jobs[name]) == {"skipped"}, (
                f"{name}: {jobs.get(name)}\n{run.describe()}"
            )
            assert name in ifs and ifs[name].replace("${{", "").replace("}}", "").strip() in reasons[name], (
                name,
                ifs.get(name),
                reasons.get(name),
            )


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One runner machine for the module's workflows: fleetci installs once, later jobs reuse it."""
    return tmp_path_factory.mktemp("runner")


def emulator_token(emulator: Any) -> str:
    return str(emulator.emulator.token_for("alice"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["amd64-ci.yml", "arm64-ci.yml"])
def test_cache_workflow_passes_on_push_without_variables(
    emulator: Any, tmp_path: Path, runner: Path, name: str
) -> None:
    """amd64-ci.yml / arm64-ci.yml on push: the API cache fronts github.api_url for github.repository,
    P2P on by the workflow's own env (default port, no secret), and the job checks it got cache hits."""
    workflow = WORKFLOWS / name
    try:
        run = act_as_user(
            workflow,
            tmp_path,
            "push",
            emulator.url,
            {"GITHUB_TOKEN": emulator_token(emulator)},
            runner=runner,
        )
    finally:
        leftovers = stop_leftover_proxies(emulator.url)
    assert run.proc.returncode == 0, run.describe()
    assert_passed_or_skipped_by_if(run, workflow, {"api-through-cache"})
    lines = run.lines()
    assert any(re.fullmatch(r"fleetci cache: [1-9]\d* cache hits", ln) for ln in lines), run.describe()
    assert any(re.search(rf"pass 2: GET /repos/{USER_REPO} -> HIT$", ln) for ln in lines), run.describe()
    # Without the FLEETCI_CACHE_SECRET secret a copying user has not set yet, sharing is off, and the step
    # says so where the user looks (annotation), not only in a log.
    warnings = workflow_commands(run, "api-through-cache", "warning")
    assert any("no fleet secret: set FLEETCI_CACHE_SECRET" in w for w in warnings), run.describe()
    assert leftovers == [], f"proxy processes left running: {leftovers}"


def job_lines(run: UserRun, job: str) -> list[str]:
    return [part for ln in run.lines(job) for part in ln.splitlines()]  # act may join a step's lines


@pytest.mark.timeout(300)
def test_distributed_build_on_push_without_a_master_is_skipped_and_says_what_to_set(
    emulator: Any, tmp_path: Path, runner: Path
) -> None:
    """distributed-build.yml on push (a change under packages/): the build master is the user's to run and
    name in vars.FLEETCI_BUILD_MASTER; without it worker and submit are skipped by their own ``if:`` and
    the not-configured job says what to set (notice + step summary)."""
    workflow = WORKFLOWS / "distributed-build.yml"
    recipe = "name: hello\nversion: '1.0'\nbuild: echo hello > hello.pkg\nartifacts: [hello.pkg]\n"
    run = act_as_user(
        workflow,
        tmp_path,
        "push",
        emulator.url,
        {"GITHUB_TOKEN": emulator_token(emulator)},
        files={"packages/hello/recipe.yml": recipe},
        runner=runner,
    )
    assert run.proc.returncode == 0, run.describe()
    assert_passed_or_skipped_by_if(run, workflow, {"not-configured"})
    notices = workflow_commands(run, "not-configured", "notice")
    assert len(notices) == 1 and "set the repository variable FLEETCI_BUILD_MASTER" in notices[0], (
        f"{notices}\n{run.describe()}"
    )
    assert "set the repository variable `FLEETCI_BUILD_MASTER`" in run.summaries("not-configured"), (
        run.describe()
    )


def workflow_commands(run: UserRun, job: str, kind: str) -> list[str]:
    """The ``::<kind>::`` workflow commands a job printed, as act logs them."""
    return [str(e["msg"]).strip() for e in run.events if e.get("jobID") == job and e.get("command") == kind]


@pytest.mark.timeout(300)
def test_presto_schedule_skips_the_build_and_the_sync_without_the_gitlab_token(
    emulator: Any, tmp_path: Path, runner: Path
) -> None:
    """presto-build-and-sync.yml on its schedule: the build job is skipped by its own ``if:`` (it builds on
    workflow_dispatch); the sync job runs, and without the GITLAB_TOKEN secret its sync step is skipped by
    its own ``if:`` with a notice and a step-summary line naming the secret."""
    workflow = WORKFLOWS / "presto-build-and-sync.yml"
    # GitHub knows the workflow once the user pushed it (no run of it yet).
    emulator.emulator.add_workflow(
        *USER_REPO.split("/"), "Presto build", f".github/workflows/{workflow.name}"
    )
    run = act_as_user(
        workflow,
        tmp_path,
        "schedule",
        emulator.url,
        {"GITHUB_TOKEN": emulator_token(emulator)},
        runner=runner,
    )
    assert run.proc.returncode == 0, run.describe()
    assert_passed_or_skipped_by_if(run, workflow, {"sync"})
    steps = run.step_results("sync")
    assert steps.get("Check for the GitLab token") == ["success"], f"{steps}\n{run.describe()}"
    assert steps.get("Sync missing images to GitLab") == ["skipped"], f"{steps}\n{run.describe()}"
    notices = workflow_commands(run, "sync", "notice")
    assert len(notices) == 1 and "set the GITLAB_TOKEN secret" in notices[0], f"{notices}\n{run.describe()}"
    assert "GitLab sync skipped: set the `GITLAB_TOKEN` secret" in run.summaries("sync"), run.describe()
    assert not [ln for ln in job_lines(run, "sync") if "error" in ln.lower()], run.describe()


@pytest.mark.timeout(400)
def test_cache_fleet_schedule_without_the_fleet_secret_polls_locally_and_says_so(
    emulator: Any, tmp_path: Path, runner: Path
) -> None:
    """cache-fleet.yml on its schedule, three members at once: the fleet secret is the user's to set; without
    it each member warns visibly (annotation naming FLEETCI_CACHE_SECRET), polls through its own cache, and
    "Join the fleet" is skipped by its own ``if:`` with a notice and a step-summary line naming the secret.
    Each member's proxy prewarms the URLs it polls (the action's ``prewarm`` input)."""
    workflow = WORKFLOWS / "cache-fleet.yml"
    try:
        run = act_as_user(
            workflow,
            tmp_path,
            "schedule",
            emulator.url,
            {"GITHUB_TOKEN": emulator_token(emulator)},
            "--concurrent-jobs",
            "3",
            timeout=360,
            runner=runner,
        )
    finally:
        leftovers = stop_leftover_proxies(emulator.url)
    assert run.proc.returncode == 0, run.describe()
    assert run.jobs() == {"poll": ["success"] * 3}, run.describe()
    steps = run.step_results("poll")
    assert steps.get("Join the fleet") == ["skipped"] * 3, f"{steps}\n{run.describe()}"
    assert steps.get("Poll like an autoscaler") == ["success"] * 3, f"{steps}\n{run.describe()}"
    warnings = workflow_commands(run, "poll", "warning")
    assert len(warnings) == 3 and all("no fleet secret: set FLEETCI_CACHE_SECRET" in w for w in warnings), (
        f"{warnings}\n{run.describe()}"
    )
    notices = workflow_commands(run, "poll", "notice")
    assert len(notices) == 3 and all("set the FLEETCI_CACHE_SECRET secret" in n for n in notices), (
        f"{notices}\n{run.describe()}"
    )
    assert run.summaries("poll").count("Join the fleet skipped: set the `FLEETCI_CACHE_SECRET` secret") == 3
    polls = [ln for ln in job_lines(run, "poll") if re.fullmatch(r"member \d round \d: GET \S+ -> \w+", ln)]
    assert len(polls) == 18, run.describe()
    # The action's prewarm input reached each member's proxy: the three URLs its poll step read are kept warm.
    stats = [json.loads(ln) for ln in job_lines(run, "poll") if ln.startswith("{") and '"hit_rate"' in ln]
    assert len(stats) == 3, run.describe()
    assert [s.get("prewarm", {}).get("watched") for s in stats] == [3] * 3, f"{stats}\n{run.describe()}"
    assert leftovers == [], f"proxy processes left running: {leftovers}"


MULTI_ARCH = WORKFLOWS / "multi-arch-ci.yml"
# GitHub's own actions the amd64 entries skip under act (`!env.ACT`): resolved, never run.
MULTI_ARCH_SKIPPED_ACTIONS = ("actions/setup-python@v6", "actions/cache@v5", "actions/upload-artifact@v6")
PYTHONS = ("3.9", "3.10", "3.11")
SMOKE_TEST = {"tests/test_smoke.py": "def test_smoke():\n    assert 1 + 1 == 2\n"}


def real_python(version: str) -> str | None:
    """A CPython ``version`` on this machine (Debian's, or a pyenv build), not a pyenv shim (a shim named
    python3.9 runs pyenv's global version when 3.9 is not selected)."""
    dirs = [Path("/usr/bin"), Path("/usr/local/bin"), *sorted(Path.home().glob(".pyenv/versions/*/bin"))]
    for d in dirs:
        exe = d / f"python{version}"
        if exe.is_file():
            probe = subprocess.run(
                [str(exe), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
            )
            if probe.stdout.strip() == version:
                return str(exe)
    return None


def bare_pythons(dest: Path) -> dict[str, Path]:
    """Per Python of the amd64 row found on this machine: a virtualenv with pip and without pytest (what
    setup-python gives a job) -> its bin directory, the newest first (its python3 is the job's)."""
    made = {}
    for version in sorted(PYTHONS, key=lambda v: tuple(map(int, v.split("."))), reverse=True):
        base = real_python(version)
        if base is None:
            continue
        venv = dest / f"python{version}"
        subprocess.run([base, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=180)
        probe = subprocess.run([str(venv / "bin" / "python3"), "-c", "import pytest"], capture_output=True)
        assert probe.returncode != 0, f"the bare Python {version} already has pytest"
        made[version] = venv / "bin"
    return made


@pytest.mark.timeout(400)
def test_multi_arch_amd64_entries_pass_on_push(emulator: Any, tmp_path: Path, runner: Path) -> None:
    """multi-arch-ci.yml on push, test-multi-arch's amd64 row (Python 3.9, 3.10, 3.11 — those this machine
    has): each entry's Python is a bare one on PATH (as setup-python leaves it: pip, no pytest); the
    default test command installs pytest into it and runs the user's tests natively."""
    bare = bare_pythons(tmp_path / "bare")
    assert "3.11" in bare, "Debian 12's python3.11 is missing"
    run = act_as_user(
        MULTI_ARCH,
        tmp_path,
        "push",
        emulator.url,
        {"GITHUB_TOKEN": emulator_token(emulator)},
        "-j",
        "test-multi-arch",
        "--matrix",
        "arch:amd64",
        *(arg for version in bare for arg in ("--matrix", f"python-version:{version}")),
        # One entry at a time on this one machine: the first installs fleetci, the others reuse it.
        "--concurrent-jobs",
        "1",
        files=SMOKE_TEST,
        skipped_actions=MULTI_ARCH_SKIPPED_ACTIONS,
        runner=runner,
        timeout=360,
        path_first=tuple(bare.values()),
    )
    assert run.proc.returncode == 0, run.describe()
    assert run.jobs() == {"test-multi-arch": ["success"] * len(bare)}, run.describe()
    entries = {json.dumps(e["matrix"], sort_keys=True) for e in run.events if e.get("jobResult") == "success"}
    assert entries == {json.dumps({"arch": "amd64", "python-version": v}, sort_keys=True) for v in bare}
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln) for ln in job_lines(run, "test-multi-arch")]
    assert lines.count("guest: x86_64") == len(bare), run.describe()
    assert sum(bool(re.fullmatch(r"1 passed in [\d.]+s", ln)) for ln in lines) == len(bare), run.describe()
    # Each entry ran its own Python: pytest is now installed in every bare one (none had it before).
    for version, bindir in bare.items():
        installed = subprocess.run([str(bindir / "python3"), "-c", "import pytest"], capture_output=True)
        assert installed.returncode == 0, f"Python {version}: no pytest\n{run.describe()}"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("event", "job"), [("pull_request", "test-arm64-native"), ("push", "test-riscv")])
def test_multi_arch_jobs_skipped_by_their_if(
    emulator: Any, tmp_path: Path, runner: Path, event: str, job: str
) -> None:
    """test-arm64-native runs on push/workflow_dispatch only; test-riscv on workflow_dispatch only."""
    run = act_as_user(
        MULTI_ARCH,
        tmp_path,
        event,
        emulator.url,
        {"GITHUB_TOKEN": emulator_token(emulator)},
        "-j",
        job,
        skipped_actions=MULTI_ARCH_SKIPPED_ACTIONS,
        runner=runner,
        timeout=100,
    )
    assert run.proc.returncode == 0, run.describe()
    assert_passed_or_skipped_by_if(run, MULTI_ARCH, set(), only={job})
