"""``fleetci install``: real apt locks, real pip against a local index with injected faults, real venvs.

Nothing is mocked: the dpkg lock is the machine's own (taken by a child process with the fcntl lock apt
uses), pip runs in a throwaway virtualenv and downloads wheels built here from a PEP 503 index on
127.0.0.1 that answers 503 or resets the connection on chosen requests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetci.install.index import FaultPlan, LocalIndex, build_wheel
from fleetci.install.locks import held
from support import REPO_ROOT, clean_env, one_line_error, run_fleetci
from support.install import pip_env

DPKG_FRONTEND = Path("/var/lib/dpkg/lock-frontend")


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    for name, version, requires in [
        ("alpha", "1.0", ()),
        ("beta", "2.0", ("alpha>=1",)),
        ("gamma", "3.0", ()),
        ("delta", "4.0", ()),
        ("epsilon", "1.0", ()),
        ("epsilon", "2.0", ()),
        ("zeta", "0.5", ()),
        ("eta", "0.7", ()),
    ]:
        build_wheel(d, name, version, requires)
    return d


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A throwaway virtualenv: packages never land in the interpreter running the tests."""
    target = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True)
    return str(target / "bin" / "python")


@pytest.fixture
def index_factory(wheels: Path) -> Iterator[Callable[..., LocalIndex]]:
    started: list[LocalIndex] = []

    def make(first_faults: int = 0, kinds: tuple[str, ...] = ("503", "reset")) -> LocalIndex:
        idx = LocalIndex(wheels, FaultPlan(first=first_faults, kinds=kinds)).start()
        started.append(idx)
        return idx

    yield make
    for idx in started:
        idx.stop()


FAST = ("--backoff", "0.05", "--backoff-max", "0.2")


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["packages"]}


def in_venv(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


needs_apt = pytest.mark.skipif(
    os.geteuid() != 0 or not DPKG_FRONTEND.exists() or shutil.which("apt-get") is None,
    reason="needs root and a Debian/Ubuntu apt",
)


def installed_apt_package() -> str:
    """A small package that is already installed, so apt-get is a no-op once the lock is free."""
    for name in ("jq", "less", "ca-certificates", "debianutils"):
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", name], capture_output=True, text=True
        )
        if proc.stdout == "installed":
            return name
    pytest.skip("no small installed package found")


@needs_apt
def test_apt_waits_for_the_real_dpkg_lock_then_installs(tmp_path: Path) -> None:
    pkg = installed_apt_package()
    report = tmp_path / "apt.json"
    with held(DPKG_FRONTEND, 4) as child:
        proc = run_fleetci(
            "install", "--apt", pkg, "--apt-update", "never", "--lock-timeout", "120",
            "--progress-every", "1", "--report", str(report), timeout=180,
        )  # fmt: skip
        holder_pid = child.pid
    assert proc.returncode == 0, proc.stderr
    assert f"waiting for {DPKG_FRONTEND} held by pid {holder_pid}" in proc.stderr
    assert "locks are free after" in proc.stderr
    data = read(report)
    entry = by_name(data)[pkg]
    assert entry["ok"] and entry["kind"] == "apt" and entry["installed"], entry
    assert data["apt"]["lock_wait_s"] > 0


@needs_apt
def test_apt_gives_up_on_a_held_dpkg_lock_with_one_line_naming_the_holder() -> None:
    with held(DPKG_FRONTEND, 60) as child:
        proc = run_fleetci("install", "--apt", installed_apt_package(), "--lock-timeout", "1", timeout=60)
    line = one_line_error(proc)
    assert str(DPKG_FRONTEND) in line and f"held by pid {child.pid}" in line, line
    assert "gave up after" in line


