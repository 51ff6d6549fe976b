"""The composite actions, the install script and the reference workflows.

Static checks run the real validators (check-jsonschema with GitHub's schemas, actionlint, shellcheck) on
every ``action.yml`` and every ``workflows/*.yml``, and prove each validator rejects a broken copy. The
integration tests install fleetci with the script into a fresh virtualenv, and run ``workflows/amd64-ci.yml``
under ``act`` (host mode, offline) against the GitHub API emulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from support import wait_until
from support.actions import (
    REPO_ROOT,
    VERSION,
    act_argv,
    act_events,
    action_checkout,
    actionlint,
    base_env,
    check_schema,
    fake_bin,
    lint_repo,
    load_yaml,
    localize,
    run_act_process,
    run_install,
    shown,
)


@pytest.mark.timeout(600)
def test_install_script_installs_into_a_virtualenv_and_reuses_it(tmp_path: Path) -> None:
    checkout = action_checkout(tmp_path / "checkout")  # pip builds in-tree: keep the repo clean
    # An older fleetci on PATH must not count as installed.
    bindir = fake_bin(tmp_path, fleetci='echo "fleetci 0.0.0-old"')
    proc = run_install(tmp_path, bindir, str(checkout))
    assert proc.returncode == 0, shown(proc)
    venv = tmp_path / "toolcache" / "fleetci" / VERSION
    fleetci = venv / "bin" / "fleetci"
    version = subprocess.run([str(fleetci), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"fleetci {VERSION}", shown(version)
    assert (tmp_path / "GITHUB_PATH").read_text().splitlines() == [str(venv / "bin")]
    outputs = (tmp_path / "GITHUB_OUTPUT").read_text()
    assert f"version={VERSION}\n" in outputs and f"bin-dir={venv / 'bin'}\n" in outputs

    again = run_install(tmp_path, bindir, str(checkout))
    assert again.returncode == 0, shown(again)
    assert "reusing" in again.stdout, shown(again)


@dataclass
class Emulator:
    url: str
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_emulator/stats", timeout=10).json()
        return data


def alice_token() -> str:
    from fleetci.testing import TOKENS

    return next(t for t, login in TOKENS.items() if login == "alice")


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[Emulator]:
    log = tmp_path / "emulator.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetci", "emulate", "github", "--port", "0", "--latency-ms", "0-0"],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=base_env(),
        )
    try:

        def listening() -> str | None:
            m = re.search(r"fleetci emulator listening on (http://\S+)", log.read_text(errors="replace"))
            return m.group(1) if m else None

        wait_until(lambda: listening() or proc.poll() is not None, timeout=30)
        url = listening()
        assert url, f"emulator did not start:\n{log.read_text(errors='replace')}"
        yield Emulator(url, proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def proxies_for(upstream: str) -> list[int]:
    """Live `fleetci cache serve` processes whose upstream is the given URL (the ones a test started)."""
    pids = []
    needle = f"CACHE_UPSTREAM={upstream}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            b"cache" in cmdline
            and b"serve" in cmdline
            and needle in environ
            and process_alive(int(entry.name))
        ):
            pids.append(int(entry.name))
    return pids


def stop_leftover_proxies(upstream: str) -> list[int]:
    leftovers = proxies_for(upstream)
    for pid in leftovers:
        os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not any(process_alive(p) for p in leftovers), timeout=10)
    for pid in leftovers:
        if process_alive(pid):
            os.kill(pid, signal.SIGKILL)
    return leftovers


@dataclass
class ActRun:
    proc: subprocess.CompletedProcess[str]
    events: list[dict[str, Any]]

    @property
    def output_lines(self) -> list[str]:
        return [str(e["msg"]).rstrip("\n") for e in self.events if e.get("raw_output")]

    @property
    def job_results(self) -> list[str]:
        return [e["jobResult"] for e in self.events if "jobResult" in e]

    @property
    def summaries(self) -> str:
        """The step summaries the jobs wrote, one after another."""
        return "".join(str(e.get("content", "")) for e in self.events if e.get("command") == "summary")

    def step_results(self) -> dict[str, list[str]]:
        """Step name (as act reports it for the Main stage) -> results."""
        results: dict[str, list[str]] = {}
        for e in self.events:
            if "stepResult" in e and e.get("stage", "Main") == "Main":
                name = re.sub(r"\s*\[[^\]]*\]\s*$", "", str(e["msg"]).split(" - ", 1)[-1].strip())
                results.setdefault(name.removeprefix("Main "), []).append(str(e["stepResult"]))
        return results

    def describe(self) -> str:
        lines = [str(e.get("msg", "")).rstrip() for e in self.events]
        return (
            f"act exit {self.proc.returncode}\n--- log\n"
            + "\n".join(lines[-150:])
            + (f"\n--- stderr\n{self.proc.stderr[-4000:]}")
        )


def run_act(
    workflow: Path,
    tmp_path: Path,
    variables: dict[str, str],
    secrets: dict[str, str],
    platforms: tuple[str, ...] = ("ubuntu-latest",),
    timeout: float = 110,
    event: str = "push",
    extra_args: tuple[str, ...] = (),
    workdir: Path | None = None,
) -> ActRun:
    """Run one workflow with act on this machine (host mode, offline); `platforms` are its runs-on labels.

    The action is a clean copy of this repository (tmp_path/fleetci-action), as GitHub would download it;
    act's action cache is tmp_path/act-cache; the workflow's repository is ``workdir`` (tmp_path)/repo.
    """
    action_root = action_checkout(tmp_path / "fleetci-action")
    cache = tmp_path / "act-cache"
    repo = (workdir or tmp_path) / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(workflow, repo / ".github" / "workflows" / workflow.name)
    git = ["git", "-C", str(repo), "-c", "user.name=fleetci-test", "-c", "user.email=test@fleetci.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "reference workflow"], check=True, capture_output=True)
    workflow_path = repo / ".github" / "workflows" / workflow.name
    argv = act_argv(
        event,
        workflow_path,
        action_root,
        cache,
        platforms=platforms,
        variables=variables,
        secrets=secrets,
        extra=extra_args,
    )
    done = run_act_process(argv, repo, base_env(ACT_DISABLE_VERSION_CHECK="1"), timeout)
    return ActRun(done, act_events(done.stdout))


def expected_step_names(workflow: Path) -> list[str]:
    names = []
    for job in load_yaml(workflow)["jobs"].values():
        names += [s["name"] for s in job["steps"] if "name" in s]
    return names


def runs_on_labels(workflow: Path) -> tuple[str, ...]:
    labels: list[str] = []
    for job in load_yaml(workflow)["jobs"].values():
        runs_on = job["runs-on"]
        labels += [runs_on] if isinstance(runs_on, str) else list(runs_on)
    return tuple(dict.fromkeys(labels))


CACHE_REPO = "octo-org/api"  # the repository the cache workflows query


def act_with_a_cache(
    emulator: Emulator,
    workflow: Path,
    tmp_path: Path,
    variables: dict[str, str],
    secrets: dict[str, str] | None = None,
    **options: Any,
) -> tuple[ActRun, list[int]]:
    """:func:`run_act` of a workflow whose API cache fronts the emulator (octo-org/api, alice's token),
    on the workflow's runs-on labels; then the proxies it left running are stopped and returned."""
    try:
        run = run_act(
            workflow,
            tmp_path,
            variables={"FLEETCI_UPSTREAM": emulator.url, "FLEETCI_REPO": CACHE_REPO, **variables},
            secrets={"GITHUB_TOKEN": alice_token(), **(secrets or {})},
            platforms=runs_on_labels(workflow),
            **options,
        )
    finally:
        leftovers = stop_leftover_proxies(emulator.url)
    return run, leftovers


# (workflow, repository variable that sets its P2P port). arm64-ci.yml runs on this machine's architecture
# with its [self-hosted, ARM64] labels mapped to the host: that checks the workflow, not the architecture.
ACT_WORKFLOWS = [("amd64-ci.yml", "FLEETCI_LISTEN_PORT"), ("arm64-ci.yml", "FLEETCI_ARM64_LISTEN_PORT")]


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("workflow_name", "port_variable"), ACT_WORKFLOWS, ids=[w for w, _ in ACT_WORKFLOWS])
def test_reference_workflow_runs_under_act_against_the_emulator(
    emulator_process: Emulator, tmp_path: Path, workflow_name: str, port_variable: str
) -> None:
    from fleetci.http import free_port

    workflow = REPO_ROOT / "workflows" / workflow_name
    assert f"vars.{port_variable}" in workflow.read_text(encoding="utf-8")
    repo_name = CACHE_REPO
    token = alice_token()
    r = httpx.get(f"{emulator_process.url}/repos/{repo_name}", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, f"{repo_name} is not in the emulator: {r.status_code} {r.text[:200]}"
    before = emulator_process.stats()

    run, leftovers = act_with_a_cache(
        emulator_process, workflow, tmp_path, variables={port_variable: str(free_port())}
    )
    after = emulator_process.stats()

    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"], run.describe()
    # The job really ran: every named step of the workflow, and the action's own steps, succeeded.
    results = run.step_results()
    for name in [*expected_step_names(workflow), "Install fleetci", "Start the API cache"]:
        assert results.get(name) == ["success"], f"step {name!r}: {results.get(name)}\n{run.describe()}"

    # Cache hits happened: the emulator charged fewer calls than the workflow made through the proxy.
    stats = next(
        (json.loads(line) for line in run.output_lines if line.startswith("{") and '"local_hits"' in line),
        None,
    )
    assert stats is not None, f"no 'fleetci cache stats --json' output\n{run.describe()}"
    charged = after["total_charged"] - before["total_charged"]
    # Calls the clients reported themselves: gh prints one line per call, the curl step one per pass.
    client_calls = [
        line
        for line in run.output_lines
        if re.fullmatch(
            r"(workflow runs|queued runs|self-hosted runners): \d+|pass \d: GET /\S+ -> \w+", line
        )
    ]
    assert len(client_calls) >= 8, run.describe()
    assert stats["requests"] >= len(client_calls), (stats, client_calls)
    assert 0 < charged < stats["requests"], (charged, stats)
    assert stats["local_hits"] > 0, stats
    assert any(re.search(r"pass 2: GET /repos/\S+ -> HIT$", line) for line in run.output_lines), (
        run.describe()
    )

    # The step summary got the table.
    summaries = run.summaries
    assert "### fleetci API cache" in summaries and "| local_hits |" in summaries, run.describe()

    # The workflow stopped its proxy itself (the teardown found nothing left to stop).
    started = [
        m for line in run.output_lines if (m := re.search(r"fleetci cache running \(pid (\d+)\)", line))
    ]
    assert len(started) == 1, run.describe()
    assert not process_alive(int(started[0].group(1)))
    assert leftovers == [], f"proxy processes left running: {leftovers}"


@pytest.mark.timeout(300)
def test_cache_fleet_workflow_shares_one_cache_between_jobs_under_act(
    emulator_process: Emulator, tmp_path: Path
) -> None:
    """workflows/cache-fleet.yml: three jobs at once on this machine, each with its own proxy and
    libp2p peer, find each other through the registry directory and pay for each URL about once."""
    workflow = REPO_ROOT / "workflows" / "cache-fleet.yml"
    before = emulator_process.stats()
    run, leftovers = act_with_a_cache(
        emulator_process,
        workflow,
        tmp_path,
        variables={"FLEETCI_PEER_REGISTRY": str(tmp_path / "peers"), "FLEETCI_FLEET": f"act-{os.getpid()}"},
        secrets={"FLEETCI_CACHE_SECRET": "act fleet " + os.urandom(8).hex()},
        timeout=280,
        event="workflow_dispatch",
        extra_args=("--concurrent-jobs", "3"),
    )
    after = emulator_process.stats()
    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"] * 3, run.describe()
    # With the secret provided, the gated "Join the fleet" step ran in every member.
    steps = run.step_results()
    assert steps.get("Check for the fleet secret") == ["success"] * 3, run.describe()
    assert steps.get("Join the fleet") == ["success"] * 3, run.describe()
    connected = [
        int(m.group(1)) for ln in run.output_lines if (m := re.fullmatch(r"connected peers: (\d+)", ln))
    ]
    assert len(connected) == 3 and min(connected) >= 2, run.describe()
    polls = [
        m.groups()
        for ln in run.output_lines
        if (m := re.fullmatch(r"member (\d) round (\d): GET (\S+) -> (\w+)", ln))
    ]
    assert len(polls) == 18, run.describe()
    first = [outcome for _, rnd, _, outcome in polls if rnd == "1"]
    assert set(first) <= {"MISS", "PEER", "HIT", "COALESCED"} and "PEER" in first, polls
    assert all(outcome in ("HIT", "PEER") for _, rnd, _, outcome in polls if rnd == "2"), polls
    # Three members x three URLs would be nine charged calls without the fleet; each MISS is one.
    charged = after["total_charged"] - before["total_charged"]
    assert first.count("MISS") < 9 and charged <= first.count("MISS") + 3, (charged, polls)
    summaries = run.summaries
    assert summaries.count("### fleetci API cache") == 3 and "| peer_hits |" in summaries, run.describe()
    assert leftovers == [], f"proxy processes left running: {leftovers}"


SAFE_INSTALL_WORKFLOW = """\
name: safe-install
on: push
jobs:
  deps:
    runs-on: ubuntu-latest
    env:
      PIP_INDEX_URL: ${{ vars.INDEX_URL }}
      PIP_CONFIG_FILE: /dev/null
      PIP_NO_CACHE_DIR: "1"
      # A job-level setting variable reaches fleetci through the action although its input is left empty
      # (a step's env would otherwise blank it).
      INSTALL_REPORT: ${{ vars.REPORT_PATH }}
    steps:
      - name: Create the target virtualenv
        run: python3 -m venv "$RUNNER_TEMP/target"
      - name: Safe install
        id: deps
        uses: fleetci/fleetci/actions/safe-install@v1
        with:
          packages: beta
          verify-imports: beta,alpha
          python: ${{ runner.temp }}/target/bin/python
          retries: "5"
      - name: Use the outputs
        env:
          REPORT: ${{ steps.deps.outputs.report-path }}
          FAILED: ${{ steps.deps.outputs.failed }}
        run: |
          echo "outputs: report=$REPORT failed=[$FAILED]"
          "$RUNNER_TEMP/target/bin/python" -c 'import beta; print("beta", beta.__version__)'
          fleetci install matrix "$REPORT"
"""


@pytest.mark.timeout(180)
def test_safe_install_action_runs_under_act_against_a_faulty_local_index(tmp_path: Path) -> None:
    from fleetci.install.index import FaultPlan, LocalIndex, build_wheel

    wheels = tmp_path / "wheels"
    build_wheel(wheels, "alpha", "1.0")
    build_wheel(wheels, "beta", "2.0", ("alpha>=1",))
    workflow = tmp_path / "wf" / "safe-install.yml"
    workflow.parent.mkdir()
    workflow.write_text(SAFE_INSTALL_WORKFLOW, encoding="utf-8")
    # The workflow as users write it is valid too (schema + actionlint with the action resolved locally).
    assert check_schema("vendor.github-workflows", workflow).returncode == 0
    repo, files = lint_repo(tmp_path / "lint", {"safe-install.yml": localize(SAFE_INSTALL_WORKFLOW)})
    lint = actionlint(repo, files)
    assert lint.returncode == 0, shown(lint)

    report = tmp_path / "deps.json"
    with LocalIndex(wheels, FaultPlan(first=2, kinds=("503",))) as index:
        run = run_act(
            workflow,
            tmp_path,
            variables={"INDEX_URL": index.url, "REPORT_PATH": str(report)},
            secrets={},
            workdir=tmp_path / "act",
        )
        faults = index.plan.faults

    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"], run.describe()
    results = run.step_results()
    for name in ["Create the target virtualenv", "Safe install", "Use the outputs", "Install dependencies"]:
        assert results.get(name) == ["success"], f"step {name!r}: {results.get(name)}\n{run.describe()}"
    assert f"outputs: report={report} failed=[]" in run.output_lines, run.describe()
    assert "beta 2.0" in run.output_lines, run.describe()
    assert "| pip:beta | ✅ 2.0 (1 retry) |" in run.output_lines, run.describe()
    data = json.loads(report.read_text(encoding="utf-8"))
    beta = next(p for p in data["packages"] if p["name"] == "beta")
    assert faults == 1 and beta["attempts"] == 2 and beta["installed"] == "2.0", (faults, beta)
    assert [(v["module"], v["version"]) for v in data["verify"]] == [("beta", "2.0"), ("alpha", "1.0")]
    summaries = run.summaries
    assert "### fleetci install" in summaries and "| pip:beta |" in summaries, run.describe()


@pytest.mark.timeout(240)
def test_distributed_build_workflow_runs_under_act_against_a_real_master(tmp_path: Path) -> None:
    """workflows/distributed-build.yml: two worker jobs register with a real master; the submit job waits."""
    from fleetci.buildfarm.client import verify_repository
    from fleetci.http import free_port

    workflow = REPO_ROOT / "workflows" / "distributed-build.yml"
    packages = tmp_path / "packages"
    for name, deps in {"core": [], "plugin": ["core"], "cli": ["core", "plugin"]}.items():
        (packages / name).mkdir(parents=True)
        recipe = {
            "name": name,
            "version": "1.0",
            "depends": deps,
            "build": f"sleep 0.3; echo {name} > {name}.pkg",
            "artifacts": [f"{name}.pkg"],
        }
        (packages / name / "recipe.yml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    admin, join = "act-admin-" + "x" * 24, "act-join-" + "y" * 24
    port = free_port()
    master_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "master.log"
    with log.open("wb") as fh:
        master = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetci",
                "build",
                "master",
                "--port",
                str(port),
                "--state-dir",
                str(tmp_path / "state"),
                "--heartbeat-ttl",
                "5",
            ],
            env=base_env(FLEETCI_BUILD_TOKEN=admin, FLEETCI_BUILD_JOIN_TOKEN=join),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            if "listening on" in log.read_text(errors="replace"):
                return True
            assert master.poll() is None, log.read_text(errors="replace")
            return False

        wait_until(listening, timeout=30)  # not asserted: without a master the act run below fails
        run = run_act(
            workflow,
            tmp_path,
            variables={
                "FLEETCI_BUILD_MASTER": master_url,
                "FLEETCI_BUILD_PACKAGES": str(packages),
                "FLEETCI_BUILD_IDLE_TIMEOUT": "10",
            },
            secrets={"FLEETCI_BUILD_TOKEN": admin, "FLEETCI_BUILD_JOIN_TOKEN": join},
            platforms=runs_on_labels(workflow),
            timeout=200,
            workdir=tmp_path / "act",
        )
        repo = verify_repository(master_url)
    finally:
        master.terminate()
        master.wait(timeout=15)

    assert run.proc.returncode == 0, run.describe()
    # vars.FLEETCI_BUILD_MASTER set: worker x2 and submit ran (not-configured is skipped by its `if:`).
    assert run.job_results == ["success"] * 3, run.describe()
    assert "Say what to set" not in run.step_results(), run.describe()
    assert repo["files"] == 3 and set(repo["index"]["packages"]) == {"core", "plugin", "cli"}
    builders = {p["built_by"]["name"] for p in repo["index"]["packages"].values()}
    assert builders <= {"builder-1", "builder-2"}, builders
    assert any(line.startswith("repository OK: 3 packages, 3 files") for line in run.output_lines), (
        run.describe()
    )
    summaries = run.summaries
    assert "### fleetci build 1: done" in summaries, run.describe()
    for name in ("core", "plugin", "cli"):
        assert f"| {name} | 1.0-1 | done |" in summaries, run.describe()
    assert "build 1 finished" in run.output_lines, run.describe()  # the action's build-id output
    # Secrets never reach the log.
    text = "\n".join(run.output_lines)
    assert admin not in text and join not in text


@pytest.mark.timeout(180)
def test_presto_build_and_sync_workflow_syncs_a_build_under_act(emulator: Any, tmp_path: Path) -> None:
    """workflows/presto-build-and-sync.yml, scheduled: its sync job pushes a new build's images to GitLab.

    Real components: the GitHub emulator holds a successful run of this workflow with the artifacts its
    build job uploads (`presto-images` = `docker save | gzip` bundle, `image-metadata` = metadata.json); the
    GitLab emulator lists a real no-auth `docker-registry`; act runs the job on this machine.
    """
    import gzip
    import io
    import tarfile

    from fleetci.testing.docker_registry import no_auth_registry, registry_binary
    from fleetci.testing.gitlab import GitLabEmulator, GitLabServer, TokenInfo
    from fleetci.testing.images import write_docker_archive

    if registry_binary() is None or shutil.which("skopeo") is None:
        pytest.skip("docker-registry and skopeo are installed by scripts/test.sh (apt)")
    workflow = REPO_ROOT / "workflows" / "presto-build-and-sync.yml"
    owner, repo_name, project = "octo-org", "api", "hercules/veloxtesting"
    image_tag = "presto-92865fbce0d2-velox-65797d572e0a-linux-amd64"
    gitlab_tag = "presto-92865fbce0d2-velox-65797d572e0a"
    gitlab_token = "glpat-actSyncWriteToken0000"
    emu = emulator.emulator
    gh_token = str(emu.token_for("alice"))

    # What the workflow's build job uploads, as a completed run of this very workflow.
    built = write_docker_archive(
        tmp_path / "out" / "presto-coordinator.tar", f"presto-coordinator:{image_tag}", [200_000, 600_000]
    )
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        tar.add(built.path, built.path.name)
    wf_id = emu.add_workflow(
        owner, repo_name, "Presto build images and sync to GitLab", f".github/workflows/{workflow.name}"
    )
    run_id = emu.add_completed_run(owner, repo_name, wf_id)
    bundle_gz = gzip.compress(bundle.getvalue(), compresslevel=1)
    emu.add_artifact(owner, repo_name, run_id, "presto-images", {"presto-images.tar.gz": bundle_gz})
    meta = {"image_tag": image_tag, "target_platform": "linux/amd64", "worker_bundle_mode": "single"}
    emu.add_artifact(owner, repo_name, run_id, "image-metadata", {"metadata.json": json.dumps(meta).encode()})

    registry = no_auth_registry(tmp_path / "registry").start()
    gitlab = GitLabServer(
        GitLabEmulator(
            registry_url=registry.url,
            registry_host=registry.host,
            tokens={gitlab_token: TokenInfo("maintainer")},
        )
    ).start()
    try:
        run = run_act(
            workflow,
            tmp_path,
            variables={
                "GH_SYNC_REPO": f"{owner}/{repo_name}",
                "GH_SYNC_API_URL": emulator.url,
                "GITLAB_HOST": gitlab.url,
                "GITLAB_PROJECT": project,
                "GITLAB_REGISTRY": registry.url,
            },
            secrets={"GITHUB_TOKEN": gh_token, "GITLAB_TOKEN": gitlab_token},
            platforms=("ubuntu-latest",),
            timeout=150,
            event="schedule",
            workdir=tmp_path / "act",
        )
        ref = f"docker://{registry.host}/{project}/x86/presto-coordinator:{gitlab_tag}"
        inspect = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", ref],
            capture_output=True,
            timeout=60,
        )
    finally:
        gitlab.stop()
        registry.stop()

    assert run.proc.returncode == 0, run.describe()
    # Only the sync job runs on a schedule (the build job is for workflow_dispatch), and it really ran.
    assert run.job_results == ["success"], run.describe()
    results = run.step_results()
    # GITLAB_TOKEN provided: the gated sync step ran.
    for name in (
        "Check for the GitLab token",
        "Sync missing images to GitLab",
        "Install fleetci",
        "Sync images to GitLab",
    ):
        assert results.get(name) == ["success"], f"step {name!r}: {results.get(name)}\n{run.describe()}"
    text = "\n".join(run.output_lines)
    assert f"{project}/x86/presto-coordinator:{gitlab_tag} pushed" in text, run.describe()
    # The tag landed, with the image the build produced (its config blob is the same bytes).
    assert inspect.returncode == 0, inspect.stderr
    assert "sha256:" + hashlib.sha256(inspect.stdout).hexdigest() == built.config_digest
    assert json.loads(inspect.stdout)["rootfs"]["diff_ids"] == built.layer_digests
    assert "1 tag(s) missing in GitLab, 0 present" in text, run.describe()
    summaries = run.summaries
    assert f"| {project}/x86/presto-coordinator:{gitlab_tag} | pushed |" in summaries, run.describe()
    assert gitlab_token not in text and gh_token not in text
