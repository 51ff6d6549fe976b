"""``fleetci multiarch`` with real QEMU: mmdebstrap rootfs, binfmt_misc, chroot, a private dockerd.

Each rootfs is built once per test session (arm64 and armv7 in parallel: a build keeps one emulated CPU
busy) into a session cache directory; set FLEETCI_TEST_MULTIARCH_CACHE to keep it between sessions.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fleetci.http import free_port
from fleetci.multiarch.arch import ARCHES
from fleetci.multiarch.rootfs import RootfsSpec
from fleetci.multiarch.settings import BASE_PACKAGES
from support import REPO_ROOT, clean_env, fleetci_cmd, one_line_error, run_fleetci, wait_until
from support.multiarch import run_argv

SAMPLE = REPO_ROOT / "src" / "fleetci" / "multiarch" / "sample"


EMULATED = ("arm64", "armv7")


TEST_COMMAND = ["sh", "-c", "uname -m; python3 -m pytest -q -p no:cacheprovider"]


# A small pure-Python package from PyPI that the guest has to pip install (not in the Debian rootfs).
DEPENDENCY_TEST = """import tomli_w


def test_dependency_installed_in_the_guest() -> None:
    assert tomli_w.dumps({"arch": "guest"}) == 'arch = "guest"\\n'
