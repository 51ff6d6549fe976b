"""Helpers shared by the static checks of action.yml files and their runs under act."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]


INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install_fleetci.sh"


# `uses: fleetci/fleetci[/path]@ref`: this repository's own actions, as users reference them.
OWN_USES_RE = re.compile(r"(uses:\s*)fleetci/fleetci(?:/(?P<path>[^@\s]+))?@\S+")


# This repository as workflows reference its actions (`uses: fleetci/fleetci/<path>@v1`).
ACTION_REPO = "fleetci/fleetci"


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


def action_checkout(dest: Path) -> Path:
    """A clean copy of this repository at ``dest``, as GitHub downloads the action (no caches, no .git)."""
    shutil.copytree(REPO_ROOT, dest, ignore=COPY_IGNORE)
    return dest


VERSION = re.search(
    r'^__version__\s*=\s*["\']([^"\']+)["\']', (REPO_ROOT / "src/fleetci/__init__.py").read_text(), re.M
).group(1)  # type: ignore[union-attr]


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


def act_events(stdout: str) -> list[dict[str, Any]]:
    """The JSON log records ``act --json`` printed (one object a line; other lines are skipped)."""
    events = []
    for line in stdout.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


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


def act_argv(
    event: str,
    workflow: Path,
    action_root: Path,
    act_cache: Path,
    *,
    platforms: Iterable[str] = ("ubuntu-latest",),
    job: str | None = None,
    local: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    variables: Mapping[str, str] | None = None,
    secrets: Mapping[str, str] | None = None,
    inputs: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """``act <event>`` of ``workflow`` on this machine, offline (environment.md's recipe): every label of
    ``platforms`` in host mode, nothing pulled, no cache server, this repository's actions from
    ``action_root``, other ``uses:`` refs from ``local`` (ref -> directory), JSON log lines."""
    return [
        tool("act"),
        event,
        "-W",
        str(workflow),
        *(["-j", job] if job else []),
        *(arg for label in dict.fromkeys(platforms) for arg in ("-P", f"{label}=-self-hosted")),
        "--action-offline-mode",
        "--pull=false",
        "--no-cache-server",
        "--action-cache-path",
        str(act_cache),
        "--local-repository",
        f"{ACTION_REPO}@v1={action_root}",
        *(arg for ref, path in (local or {}).items() for arg in ("--local-repository", f"{ref}={path}")),
        *(arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")),
        *(arg for k, v in (variables or {}).items() for arg in ("--var", f"{k}={v}")),
        *(arg for k, v in (secrets or {}).items() for arg in ("-s", f"{k}={v}")),
        *(arg for i in inputs for arg in ("--input", i)),
        "--json",
        *extra,
    ]


def run_act_process(
    argv: list[str], repo: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run act in its own session; on timeout kill the whole group (act's job containers/processes)."""
    popen = subprocess.Popen(
        argv,
        cwd=repo,
        env=env,
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
    return subprocess.CompletedProcess(argv, popen.returncode, out, err)
