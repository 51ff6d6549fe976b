"""scripts/setup_arm64_runner.sh (docs/self-hosted.md): shellcheck-clean, and its --dry-run plan."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "setup_arm64_runner.sh"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is installed by scripts/test.sh")
def test_shellcheck_clean() -> None:
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


def test_dry_run_registers_the_dgx_labels_and_installs_the_service(tmp_path: Path) -> None:
    d = tmp_path / "runner"
    r = run(
        "--url", "https://github.com/my-org/app", "--dry-run", "--arch", "arm64", "--dir", str(d),
        "--name", "dgx-1", "--user", "ci", "--apt", "libgmp-dev,jq",
        RUNNER_TOKEN="AAAAsecret-registration-token",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "AAAAsecret" not in r.stdout + r.stderr
    steps = [line.removeprefix("+ ") for line in r.stdout.splitlines() if line.startswith("+ ")]
    tarball = "actions-runner-linux-arm64-2.321.0.tar.gz"
    assert steps == [
        f"mkdir -p {d}",
        f"cd {d}",
        f"curl -fsSL --retry 3 -o {d}/{tarball} "
        f"https://github.com/actions/runner/releases/download/v2.321.0/{tarball}",
        f"tar xzf {d}/{tarball} -C {d}",
        f"rm -f {d}/{tarball}",
        f"sudo {d}/bin/installdependencies.sh",
        f"sudo {shutil.which('fleetci') or 'fleetci'} install --apt libgmp-dev,jq",
        f"{d}/config.sh --unattended --replace --url https://github.com/my-org/app --token *** --name dgx-1"
        " --labels self-hosted,ARM64,dgx",
        f"sudo {d}/svc.sh install ci",
        f"sudo {d}/svc.sh start",
        f"sudo {d}/svc.sh status",
    ]
    assert not d.exists()  # a dry run changes nothing


def test_dry_run_without_token_or_service(tmp_path: Path) -> None:
    r = run(
        "--url",
        "https://github.com/my-org",
        "--dry-run",
        "--arch",
        "x64",
        "--dir",
        str(tmp_path),
        "--no-service",
    )
    assert r.returncode == 0, r.stderr
    assert "--token ***" in r.stdout and "svc.sh" not in r.stdout
    assert "actions-runner-linux-x64-" in r.stdout
    assert "warning: label ARM64 on a x64 runner" in r.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--url is required"),
        (("--url", "github.com/o/r"), "--url must be https://HOST/OWNER[/REPO]"),
        (("--url", "https://github.com/o", "--bogus"), "unknown argument '--bogus'"),
        (("--url", "https://github.com/o", "--version", "latest"), "--version must look like 2.321.0"),
        (("--url", "https://github.com/o", "--labels", "a,,b"), "--labels must be a comma-separated list"),
        (("--url", "https://github.com/o", "--apt", "jq;rm -rf /"), "--apt must be comma-separated"),
        (("--url", "https://github.com/o", "--arch", "mips"), "--arch must be arm64 or x64"),
        (("--url",), "--url needs a value"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: tuple[str, ...], message: str) -> None:
    r = run(*args, "--dry-run") if "--url" not in args or len(args) > 1 else run(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("setup_arm64_runner: error: ") and message in lines[0]


def test_real_run_needs_a_token(tmp_path: Path) -> None:
    r = run("--url", "https://github.com/o/r", "--arch", "arm64", "--dir", str(tmp_path / "x"))
    assert r.returncode == 2
    if os.geteuid() == 0:
        assert "refuses to be configured as root" in r.stderr or "set RUNNER_TOKEN" in r.stderr
    else:
        assert "set RUNNER_TOKEN" in r.stderr
    assert not (tmp_path / "x").exists()
