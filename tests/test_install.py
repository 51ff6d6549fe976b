"""``fleetci install``: real apt locks, real pip against a local index with injected faults, real venvs.

Nothing is mocked: the dpkg lock is the machine's own (taken by a child process with the fcntl lock apt
uses), pip runs in a throwaway virtualenv and downloads wheels built here from a PEP 503 index on
127.0.0.1 that answers 503 or resets the connection on chosen requests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import REPO_ROOT, RunCli, clean_env, one_line_error, run_fleetci
from fleetci.errors import UsageError
from fleetci.install.apt import apt_install
from fleetci.install.index import FaultPlan, LocalIndex, build_wheel
from fleetci.install.locks import held, holder, wait_for_locks
from fleetci.install.pip import build_plan, classify
from fleetci.install.retry import PermanentFailure, TransientFailure
from fleetci.install.settings import InstallSettings, apt_name, install_settings, parse_apt_packages
from fleetci.multiarch.settings import multiarch_settings

DPKG_FRONTEND = Path("/var/lib/dpkg/lock-frontend")


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("wheels")
    for name, version, requires in [
        ("alpha", "1.0", ()),
        ("beta", "2.0", ("alpha>=1",)),
        ("gamma", "3.0", ()),
        ("delta", "4.0", ()),
        ("epsilon", "1.0", ()),
        ("epsilon", "2.0", ()),
        ("zeta", "0.5", ()),
        ("eta", "0.7", ()),
    ]:
        build_wheel(d, name, version, requires)
    return d


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A throwaway virtualenv: packages never land in the interpreter running the tests."""
    target = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(target)], check=True, capture_output=True)
    return str(target / "bin" / "python")


@pytest.fixture
def index_factory(wheels: Path) -> Iterator[Callable[..., LocalIndex]]:
    started: list[LocalIndex] = []

    def make(first_faults: int = 0, kinds: tuple[str, ...] = ("503", "reset")) -> LocalIndex:
        idx = LocalIndex(wheels, FaultPlan(first=first_faults, kinds=kinds)).start()
        started.append(idx)
        return idx

    yield make
    for idx in started:
        idx.stop()


def install_env(**extra: str) -> dict[str, str]:
    """:func:`clean_env` without ``INSTALL_*`` variables: the test alone says what to install."""
    env = {k: v for k, v in clean_env().items() if not k.startswith("INSTALL_")}
    env.update(extra)
    return env


def pip_env(index_url: str, **extra: str) -> dict[str, str]:
    """Only our index: no user pip config, cache, find-links or extra indexes; no INSTALL_* leaks."""
    env = {k: v for k, v in install_env().items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_INDEX_URL=index_url, **extra)
    return env


FAST = ("--backoff", "0.05", "--backoff-max", "0.2")


def read(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in report["packages"]}


