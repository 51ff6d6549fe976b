"""fleetci registry in process: bad input to every verb, unreachable hosts and corrupt state
files are one-line errors.

The resumable push itself (a real push killed mid-layer, against a real registry) is in
tests/integration/test_registry_resume.py; this half needs no process of its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetci.http import free_port
from support import RunCli, one_line_error
from support.registry import TAG, needs_registry, push_argv
from support.registry_resume import prepared

VERBS = ["gh-list", "gitlab-list", "xref", "download", "prepare", "push", "clean", "daemon", "retag"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_rejects_an_unknown_flag_with_exit_2(fleetci: RunCli, verb: str) -> None:
    proc = fleetci("registry", verb, "--no-such-flag")
    line = one_line_error(proc)  # verbs with a positional argument report that it is missing first
    assert proc.returncode == 2 and ("unrecognized" in line or "required" in line), line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["download", "not-a-tag", "--gh-token", "x"], "does not end in -linux"),
        (["prepare", "bad tag!-linux-amd64"], "not a valid image tag"),
        (["push", "../etc-linux-amd64", "--yes"], "not a valid image tag"),
        (["clean", "x/y-linux-amd64", "--yes"], "not a valid image tag"),
        (["retag", "X86/Upper:t", "v1", "--registry", "127.0.0.1:1"], "not a valid repository name"),
        (["retag", "x86/a:b", "bad tag!", "--registry", "127.0.0.1:1"], "not a valid tag"),
        (
            ["retag", "x86/a:b", "v1", "--registry-project", "Not/Valid", "--registry", "127.0.0.1:1"],
            "--registry-project",
        ),
        (["push", TAG, "--registry-project", "a//b", "--yes"], "--registry-project"),
        (["push", TAG, "--registry", "ftp://u:hunter2@h", "--yes"], "--registry"),
    ],
)
def test_invalid_tags_and_names_are_usage_errors(
    fleetci: RunCli,
    args: list[str],
    needle: str,
) -> None:
    """Checked before anything is read, written or sent (no downloads dir, no registry needed)."""
    proc = fleetci("registry", *args)
    line = one_line_error(proc)
    assert proc.returncode == 2, line
    assert needle in line and "hunter2" not in proc.stderr


def test_missing_tokens_are_one_line_errors(fleetci: RunCli, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["xref", "--api-url", dead],
        ["download", TAG, "--api-url", dead, "--output-dir", str(tmp_path)],
        ["daemon", "--once", "--api-url", dead, "--downloads-dir", str(tmp_path)],
    ):
        assert "token" in one_line_error(fleetci("registry", *args)), args


def test_unreachable_hosts_are_one_line_errors_without_userinfo(
    fleetci: RunCli,
    tmp_path: Path,
) -> None:
    port = free_port()
    dead, secret_url = f"http://127.0.0.1:{port}", f"http://oauth2:glpat-s3cret@127.0.0.1:{port}"
    cases = [
        ["xref", "--api-url", dead, "--gh-token", "x", "--gitlab-token", "y", "--gitlab-host", dead],
        ["download", TAG, "--api-url", dead, "--gh-token", "x", "--output-dir", str(tmp_path)],
        [
            "daemon",
            "--once",
            "--api-url",
            dead,
            "--gh-token",
            "x",
            "--gitlab-token",
            "y",
            "--gitlab-host",
            dead,
            "--downloads-dir",
            str(tmp_path / "d"),
        ],
        ["gitlab-list", "--gitlab-host", secret_url, "--gitlab-token", "t"],
        ["retag", "x86/a:b", "c", "--registry", secret_url, "--skip-login"],
    ]
    for args in cases:
        proc = fleetci("registry", *args)
        line = one_line_error(proc)
        assert proc.returncode == 1 and ("unreachable" in line or "failed" in line), (args, line)
        assert "s3cret" not in proc.stdout + proc.stderr, args


@needs_registry
def test_push_to_an_unreachable_registry_keeps_everything(
    fleetci: RunCli,
    tmp_path: Path,
) -> None:
    p = prepared(tmp_path, [50_000])
    port = free_port()
    proc = fleetci(*push_argv(p.downloads, f"http://u:pw-s3cret@127.0.0.1:{port}"))
    assert "unreachable" in one_line_error(proc) and proc.returncode == 1
    assert "s3cret" not in proc.stdout + proc.stderr
    assert (p.downloads / TAG / "upload-plan.json").exists()


def test_corrupt_state_files_are_one_line_errors(fleetci: RunCli, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    tag = downloads / TAG
    tag.mkdir(parents=True)
    (tag / "metadata.json").write_text("{not json")
    proc = fleetci("registry", "prepare", TAG, "--downloads-dir", str(downloads))
    assert "corrupt" in one_line_error(proc) and proc.returncode == 1
    (tag / "upload-plan.json").write_text(json.dumps({"images": []}))
    (tag / "push-state.json").write_text("[1, 2")
    for verb in ("push", "clean"):
        proc = fleetci(
            "registry", verb, TAG, "--downloads-dir", str(downloads), "--registry", "127.0.0.1:1", "--yes"
        )
        assert "push state" in one_line_error(proc) and proc.returncode == 1, verb
    assert (tag / "push-state.json").read_text() == "[1, 2"  # kept for a look, not overwritten
