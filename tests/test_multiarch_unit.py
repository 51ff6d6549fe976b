"""Fast logic of ``fleetci multiarch`` / ``fleetci matrix``: names, settings, matrix rules, bad input."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from conftest import clean_env, one_line_error, run_fleetci
from fleetci.errors import FleetciError, UsageError
from fleetci.multiarch.arch import ARCHES, host_arch, parse_arch, parse_python, suite_for
from fleetci.multiarch.binfmt import ensure_binfmt, handler_state
from fleetci.multiarch.matrix import build_matrix
from fleetci.multiarch.rootfs import RootfsSpec, log_tail, verify
from fleetci.multiarch.settings import BASE_PACKAGES, multiarch_settings


def test_arch_names_and_aliases() -> None:
    assert parse_arch("aarch64") is ARCHES["arm64"]
    assert parse_arch("linux/arm/v7").debian == "armhf"
    assert parse_arch("armv7l").machine == "armv7l"
    assert parse_arch("RISCV64").suites == ("trixie",)
    with pytest.raises(UsageError, match="unknown architecture 'sparc'"):
        parse_arch("sparc")


def test_host_arch_matches_uname() -> None:
    arch = host_arch()
    assert arch is not None and arch.machine == platform.machine()


def test_python_versions_and_suites() -> None:
    assert parse_python("3.10") == "3.10"
    for bad in ("3", "2.7", "3.x", "3.11.4"):
        with pytest.raises(ValueError):
            parse_python(bad)
    assert suite_for(ARCHES["arm64"], None) == "bookworm"
    assert suite_for(ARCHES["arm64"], "3.13") == "trixie"
    assert suite_for(ARCHES["riscv64"], None) == "trixie"
    with pytest.raises(UsageError, match=r"no Debian chroot for armv7 has Python 3\.9.*--backend docker"):
        suite_for(ARCHES["armv7"], "3.9")


def test_settings_precedence_flag_env_config_default(tmp_path: Path) -> None:
    config = {"multiarch": {"arch": "armv7", "backend": "docker", "mirror": "http://mirror.example/debian"}}
    env = {"MULTIARCH_BACKEND": "chroot"}
    s = multiarch_settings({"project": str(tmp_path)}, config, env)
    assert (s.arch.name, s.backend, s.mirror) == ("armv7", "chroot", "http://mirror.example/debian")
    s = multiarch_settings({"project": str(tmp_path), "backend": "native", "arch": "arm64"}, config, env)
    assert (s.arch.name, s.backend) == ("arm64", "native")
    s = multiarch_settings({"project": str(tmp_path), "arch": "amd64"}, {}, {})
    assert s.backend == "auto" and s.python is None and s.cache_dir.name == "multiarch"
    assert set(BASE_PACKAGES) <= set(s.all_packages)
    with pytest.raises(UsageError, match="--backend"):
        multiarch_settings({"project": str(tmp_path), "arch": "arm64", "backend": "qemu"}, {}, {})
    with pytest.raises(UsageError, match="--arch is required"):
        multiarch_settings({"project": str(tmp_path)}, {}, {})
    with pytest.raises(UsageError, match=r"requirements file .* does not exist"):
        multiarch_settings({"project": str(tmp_path), "arch": "arm64", "requirements": "nope.txt"}, {}, {})


def test_rootfs_key_depends_on_arch_suite_and_package_set_only() -> None:
    a = RootfsSpec(ARCHES["arm64"], "bookworm", ("python3", "zstd"), "http://a/debian")
    assert a.key == RootfsSpec(ARCHES["arm64"], "bookworm", ("zstd", "python3"), "http://b/debian").key
    assert a.key != RootfsSpec(ARCHES["armv7"], "bookworm", ("python3", "zstd"), "http://a/debian").key
    assert a.key != RootfsSpec(ARCHES["arm64"], "trixie", ("python3", "zstd"), "http://a/debian").key
    assert a.key != RootfsSpec(ARCHES["arm64"], "bookworm", ("python3",), "http://a/debian").key
    assert a.archive(Path("/c")).name == f"arm64-bookworm-{a.key}.tar.zst"


def test_verify_catches_missing_and_wrong_checksums(tmp_path: Path) -> None:
    archive = tmp_path / "x.tar.zst"
    archive.write_bytes(b"data")
    assert verify(archive) == "has no checksum record"
    (tmp_path / "x.tar.zst.sha256").write_text("0" * 64 + "  x.tar.zst\n")
    assert "corrupt" in (verify(archive) or "")


def test_log_tail_prefers_mmdebstraps_error_lines(tmp_path: Path) -> None:
    log = tmp_path / "b.log"
    log.write_text("$ mmdebstrap …\nI: downloading\nE: apt-get update failed\nI: cleanup\n")
    assert log_tail(log) == "E: apt-get update failed"
    log.write_text("I: one\nI: two\n")
    assert log_tail(log) == "I: one | I: two"


def test_binfmt_handler_without_fix_binary_flag_is_refused(tmp_path: Path) -> None:
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/bin/qemu-aarch64\nflags: P\noffset 0\n")
    state = handler_state(ARCHES["arm64"], tmp_path)
    want = {"status": "enabled", "interpreter": "/usr/bin/qemu-aarch64", "flags": "P", "offset": "0"}
    assert state == want
    with pytest.raises(FleetciError, match="F \\(fix-binary\\) flag"):
        ensure_binfmt(ARCHES["arm64"], tmp_path)


def test_matrix_native_and_emulated_entries() -> None:
    entries = build_matrix(["amd64", "arm64", "armv7"], ["3.9", "3.10", "3.11"])
    assert len(entries) == 9
    by = {(e.arch, e.python): e for e in entries}
    assert by["amd64", "3.9"].backend == "native" and not by["amd64", "3.9"].emulated
    assert by["arm64", "3.11"].backend == "chroot" and by["arm64", "3.11"].runner == "ubuntu-latest"
    assert by["armv7", "3.9"].backend == "docker" and by["armv7", "3.9"].emulated
    native = build_matrix(["arm64", "armv7"], ["3.11"], prefer_native=True)
    assert [(e.arch, e.runner, e.backend) for e in native] == [
        ("arm64", "ubuntu-24.04-arm", "native"),
        ("armv7", "ubuntu-latest", "chroot"),  # GitHub's arm64 runners cannot run 32-bit ARM natively
    ]


def test_matrix_excludes_and_impossible_combinations() -> None:
    entries = build_matrix(["arm64", "armv7"], ["3.10", "3.11"], excludes=["armv7:3.10", "arm64"])
    assert [(e.arch, e.python) for e in entries] == [("armv7", "3.11")]
    with pytest.raises(UsageError, match=r"riscv64 × Python 3\.11"):
        build_matrix(["riscv64"], ["3.11"])
    assert build_matrix(["riscv64"], ["3.13"])[0].backend == "chroot"
    with pytest.raises(UsageError, match="matches nothing"):
        build_matrix(["arm64"], ["3.11"], excludes=["armv7"])
    with pytest.raises(UsageError, match="empty"):
        build_matrix(["arm64"], ["3.11"], excludes=["arm64:3.11"])
    with pytest.raises(UsageError, match="invalid --python"):
        build_matrix(["arm64"], ["3.1x"])


# --- the CLI ----------------------------------------------------------------------------------------


def test_matrix_cli_writes_github_output(tmp_path: Path) -> None:
    out, summary = tmp_path / "out", tmp_path / "summary"
    env = clean_env(GITHUB_OUTPUT=str(out), GITHUB_STEP_SUMMARY=str(summary))
    proc = run_fleetci(
        "matrix", "--arch", "amd64,arm64,armv7", "--python", "3.9,3.10,3.11", "--prefer-native", env=env
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split("=", 1) for line in out.read_text().splitlines())
    matrix = json.loads(lines["matrix"])
    assert lines["count"] == "9" and len(matrix["include"]) == 9
    assert {
        "arch": "arm64",
        "python": "3.10",
        "runner": "ubuntu-24.04-arm",
        "backend": "native",
        "emulated": False,
    } in matrix["include"]
    assert json.loads(proc.stdout) == matrix
    assert "| armv7 | 3.9 | ubuntu-latest | docker |" in summary.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["matrix", "--arch", "amd64,sparc", "--python", "3.11"], "unknown architecture 'sparc'"),
        (["matrix", "--arch", "riscv64", "--python", "3.9"], "impossible combination riscv64"),
        (["matrix", "--arch", "arm64", "--python", "3.11", "--exclude", "armv7"], "matches nothing"),
        (["matrix", "--python", "3.11"], "--arch"),
        (["multiarch", "run", "--arch", "sparc", "--", "true"], "unknown architecture 'sparc'"),
        (["multiarch", "run", "--arch", "arm64"], "no command given"),
        (["multiarch", "run", "--arch", "arm64", "--backend", "qemu", "--", "true"], "--backend"),
        (["multiarch", "run", "--arch", "arm64", "--python", "three", "--", "true"], "--python"),
        (
            ["multiarch", "run", "--arch", "arm64", "--project", "/nonexistent", "--", "true"],
            "does not exist",
        ),
        (["multiarch", "run", "--arch", "arm64", "--mirror", "ftp://x", "--", "true"], "invalid mirror"),
        (
            ["multiarch", "run", "--arch", "armv7", "--python", "3.9", "--backend", "chroot", "--", "true"],
            "no Debian chroot for armv7 has Python 3.9",
        ),
        (["multiarch", "run", "--bogus"], "unrecognized arguments"),
        (["multiarch"], "required"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], message: str) -> None:
    proc = run_fleetci(*args)
    line = one_line_error(proc)
    assert message in line, line
    assert proc.returncode == 2 or "no Debian chroot" in line, proc


def test_native_backend_returns_the_commands_exit_code(tmp_path: Path) -> None:
    native = host_arch()
    assert native is not None
    (tmp_path / "marker.txt").write_text("in the project dir\n")
    ok = run_fleetci(
        "multiarch",
        "run",
        "--arch",
        native.name,
        "--project",
        str(tmp_path),
        "--",
        "sh",
        "-c",
        "cat marker.txt; uname -m",
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["in", "the", "project", "dir", platform.machine()]
    failed = run_fleetci(
        "multiarch", "run", "--arch", native.name, "--project", str(tmp_path), "--", "sh", "-c", "exit 7"
    )
    assert failed.returncode == 7
    assert "command failed with exit code 7 on" in one_line_error(failed)


def test_native_backend_refuses_another_architecture(tmp_path: Path) -> None:
    other = "arm64" if host_arch() is not ARCHES["arm64"] else "amd64"
    proc = run_fleetci(
        "multiarch", "run", "--arch", other, "--backend", "native", "--project", str(tmp_path), "--", "true"
    )
    assert f"--backend native needs a {other} host" in one_line_error(proc)


def test_chroot_backend_needs_root() -> None:
    if os.geteuid() != 0 or subprocess.run(["id", "nobody"], capture_output=True).returncode != 0:
        pytest.skip("needs root to drop to the 'nobody' user")
    import shutil
    import tempfile

    from conftest import fleetci_cmd

    # pytest's tmp dirs are private to root: the unprivileged user gets a world-readable one.
    base = Path(tempfile.mkdtemp(prefix="fleetci-nobody-"))
    try:
        base.chmod(0o755)
        (base / "p").mkdir(mode=0o755)
        argv = fleetci_cmd(
            "multiarch",
            "run",
            "--arch",
            "arm64",
            "--backend",
            "chroot",
            "--project",
            str(base / "p"),
            "--cache-dir",
            str(base / "c"),
            "--",
            "true",
        )
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *argv],
            env=clean_env(HOME=str(base)),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        shutil.rmtree(base)
    assert "the chroot backend needs root" in one_line_error(proc), proc.stderr
