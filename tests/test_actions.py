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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ACTION_FILES = sorted([REPO_ROOT / "action.yml", *REPO_ROOT.glob("actions/*/action.yml")])
WORKFLOW_FILES = sorted([*REPO_ROOT.glob("workflows/*.yml"), *REPO_ROOT.glob("workflows/*.yaml")])
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_fleetci.sh"
ACTION_REPO = "fleetci/fleetci"
# `uses: fleetci/fleetci[/path]@ref`: this repository's own actions, as users reference them.
OWN_USES_RE = re.compile(r"(uses:\s*)fleetci/fleetci(?:/(?P<path>[^@\s]+))?@\S+")
VERSION = re.search(
    r'^__version__\s*=\s*["\']([^"\']+)["\']', (REPO_ROOT / "src/fleetci/__init__.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]
# Everything a checkout of the action needs; caches and VCS data stay out (GitHub downloads a clean tree).
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    ".cache",
    "*_cache",
    ".benchmarks",
    "__pycache__",
    "*.egg-info",
    "build",
    "dist",
    "node_modules",
)


def rel(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT))


def tool(name: str) -> str:
    """A validator's executable: next to this interpreter first (the venv), then PATH; skip when absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def run_tool(
    argv: list[str], cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def shown(proc: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(map(str, proc.args))
    return f"$ {command}\nexit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def base_env(**extra: str) -> dict[str, str]:
    """This environment without variables a runner (or the outer CI) would set for fleetci, gh or Actions."""
    prefixes = ("CACHE_", "FLEETCI_", "GITHUB_", "GH_", "RUNNER_", "ACTIONS_", "INPUT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{rel(path)} is not a YAML mapping"
    return data


def localize(workflow_text: str) -> str:
    """Point `uses: fleetci/fleetci/<path>@ref` at `./<path>`: actionlint then checks `with:` keys."""
    return OWN_USES_RE.sub(lambda m: f"{m.group(1)}./{m.group('path') or ''}".rstrip("/"), workflow_text)


def lint_repo(tmp_path: Path, workflows: dict[str, str]) -> tuple[Path, list[Path]]:
    """A throwaway git repository with this repo's actions and the given workflows in .github/workflows."""
    repo = tmp_path / "lint-repo"
    wf_dir = repo / ".github" / "workflows"
    wf_dir.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "action.yml", repo / "action.yml")
    shutil.copytree(REPO_ROOT / "actions", repo / "actions")
    subprocess.run(["git", "init", "-q", str(repo)], check=True, capture_output=True)
    files = []
    for name, text in workflows.items():
        (wf_dir / name).write_text(text, encoding="utf-8")
        files.append(wf_dir / name)
    return repo, files


def actionlint(repo: Path, files: list[Path]) -> subprocess.CompletedProcess[str]:
    argv = [tool("actionlint"), "-no-color"]
    if not shutil.which("shellcheck"):
        argv.append("-shellcheck=")
    if not shutil.which("pyflakes"):
        argv.append("-pyflakes=")
    return run_tool([*argv, *(str(f.relative_to(repo)) for f in files)], cwd=repo)


def check_schema(schema: str, *files: Path) -> subprocess.CompletedProcess[str]:
    return run_tool([tool("check-jsonschema"), "--builtin-schema", schema, *map(str, files)])


# --- static validation ------------------------------------------------------------------------------


def test_the_actions_and_workflows_are_found() -> None:
    names = {rel(p) for p in ACTION_FILES}
    assert {"action.yml", "actions/setup-p2p-cache/action.yml"} <= names
    assert all(p.is_file() for p in ACTION_FILES), names
    assert {"workflows/amd64-ci.yml", "workflows/arm64-ci.yml"} <= {rel(p) for p in WORKFLOW_FILES}


@pytest.mark.parametrize("action", ACTION_FILES, ids=rel)
def test_action_metadata_matches_githubs_schema(action: Path) -> None:
    proc = check_schema("vendor.github-actions", action)
    assert proc.returncode == 0, shown(proc)