def test_transient_index_faults_are_retried_until_success(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory(first_faults=4)
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "beta", "--python", venv_python, "--report", str(report), "--retries", "5", *FAST,
        env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert index.plan.faults >= 2, index.plan.log  # both a 503 and a reset were served
    beta = by_name(read(report))["beta"]
    # one failed attempt per injected fault, then the successful one
    assert beta["attempts"] == index.plan.faults + 1, (beta, index.plan.log)
    assert beta["retries"] == beta["attempts"] - 1
    assert beta["ok"] and beta["installed"] == "2.0" and beta["error"] is None
    assert "HTTP 503" in proc.stderr and "connection reset" in proc.stderr
    assert in_venv(venv_python, "import alpha, beta; print(beta.__version__, alpha.__version__)") == "2.0 1.0"


def test_a_missing_package_fails_fast_with_one_attempt(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "nothere", "--python", venv_python, "--report", str(report), "--retries", "5", *FAST,
        env=pip_env(index.url),
    )  # fmt: skip
    line = one_line_error(proc)
    assert "nothere: no matching distribution for nothere" in line, line
    entry = by_name(read(report))["nothere"]
    assert (entry["attempts"], entry["retries"], entry["ok"]) == (1, 0, False), entry
    assert index.plan.log == ["/simple/nothere/ ok"]  # pip asked once; nobody retried


def test_partial_bulk_failure_falls_back_to_one_by_one_and_reports_exactly(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "gamma", "missing-pkg", "delta==9.9", "zeta", "--python", venv_python,
        "--report", str(report), *FAST, env=pip_env(index.url),
    )  # fmt: skip
    line = one_line_error(proc)
    assert "2 failed" in line and "missing-pkg:" in line and "delta:" in line, line
    data = read(report)
    got = {
        name: (p["ok"], p["installed"], p["phase"], p["error"], p["retries"])
        for name, p in by_name(data).items()
    }
    assert got == {
        "gamma": (True, "3.0", "individual", None, 0),
        "missing-pkg": (False, None, "individual", "no matching distribution for missing-pkg", 0),
        "delta": (False, None, "individual", "no matching distribution for delta==9.9", 0),
        "zeta": (True, "0.5", "individual", None, 0),
    }
    assert sorted(data["failed"]) == ["delta", "missing-pkg"] and data["ok"] is False
    assert in_venv(venv_python, "import gamma, zeta; print(gamma.__version__, zeta.__version__)") == "3.0 0.5"


def test_requirements_constraints_verify_and_report(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# deps\nepsilon  # any version\neta>=0.1\n", encoding="utf-8")
    cons = tmp_path / "constraints.txt"
    cons.write_text("epsilon==1.0\n", encoding="utf-8")
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "-r", str(reqs), "-c", str(cons), "--verify", "epsilon,eta", "--python", venv_python,
        "--report", str(report), env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = read(report)
    assert {n: p["installed"] for n, p in by_name(data).items()} == {"epsilon": "1.0", "eta": "0.7"}
    assert [(v["module"], v["ok"], v["version"], v["distribution"]) for v in data["verify"]] == [
        ("epsilon", True, "1.0", "epsilon"),
        ("eta", True, "0.7", "eta"),
    ]
    plat = data["platform"]
    assert plat["python"] == in_venv(venv_python, "import platform; print(platform.python_version())")
    assert plat["arch"] and plat["libc"].startswith("glibc")
    assert data["schema"] == "fleetci.install/1" and data["ok"] is True and data["failed"] == []

    # A module that does not import is reported with the interpreter's own error, and fails the run.
    proc = run_fleetci("install", "--verify", "eta,not_a_module_xyz", "--python", venv_python)
    line = one_line_error(proc)
    assert "import not_a_module_xyz: ModuleNotFoundError" in line, line


def test_matrix_renders_arch_by_package_from_reports(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = run_fleetci(
        "install", "alpha", "--verify", "alpha", "--python", venv_python,
        "--report", str(reports / "amd.json"), env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    amd = read(reports / "amd.json")
    # An arm64 runner's report, as that job would have written it: alpha failed there.
    arm = json.loads(json.dumps(amd))
    arm["platform"]["arch"] = "arm64"
    arm["packages"][0].update(ok=False, installed=None, error="no matching distribution for alpha")
    arm["ok"] = False
    (reports / "arm.json").write_text(json.dumps(arm), encoding="utf-8")
    summary = tmp_path / "summary.md"
    proc = run_fleetci(
        "install",
        "matrix",
        str(reports / "*.json"),
        "--summary",
        env=clean_env(GITHUB_STEP_SUMMARY=str(summary)),
    )
    assert proc.returncode == 0, proc.stderr
    py = ".".join(amd["platform"]["python"].split(".")[:2])
    header = f"| package | {amd['platform']['arch']} (py{py}) | arm64 (py{py}) |"
    lines = proc.stdout.splitlines()
    assert header in lines, proc.stdout
    assert "| pip:alpha | ✅ 1.0 | ❌ no matching distribution for alpha |" in lines, proc.stdout
    assert "| import:alpha | ✅ 1.0 | ✅ 1.0 |" in lines, proc.stdout
    assert "2 report(s), 1 with failures." in proc.stdout
    assert summary.read_text(encoding="utf-8") == proc.stdout


def test_unreachable_index_is_transient_then_one_line(venv_python: str) -> None:
    from fleetci.http import free_port

    url = f"http://127.0.0.1:{free_port()}/simple/"  # nothing listens there
    proc = run_fleetci("install", "omega", "--python", venv_python, "--retries", "2", *FAST, env=pip_env(url))
    line = one_line_error(proc)
    assert "omega: connection refused" in line, line
    assert len(re.findall(r"attempt \d failed: connection refused", proc.stderr)) == 3


def test_safe_install_script_forwards_to_the_cli(
    index_factory: Callable[..., LocalIndex], venv_python: str
) -> None:
    index = index_factory()
    script = REPO_ROOT / "scripts" / "safe_install.py"
    proc = subprocess.run(
        [venv_python, str(script), "gamma", "--verify", "gamma"],
        env=pip_env(index.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # no --python given: it installs for the interpreter that runs the script (the venv)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"import gamma\s+3\.0", proc.stdout), proc.stdout
    proc = subprocess.run(
        [sys.executable, str(script), "--lock-timeout", "x", "--apt", "jq"],
        env=pip_env(index.url),
        capture_output=True,
        text=True,
    )
    assert "invalid value for --lock-timeout" in one_line_error(proc)