def in_venv(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# --- unit: classification, settings, fcntl lock probing --------------------------------------------


@pytest.mark.parametrize(
    ("output", "kind", "reason"),
    [
        (
            "ERROR: No matching distribution found for beta\nCould not fetch URL http://x/simple/beta/: "
            "HTTPConnectionPool(host='x', port=1): Max retries exceeded with url: /simple/beta/ "
            "(Caused by ResponseError('too many 503 error responses')) - skipping",
            TransientFailure,
            "HTTP 503",
        ),
        (
            "ERROR: Could not install packages due to an OSError: ... (Caused by ProtocolError('Connection "
            "aborted.', ConnectionResetError(104, 'Connection reset by peer')))",
            TransientFailure,
            "connection reset",
        ),
        (
            "Could not fetch URL http://x/simple/b/: 429 Client Error: Too Many Requests",
            TransientFailure,
            "429",
        ),
        (
            "Could not fetch URL http://x/simple/nothere/: 404 Client Error: Not Found - skipping\n"
            "ERROR: No matching distribution found for nothere",
            PermanentFailure,
            "no matching distribution for nothere",
        ),
        (
            "ERROR: Cannot install a==1 and b==2 because these package versions have conflicting "
            "dependencies.",
            PermanentFailure,
            "resolver conflict",
        ),
        ("ERROR: Invalid requirement: 'foo==='", PermanentFailure, "invalid requirement"),
    ],
)
def test_pip_failures_are_classified_from_its_output_and_debug_log(
    output: str, kind: type, reason: str
) -> None:
    failure = classify(output)
    assert isinstance(failure, kind)
    assert reason in str(failure)


def test_settings_precedence_flag_env_config_default(tmp_path: Path) -> None:
    config = {"install": {"lock_timeout": 42, "retries": 7}}
    env = {"INSTALL_LOCK_TIMEOUT": "9"}
    assert install_settings({}, {}, {}).lock_timeout == 300
    assert install_settings({}, config, {}).lock_timeout == 42
    assert install_settings({}, config, env).lock_timeout == 9
    assert install_settings({"lock_timeout": "3"}, config, env).lock_timeout == 3
    assert install_settings({}, config, {"INSTALL_RETRIES": ""}).retries == 7  # empty input = unset
    assert install_settings({}, {}, {"INSTALL_EXTRAS": "p2p"}).pip_specs == (".[p2p]",)
    for bad in ({"lock_timeout": "soon"}, {"lock_timeout": "-1"}, {"retries": "x"}, {"preset": "nope"}):
        with pytest.raises(UsageError):
            install_settings(bad, {}, {})


def test_lock_probe_names_the_holder_and_never_takes_the_lock(tmp_path: Path) -> None:
    lock = tmp_path / "var/lib/dpkg/lock-frontend"
    with held(lock, 60) as child:
        found = holder(lock)
        assert found is not None and found.pid == child.pid
        assert "fcntl" in found.command  # /proc/<pid>/cmdline of the child
        lines: list[str] = []
        with pytest.raises(Exception, match=rf"held by pid {child.pid}"):
            wait_for_locks((lock,), 0.3, lines.append, every=0.1)
        assert any(f"pid {child.pid}" in line for line in lines)
        assert holder(lock) is not None  # probing did not steal or break the child's lock
    assert holder(lock) is None
    assert wait_for_locks((lock, tmp_path / "missing"), 1, lines.append) < 1


def test_cli_waits_on_locks_under_a_private_lock_root(tmp_path: Path, fleetci_in_process: RunCli) -> None:
    lock = tmp_path / "var/lib/apt/lists/lock"
    with held(lock, 60) as child:
        env = clean_env(INSTALL_LOCK_ROOT=str(tmp_path))
        line = one_line_error(fleetci_in_process("install", "--wait-locks", "--lock-timeout", "0.5", env=env))
        assert f"{lock} held by pid {child.pid}" in line, line
    proc = fleetci_in_process("install", "--wait-locks", "--lock-root", str(tmp_path), "--lock-timeout", "5")
    assert proc.returncode == 0, proc.stderr


# --- unit: apt package names and pip options never reach apt-get/pip as options ---------------------

BAD_APT = [
    "--version",
    "-o=foo",
    "foo;rm",
    "Foo",
    "a",
    "jq-",
    "jq yq",
    "pkg=",
    "pkg:",
    "../x",
    "pkg=-1",
    "x\ny",
]
GOOD_APT = [
    "python3",
    "libc6:arm64",
    "g++",
    "python3=3.11.2-1+b1",
    "libstdc++6:armhf=12.2.0-14",
    "dpkg=1:1.21.22",
    "git/bookworm-backports",
    "0ad",
]


@pytest.mark.parametrize("name", BAD_APT)
def test_apt_names_outside_debian_policy_are_usage_errors(name: str, tmp_path: Path) -> None:
    for flags, config, env in [
        ({"apt": name}, {}, {}),
        ({}, {}, {"INSTALL_APT_PACKAGES": f"jq\n{name}"}),
        ({}, {"install": {"apt": ["jq", name]}}, {}),
    ]:
        with pytest.raises(UsageError) as error:
            install_settings(flags, config, env)
        assert "is not an apt package name" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(UsageError, match="is not an apt package name"):  # the rootfs packages too
        multiarch_settings({"project": str(tmp_path), "arch": "arm64", "packages": name}, {}, {})


def test_apt_names_with_arch_version_or_release_are_accepted() -> None:
    settings = install_settings({"apt": ",".join(GOOD_APT)}, {}, {})
    assert settings.apt_packages == tuple(GOOD_APT)
    names = [apt_name(p) for p in settings.apt_packages]
    assert names == ["python3", "libc6", "g++", "python3", "libstdc++6", "dpkg", "git", "0ad"]


@given(st.text(max_size=20))
def test_nothing_starting_with_a_dash_is_an_apt_package(rest: str) -> None:
    with pytest.raises(ValueError, match="is not an apt package name"):
        parse_apt_packages("-" + rest)


def test_bad_apt_names_are_refused_before_waiting_for_locks(
    tmp_path: Path, fleetci_in_process: RunCli
) -> None:
    """With the lock held and no time to wait, a late check would report the lock (exit 1), not the name."""
    with held(tmp_path / "var/lib/dpkg/lock-frontend", 60):
        with pytest.raises(UsageError, match="'--version' is not an apt package name"):
            settings = InstallSettings(apt_packages=("--version",), lock_root=tmp_path, lock_timeout=0)
            apt_install(settings, lambda line: None)
        for argv, env in [
            (["install", "--apt=--version"], {}),
            (["install", "--apt", "jq,-o=APT::Get::Show-Versions=1"], {}),
            (["install"], {"INSTALL_APT_PACKAGES": "--version"}),
        ]:
            proc = fleetci_in_process(
                *argv, "--lock-root", str(tmp_path), "--lock-timeout", "0", env=install_env(**env)
            )
            code, err = proc.returncode, proc.stderr
            assert code == 2 and len(err.splitlines()) == 1, err
            assert "is not an apt package name" in err and "held by pid" not in err


@pytest.mark.parametrize(
    "spec",
    ["--index-url=http://127.0.0.1:9/simple/", "--no-deps.whl", "--pre", "-e", "--user"],
)
def test_pip_specs_starting_with_a_dash_never_reach_pip(spec: str) -> None:
    with pytest.raises(UsageError, match=r"is a pip option, not a requirement"):
        build_plan(install_settings({"packages": spec}, {}, {}))


def test_a_project_path_starting_with_a_dash_is_refused_with_a_hint() -> None:
    with pytest.raises(
        UsageError, match=r"'--user' is a pip option, not a requirement \(write a path as ./--user\)"
    ):
        build_plan(install_settings({"project": "--user"}, {}, {}))


def test_a_pip_option_through_the_cli_is_one_line(fleetci_in_process: RunCli) -> None:
    proc = fleetci_in_process("install", "--", "--index-url=http://127.0.0.1:9/simple/", env=install_env())
    code, err = proc.returncode, proc.stderr
    assert code == 2 and len(err.splitlines()) == 1 and "is a pip option" in err, err


# --- integration: the real dpkg frontend lock -------------------------------------------------------


needs_apt = pytest.mark.skipif(
    os.geteuid() != 0 or not DPKG_FRONTEND.exists() or shutil.which("apt-get") is None,
    reason="needs root and a Debian/Ubuntu apt",
)


def installed_apt_package() -> str:
    """A small package that is already installed, so apt-get is a no-op once the lock is free."""
    for name in ("jq", "less", "ca-certificates", "debianutils"):
        proc = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", name], capture_output=True, text=True
        )
        if proc.stdout == "installed":
            return name
    pytest.skip("no small installed package found")