@pytest.mark.parametrize("workflow", WORKFLOW_FILES, ids=rel)
def test_workflow_matches_githubs_schema(workflow: Path) -> None:
    proc = check_schema("vendor.github-workflows", workflow)
    assert proc.returncode == 0, shown(proc)


@pytest.mark.parametrize("workflow", WORKFLOW_FILES, ids=rel)
def test_workflow_passes_actionlint(workflow: Path, tmp_path: Path) -> None:
    text = workflow.read_text(encoding="utf-8")
    local = localize(text)
    assert local != text, f"{rel(workflow)} does not use fleetci's own actions"
    # As users copy it, and with our actions resolved locally (checks inputs and outputs against action.yml).
    repo, files = lint_repo(tmp_path, {workflow.name: text, f"local-{workflow.name}": local})
    proc = actionlint(repo, files)
    assert proc.returncode == 0, shown(proc)


def test_install_script_passes_shellcheck() -> None:
    proc = run_tool(["bash", "-n", str(INSTALL_SCRIPT)])
    assert proc.returncode == 0, shown(proc)
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    proc = run_tool(["shellcheck", "--severity=style", str(INSTALL_SCRIPT)])
    assert proc.returncode == 0, shown(proc)


def test_schema_validators_reject_broken_files(tmp_path: Path) -> None:
    action = REPO_ROOT / "actions" / "setup-p2p-cache" / "action.yml"
    broken_action = tmp_path / "action.yml"
    text = action.read_text(encoding="utf-8")
    assert "      shell: bash\n" in text
    # A composite action's run step without `shell:` is invalid.
    broken_action.write_text(text.replace("      shell: bash\n", "", 1), encoding="utf-8")
    assert check_schema("vendor.github-actions", action).returncode == 0
    proc = check_schema("vendor.github-actions", broken_action)
    assert proc.returncode != 0, shown(proc)

    workflow = REPO_ROOT / "workflows" / "amd64-ci.yml"
    text = workflow.read_text(encoding="utf-8")
    broken_workflow = tmp_path / "amd64-ci.yml"
    assert "    runs-on: ubuntu-latest\n" in text
    broken_workflow.write_text(text.replace("    runs-on: ubuntu-latest\n", "", 1), encoding="utf-8")
    assert check_schema("vendor.github-workflows", workflow).returncode == 0
    proc = check_schema("vendor.github-workflows", broken_workflow)
    assert proc.returncode != 0, shown(proc)
    assert "runs-on" in proc.stdout + proc.stderr, shown(proc)


def test_actionlint_rejects_broken_workflows(tmp_path: Path) -> None:
    text = localize((REPO_ROOT / "workflows" / "amd64-ci.yml").read_text(encoding="utf-8"))
    bad_input = re.sub(r"(\n(\s+)enable-p2p:)", r"\n\2no-such-input: x\1", text, count=1)
    bad_output = text.replace("steps.cache.outputs.api-url", "steps.nope.outputs.api-url", 1)
    assert bad_input != text and bad_output != text
    repo, files = lint_repo(tmp_path, {"bad-input.yml": bad_input, "bad-output.yml": bad_output})
    proc = actionlint(repo, files)
    assert proc.returncode != 0, shown(proc)
    assert 'input "no-such-input" is not defined' in proc.stdout, shown(proc)
    assert "steps.nope" in proc.stdout or '"nope"' in proc.stdout, shown(proc)


@pytest.mark.parametrize("action", ACTION_FILES, ids=rel)
def test_action_steps_are_injection_safe_and_outputs_resolve(action: Path) -> None:
    """Inputs reach scripts through env (never `${{ }}` inside `run:`); outputs name existing step ids."""
    meta = load_yaml(action)
    steps = meta["runs"]["steps"]
    ids = {s["id"] for s in steps if "id" in s}
    for step in steps:
        if "run" in step:
            assert step.get("shell") == "bash", step
            assert "${{" not in step["run"], f"{rel(action)}: expression inside run: of {step.get('name')}"
    for name, out in (meta.get("outputs") or {}).items():
        m = re.fullmatch(r"\$\{\{\s*steps\.([\w-]+)\.outputs\.([\w-]+)\s*\}\}", str(out["value"]))
        assert m and m.group(1) in ids, f"{rel(action)}: output {name} -> {out['value']}"


