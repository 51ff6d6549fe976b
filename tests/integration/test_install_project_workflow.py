"""workflows/multi-arch-ci.yml's verify-dependencies job as a copying user gets it (issue 18).

No repository variables are set: the job installs the repository it checked out (a tiny project whose
dependency comes from a local PEP 503 index), runs ``pip check``, imports the project's package and writes
the report and the arch × package table to the step summary. act runs the reference workflow file itself,
in host mode and offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetci.install.index import LocalIndex, build_wheel
from integration.test_actions import ActRun, run_act
from integration.test_install_project import tiny_project
from support.actions import REPO_ROOT

WORKFLOW = REPO_ROOT / "workflows" / "multi-arch-ci.yml"
# act resolves every action of the job before running it, also the upload its `if:` skips under act;
# offline, GitHub's own cannot be fetched, so a local stand-in answers for it (and is never run).
UPLOAD_STUB = """name: upload-artifact (test stand-in, skipped under act)
description: never runs
runs:
  using: composite
  steps:
    - shell: bash
      run: exit 1
"""


@pytest.mark.timeout(300)
def test_verify_dependencies_installs_a_plain_repository_under_act(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "alpha", "1.0")
    build_wheel(wheels, "beta", "2.0", ("alpha>=1",))
    stub = tmp_path / "upload-stub"
    stub.mkdir()
    (stub / "action.yml").write_text(UPLOAD_STUB, encoding="utf-8")
    act_dir = tmp_path / "act"
    tiny_project(act_dir / "repo", ("beta>=2",))  # the user's repository: run_act commits it
    with LocalIndex(wheels) as index:
        run: ActRun = run_act(
            WORKFLOW,
            tmp_path,
            variables={},  # a copying user has set none
            secrets={},
            timeout=280,
            workdir=act_dir,
            extra_args=(
                "-j", "verify-dependencies",
                "--local-repository", f"actions/upload-artifact@v6={stub}",
                "--env", f"PIP_INDEX_URL={index.url}",
                "--env", "PIP_CONFIG_FILE=/dev/null",
                "--env", "PIP_NO_CACHE_DIR=1",
            ),
        )  # fmt: skip
    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success"], run.describe()
    results = run.step_results()
    for name in ["Create the environment to verify", "Install every dependency and write the report"]:
        assert results.get(name) == ["success"], f"step {name!r}: {results.get(name)}\n{run.describe()}"
    summaries = run.summaries
    assert "### fleetci install" in summaries, run.describe()
    assert "| pip:tinyproj | ✅ 0.1 |" in summaries, summaries
    assert "| pip check | ✅ no conflicts |" in summaries, summaries
    assert "| import:tinyproj | ✅ 0.1 |" in summaries, summaries