@pytest.mark.integration
@needs_apt
def test_apt_waits_for_the_real_dpkg_lock_then_installs(tmp_path: Path) -> None:
    pkg = installed_apt_package()
    report = tmp_path / "apt.json"
    with held(DPKG_FRONTEND, 4) as child:
        proc = run_fleetci(
            "install", "--apt", pkg, "--apt-update", "never", "--lock-timeout", "120",
            "--progress-every", "1", "--report", str(report), timeout=180,
        )  # fmt: skip
        holder_pid = child.pid
    assert proc.returncode == 0, proc.stderr
    assert f"waiting for {DPKG_FRONTEND} held by pid {holder_pid}" in proc.stderr
    assert "locks are free after" in proc.stderr
    data = read(report)
    entry = by_name(data)[pkg]
    assert entry["ok"] and entry["kind"] == "apt" and entry["installed"], entry
    assert data["apt"]["lock_wait_s"] > 0


@pytest.mark.integration
@needs_apt
def test_apt_gives_up_on_a_held_dpkg_lock_with_one_line_naming_the_holder() -> None:
    with held(DPKG_FRONTEND, 60) as child:
        proc = run_fleetci("install", "--apt", installed_apt_package(), "--lock-timeout", "1", timeout=60)
    line = one_line_error(proc)
    assert str(DPKG_FRONTEND) in line and f"held by pid {child.pid}" in line, line
    assert "gave up after" in line


# --- integration: pip against a faulty local index ---------------------------------------------------


