"""Issue 18: ``--python X.Y`` picks the Debian suite shipping it (3.9 bullseye, 3.11 bookworm, 3.13 trixie).

A Python Debian does not ship (3.10, 3.12) stays a usage error on the chroot backend; riscv64 is trixie only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetci.errors import UsageError
from fleetci.multiarch.arch import ARCHES, SUITE_PYTHON, suite_for
from fleetci.multiarch.chroot import Guest
from fleetci.multiarch.matrix import build_matrix
from fleetci.multiarch.settings import multiarch_settings
from support import RunCli, clean_env, one_line_error


@pytest.mark.parametrize("arch", ["amd64", "arm64", "armv7"])
@pytest.mark.parametrize(
    ("python", "suite"), [(None, "bookworm"), ("3.9", "bullseye"), ("3.11", "bookworm"), ("3.13", "trixie")]
)
def test_python_picks_the_debian_suite_that_ships_it(arch: str, python: str | None, suite: str) -> None:
    assert suite_for(ARCHES[arch], python) == suite
    if python is not None:
        assert SUITE_PYTHON[suite] == python


@pytest.mark.parametrize("python", ["3.10", "3.12"])
def test_a_python_debian_does_not_ship_is_a_usage_error_naming_what_there_is(python: str) -> None:
    with pytest.raises(UsageError) as err:
        suite_for(ARCHES["arm64"], python)
    message = str(err.value)
    assert f"no Debian chroot for arm64 has Python {python}" in message
    assert "bookworm has 3.11, trixie has 3.13, bullseye has 3.9" in message
    assert f"--backend docker (python:{python} image)" in message and "\n" not in message


@pytest.mark.parametrize("python", ["3.9", "3.11"])
def test_riscv64_has_only_trixie(python: str) -> None:
    assert suite_for(ARCHES["riscv64"], None) == suite_for(ARCHES["riscv64"], "3.13") == "trixie"
    with pytest.raises(
        UsageError, match=rf"no Debian chroot for riscv64 has Python {python} \(trixie has 3\.13\)"
    ):
        suite_for(ARCHES["riscv64"], python)
    with pytest.raises(
        UsageError, match=r"Debian bullseye has no riscv64 chroot \(suites with riscv64: trixie\)"
    ):
        suite_for(ARCHES["riscv64"], None, "bullseye")


def test_an_explicit_suite_wins_and_must_agree_with_python() -> None:
    assert suite_for(ARCHES["arm64"], None, "trixie") == "trixie"
    assert suite_for(ARCHES["arm64"], None, "bullseye") == "bullseye"
    assert suite_for(ARCHES["arm64"], "3.9", "bullseye") == "bullseye"
    with pytest.raises(UsageError, match=r"Debian bookworm ships Python 3\.11, not the requested 3\.9"):
        suite_for(ARCHES["arm64"], "3.9", "bookworm")


def test_suite_setting_precedence_flag_env_config_default(tmp_path: Path) -> None:
    base = {"project": str(tmp_path), "arch": "arm64"}
    config = {"multiarch": {"suite": "trixie"}}
    env = {"MULTIARCH_SUITE": "bullseye"}
    assert multiarch_settings(base, {}, {}).suite is None
    assert multiarch_settings(base, config, {}).suite == "trixie"
    assert multiarch_settings(base, config, env).suite == "bullseye"
    assert multiarch_settings({**base, "suite": "bookworm"}, config, env).suite == "bookworm"
    # The guest a run gets: the explicit suite, else the one shipping the python asked for.
    assert Guest(multiarch_settings({**base, "python": "3.9"}, {}, {})).suite == "bullseye"
    assert Guest(multiarch_settings(base, config, env)).suite == "bullseye"
    guest = Guest(multiarch_settings({**base, "python": "3.9"}, config, {"MULTIARCH_SUITE": " Bullseye "}))
    assert (guest.suite, guest.python, guest.spec.suite) == ("bullseye", "3.9", "bullseye")


def test_the_python_version_input_reaches_the_guest_suite(tmp_path: Path) -> None:
    """multi-arch-test passes python-version as MULTIARCH_PYTHON (see its action.yml)."""
    settings = multiarch_settings(
        {"project": str(tmp_path)}, {}, {"MULTIARCH_ARCH": "armv7", "MULTIARCH_PYTHON": "3.9"}
    )
    guest = Guest(settings)
    assert guest.spec.archive(tmp_path).name.startswith("armv7-bullseye-")


def test_matrix_runs_python_3_9_in_a_chroot_not_docker() -> None:
    entries = build_matrix(["arm64", "armv7"], ["3.9", "3.10", "3.11"])
    by = {(e.arch, e.python): e.backend for e in entries}
    assert by == {
        ("arm64", "3.9"): "chroot",
        ("arm64", "3.10"): "docker",
        ("arm64", "3.11"): "chroot",
        ("armv7", "3.9"): "chroot",
        ("armv7", "3.10"): "docker",
        ("armv7", "3.11"): "chroot",
    }
    with pytest.raises(UsageError, match=r"impossible combination riscv64 × Python 3\.9"):
        build_matrix(["riscv64"], ["3.9"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--suite", "buster"], "--suite: expected one of bullseye, bookworm, trixie, got 'buster'"),
        (
            ["--suite", "bookworm", "--python", "3.9"],
            "Debian bookworm ships Python 3.11, not the requested 3.9",
        ),
        (["--arch", "riscv64", "--suite", "bullseye"], "Debian bullseye has no riscv64 chroot"),
        (
            ["--arch", "riscv64", "--python", "3.9", "--backend", "chroot"],
            "no Debian chroot for riscv64 has Python 3.9",
        ),
    ],
)
def test_bad_suite_input_is_one_line_error(
    args: list[str], message: str, fleetci: RunCli, tmp_path: Path
) -> None:
    arch = [] if "--arch" in args else ["--arch", "arm64"]
    proc = fleetci(
        "multiarch", "run", *arch, *args, "--project", str(tmp_path), "--", "true", env=clean_env()
    )
    assert message in one_line_error(proc)
    assert proc.returncode == 2