def test_setup_p2p_cache_passes_every_setting_input_to_the_cli() -> None:
    meta = load_yaml(REPO_ROOT / "actions" / "setup-p2p-cache" / "action.yml")
    inputs = meta["inputs"]
    # The seed's defaults are the CLI's: a setting input defaults to empty (exported empty, which fleetci
    # ignores, so a config file's value is not overridden) and its description names the built-in default.
    seed = {"enable-p2p": "false", "listen-port": "9100", "default-ttl": "300", "max-entries": "10000"}
    for name, default in seed.items():
        assert str(inputs[name]["default"]) == "", f"input {name} must default to empty"
        assert f"else {default}." in " ".join(str(inputs[name]["description"]).split()), name
    assert {k: str(inputs[k]["default"]) for k in ("bootstrap-peers", "cache-dir")} == {
        "bootstrap-peers": "",
        "cache-dir": "",
    }
    start = next(s for s in meta["runs"]["steps"] if s.get("id") == "start")
    assert "cache start" in start["run"]
    env = start["env"]
    cli_env = {
        "enable-p2p": "CACHE_ENABLE_P2P",
        "listen-port": "CACHE_LISTEN_PORT",
        "proxy-port": "CACHE_PROXY_PORT",
        "bootstrap-peers": "CACHE_BOOTSTRAP_PEERS",
        "default-ttl": "CACHE_DEFAULT_TTL",
        "cache-dir": "CACHE_DIR",
        "max-entries": "CACHE_MAX_ENTRIES",
        "upstream": "CACHE_UPSTREAM",
        "secret": "FLEETCI_CACHE_SECRET",
        "peer-registry": "CACHE_PEER_REGISTRY",
        "fleet": "CACHE_FLEET",
    }
    assert set(inputs) - {"python", "extras"} == set(cli_env)
    assert all(str(inputs[name]["default"]) == "" for name in cli_env)
    for name, var in cli_env.items():
        assert f"inputs.{name}" in str(env.get(var)), f"input {name} does not reach ${var}: {env.get(var)}"
    assert set(meta["outputs"]) >= {"api-url", "socket", "peer-id"}


# --- the install script -----------------------------------------------------------------------------


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A PATH directory holding `python3` (this interpreter) and the given fake commands."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "python3").symlink_to(sys.executable)
    for name, body in scripts.items():
        path = bindir / name
        path.write_text("#!/bin/sh\n" + body + "\n", encoding="utf-8")
        path.chmod(0o755)
    return bindir


