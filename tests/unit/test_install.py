"""``fleetci install``: real apt locks, real pip against a local index with injected faults, real venvs.

Nothing is mocked: the dpkg lock is the machine's own (taken by a child process with the fcntl lock apt
uses), pip runs in a throwaway virtualenv and downloads wheels built here from a PEP 503 index on
127.0.0.1 that answers 503 or resets the connection on chosen requests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetci.errors import UsageError
from fleetci.install.apt import apt_install
from fleetci.install.locks import held, holder, wait_for_locks
from fleetci.install.pip import build_plan, classify
from fleetci.install.retry import PermanentFailure, TransientFailure
from fleetci.install.settings import InstallSettings, apt_name, install_settings, parse_apt_packages
from fleetci.multiarch.settings import multiarch_settings
from support import RunCli, clean_env, one_line_error
from support.install import install_env, pip_env


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


def test_cli_waits_on_locks_under_a_private_lock_root(tmp_path: Path, fleetci_fd: RunCli) -> None:
    lock = tmp_path / "var/lib/apt/lists/lock"
    with held(lock, 60) as child:
        env = clean_env(INSTALL_LOCK_ROOT=str(tmp_path))
        line = one_line_error(fleetci_fd("install", "--wait-locks", "--lock-timeout", "0.5", env=env))
        assert f"{lock} held by pid {child.pid}" in line, line
    proc = fleetci_fd("install", "--wait-locks", "--lock-root", str(tmp_path), "--lock-timeout", "5")
    assert proc.returncode == 0, proc.stderr


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


def test_bad_apt_names_are_refused_before_waiting_for_locks(tmp_path: Path, fleetci_fd: RunCli) -> None:
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
            proc = fleetci_fd(
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


def test_a_pip_option_through_the_cli_is_one_line(fleetci_fd: RunCli) -> None:
    proc = fleetci_fd("install", "--", "--index-url=http://127.0.0.1:9/simple/", env=install_env())
    code, err = proc.returncode, proc.stderr
    assert code == 2 and len(err.splitlines()) == 1 and "is a pip option" in err, err


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


def test_bad_input_fails_with_one_line(tmp_path: Path, fleetci_fd: RunCli) -> None:
    for argv, expected in _bad_inputs(tmp_path):
        line = one_line_error(fleetci_fd(*argv, env=pip_env("http://127.0.0.1:9/simple/")))
        assert expected in line, (argv, line)


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
