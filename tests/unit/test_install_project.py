"""``fleetci install`` on a plain repository (issue 18): the project itself is the default request.

Argument handling, project discovery and the report's ``pip check`` entry, in-process; pip itself runs in
tests/integration/test_install_project.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetci.errors import UsageError
from fleetci.install.models import InstallReport
from fleetci.install.pip import build_plan, project_modules
from fleetci.install.report import failure_message, render_matrix, render_summary, report_lines
from fleetci.install.settings import install_settings
from support import RunCli, one_line_error
from support.install import pip_env

DEAD_INDEX = "http://127.0.0.1:9/simple/"  # nothing listens: a test that reached pip would fail loudly


def pyproject(directory: Path, name: str = "tinyproj") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1"\n', "utf-8")
    return directory


def test_the_default_project_applies_only_when_nothing_else_is_requested(tmp_path: Path) -> None:
    repo = pyproject(tmp_path / "repo")
    alone = install_settings({"default_project": str(repo)}, env={})
    assert alone.project == str(repo) and alone.runs_pip_check
    assert alone.pip_specs == (str(repo),)
    # any explicit request wins, as before: no project, no pip check
    for flags in ({"packages": ["alpha"]}, {"verify": ["json"]}, {"apt": ["jq"]}, {"preset": "libp2p"}):
        s = install_settings({"default_project": str(repo), **flags}, env={})
        assert s.project == "" and not s.runs_pip_check, flags
    # the action's variables: empty inputs are unset, so the default applies
    env = {"INSTALL_PACKAGES": "", "INSTALL_VERIFY": "", "INSTALL_DEFAULT_PROJECT": str(repo)}
    assert install_settings(env=env).project == str(repo)


def test_pip_check_modes(tmp_path: Path) -> None:
    repo = str(pyproject(tmp_path / "repo"))
    assert not install_settings({"packages": ["alpha"]}, env={}).runs_pip_check  # auto: no project
    assert install_settings({"packages": ["alpha"], "pip_check": "always"}, env={}).runs_pip_check
    assert install_settings({"project": repo}, env={}).runs_pip_check
    assert not install_settings({"project": repo}, env={"INSTALL_PIP_CHECK": "never"}).runs_pip_check


def test_a_buildable_project_is_installed_editable(tmp_path: Path) -> None:
    repo = pyproject(tmp_path / "repo")
    (repo / "requirements.txt").write_text("alpha\n", "utf-8")  # the build file wins
    plan = build_plan(install_settings({"project": str(repo), "extras": ["test"]}, env={}))
    assert [(i.spec, i.editable) for i in plan.items] == [(f"{repo}[test]", True)]


def test_a_repository_with_only_requirements_files_installs_them(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "requirements-dev.txt").write_text("zeta\n-r requirements.txt\n", "utf-8")
    (repo / "requirements.txt").write_text("gamma>=1\n", "utf-8")
    (repo / "other.txt").write_text("never\n", "utf-8")
    plan = build_plan(install_settings({"default_project": str(repo)}, env={}))
    assert [(i.name, i.editable) for i in plan.items] == [("gamma", False), ("zeta", False)]
    assert project_modules(repo) == ()  # nothing to import: no package of its own


def test_the_projects_top_level_packages_are_found(tmp_path: Path) -> None:
    src = pyproject(tmp_path / "src-layout")
    for pkg in ("src/tinyproj", "src/other_pkg", "tests", "src/not-a-module"):
        (src / pkg).mkdir(parents=True)
        (src / pkg / "__init__.py").write_text("", "utf-8")
    assert project_modules(src) == ("other_pkg", "tinyproj")
    flat = pyproject(tmp_path / "flat")
    for pkg in ("flatpkg", "tests", "docs", "scripts"):
        (flat / pkg).mkdir()
        (flat / pkg / "__init__.py").write_text("", "utf-8")
    (flat / "build").mkdir()
    assert project_modules(flat) == ("flatpkg",)
    assert project_modules(pyproject(tmp_path / "empty")) == ()


def test_bad_project_input_is_one_line_before_pip_runs(tmp_path: Path, fleetci_fd: RunCli) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("no python here\n", "utf-8")
    reqs_only = tmp_path / "reqs"
    reqs_only.mkdir()
    (reqs_only / "requirements.txt").write_text("alpha\n", "utf-8")
    (reqs_only / "requirements-bad.txt").write_text("alpha>=>1\n", "utf-8")
    cases = [
        (["--default-project", str(empty)], "holds no Python project (no pyproject.toml, setup.py"),
        (["--project", str(empty)], "holds no Python project"),
        (["--project", str(tmp_path / "missing")], "does not exist"),
        (["--default-project", str(tmp_path / "missing")], "does not exist"),
        (["--project", str(reqs_only / "requirements.txt")], "is not a directory"),
        (["--project", str(reqs_only), "--extras", "test"], "extras need a pyproject.toml"),
        (["--default-project", str(reqs_only)], "requirements-bad.txt:1: invalid requirement"),
        (["alpha", "--pip-check", "sometimes"], "invalid value for --pip-check"),
        ([], "nothing to install"),  # no default project given: as before
    ]
    for argv, expected in cases:
        proc = fleetci_fd("install", *argv, env=pip_env(DEAD_INDEX))
        line = one_line_error(proc)
        assert proc.returncode == 2 and expected in line, (argv, line)
        assert "pip install" not in proc.stderr and "attempt" not in proc.stderr, proc.stderr


def test_matrix_cannot_take_a_default_project(fleetci: RunCli, tmp_path: Path) -> None:
    proc = fleetci("install", "matrix", str(tmp_path / "r.json"), "--default-project", ".")
    assert "not --default-project" in one_line_error(proc)


def report_with_check(ok: bool, problems: list[str]) -> InstallReport:
    return {
        "schema": "fleetci.install/1",
        "started": "2026-01-01T00:00:00+00:00",
        "packages": [],
        "verify": [],
        "failed": [] if ok else ["pip-check"],
        "ok": ok,
        "duration_s": 0.1,
        "check": {"ok": ok, "problems": problems},
        "platform": {"arch": "amd64", "python": "3.11.7"},
    }


def test_pip_check_reaches_the_line_the_matrix_and_the_summary() -> None:
    problems = [
        "omega 1.0 has requirement alpha<2, but you have alpha 2.0.",
        "psi 1.0 requires chi, which is not installed.",
    ]
    bad = report_with_check(False, problems)
    assert failure_message(bad) == f"1 failed: pip check: {problems[0]}; {problems[1]}"
    assert report_lines(bad)[-1].startswith("pip check") and "FAILED: omega 1.0" in report_lines(bad)[-1]
    row = "| pip check | ❌ omega 1.0 has requirement alpha<2, but you have alpha 2.0. (+1 more) |"
    assert row in render_matrix([bad]).splitlines()
    summary = render_summary(bad)
    assert "| package | amd64 (py3.11) |" in summary
    assert f"- {problems[1]}" in summary.splitlines()
    good = report_with_check(True, [])
    assert "| pip check | ✅ no conflicts |" in render_summary(good).splitlines()
    assert "broken requirements" not in render_summary(good)


@pytest.mark.parametrize("mode", ["AUTO", " never ", "always"])
def test_pip_check_mode_parsing(mode: str) -> None:
    assert install_settings({"packages": ["a"], "pip_check": mode}, env={}).pip_check == mode.strip().lower()
    with pytest.raises(UsageError):
        install_settings({"packages": ["a"], "pip_check": "maybe"}, env={})
