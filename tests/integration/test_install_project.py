"""``fleetci install`` on a plain repository (issue 18): real pip installs the project itself from a local
PEP 503 index into a throwaway venv, then ``pip check`` runs and the project's package is imported.

The tiny project builds with an in-tree PEP 517/660 backend (``backend-path``, no build requirements), so
pip needs nothing from the index but the project's own dependencies.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetci.install.index import LocalIndex, build_wheel
from support import fleetci_cmd, one_line_error, run_fleetci
from support.install import pip_env

BACKEND = '''
"""A minimal PEP 517/660 backend: a pure-Python wheel of src/<name>, or an editable .pth to src."""
import base64, hashlib, os, zipfile

NAME, VERSION, REQUIRES = "tinyproj", "0.1", {requires!r}


def _wheel(directory, files):
    dist = f"{{NAME}}-{{VERSION}}"
    info = f"{{dist}}.dist-info"
    files = dict(files)
    files[f"{{info}}/METADATA"] = (
        f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n"
        + "".join(f"Requires-Dist: {{r}}\\n" for r in REQUIRES)
    )
    files[f"{{info}}/WHEEL"] = (
        "Wheel-Version: 1.0\\nGenerator: t\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    record = []
    name = f"{{dist}}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(directory, name), "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{arc}},sha256={{digest}},{{len(data)}}")
            zf.writestr(arc, data)
        record.append(f"{{info}}/RECORD,,")
        zf.writestr(f"{{info}}/RECORD", "\\n".join(record) + "\\n")
    return name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    files = {{}}
    for base, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                path = os.path.join(base, n)
                files[os.path.relpath(path, root)] = open(path, encoding="utf-8").read()
    return _wheel(wheel_directory, files)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
    return _wheel(wheel_directory, {{"tinyproj.pth": src + "\\n"}})


def get_requires_for_build_wheel(config_settings=None):
    return []


get_requires_for_build_editable = get_requires_for_build_wheel
'''


def tiny_project(directory: Path, requires: tuple[str, ...]) -> Path:
    """A repository as a user has it: pyproject.toml, src/tinyproj/, tests/ (not a package to import)."""
    (directory / "src" / "tinyproj").mkdir(parents=True)
    (directory / "src" / "tinyproj" / "__init__.py").write_text('__version__ = "0.1"\n', "utf-8")
    (directory / "tests").mkdir()
    (directory / "tests" / "__init__.py").write_text("raise ImportError('tests are not imported')\n", "utf-8")
    (directory / "_backend.py").write_text(BACKEND.format(requires=list(requires)), "utf-8")
    (directory / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "_backend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "tinyproj"\nversion = "0.1"\n',
        "utf-8",
    )
    return directory


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    wheels = tmp_path_factory.mktemp("wheels")
    for name, version, requires in [
        ("alpha", "1.0", ()),
        ("alpha", "2.0", ()),
        ("beta", "2.0", ("alpha>=1",)),
        ("gamma", "3.0", ()),
        ("zeta", "0.5", ()),
        ("omega", "1.0", ("alpha<2",)),
    ]:
        build_wheel(wheels, name, version, requires)
    with LocalIndex(wheels) as idx:
        yield idx


def new_venv(where: Path) -> str:
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, capture_output=True)
    return str(where / "bin" / "python")


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_a_plain_repository_is_installed_checked_and_imported(index: LocalIndex, tmp_path: Path) -> None:
    """What the safe-install action does with no inputs: ``fleetci install --default-project .``."""
    repo = tiny_project(tmp_path / "repo", ("beta>=2",))
    python = new_venv(tmp_path / "venv")
    report, summary = tmp_path / "deps.json", tmp_path / "summary.md"
    env = pip_env(index.url, GITHUB_STEP_SUMMARY=str(summary))
    proc = subprocess.run(
        fleetci_cmd(
            "install", "--default-project", ".", "--python", python, "--report", str(report), "--summary"
        ),
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = read(report)
    assert [(p["name"], p["ok"], p["installed"]) for p in data["packages"]] == [
        ("tinyproj", True, "0.1")
    ]  # its own name, not the directory's
    assert data["check"] == {"ok": True, "problems": []}
    assert [(v["module"], v["ok"], v["version"]) for v in data["verify"]] == [("tinyproj", True, "0.1")]
    assert "pip check: no broken requirements" in proc.stderr
    # the dependency came from our index into the venv
    got = subprocess.run([python, "-c", "import beta, alpha; print(beta.__version__, alpha.__version__)"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert got.stdout.split() == ["2.0", "2.0"]
    lines = summary.read_text(encoding="utf-8").splitlines()
    assert any(ln.startswith("| package | ") and "(py" in ln for ln in lines), lines
    assert "| pip check | ✅ no conflicts |" in lines, lines
    assert "| import:tinyproj | ✅ 0.1 |" in lines, lines


def test_a_conflict_left_in_the_environment_is_reported_by_pip_check(
    index: LocalIndex, tmp_path: Path
) -> None:
    """omega needs alpha<2; the project needs alpha>=2: pip upgrades alpha (exit 0), pip check objects."""
    repo = tiny_project(tmp_path / "repo", ("alpha>=2",))
    python = new_venv(tmp_path / "venv")
    pre = run_fleetci("install", "omega", "--python", python, env=pip_env(index.url), timeout=300)
    assert pre.returncode == 0, pre.stderr
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "--default-project", str(repo), "--python", python, "--report", str(report),
        env=pip_env(index.url), timeout=300,
    )  # fmt: skip
    line = one_line_error(proc)
    assert "pip check: omega 1.0 has requirement alpha<2, but you have alpha 2.0" in line, line
    data = read(report)
    assert data["ok"] is False and data["failed"] == ["pip-check"]
    assert data["check"]["ok"] is False
    assert data["check"]["problems"] == ["omega 1.0 has requirement alpha<2, but you have alpha 2.0."]
    assert all(p["ok"] for p in data["packages"]) and all(v["ok"] for v in data["verify"])
    # never: the same install passes, and the report has no check
    again = tmp_path / "again.json"
    proc = run_fleetci(
        "install", "--default-project", str(repo), "--python", python, "--report", str(again),
        "--pip-check", "never", env=pip_env(index.url), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "check" not in read(again)


def test_a_repository_with_requirements_files_only(index: LocalIndex, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements.txt").write_text("gamma\n", "utf-8")
    (repo / "requirements-dev.txt").write_text("zeta==0.5\n", "utf-8")
    python = new_venv(tmp_path / "venv")
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "--default-project", str(repo), "--python", python, "--report", str(report),
        env=pip_env(index.url), timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = read(report)
    assert {p["name"]: p["installed"] for p in data["packages"]} == {"gamma": "3.0", "zeta": "0.5"}
    assert data["check"] == {"ok": True, "problems": []} and data["verify"] == []