@pytest.mark.integration
def test_transient_index_faults_are_retried_until_success(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory(first_faults=4)
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "beta", "--python", venv_python, "--report", str(report), "--retries", "5", *FAST,
        env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert index.plan.faults >= 2, index.plan.log  # both a 503 and a reset were served
    beta = by_name(read(report))["beta"]
    # one failed attempt per injected fault, then the successful one
    assert beta["attempts"] == index.plan.faults + 1, (beta, index.plan.log)
    assert beta["retries"] == beta["attempts"] - 1
    assert beta["ok"] and beta["installed"] == "2.0" and beta["error"] is None
    assert "HTTP 503" in proc.stderr and "connection reset" in proc.stderr
    assert in_venv(venv_python, "import alpha, beta; print(beta.__version__, alpha.__version__)") == "2.0 1.0"


@pytest.mark.integration
def test_a_missing_package_fails_fast_with_one_attempt(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "nothere", "--python", venv_python, "--report", str(report), "--retries", "5", *FAST,
        env=pip_env(index.url),
    )  # fmt: skip
    line = one_line_error(proc)
    assert "nothere: no matching distribution for nothere" in line, line
    entry = by_name(read(report))["nothere"]
    assert (entry["attempts"], entry["retries"], entry["ok"]) == (1, 0, False), entry
    assert index.plan.log == ["/simple/nothere/ ok"]  # pip asked once; nobody retried


@pytest.mark.integration
def test_partial_bulk_failure_falls_back_to_one_by_one_and_reports_exactly(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "gamma", "missing-pkg", "delta==9.9", "zeta", "--python", venv_python,
        "--report", str(report), *FAST, env=pip_env(index.url),
    )  # fmt: skip
    line = one_line_error(proc)
    assert "2 failed" in line and "missing-pkg:" in line and "delta:" in line, line
    data = read(report)
    got = {
        name: (p["ok"], p["installed"], p["phase"], p["error"], p["retries"])
        for name, p in by_name(data).items()
    }
    assert got == {
        "gamma": (True, "3.0", "individual", None, 0),
        "missing-pkg": (False, None, "individual", "no matching distribution for missing-pkg", 0),
        "delta": (False, None, "individual", "no matching distribution for delta==9.9", 0),
        "zeta": (True, "0.5", "individual", None, 0),
    }
    assert sorted(data["failed"]) == ["delta", "missing-pkg"] and data["ok"] is False
    assert in_venv(venv_python, "import gamma, zeta; print(gamma.__version__, zeta.__version__)") == "3.0 0.5"


@pytest.mark.integration
def test_requirements_constraints_verify_and_report(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# deps\nepsilon  # any version\neta>=0.1\n", encoding="utf-8")
    cons = tmp_path / "constraints.txt"
    cons.write_text("epsilon==1.0\n", encoding="utf-8")
    report = tmp_path / "deps.json"
    proc = run_fleetci(
        "install", "-r", str(reqs), "-c", str(cons), "--verify", "epsilon,eta", "--python", venv_python,
        "--report", str(report), env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = read(report)
    assert {n: p["installed"] for n, p in by_name(data).items()} == {"epsilon": "1.0", "eta": "0.7"}
    assert [(v["module"], v["ok"], v["version"], v["distribution"]) for v in data["verify"]] == [
        ("epsilon", True, "1.0", "epsilon"),
        ("eta", True, "0.7", "eta"),
    ]
    plat = data["platform"]
    assert plat["python"] == in_venv(venv_python, "import platform; print(platform.python_version())")
    assert plat["arch"] and plat["libc"].startswith("glibc")
    assert data["schema"] == "fleetci.install/1" and data["ok"] is True and data["failed"] == []

    # A module that does not import is reported with the interpreter's own error, and fails the run.
    proc = run_fleetci("install", "--verify", "eta,not_a_module_xyz", "--python", venv_python)
    line = one_line_error(proc)
    assert "import not_a_module_xyz: ModuleNotFoundError" in line, line


@pytest.mark.integration
def test_matrix_renders_arch_by_package_from_reports(
    index_factory: Callable[..., LocalIndex], venv_python: str, tmp_path: Path
) -> None:
    index = index_factory()
    reports = tmp_path / "reports"
    reports.mkdir()
    proc = run_fleetci(
        "install", "alpha", "--verify", "alpha", "--python", venv_python,
        "--report", str(reports / "amd.json"), env=pip_env(index.url),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    amd = read(reports / "amd.json")
    # An arm64 runner's report, as that job would have written it: alpha failed there.
    arm = json.loads(json.dumps(amd))
    arm["platform"]["arch"] = "arm64"
    arm["packages"][0].update(ok=False, installed=None, error="no matching distribution for alpha")
    arm["ok"] = False
    (reports / "arm.json").write_text(json.dumps(arm), encoding="utf-8")
    summary = tmp_path / "summary.md"
    proc = run_fleetci(
        "install",
        "matrix",
        str(reports / "*.json"),
        "--summary",
        env=clean_env(GITHUB_STEP_SUMMARY=str(summary)),
    )
    assert proc.returncode == 0, proc.stderr
    py = ".".join(amd["platform"]["python"].split(".")[:2])
    header = f"| package | {amd['platform']['arch']} (py{py}) | arm64 (py{py}) |"
    lines = proc.stdout.splitlines()
    assert header in lines, proc.stdout
    assert "| pip:alpha | ✅ 1.0 | ❌ no matching distribution for alpha |" in lines, proc.stdout
    assert "| import:alpha | ✅ 1.0 | ✅ 1.0 |" in lines, proc.stdout
    assert "2 report(s), 1 with failures." in proc.stdout
    assert summary.read_text(encoding="utf-8") == proc.stdout


# --- bad input: one line, non-zero ------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    bad_req = tmp / "bad-req.txt"
    bad_req.write_text("alpha\nfoo bar baz ===\n", encoding="utf-8")
    unreadable = tmp / "unreadable.txt"
    unreadable.write_bytes(b"\xff\xfe\x00bad")
    corrupt = tmp / "corrupt.json"
    corrupt.write_text("{not json", encoding="utf-8")
    other = tmp / "other.json"
    other.write_text('{"hello": 1}', encoding="utf-8")
    return [
        (["install", "--no-such-flag", "x"], "unrecognized arguments"),
        (["install", "-r", str(tmp / "nope.txt")], "cannot read requirements file"),
        (["install", "-r", str(unreadable)], "cannot read requirements file"),
        (["install", "-r", str(bad_req)], "bad-req.txt:2: invalid requirement"),
        (["install", "alpha", "-c", str(tmp / "nope.txt")], "cannot read constraints file"),
        (["install", "alpha>=>1"], "invalid requirement"),
        (["install", "--apt", "jq", "--lock-timeout", "soon"], "invalid value for --lock-timeout"),
        (["install", "--apt", "jq", "--lock-timeout", "-3"], "invalid value for --lock-timeout"),
        (["install", "alpha", "--retries", "many"], "invalid value for --retries"),
        (["install", "--preset", "nope"], "unknown preset"),
        (["install"], "nothing to install"),
        (["install", "matrix"], "usage: fleetci install matrix"),
        (["install", "matrix", str(corrupt)], "is not valid JSON"),
        (["install", "matrix", str(other)], "is not a fleetci install report"),
        (["install", "matrix", str(tmp / "missing.json")], "cannot read report"),
        (["install", "matrix", str(tmp / "none-*.json")], "no report files match"),
    ]


def test_bad_input_fails_with_one_line(tmp_path: Path, fleetci_in_process: RunCli) -> None:
    for argv, expected in _bad_inputs(tmp_path):
        line = one_line_error(fleetci_in_process(*argv, env=pip_env("http://127.0.0.1:9/simple/")))
        assert expected in line, (argv, line)


@pytest.mark.integration
def test_unreachable_index_is_transient_then_one_line(venv_python: str) -> None:
    from fleetci.http import free_port

    url = f"http://127.0.0.1:{free_port()}/simple/"  # nothing listens there
    proc = run_fleetci("install", "omega", "--python", venv_python, "--retries", "2", *FAST, env=pip_env(url))
    line = one_line_error(proc)
    assert "omega: connection refused" in line, line
    assert len(re.findall(r"attempt \d failed: connection refused", proc.stderr)) == 3


@pytest.mark.integration
def test_safe_install_script_forwards_to_the_cli(
    index_factory: Callable[..., LocalIndex], venv_python: str
) -> None:
    index = index_factory()
    script = REPO_ROOT / "scripts" / "safe_install.py"
    proc = subprocess.run(
        [venv_python, str(script), "gamma", "--verify", "gamma"],
        env=pip_env(index.url),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # no --python given: it installs for the interpreter that runs the script (the venv)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"import gamma\s+3\.0", proc.stdout), proc.stdout
    proc = subprocess.run(
        [sys.executable, str(script), "--lock-timeout", "x", "--apt", "jq"],
        env=pip_env(index.url),
        capture_output=True,
        text=True,
    )
    assert "invalid value for --lock-timeout" in one_line_error(proc)


def test_the_report_is_written_whole_and_readable_by_the_steps_after(tmp_path: Path) -> None:
    """``fleetci install`` often runs under sudo; the matrix step and the artifact upload do not."""
    from fleetci.install.report import load_report, write_report

    shared = tmp_path / "workspace"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    path = shared / "out" / "report.json"
    for n in (1, 2):
        write_report(path, {"schema": "fleetci.install/1", "packages": [], "n": n})
    assert load_report(str(path))["n"] == 2
    assert path.stat().st_mode & 0o777 == 0o644
    assert shared.stat().st_mode & 0o777 == 0o755  # not tightened: it is not ours alone
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.json"]  # no temp file left
