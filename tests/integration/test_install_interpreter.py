"""fleetci installs and runs with its own interpreter, whatever ``python3`` the job tests with (issue 18).

``actions/setup-python`` puts the Python under test first on ``PATH`` as ``python3``; for the 3.9 entries
of ``workflows/multi-arch-ci.yml`` that is a Python fleetci cannot run on. The install script must find a
Python >= 3.10 of its own (python3.X on PATH or in /usr/bin) and leave the tested one to the tests.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from integration.test_actions import ActRun, run_act
from support.actions import VERSION, action_checkout, run_install, shown

# A real CPython 3.9 on this machine (pyenv), the closest stand-in for setup-python's 3.9.
PY39_DIRS = [Path("/root/.pyenv/versions/3.9.18/bin"), Path("/usr/local/bin"), Path("/usr/bin")]


def real_py39_dir() -> Path | None:
    for d in PY39_DIRS:
        if (d / "python3.9").is_file():
            return d
    return None


# Stand-in when no 3.9 exists: answers the version question as a 3.9 and refuses everything else.
FAKE_PY39 = """#!/bin/sh
case "$1" in -V | --version) echo "Python 3.9.18"; exit 0 ;; esac
case "$*" in *version_info*print*) echo "3.9"; exit 0 ;; esac
echo "fake python3 3.9: cannot run $*" >&2
exit 1
"""


def py39_first(tmp_path: Path) -> Path:
    """A PATH directory whose ``python3`` is a Python 3.9 (setup-python's layout: python3 -> 3.9)."""
    bindir = tmp_path / "py39-bin"
    bindir.mkdir()
    real = real_py39_dir()
    if real is not None:
        (bindir / "python3").symlink_to(real / "python3.9")
        (bindir / "python3.9").symlink_to(real / "python3.9")
    else:
        (bindir / "python3").write_text(FAKE_PY39, encoding="utf-8")
        (bindir / "python3").chmod(0o755)
    return bindir


@pytest.mark.timeout(600)
def test_install_script_skips_a_python39_that_is_first_on_path(tmp_path: Path) -> None:
    checkout = action_checkout(tmp_path / "checkout")
    bindir = py39_first(tmp_path)
    first = subprocess.run(
        ["python3", "-c", 'import sys; print("%d.%d" % sys.version_info[:2])'],
        env={**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert first.stdout.strip() == "3.9", shown(first)  # the wrong python really is first

    proc = run_install(tmp_path, bindir, str(checkout))
    assert proc.returncode == 0, shown(proc)
    venv = tmp_path / "toolcache" / "fleetci" / VERSION
    assert re.search(r"fleetci runs on Python 3\.1\d\.\d+ \(\S+\)", proc.stdout), shown(proc)
    version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys, fleetci; print(sys.version_info[:2] >= (3, 10))"],
        capture_output=True,
        text=True,
    )
    assert version.stdout.strip() == "True", shown(version)
    fleetci = subprocess.run([str(venv / "bin" / "fleetci"), "--version"], capture_output=True, text=True)
    assert fleetci.stdout.strip() == f"fleetci {VERSION}", shown(fleetci)


def test_install_script_refuses_an_explicit_python_older_than_310_in_one_line(tmp_path: Path) -> None:
    checkout = action_checkout(tmp_path / "checkout")
    bindir = py39_first(tmp_path)
    proc = run_install(tmp_path, bindir, str(checkout), FLEETCI_PYTHON=str(bindir / "python3"))
    assert proc.returncode == 1, shown(proc)
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1, shown(proc)
    assert "needs Python >= 3.10" in errors[0] and "3.9" in errors[0], shown(proc)
    assert not (tmp_path / "toolcache" / "fleetci").exists()


def without_preinstalled_fleetci(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without directories holding a fleetci (this suite's .venv): the action must install its own."""
    kept = [
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "fleetci").exists()
    ]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))


PY39_WORKFLOW = """\
name: python39-entry
on: push
jobs:
  test:
    runs-on: ubuntu-latest
    steps:
      - name: Put Python 3.9 first like setup-python
        run: |
          echo "$PY39_BIN" >> "$GITHUB_PATH"
        env:
          PY39_BIN: ${{ vars.PY39_BIN }}
      - name: Python under test
        run: echo "python3 on PATH is $(python3 -c 'import sys; print(sys.version.split()[0])')"
      - name: Run the tests on amd64
        id: run
        uses: fleetci/fleetci/actions/multi-arch-test@v1
        with:
          arch: amd64
          python-version: "3.9"
          command: python3 -c 'import sys; print("tested on", sys.version.split()[0])'
      - name: fleetci's own interpreter
        run: |
          venv_python="$(dirname "$(command -v fleetci)")/python"
          version="$("$venv_python" -c 'import sys; print(sys.version.split()[0])')"
          echo "fleetci ${{ steps.run.outputs.version }} runs on $version"
"""


@pytest.mark.timeout(300)
def test_multi_arch_test_action_with_python39_first_under_act(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A multi-arch-ci amd64 x 3.9 entry: python3 is 3.9, fleetci installs with its own >= 3.10."""
    real = real_py39_dir()
    if real is None:
        pytest.skip("no CPython 3.9 on this machine (the install-script test above covers the fake one)")
    without_preinstalled_fleetci(monkeypatch)
    bindir = py39_first(tmp_path)
    workflow = tmp_path / "python39-entry.yml"
    workflow.write_text(PY39_WORKFLOW, encoding="utf-8")
    run: ActRun = run_act(
        workflow,
        tmp_path,
        variables={"PY39_BIN": str(bindir)},
        secrets={},
        timeout=280,
    )
    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"], run.describe()
    lines = [part for ln in run.output_lines for part in ln.splitlines()]  # act may join a step's lines
    assert any(re.fullmatch(r"python3 on PATH is 3\.9\.\d+", ln) for ln in lines), run.describe()
    assert any(re.fullmatch(r"tested on 3\.9\.\d+", ln) for ln in lines), run.describe()
    assert any(re.fullmatch(rf"fleetci {re.escape(VERSION)} runs on 3\.1\d\.\d+", ln) for ln in lines), (
        run.describe()
    )
    # fleetci was installed by the action (not found preinstalled), into act's tool cache under tmp_path.
    assert any(re.search(r"install_fleetci: fleetci runs on Python 3\.1\d", ln) for ln in lines), (
        run.describe()
    )
    installed = [ln for ln in lines if f"install_fleetci: installed fleetci {VERSION} from" in ln]
    assert len(installed) == 1 and str(tmp_path) in installed[0], run.describe()