def run_install(tmp_path: Path, bindir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    for name in ("GITHUB_PATH", "GITHUB_OUTPUT"):
        (tmp_path / name).touch()
    full_env = base_env(
        PATH=f"{bindir}:/usr/bin:/bin",
        GITHUB_PATH=str(tmp_path / "GITHUB_PATH"),
        GITHUB_OUTPUT=str(tmp_path / "GITHUB_OUTPUT"),
        RUNNER_TOOL_CACHE=str(tmp_path / "toolcache"),
        **env,
    )
    return subprocess.run(
        ["bash", str(INSTALL_SCRIPT), *args], env=full_env, capture_output=True, text=True, timeout=600
    )


def test_install_script_skips_when_the_same_version_is_on_path(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, fleetci=f'echo "fleetci {VERSION}"')
    proc = run_install(tmp_path, bindir)
    assert proc.returncode == 0, shown(proc)
    assert "already installed" in proc.stdout, shown(proc)
    assert (tmp_path / "GITHUB_PATH").read_text() == ""
    assert f"version={VERSION}\n" in (tmp_path / "GITHUB_OUTPUT").read_text()
    assert not (tmp_path / "toolcache").exists()


def test_install_script_explains_a_missing_venv_module(tmp_path: Path) -> None:
    real = sys.executable
    python = (
        f'case "$*" in *ensurepip*) echo "No module named ensurepip" >&2; exit 1;; esac\nexec "{real}" "$@"'
    )
    bindir = fake_bin(tmp_path, fleetci='echo "fleetci 0.0.0-old"')
    (bindir / "python3").unlink()
    (bindir / "python3").write_text("#!/bin/sh\n" + python + "\n", encoding="utf-8")
    (bindir / "python3").chmod(0o755)
    proc = run_install(tmp_path, bindir)
    assert proc.returncode != 0, shown(proc)
    assert "python3-venv" in proc.stderr, shown(proc)
    assert "install_fleetci: error:" in proc.stderr, shown(proc)
    assert (tmp_path / "GITHUB_PATH").read_text() == ""


def test_install_script_rejects_a_directory_that_is_not_a_checkout(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path)
    proc = run_install(tmp_path, bindir, str(tmp_path))
    assert proc.returncode != 0, shown(proc)
    assert "not a fleetci checkout" in proc.stderr, shown(proc)


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_install_script_installs_into_a_virtualenv_and_reuses_it(tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(REPO_ROOT, checkout, ignore=COPY_IGNORE)  # pip builds in-tree: keep the repo clean
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


# --- the reference workflow under act, against the emulator --------------------------------------------


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
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(r"fleetci emulator listening on (http://\S+)", log.read_text(errors="replace"))
            url = m.group(1) if m else None
            time.sleep(0.05)
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
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(process_alive(p) for p in leftovers):
        time.sleep(0.05)
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
    workdir: Path,
    cache: Path,
    action_root: Path,
    variables: dict[str, str],
    secrets: dict[str, str],
    platforms: tuple[str, ...] = ("ubuntu-latest",),
    timeout: float = 110,
    event: str = "push",
    extra_args: tuple[str, ...] = (),
) -> ActRun:
    """Run one workflow with act on this machine (host mode, offline); `platforms` are its runs-on labels."""
    repo = workdir / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(workflow, repo / ".github" / "workflows" / workflow.name)
    git = ["git", "-C", str(repo), "-c", "user.name=fleetci-test", "-c", "user.email=test@fleetci.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "reference workflow"], check=True, capture_output=True)
    argv = [
        tool("act"),
        event,
        "-W",
        str(repo / ".github" / "workflows" / workflow.name),
        *(arg for label in platforms for arg in ("-P", f"{label}=-self-hosted")),
        "--action-offline-mode",
        "--pull=false",
        "--no-cache-server",
        "--action-cache-path",
        str(cache),
        "--local-repository",
        f"{ACTION_REPO}@v1={action_root}",
        "--json",
        *extra_args,
    ]
    for k, v in variables.items():
        argv += ["--var", f"{k}={v}"]
    for k, v in secrets.items():
        argv += ["-s", f"{k}={v}"]
    popen = subprocess.Popen(
        argv,
        cwd=repo,
        env=base_env(ACT_DISABLE_VERSION_CHECK="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        out, err = popen.communicate()
        err += f"\n[test] act killed after {timeout}s"
    events = []
    for line in out.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return ActRun(subprocess.CompletedProcess(argv, popen.returncode, out, err), events)


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


# (workflow, repository variable that sets its P2P port). arm64-ci.yml runs on this machine's architecture
# with its [self-hosted, ARM64] labels mapped to the host: that checks the workflow, not the architecture.
ACT_WORKFLOWS = [("amd64-ci.yml", "FLEETCI_LISTEN_PORT"), ("arm64-ci.yml", "FLEETCI_ARM64_LISTEN_PORT")]


@pytest.mark.integration
@pytest.mark.timeout(180)
@pytest.mark.parametrize(("workflow_name", "port_variable"), ACT_WORKFLOWS, ids=[w for w, _ in ACT_WORKFLOWS])
def test_reference_workflow_runs_under_act_against_the_emulator(
    emulator_process: Emulator, tmp_path: Path, workflow_name: str, port_variable: str
) -> None:
    from fleetci.http import free_port

    workflow = REPO_ROOT / "workflows" / workflow_name
    assert f"vars.{port_variable}" in workflow.read_text(encoding="utf-8")
    repo_name = "octo-org/api"
    token = alice_token()
    r = httpx.get(f"{emulator_process.url}/repos/{repo_name}", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200, f"{repo_name} is not in the emulator: {r.status_code} {r.text[:200]}"
    before = emulator_process.stats()

    # The action as GitHub would download it: a clean copy of this repository (no caches, no .git).
    action_root = tmp_path / "fleetci-action"
    shutil.copytree(REPO_ROOT, action_root, ignore=COPY_IGNORE)
    try:
        run = run_act(
            workflow,
            tmp_path,
            tmp_path / "act-cache",
            action_root,
            variables={
                "FLEETCI_UPSTREAM": emulator_process.url,
                "FLEETCI_REPO": repo_name,
                port_variable: str(free_port()),
            },
            secrets={"GITHUB_TOKEN": token},
            platforms=runs_on_labels(workflow),
        )
    finally:
        leftovers = stop_leftover_proxies(emulator_process.url)
    after = emulator_process.stats()

    assert run.proc.returncode == 0, run.describe()
    job_results = [e["jobResult"] for e in run.events if "jobResult" in e]
    assert job_results == ["success"], run.describe()
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
    summaries = "".join(str(e.get("content", "")) for e in run.events if e.get("command") == "summary")
    assert "### fleetci API cache" in summaries and "| local_hits |" in summaries, run.describe()

    # The workflow stopped its proxy itself (the teardown found nothing left to stop).
    started = [
        m for line in run.output_lines if (m := re.search(r"fleetci cache running \(pid (\d+)\)", line))
    ]
    assert len(started) == 1, run.describe()
    assert not process_alive(int(started[0].group(1)))
    assert leftovers == [], f"proxy processes left running: {leftovers}"


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_cache_fleet_workflow_shares_one_cache_between_jobs_under_act(
    emulator_process: Emulator, tmp_path: Path
) -> None:
    """workflows/cache-fleet.yml: three jobs at once on this machine, each with its own proxy and
    libp2p peer, find each other through the registry directory and pay for each URL about once."""
    workflow = REPO_ROOT / "workflows" / "cache-fleet.yml"
    repo_name = "octo-org/api"
    token = alice_token()
    action_root = tmp_path / "fleetci-action"
    shutil.copytree(REPO_ROOT, action_root, ignore=COPY_IGNORE)
    before = emulator_process.stats()
    try:
        run = run_act(
            workflow,
            tmp_path,
            tmp_path / "act-cache",
            action_root,
            variables={
                "FLEETCI_UPSTREAM": emulator_process.url,
                "FLEETCI_REPO": repo_name,
                "FLEETCI_PEER_REGISTRY": str(tmp_path / "peers"),
                "FLEETCI_FLEET": f"act-{os.getpid()}",
            },
            secrets={"GITHUB_TOKEN": token, "FLEETCI_CACHE_SECRET": "act fleet " + os.urandom(8).hex()},
            platforms=runs_on_labels(workflow),
            timeout=280,
            event="workflow_dispatch",
            extra_args=("--concurrent-jobs", "3"),
        )
    finally:
        leftovers = stop_leftover_proxies(emulator_process.url)
    after = emulator_process.stats()
    assert run.proc.returncode == 0, run.describe()
    assert [e["jobResult"] for e in run.events if "jobResult" in e] == ["success"] * 3, run.describe()
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
    summaries = "".join(str(e.get("content", "")) for e in run.events if e.get("command") == "summary")
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
          report-path: ${{ vars.REPORT_PATH }}
      - name: Use the outputs
        env:
          REPORT: ${{ steps.deps.outputs.report-path }}
          FAILED: ${{ steps.deps.outputs.failed }}
        run: |
          echo "outputs: report=$REPORT failed=[$FAILED]"
          "$RUNNER_TEMP/target/bin/python" -c 'import beta; print("beta", beta.__version__)'
          fleetci install matrix "$REPORT"
"""


@pytest.mark.integration
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

    action_root = tmp_path / "fleetci-action"
    shutil.copytree(REPO_ROOT, action_root, ignore=COPY_IGNORE)
    report = tmp_path / "deps.json"
    with LocalIndex(wheels, FaultPlan(first=2, kinds=("503",))) as index:
        run = run_act(
            workflow,
            tmp_path / "act",
            tmp_path / "act-cache",
            action_root,
            variables={"INDEX_URL": index.url, "REPORT_PATH": str(report)},
            secrets={},
        )
        faults = index.plan.faults

    assert run.proc.returncode == 0, run.describe()
    assert [e["jobResult"] for e in run.events if "jobResult" in e] == ["success"], run.describe()
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
    summaries = "".join(str(e.get("content", "")) for e in run.events if e.get("command") == "summary")
    assert "### fleetci install" in summaries and "| pip:beta |" in summaries, run.describe()


@pytest.mark.integration
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
        deadline = time.monotonic() + 30
        while "listening on" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            assert master.poll() is None, log.read_text(errors="replace")
            time.sleep(0.05)
        action_root = tmp_path / "fleetci-action"
        shutil.copytree(REPO_ROOT, action_root, ignore=COPY_IGNORE)
        run = run_act(
            workflow,
            tmp_path / "act",
            tmp_path / "act-cache",
            action_root,
            variables={
                "FLEETCI_BUILD_MASTER": master_url,
                "FLEETCI_BUILD_PACKAGES": str(packages),
                "FLEETCI_BUILD_IDLE_TIMEOUT": "10",
            },
            secrets={"FLEETCI_BUILD_TOKEN": admin, "FLEETCI_BUILD_JOIN_TOKEN": join},
            platforms=runs_on_labels(workflow),
            timeout=200,
        )
        repo = verify_repository(master_url)
    finally:
        master.terminate()
        master.wait(timeout=15)

    assert run.proc.returncode == 0, run.describe()
    assert [e["jobResult"] for e in run.events if "jobResult" in e] == ["success"] * 3, run.describe()
    assert repo["files"] == 3 and set(repo["index"]["packages"]) == {"core", "plugin", "cli"}
    builders = {p["built_by"]["name"] for p in repo["index"]["packages"].values()}
    assert builders <= {"builder-1", "builder-2"}, builders
    assert any(line.startswith("repository OK: 3 packages, 3 files") for line in run.output_lines), (
        run.describe()
    )
    summaries = "".join(str(e.get("content", "")) for e in run.events if e.get("command") == "summary")
    assert "### fleetci build 1: done" in summaries, run.describe()
    for name in ("core", "plugin", "cli"):
        assert f"| {name} | 1.0-1 | done |" in summaries, run.describe()
    assert "build 1 finished" in run.output_lines, run.describe()  # the action's build-id output
    # Secrets never reach the log.
    text = "\n".join(run.output_lines)
    assert admin not in text and join not in text


def test_multi_arch_test_action_passes_every_input_to_the_cli() -> None:
    meta = load_yaml(REPO_ROOT / "actions" / "multi-arch-test" / "action.yml")
    inputs = meta["inputs"]
    assert {"arch", "python-version", "command", "backend", "cache-dir", "requirements"} <= set(inputs)
    assert inputs["arch"]["required"] is True
    # Empty, so a config file's multiarch.backend applies; the description names the built-in default.
    assert str(inputs["backend"]["default"]) == "" and "auto" in str(inputs["backend"]["description"])
    run = next(s for s in meta["runs"]["steps"] if "multiarch run" in s.get("run", ""))
    env = run["env"]
    cli_env = {
        "arch": "MULTIARCH_ARCH",
        "python-version": "MULTIARCH_PYTHON",
        "backend": "MULTIARCH_BACKEND",
        "requirements": "MULTIARCH_REQUIREMENTS",
        "packages": "MULTIARCH_PACKAGES",
        "image": "MULTIARCH_IMAGE",
        "command": "MULTIARCH_COMMAND",
    }
    for name, var in cli_env.items():
        assert env[var] == f"${{{{ inputs.{name} }}}}", (name, env.get(var))
    assert env["MULTIARCH_CACHE_DIR"] == "${{ steps.paths.outputs.cache-dir }}"
    assert '"$MULTIARCH_COMMAND"' in run["run"]
    # Every input reaches some step (nothing is silently ignored).
    text = (REPO_ROOT / "actions" / "multi-arch-test" / "action.yml").read_text(encoding="utf-8")
    for name in inputs:
        assert f"inputs.{name} " in text or f"inputs.{name}}}" in text, name


def test_multi_arch_workflow_mirrors_the_seed_layout() -> None:
    wf = load_yaml(REPO_ROOT / "workflows" / "multi-arch-ci.yml")
    jobs = wf["jobs"]
    assert set(jobs) == {"test-multi-arch", "test-arm64-native", "test-riscv", "verify-dependencies"}
    matrix = jobs["test-multi-arch"]["strategy"]["matrix"]
    assert matrix["arch"] == ["amd64", "arm64", "armv7"]
    assert matrix["python-version"] == ["3.9", "3.10", "3.11"]
    assert jobs["test-arm64-native"]["runs-on"] == ["self-hosted", "ARM64"]
    native_uses = [s.get("uses", "") for s in jobs["test-arm64-native"]["steps"]]
    assert any("actions/safe-install@" in u for u in native_uses)
    assert any("actions/setup-p2p-cache@" in u for u in native_uses)
    assert "workflow_dispatch" in jobs["test-riscv"]["if"]
    assert any("upload-artifact" in s.get("uses", "") for s in jobs["verify-dependencies"]["steps"])
    on = wf.get("on") or wf.get(True)  # PyYAML reads the bare key `on` as True
    assert "workflow_dispatch" in on and "push" in on and "pull_request" in on


@pytest.mark.integration
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
        action_root = tmp_path / "fleetci-action"
        shutil.copytree(REPO_ROOT, action_root, ignore=COPY_IGNORE)
        run = run_act(
            workflow,
            tmp_path / "act",
            tmp_path / "act-cache",
            action_root,
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
    assert [e["jobResult"] for e in run.events if "jobResult" in e] == ["success"], run.describe()
    results = run.step_results()
    for name in ("Sync missing images to GitLab", "Install fleetci", "Sync images to GitLab"):
        assert results.get(name) == ["success"], f"step {name!r}: {results.get(name)}\n{run.describe()}"
    text = "\n".join(run.output_lines)
    assert f"{project}/x86/presto-coordinator:{gitlab_tag} pushed" in text, run.describe()
    # The tag landed, with the image the build produced (its config blob is the same bytes).
    assert inspect.returncode == 0, inspect.stderr
    assert "sha256:" + hashlib.sha256(inspect.stdout).hexdigest() == built.config_digest
    assert json.loads(inspect.stdout)["rootfs"]["diff_ids"] == built.layer_digests
    assert "1 tag(s) missing in GitLab, 0 present" in text, run.describe()
    summaries = "".join(str(e.get("content", "")) for e in run.events if e.get("command") == "summary")
    assert f"| {project}/x86/presto-coordinator:{gitlab_tag} | pushed |" in summaries, run.describe()
    assert gitlab_token not in text and gh_token not in text