"""


def missing_tools() -> str | None:
    if os.geteuid() != 0:
        return "the chroot backend needs root"
    for tool in ("mmdebstrap", "qemu-aarch64-static", "qemu-arm-static", "update-binfmts", "zstd", "unshare"):
        if not shutil.which(tool):
            return f"{tool} is not installed (scripts/test.sh installs it)"
    return None


def sample_project(dest: Path) -> Path:
    shutil.copytree(SAMPLE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "requirements-test.txt").write_text("tomli-w>=1.0\n")
    (dest / "tests" / "test_dependency.py").write_text(DEPENDENCY_TEST)
    return dest


def archive_for(arch: str, cache: Path, packages: tuple[str, ...] = ()) -> Path:
    spec = RootfsSpec(ARCHES[arch], ARCHES[arch].suites[0], tuple(sorted({*BASE_PACKAGES, *packages})), "")
    return spec.archive(cache / "rootfs")


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    seconds: float
    project: Path
    cached_before: bool


def chroot_argv(arch: str, project: Path, cache: Path, *command: str, **options: str) -> list[str]:
    """``multiarch run`` on the chroot backend, its rootfs cache in ``cache``."""
    return run_argv(arch, project, *command, backend="chroot", cache_dir=str(cache), **options)


def run_cmd(arch: str, project: Path, cache: Path, *command: str, **options: str) -> list[str]:
    """:func:`chroot_argv` as a command line; the sample suite (TEST_COMMAND) unless given a command."""
    return fleetci_cmd(*chroot_argv(arch, project, cache, *(command or TEST_COMMAND), **options))


@pytest.fixture(scope="session")
def first_runs(multiarch_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The sample suite on arm64 and armv7, started together (each builds its rootfs on first use)."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("multiarch-projects")
    started: dict[str, tuple[subprocess.Popen[str], float, Path, bool]] = {}
    for arch in EMULATED:
        project = sample_project(base / arch)
        argv = run_cmd(arch, project, multiarch_cache, requirements="requirements-test.txt")
        cached = archive_for(arch, multiarch_cache).exists()
        # Output goes to files: two builds' progress must never block on a full pipe.
        with (base / f"{arch}.out").open("w") as out, (base / f"{arch}.err").open("w") as err:
            popen = subprocess.Popen(argv, env=clean_env(), stdout=out, stderr=err, text=True)
        started[arch] = (popen, time.monotonic(), project, cached)
    runs = {}
    for arch, (popen, t0, project, cached) in started.items():
        try:
            popen.wait(timeout=max(1.0, 1200 - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for other, *_ in started.values():
                other.kill()
                other.wait()
            raise
        out_text = (base / f"{arch}.out").read_text(errors="replace")
        err_text = (base / f"{arch}.err").read_text(errors="replace")
        runs[arch] = Run(
            subprocess.CompletedProcess(popen.args, popen.returncode, out_text, err_text),
            time.monotonic() - t0,
            project,
            cached,
        )
    return runs


def mounts_under(path: Path) -> list[str]:
    text = Path("/proc/self/mountinfo").read_text()
    return [line for line in text.splitlines() if str(path) in line]


@pytest.mark.timeout(1260)
@pytest.mark.parametrize(("arch", "machine"), [("arm64", "aarch64"), ("armv7", "armv7l")])
def test_sample_suite_passes_in_the_emulated_guest(
    first_runs: dict[str, Run], multiarch_cache: Path, arch: str, machine: str
) -> None:
    run = first_runs[arch]
    assert run.proc.returncode == 0, f"stdout:\n{run.proc.stdout[-3000:]}\nstderr:\n{run.proc.stderr[-3000:]}"
    lines = run.proc.stdout.splitlines()
    assert lines[0] == machine, run.proc.stdout  # uname -m inside the guest
    # the whole suite, including the 32/64-bit check and the dependency pip installed in the guest
    assert any(line.startswith("18 passed") for line in lines), run.proc.stdout
    if sys.version_info[:2] == (3, 11):  # host and guest Python match: test modules rewritten natively
        assert "pytest assertion rewrite compiled natively for 3 test files" in run.proc.stderr
    if not run.cached_before:
        assert f"building the {arch} rootfs" in run.proc.stderr
        assert "I: running apt-get update" in run.proc.stderr  # progress while the rootfs builds
    archive = archive_for(arch, multiarch_cache)
    assert archive.is_file() and archive.with_name(archive.name + ".sha256").is_file()
    # pip ran in the guest (or, with a kept cache, its saved layer was reused)
    assert (
        "pip install -r /project/requirements-test.txt" in run.proc.stderr
        or "test dependencies from cached layer" in run.proc.stderr
    ), run.proc.stderr
    assert mounts_under(multiarch_cache) == []  # the mounts died with the guest's mount namespace
    assert list((multiarch_cache / "run").glob(f"{arch}-*")) == []  # the per-run overlay was removed


@pytest.mark.timeout(600)
def test_second_run_reuses_the_cached_rootfs_and_dependency_layer(
    first_runs: dict[str, Run], multiarch_cache: Path
) -> None:
    run = first_runs["arm64"]
    assert run.proc.returncode == 0, run.proc.stderr[-2000:]
    archive = archive_for("arm64", multiarch_cache)
    before = archive.stat()
    t0 = time.monotonic()
    again = subprocess.run(
        run_cmd("arm64", run.project, multiarch_cache, requirements="requirements-test.txt"),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.monotonic() - t0
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.splitlines()[0] == "aarch64"
    assert "reusing cached rootfs" in again.stderr and "building the" not in again.stderr, again.stderr
    assert "test dependencies from cached layer" in again.stderr and "pip install" not in again.stderr
    after = archive.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    print(
        f"arm64: first run {run.seconds:.1f} s (cached before: {run.cached_before}), second {seconds:.1f} s"
    )


@pytest.mark.timeout(600)
def test_failing_command_returns_its_exit_code(first_runs: dict[str, Run], multiarch_cache: Path) -> None:
    assert first_runs["armv7"].proc.returncode == 0
    proc = subprocess.run(
        run_cmd("armv7", first_runs["armv7"].project, multiarch_cache, "sh", "-c", "uname -m; exit 3"),
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3
    assert proc.stdout.strip() == "armv7l"
    assert "command failed with exit code 3 on armv7 (chroot)" in one_line_error(proc)


@pytest.mark.timeout(600)
def test_guest_environment_is_clean(first_runs: dict[str, Run], multiarch_cache: Path) -> None:
    assert first_runs["arm64"].proc.returncode == 0
    env = clean_env(PIP_INDEX_URL="http://127.0.0.1:1/simple", SECRET_TOKEN="host-only")
    proc = subprocess.run(
        run_cmd("arm64", first_runs["arm64"].project, multiarch_cache, "env"),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    names = {line.split("=", 1)[0] for line in proc.stdout.splitlines() if "=" in line}
    assert "SECRET_TOKEN" not in names and "PIP_INDEX_URL" not in names
    assert {"PATH", "HOME", "LANG"} <= names


def closed_port_mirror() -> str:
    return f"http://127.0.0.1:{free_port()}/debian"


def planted_archive(tmp_path: Path, data: bytes, digest: str | None = None) -> tuple[Path, Path, Path]:
    """Cache dir, sample project and the cached arm64 rootfs archive (packages: hello), which holds
    ``data`` and whose checksum file says ``digest`` (default: the data's own SHA-256)."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    cache, project = tmp_path / "cache", sample_project(tmp_path / "p")
    archive = archive_for("arm64", cache, ("hello",))
    archive.parent.mkdir(parents=True)
    archive.write_bytes(data)
    digest = digest or hashlib.sha256(data).hexdigest()
    archive.with_name(archive.name + ".sha256").write_text(f"{digest}  {archive.name}\n")
    return cache, project, archive


@pytest.mark.timeout(300)
def test_corrupt_archive_is_moved_aside_and_a_failed_rebuild_shows_mmdebstraps_log(tmp_path: Path) -> None:
    cache, project, archive = planted_archive(tmp_path, b"\x28\xb5\x2f\xfd truncated download", "0" * 64)
    argv = chroot_argv("arm64", project, cache, "true", packages="hello", mirror=closed_port_mirror())
    proc = run_fleetci(*argv, timeout=240)
    line = one_line_error(proc)
    assert "rootfs build failed for arm64/bookworm (mmdebstrap exit" in line, line
    assert "127.0.0.1" in line or "E: " in line, line  # the tail of mmdebstrap's log
    assert "does not match its SHA-256" in proc.stderr  # the warning before the rebuild
    kept = list(archive.parent.glob(archive.name + ".corrupt-*"))
    assert len([k for k in kept if not k.name.endswith(".sha256")]) == 1  # nothing was deleted
    assert not archive.exists()


@pytest.mark.timeout(120)
def test_archive_that_is_not_a_tarball_is_reported_and_kept(tmp_path: Path) -> None:
    cache, project, archive = planted_archive(tmp_path, b"not zstd at all")
    proc = run_fleetci(*chroot_argv("arm64", project, cache, "true", packages="hello"))
    line = one_line_error(proc)
    assert f"cached rootfs {archive.name} is corrupt" in line and "run again to rebuild" in line, line
    assert len(list(archive.parent.glob(archive.name + ".corrupt-*"))) == 2  # archive + checksum kept


@dataclass
class Dockerd:
    host: str
    proc: subprocess.Popen[bytes]
    root: Path

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(DOCKER_HOST=self.host, **extra)

    def docker(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=self.env(), capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A real dockerd with its own data-root, exec-root and socket (no iptables, no bridge)."""
    if os.geteuid() != 0 or not shutil.which("dockerd") or not shutil.which("docker"):
        pytest.skip("dockerd needs root and the docker.io package (scripts/test.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="fcid-", dir="/tmp"))  # short: the socket path must fit AF_UNIX
    sock = root / "docker.sock"
    log = root / "dockerd.log"
    config = {
        "data-root": str(root / "data"),
        "exec-root": str(root / "exec"),
        "pidfile": str(root / "docker.pid"),
        "hosts": [f"unix://{sock}"],
        "iptables": False,
        "ip6tables": False,
        "ip-masq": False,
        "bridge": "none",
    }

    def up_or_exited(p: subprocess.Popen[bytes]) -> bool:
        """dockerd exited, or answers on its socket."""
        version = ["docker", "-H", f"unix://{sock}", "version"]
        return p.poll() is not None or subprocess.run(version, capture_output=True).returncode == 0

    proc = None
    for driver in ("overlay2", "vfs"):
        (root / "daemon.json").write_text(json.dumps({**config, "storage-driver": driver}))
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                ["dockerd", "--config-file", str(root / "daemon.json")], stdout=fh, stderr=subprocess.STDOUT
            )
        wait_until(functools.partial(up_or_exited, proc), timeout=30, interval=0.3)
        if proc.poll() is None:
            break
    if proc is None or proc.poll() is not None:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"dockerd cannot run on this machine: {tail[0] if tail else 'no log'}")
    try:
        yield Dockerd(f"unix://{sock}", proc, root)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # dockerd leaves mounts behind (its netns bind mount, image layers): unmount all under root
        mountpoints = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for point in sorted((m for m in mountpoints if m.startswith(f"{root}/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def docker_archive_from_rootfs(rootfs: Path, tag: str, arch: str, dest: Path) -> Path:
    """A `docker load` tarball whose one layer is the rootfs and whose config names the architecture.

    (`docker import --platform` is ignored by dockerd 20.10, which labels every import with the host's
    architecture; `docker run --platform linux/arm64` would then refuse it.)
    """
    layer = dest.with_suffix(".layer.tar")
    with layer.open("wb") as fh:
        subprocess.run(["zstd", "-dc", str(rootfs)], stdout=fh, check=True)
    h = hashlib.sha256()
    with layer.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    variant = {"armv7": "v7"}.get(arch)
    config = {
        "architecture": ARCHES[arch].platform.split("/")[1],
        "os": "linux",
        **({"variant": variant} if variant else {}),
        "config": {
            "Cmd": ["/bin/sh"],
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{h.hexdigest()}"]},
        "history": [{"created_by": f"fleetci test: mmdebstrap rootfs {rootfs.name}"}],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = json.dumps(
        [{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]
    ).encode()
    with tarfile.open(dest, "w") as tar:
        for name, data in ((config_name, config_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        tar.add(layer, arcname="layer/layer.tar")
    layer.unlink()
    return dest


@pytest.mark.timeout(900)
def test_docker_backend_runs_the_suite_in_an_arm64_image(
    dockerd: Dockerd, first_runs: dict[str, Run], multiarch_cache: Path, tmp_path: Path
) -> None:
    assert first_runs["arm64"].proc.returncode == 0
    tag = "fleetci-test/python:3.11-arm64"
    image = docker_archive_from_rootfs(
        archive_for("arm64", multiarch_cache), tag, "arm64", tmp_path / "img.tar"
    )
    loaded = dockerd.docker("load", "-i", str(image), timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    inspect = dockerd.docker("image", "inspect", tag, "--format", "{{.Os}}/{{.Architecture}}")
    assert inspect.stdout.strip() == "linux/arm64"
    project = sample_project(tmp_path / "project")
    proc = run_fleetci(
        *run_argv("arm64", project, *TEST_COMMAND, backend="docker", image=tag),
        env=dockerd.env(),
        timeout=600,
    )
    # The rootfs has no tomli-w and this run installs nothing: that one test must fail, the rest pass.
    assert proc.returncode == 1 or proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "aarch64"
    suite_without_the_dependency = [*TEST_COMMAND[:2], TEST_COMMAND[2] + " --ignore=tests/test_dependency.py"]
    ok = run_fleetci(
        *run_argv("arm64", project, *suite_without_the_dependency, backend="docker", image=tag),
        env=dockerd.env(),
        timeout=600,
    )
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert ok.stdout.splitlines()[0] == "aarch64"
    assert any(line.startswith("17 passed") for line in ok.stdout.splitlines()), ok.stdout


def test_docker_backend_without_a_daemon_is_one_line_error(tmp_path: Path) -> None:
    proc = run_fleetci(
        *run_argv("arm64", tmp_path, "true", backend="docker"),
        env=clean_env(DOCKER_HOST=f"unix://{tmp_path}/no-such.sock"),
    )
    line = one_line_error(proc)
    assert "docker backend unavailable" in line and "no-such.sock" in line, line


@pytest.mark.timeout(300)
def test_docker_backend_reports_an_image_it_cannot_pull(dockerd: Dockerd, tmp_path: Path) -> None:
    image = "127.0.0.1:1/none/python:3.11"
    proc = run_fleetci(
        *run_argv("arm64", tmp_path, "true", backend="docker", image=image), env=dockerd.env(), timeout=240
    )
    line = one_line_error(proc)
    assert "cannot pull image 127.0.0.1:1/none/python:3.11 for linux/arm64" in line, line


def run_workflow(
    tmp_path: Path, event: str, job: str, cache: Path, extra: list[str], timeout: float = 900
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, object]]]:
    """Run one job of workflows/multi-arch-ci.yml with act on this machine, offline, on the sample project."""
    from support.actions import act_argv, act_events, action_checkout, base_env

    action_root = action_checkout(tmp_path / "fleetci-action")
    repo = sample_project(tmp_path / "repo")
    (repo / "requirements-test.txt").unlink()
    (repo / "tests" / "test_dependency.py").unlink()
    workflow = repo / ".github" / "workflows" / "multi-arch-ci.yml"
    workflow.parent.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / "workflows" / "multi-arch-ci.yml", workflow)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@fleetci.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "ci"], check=True, capture_output=True)
    # GitHub-hosted helper actions are skipped under act (`if: !env.ACT`), but act resolves every `uses:`
    # of a job before running it; offline, they resolve to an empty local action.
    stub = tmp_path / "stub-action"
    stub.mkdir()
    (stub / "action.yml").write_text(
        "name: stub\ndescription: stub\nruns:\n  using: composite\n  steps: []\n"
    )
    stubs = ["actions/setup-python@v6", "actions/cache@v5", "actions/upload-artifact@v6"]
    argv = act_argv(
        event,
        workflow,
        action_root,
        tmp_path / "act-cache",
        job=job,
        local=dict.fromkeys(stubs, stub),
        variables={"FLEETCI_MULTIARCH_CACHE": str(cache)},
        extra=extra,
    )
    env = base_env(ACT_DISABLE_VERSION_CHECK="1", RUNNER_TOOL_CACHE=str(tmp_path / "toolcache"))
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, act_events(proc.stdout)


def act_output(events: list[dict[str, object]]) -> list[str]:
    """The steps' own output lines, without terminal colours (act runs them on a pseudo-terminal)."""
    ansi = re.compile(r"\x1b\[[0-9;]*m")
    return [ansi.sub("", str(e["msg"])).strip() for e in events if e.get("raw_output")]


def act_log(proc: subprocess.CompletedProcess[str], events: list[dict[str, object]]) -> str:
    lines = [str(e.get("msg", "")).rstrip() for e in events]
    return f"act exit {proc.returncode}\n" + "\n".join(lines[-120:]) + "\n--- stderr\n" + proc.stderr[-3000:]


@pytest.mark.timeout(900)
def test_workflow_matrix_job_runs_on_arm64_and_armv7_under_act(
    first_runs: dict[str, Run], multiarch_cache: Path, tmp_path: Path
) -> None:
    """multi-arch-ci.yml's arm64 and armv7 rows (x Python 3.11, Debian bookworm's) under act, with the
    workflow's default test command, in the rootfs archives first_runs built (no extra build)."""
    assert first_runs["arm64"].proc.returncode == 0 and first_runs["armv7"].proc.returncode == 0
    proc, events = run_workflow(
        tmp_path,
        "push",
        "test-multi-arch",
        multiarch_cache,
        ["--matrix", "arch:arm64", "--matrix", "arch:armv7", "--matrix", "python-version:3.11"],
    )
    log = act_log(proc, events)
    assert proc.returncode == 0, log
    jobs = [e for e in events if "jobResult" in e]
    assert [e["jobResult"] for e in jobs] == ["success", "success"], log  # exactly two jobs ran and passed
    assert sorted(str(e["matrix"]["arch"]) for e in jobs) == ["arm64", "armv7"], log
    out = act_output(events)
    assert "guest: aarch64" in out and "guest: armv7l" in out, log
    assert sum(line.startswith("17 passed") for line in out) == 2, log
    building = [line for line in out if "building the" in line and "rootfs" in line]
    assert building == [], log  # both reused the session's archives


@pytest.mark.timeout(600)
def test_riscv_job_runs_only_on_workflow_dispatch_and_reaches_a_riscv64_trixie_build(tmp_path: Path) -> None:
    """The dispatch wiring, without the riscv64 build (its cost is measured separately): the job starts
    only for workflow_dispatch (with its inputs) and asks fleetci for riscv64 on trixie, which
    here fails fast against a closed mirror port with mmdebstrap's error (continue-on-error keeps the
    workflow green, as the experimental job should)."""
    reason = missing_tools()
    if reason:
        pytest.skip(reason)
    mirror = closed_port_mirror()
    pushed, push_events = run_workflow(tmp_path / "push", "push", "test-riscv", tmp_path / "c", [])
    assert [e for e in push_events if "jobResult" in e] == [], act_log(pushed, push_events)
    proc, events = run_workflow(
        tmp_path / "dispatch",
        "workflow_dispatch",
        "test-riscv",
        tmp_path / "c",
        [
            "--input",
            "riscv=true",
            "--input",
            "command=echo dispatched",
            "--var",
            f"MULTIARCH_MIRROR={mirror}",
        ],
    )
    log = act_log(proc, events)
    assert [e["jobResult"] for e in events if "jobResult" in e] == ["failure"], log
    out = "\n".join(act_output(events))
    assert "building the riscv64 rootfs (trixie:" in out, log
    assert "rootfs build failed for riscv64/trixie" in out and "127.0.0.1" in out, log
