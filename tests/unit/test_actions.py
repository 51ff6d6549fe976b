"""The composite actions, the install script and the reference workflows.

Static checks run the real validators (check-jsonschema with GitHub's schemas, actionlint, shellcheck) on
every ``action.yml`` and every ``workflows/*.yml``, and prove each validator rejects a broken copy. The
integration tests install fleetci with the script into a fresh virtualenv, and run ``workflows/amd64-ci.yml``
under ``act`` (host mode, offline) against the GitHub API emulator.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.actions import (
    INSTALL_SCRIPT,
    REPO_ROOT,
    VERSION,
    actionlint,
    base_env,
    check_schema,
    fake_bin,
    lint_repo,
    load_yaml,
    localize,
    rel,
    run_install,
    run_tool,
    shown,
)

ACTION_FILES = sorted([REPO_ROOT / "action.yml", *REPO_ROOT.glob("actions/*/action.yml")])


WORKFLOW_FILES = sorted([*REPO_ROOT.glob("workflows/*.yml"), *REPO_ROOT.glob("workflows/*.yaml")])


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
        "host-proxy": "CACHE_HOST_PROXY",
        "backend": "CACHE_BACKEND",
        "redis-password": "CACHE_REDIS_PASSWORD",
        "prewarm": "CACHE_PREWARM",
        "webhook-secret": "CACHE_WEBHOOK_SECRET",
        "webhook-port": "CACHE_WEBHOOK_PORT",
    }
    assert set(inputs) - {"python", "extras"} == set(cli_env)
    assert all(str(inputs[name]["default"]) == "" for name in cli_env)
    for name, var in cli_env.items():
        assert f"inputs.{name}" in str(env.get(var)), f"input {name} does not reach ${var}: {env.get(var)}"
    assert set(meta["outputs"]) >= {"api-url", "socket", "peer-id"}


def run_step(tmp_path: Path, step_id: str, bindir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """One step's ``run`` of setup-p2p-cache under bash, its ``env`` given as plain variables."""
    meta = load_yaml(REPO_ROOT / "actions" / "setup-p2p-cache" / "action.yml")
    step = next(s for s in meta["runs"]["steps"] if s.get("id") == step_id)
    full_env = base_env(PATH=f"{bindir}:/usr/bin:/bin", **env)
    return subprocess.run(
        ["bash", "-c", step["run"]], env=full_env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_setup_p2p_cache_masks_the_shared_store_password_before_fleetci_runs(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, fleetci='echo "fleetci ran with $CACHE_REDIS_PASSWORD"')
    proc = run_step(
        tmp_path,
        "start",
        bindir,
        FLEETCI_BIN=str(bindir),
        CACHE_BACKEND="redis://default:pw-in-url@10.0.0.7:6379/0",
        CACHE_REDIS_PASSWORD="pw-input",
    )
    assert proc.returncode == 0, shown(proc)
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["::add-mask::pw-input", "::add-mask::pw-in-url"], shown(proc)
    assert lines[2] == "fleetci ran with pw-input"  # the runner hides it from here on
    quiet = run_step(tmp_path, "start", bindir, FLEETCI_BIN=str(bindir), CACHE_BACKEND="redis://h:1/0")
    assert "::add-mask::" not in quiet.stdout, shown(quiet)


def test_setup_p2p_cache_masks_the_webhook_secret_before_fleetci_runs(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path, fleetci='echo "fleetci ran with $CACHE_WEBHOOK_SECRET"')
    proc = run_step(tmp_path, "start", bindir, FLEETCI_BIN=str(bindir), CACHE_WEBHOOK_SECRET="hook s3cret")
    assert proc.returncode == 0, shown(proc)
    lines = proc.stdout.splitlines()
    assert lines == ["::add-mask::hook s3cret", "fleetci ran with hook s3cret"], shown(proc)  # masked first
    quiet = run_step(tmp_path, "start", bindir, FLEETCI_BIN=str(bindir), CACHE_WEBHOOK_SECRET="")
    assert "::add-mask::" not in quiet.stdout, shown(quiet)


@pytest.mark.parametrize(
    ("backend", "extras", "expected"),
    [
        ("redis://h:6379/0", "", "redis"),
        ("rediss://h/0", "p2p", "p2p,redis"),
        ("", "", ""),
        ("", "redis", "redis"),
    ],
)
def test_setup_p2p_cache_installs_the_redis_extra_for_a_redis_backend(
    tmp_path: Path, backend: str, extras: str, expected: str
) -> None:
    action_path = tmp_path / "actions" / "setup-p2p-cache"
    action_path.mkdir(parents=True)
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "install_fleetci.sh").write_text('echo "extras=$FLEETCI_EXTRAS"\n')
    proc = run_step(
        tmp_path,
        "install",
        fake_bin(tmp_path),
        GITHUB_ACTION_PATH=str(action_path),
        BACKEND=backend,
        FLEETCI_EXTRAS=extras,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"extras={expected}", shown(proc)


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
    # Named explicitly: left to itself the script would pick another Python >= 3.10 (/usr/bin/python3.X).
    proc = run_install(tmp_path, bindir, FLEETCI_PYTHON=str(bindir / "python3"))
    assert proc.returncode != 0, shown(proc)
    assert "python3-venv" in proc.stderr, shown(proc)
    assert "install_fleetci: error:" in proc.stderr, shown(proc)
    assert (tmp_path / "GITHUB_PATH").read_text() == ""


def test_install_script_rejects_a_directory_that_is_not_a_checkout(tmp_path: Path) -> None:
    bindir = fake_bin(tmp_path)
    proc = run_install(tmp_path, bindir, str(tmp_path))
    assert proc.returncode != 0, shown(proc)
    assert "not a fleetci checkout" in proc.stderr, shown(proc)


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
        assert env[var] == f"${{{{ inputs.{name} || env.{var} }}}}", (name, env.get(var))
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


def test_push_to_gitlab_passes_compression_parallel_and_index_as_settings() -> None:
    """Issue 19: the new push settings reach fleetci through their environment names, empty by default."""
    meta = load_yaml(REPO_ROOT / "actions" / "push-to-gitlab" / "action.yml")
    sync = next(s for s in meta["runs"]["steps"] if s.get("id") == "sync")
    for name, var in {
        "compression": "REGISTRY_COMPRESSION",
        "parallel": "REGISTRY_PARALLEL",
        "index": "REGISTRY_INDEX",
    }.items():
        assert str(meta["inputs"][name]["default"]) == "", name
        assert sync["env"][var] == f"${{{{ inputs.{name} || env.{var} }}}}", (name, sync["env"].get(var))
    wf = load_yaml(REPO_ROOT / "workflows" / "presto-build-and-sync.yml")
    [step] = [s for s in wf["jobs"]["sync"]["steps"] if "push-to-gitlab@" in s.get("uses", "")]
    assert step["with"]["index"] == "${{ vars.REGISTRY_INDEX }}"
