"""Fast logic of ``fleetci multiarch`` / ``fleetci matrix``: names, settings, matrix rules, bad input."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest

from fleetci.errors import FleetciError, UsageError
from fleetci.multiarch.arch import ARCHES, host_arch, parse_arch, parse_python, suite_for
from fleetci.multiarch.binfmt import ensure_binfmt, handler_state
from fleetci.multiarch.matrix import build_matrix
from fleetci.multiarch.rootfs import RootfsSpec, log_tail, verify
from fleetci.multiarch.settings import BASE_PACKAGES, multiarch_settings
from support import RunCli, clean_env, fleetci_cmd, one_line_error
from support.multiarch import run_argv


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
    with pytest.raises(UsageError, match=r"no Debian chroot for armv7 has Python 3\.10.*--backend docker"):
        suite_for(ARCHES["armv7"], "3.10")


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
    assert by["armv7", "3.10"].backend == "docker" and by["armv7", "3.10"].emulated
    assert by["armv7", "3.9"].backend == "chroot"  # Debian bullseye
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


def test_matrix_cli_writes_github_output(tmp_path: Path, fleetci_fd: RunCli) -> None:
    out, summary = tmp_path / "out", tmp_path / "summary"
    env = clean_env(GITHUB_OUTPUT=str(out), GITHUB_STEP_SUMMARY=str(summary))
    proc = fleetci_fd(
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
    assert "| armv7 | 3.10 | ubuntu-latest | docker |" in summary.read_text()


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
            ["multiarch", "run", "--arch", "armv7", "--python", "3.10", "--backend", "chroot", "--", "true"],
            "no Debian chroot for armv7 has Python 3.10",
        ),
        (["multiarch", "run", "--bogus"], "unrecognized arguments"),
        (["multiarch"], "required"),
    ],
)
def test_bad_input_is_one_line_error(args: list[str], message: str, fleetci_fd: RunCli) -> None:
    proc = fleetci_fd(*args)
    line = one_line_error(proc)
    assert message in line, line
    assert proc.returncode == 2 or "no Debian chroot" in line, proc


def test_native_backend_returns_the_commands_exit_code(tmp_path: Path, fleetci_fd: RunCli) -> None:
    native = host_arch()
    assert native is not None
    (tmp_path / "marker.txt").write_text("in the project dir\n")
    ok = fleetci_fd(*run_argv(native.name, tmp_path, "sh", "-c", "cat marker.txt; uname -m"))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.split() == ["in", "the", "project", "dir", platform.machine()]
    failed = fleetci_fd(*run_argv(native.name, tmp_path, "sh", "-c", "exit 7"))
    assert failed.returncode == 7
    assert "command failed with exit code 7 on" in one_line_error(failed)


def test_native_backend_python_keeps_a_virtualenv(
    tmp_path: Path, fleetci_fd: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--python X.Y on the native backend: python3 is the pythonX.Y found on PATH, a virtualenv's too
    (setup-python's, or one a runner prepared): its packages, not its base interpreter's."""
    import sys

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    native = host_arch()
    assert native is not None
    show = ("python3", "-c", "import sys; print(sys.prefix)")
    argv = run_argv(native.name, tmp_path, *show, python=version, cache_dir=str(tmp_path / "cache"))
    proc = fleetci_fd(*argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(venv), proc.stdout


def test_native_backend_never_tests_with_fleetcis_own_virtualenv(
    tmp_path: Path, fleetci_fd: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In Actions fleetci's own virtualenv (install_fleetci.sh's, marked .fleetci-install) is first on PATH;
    the tested python3 (with --python X.Y, or without) is the next one, never fleetci's."""
    import sys

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    own, tested = tmp_path / "fleetci-venv", tmp_path / "tested"
    for venv in (own, tested):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (own / ".fleetci-install").write_text("fleetci 0.1.0\n")
    monkeypatch.setenv("PATH", os.pathsep.join([str(own / "bin"), str(tested / "bin"), os.environ["PATH"]]))
    native = host_arch()
    assert native is not None
    show = ("python3", "-c", "import sys; print(sys.prefix)")
    for options in ({"python": version, "cache_dir": str(tmp_path / "cache")}, {}):
        proc = fleetci_fd(*run_argv(native.name, tmp_path, *show, **options))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == str(tested), (options, proc.stdout)


def test_native_backend_python_runs_with_a_noexec_tmpdir(tmp_path: Path) -> None:
    """Hardened runners mount /tmp noexec: with --python the native backend's python3 wrapper must not live
    in TMPDIR, where it cannot run and PATH lookup silently falls through to the next python3 (a decoy
    here). A real noexec tmpfs as TMPDIR, in a private mount namespace (root; skipped elsewhere)."""
    import shutil
    import sys

    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    noexec, cache = tmp_path / "noexec-tmp", tmp_path / "cache"
    noexec.mkdir()
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "python3").write_text("#!/bin/sh\necho decoy\n")
    (decoy / "python3").chmod(0o755)
    native = host_arch()
    assert native is not None
    show = ("python3", "-c", "import sys; print(sys.version_info[:2])")
    argv = fleetci_cmd(*run_argv(native.name, tmp_path, *show, python=version, cache_dir=str(cache)))
    mount = f'mount -t tmpfs -o noexec,nosuid,mode=1777 tmpfs "{noexec}"'
    private = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
    if os.geteuid() != 0 or not shutil.which("unshare") or subprocess.run([*private, mount]).returncode:
        pytest.skip("needs root and unshare --mount to mount a noexec tmpfs")
    exec_in_tmpdir = 'cp /bin/true "$TMPDIR/x" && { "$TMPDIR/x"; echo "exec in TMPDIR: $?" >&2; }'
    script = f'{mount} && {exec_in_tmpdir} && exec "$@"'
    proc = subprocess.run(
        [*private, script, "sh", *argv],
        env=clean_env(TMPDIR=str(noexec), PATH=f"{decoy}{os.pathsep}{os.environ['PATH']}"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "exec in TMPDIR: 126" in proc.stderr, proc.stderr  # the mount really forbids exec
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tuple(sys.version_info[:2])), proc.stdout
    assert not any((cache / "run").iterdir())  # the wrappers went with the run


def test_native_backend_refuses_another_architecture(tmp_path: Path, fleetci_fd: RunCli) -> None:
    other = "arm64" if host_arch() is not ARCHES["arm64"] else "amd64"
    proc = fleetci_fd(*run_argv(other, tmp_path, "true", backend="native"))
    assert f"--backend native needs a {other} host" in one_line_error(proc)


def test_chroot_backend_needs_root() -> None:
    if os.geteuid() != 0 or subprocess.run(["id", "nobody"], capture_output=True).returncode != 0:
        pytest.skip("needs root to drop to the 'nobody' user")
    import shutil
    import tempfile

    from support import fleetci_cmd

    # pytest's tmp dirs are private to root: the unprivileged user gets a world-readable one.
    base = Path(tempfile.mkdtemp(prefix="fleetci-nobody-"))
    try:
        base.chmod(0o755)
        (base / "p").mkdir(mode=0o755)
        # a process of its own: it runs as another user
        argv = fleetci_cmd(
            *run_argv("arm64", base / "p", "true", backend="chroot", cache_dir=str(base / "c"))
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


REWRITE_TEST = """import pytest


def helper(x: int) -> int:
    return x * 2


@pytest.mark.parametrize("n", [1, 2])
def test_double(n: int) -> None:
    assert helper(n) == n + n, "doubling"
    assert [helper(i) for i in range(3)] == [0, 2, 4]
"""


def rewrite_project(root: Path) -> Path:
    (root / "tests").mkdir(parents=True)
    (root / "conftest.py").write_text(
        "import pytest\n\n\n@pytest.fixture\ndef answer() -> int:\n    return 42\n"
    )
    (root / "tests" / "__init__.py").write_text("")
    (root / "tests" / "test_double.py").write_text(REWRITE_TEST)
    (root / "tests" / "test_noisy.py").write_text(
        "def test_tuple() -> None:\n    assert (1, 'always true')\n"
    )
    return root


def run_rewrite_helper(tmp_path: Path, files: list[list[str]]) -> dict[str, object]:
    import sys

    import _pytest

    from fleetci.multiarch.chroot import REWRITE_HELPER

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"path": [str(Path(_pytest.__file__).parents[1])], "files": files}))
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", str(REWRITE_HELPER), str(request)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def test_native_pytest_rewrite_is_byte_for_byte_what_pytest_writes(tmp_path: Path) -> None:
    """The helper's cache files are the ones pytest writes itself, so pytest loads them unchanged."""
    import sys

    project = rewrite_project(tmp_path / "p")
    files = [
        [str(project / name), str(project / name)]
        for name in ("conftest.py", "tests/test_double.py", "tests/test_noisy.py")
    ]
    result = run_rewrite_helper(tmp_path, files)
    # test_noisy.py makes the rewriter warn: it is left to pytest, which shows the warning
    assert result["written"] == 2 and result["skipped"] == 1, result
    pycs = sorted(project.rglob(f"*{result['tag']}.pyc"))
    assert [p.name.split(".")[0] for p in pycs] == ["conftest", "test_double"]
    ours = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pycs}
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run = subprocess.run(pytest_cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pycs} == ours  # loaded, not rewritten
    for p in pycs:
        p.unlink()
    run = subprocess.run(pytest_cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout
    assert {p: p.read_bytes() for p in pycs} == {p: data for p, (data, _) in ours.items()}


def test_native_pytest_rewrite_names_code_by_the_guest_path(tmp_path: Path) -> None:
    import marshal

    project = rewrite_project(tmp_path / "p")
    host = project / "tests" / "test_double.py"
    result = run_rewrite_helper(tmp_path, [[str(host), "/project/tests/test_double.py"]])
    assert result["written"] == 1, result
    (pyc,) = project.rglob(f"test_double.{result['tag']}.pyc")
    code = marshal.loads(pyc.read_bytes()[16:])
    assert code.co_filename == "/project/tests/test_double.py"
    # a valid cache file is kept as it is
    assert run_rewrite_helper(tmp_path, [[str(host), "/project/tests/test_double.py"]])["written"] == 0


def test_pytest_rewrite_helper_without_pytest_in_the_guest_writes_nothing(tmp_path: Path) -> None:
    import sys

    from fleetci.multiarch.chroot import REWRITE_HELPER

    project = rewrite_project(tmp_path / "p")
    request = tmp_path / "request.json"
    files = [[str(project / "conftest.py"), "/project/conftest.py"]]
    request.write_text(json.dumps({"path": [str(tmp_path / "empty-site")], "files": files}))
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-B", str(REWRITE_HELPER), str(request)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["written"] == 0
    assert not list(project.rglob("*.pyc"))


def test_project_scan_finds_test_modules_and_the_assertion_pass_hook(tmp_path: Path) -> None:
    from fleetci.multiarch.chroot import scan_project

    project = rewrite_project(tmp_path / "p")
    (project / "pkg").mkdir()
    (project / "pkg" / "core.py").write_text("X = 1\n")
    (project / "pkg" / "core_test.py").write_text("def test_x() -> None:\n    assert True\n")
    for skipped in (".git", ".venv", "node_modules", ".hidden"):
        (project / skipped).mkdir()
        (project / skipped / "test_skipped.py").write_text("")
    scan = scan_project(project)
    assert scan is not None and not scan.mentions_pass_hook
    assert [p.relative_to(project).as_posix() for p in scan.test_files] == [
        "conftest.py",
        "pkg/core_test.py",
        "tests/test_double.py",
        "tests/test_noisy.py",
    ]
    (project / "blob.zip").write_bytes(b"PK enable_assertion_pass_hook")  # data files are not read
    scan = scan_project(project)
    assert scan is not None and not scan.mentions_pass_hook
    (project / ".hidden" / "pytest.ini").write_text("[pytest]\nenable_assertion_pass_hook = true\n")
    scan = scan_project(project)
    assert scan is not None and scan.mentions_pass_hook


def test_guest_command_is_entered_with_native_tools_and_the_same_environment(tmp_path: Path) -> None:
    from fleetci.multiarch import chroot
    from fleetci.multiarch.chroot import Guest

    settings = multiarch_settings(
        {"arch": "arm64", "project": str(tmp_path), "cache_dir": str(tmp_path / "c")}
    )
    guest = Guest(settings, lambda message: None)
    guest.root = tmp_path / "root"
    saved = list(chroot._NATIVE_ENTER)
    try:
        chroot._NATIVE_ENTER[:] = [("/usr/bin/env", "/usr/bin/unshare")]
        argv = guest._enter(["python3", "-m", "pytest"], None)
        assert argv[:2] == ["/usr/bin/env", "-i"]
        assert argv[-7:] == [
            "/usr/bin/unshare",
            f"--root={tmp_path / 'root'}",
            "--wd=/project",
            "--",
            "python3",
            "-m",
            "pytest",
        ]
        native_env = set(argv[2:-7])
        chroot._NATIVE_ENTER[:] = [None]  # an unshare without --root/--wd: the guest's env and sh
        argv = guest._enter(["python3", "-m", "pytest"], None)
        assert argv[:4] == ["chroot", str(tmp_path / "root"), "/usr/bin/env", "-i"]
        assert argv[-7:] == ["/bin/sh", "-c", 'cd "$0" && exec "$@"', "/project", "python3", "-m", "pytest"]
        # the same variables the guest's sh leaves behind (PWD, OLDPWD after its cd)
        assert native_env == {*argv[4:-7], "PWD=/project", "OLDPWD=/"}
    finally:
        chroot._NATIVE_ENTER[:] = saved
