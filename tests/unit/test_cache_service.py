"""``fleetci cache service`` (issue 16): the generated systemd unit, its environment file, the CLI errors,
and the host-proxy setting. The unit is checked by systemd itself (``systemd-analyze verify``)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from fleetci.cache.service import ENV_PATH, UNIT_DIR, UNIT_NAME, render_unit
from fleetci.cache.settings import cache_settings, read_env_file
from support import REPO_ROOT, RunCli, clean_env, one_line_error

GROUP = grp.getgrgid(os.getgid()).gr_name  # a group that exists here


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if not found:
        pytest.fail("systemd-analyze is not installed (Debian package systemd; scripts/test.sh installs it)")
    return found


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def unit_settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_installed_unit_is_hardened_and_systemd_accepts_it(fleetci: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / ".env.cache").write_text(
        "# the seed's keys\nexport CACHE_LISTEN_PORT=9000\nCACHE_DEFAULT_TTL='120'\n"
        'FLEETCI_CACHE_SECRET="s3cret value"\nCACHE_BOOTSTRAP_PEERS=\n',
        encoding="utf-8",
    )
    r = fleetci(
        "cache", "service", "install", "--root", str(root), "--group", GROUP,
        "--port", "9311", "--env-file", str(tmp_path / ".env.cache"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    # no systemd under a --root prefix: the files are written and that is said in one line
    skipped = [ln for ln in r.stdout.splitlines() if "enabling was skipped" in ln]
    assert len(skipped) == 1 and "--root" in skipped[0], r.stdout
    unit = root / UNIT_DIR / UNIT_NAME
    text = unit.read_text(encoding="utf-8")
    s = unit_settings(text)
    for key, value in {
        "DynamicUser": "yes",
        "User": "fleetci",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "Restart": "on-failure",
        "StateDirectory": "fleetci",
        "RuntimeDirectory": "fleetci",
        "SupplementaryGroups": GROUP,
        "EnvironmentFile": f"-/{ENV_PATH}",
        "Alias": "github-cache.service",
    }.items():
        assert s.get(key) == [value], (key, s.get(key))
    exec_start = s["ExecStart"][0].split()
    assert Path(exec_start[0]).is_absolute()
    for flag, value in {
        "--socket": "/run/fleetci/proxy.sock",
        "--port": "9311",
        "--socket-group": GROUP,
        "--cache-dir": "/var/lib/fleetci",
        "--host": "127.0.0.1",
    }.items():
        assert exec_start[exec_start.index(flag) + 1] == value, exec_start
    # systemd parses every line without a warning (an unknown directive or value would be reported)
    done = verify(unit)
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    # the environment file: 0600 (it may hold the fleet secret), the seed's keys, read back exactly
    env_file = root / ENV_PATH
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = read_env_file(env_file)
    assert values == {
        "CACHE_LISTEN_PORT": "9000",
        "CACHE_DEFAULT_TTL": "120",
        "FLEETCI_CACHE_SECRET": "s3cret value",
        "CACHE_BOOTSTRAP_PEERS": "",
    }
    s2 = cache_settings({}, {}, values)
    assert (s2.listen_port, s2.default_ttl, s2.secret) == (9000, 120, "s3cret value")
    # uninstall removes the unit, keeps the settings (and says so)
    r = fleetci("cache", "service", "uninstall", "--root", str(root))
    assert r.returncode == 0 and not unit.exists() and env_file.exists(), r.stdout
    assert "kept" in r.stdout


def test_verify_catches_a_broken_unit(tmp_path: Path) -> None:
    """The check above means something: systemd-analyze reports a wrong directive value."""
    unit = tmp_path / UNIT_NAME
    unit.write_text(render_unit(["/bin/true"]).replace("ProtectSystem=strict", "ProtectSystem=strictly"))
    done = verify(unit)
    assert "ProtectSystem" in done.stderr or "protect system" in done.stderr.lower(), done.stderr


def test_unit_without_group_keeps_the_socket_private() -> None:
    s = unit_settings(render_unit(["/usr/bin/python3", "-m", "fleetci"]))
    assert "SupplementaryGroups" not in s and "--socket-group" not in s["ExecStart"][0]


def test_install_keeps_an_operators_environment_file(fleetci: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    env_file = root / ENV_PATH
    env_file.parent.mkdir(parents=True)
    env_file.write_text("CACHE_DEFAULT_TTL=77\nFLEETCI_CACHE_SECRET=s3cret\n", encoding="utf-8")
    env_file.chmod(0o644)  # as an operator's editor or an older version left it: readable by all
    r = fleetci("cache", "service", "install", "--root", str(root))
    assert r.returncode == 0, r.stderr
    assert env_file.read_text(encoding="utf-8") == "CACHE_DEFAULT_TTL=77\nFLEETCI_CACHE_SECRET=s3cret\n"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600  # kept, but no longer readable by others


def test_unit_hardening_is_rated_by_systemd_itself() -> None:
    """``systemd-analyze security --offline`` rates the generated unit (0 = locked down, 10 = exposed);
    a service that only needs a socket, a loopback port and its state directory stays under 2."""
    import re
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        unit = Path(d) / UNIT_NAME
        unit.write_text(render_unit(["/usr/bin/python3", "-m", "fleetci"], group=GROUP), encoding="utf-8")
        done = subprocess.run(
            [systemd_analyze(), "security", "--offline=true", "--no-pager", str(unit)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert verify(unit).stderr.strip() == ""
        text = unit.read_text(encoding="utf-8")
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert m, done.stdout + done.stderr
    assert float(m.group(1)) <= 2.0, done.stdout
    s = unit_settings(text)
    for key, value in {
        "ProtectHome": "yes",
        "SystemCallArchitectures": "native",
        "RestrictNamespaces": "yes",
        "ProtectProc": "invisible",
        "PrivateMounts": "yes",
    }.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert "@system-service" in s["SystemCallFilter"]


@pytest.mark.parametrize("where", ["env-file", "existing"])
def test_install_refuses_a_shared_scope_for_the_host_service(
    fleetci: RunCli, tmp_path: Path, where: str
) -> None:
    """Every job of the host shares the host proxy with its own token: CACHE_SHARED_SCOPE would let a job
    read what other jobs' tokens fetched, so the service refuses it in one line (and writes nothing)."""
    root = tmp_path / "root"
    source = tmp_path / ".env.cache"
    if where == "existing":
        source = root / ENV_PATH
        source.parent.mkdir(parents=True)
    source.write_text("CACHE_DEFAULT_TTL=60\nCACHE_SHARED_SCOPE=my-fleet\n", encoding="utf-8")
    args = ("--env-file", str(source)) if where == "env-file" else ()
    r = fleetci("cache", "service", "install", "--root", str(root), *args)
    assert r.returncode == 2
    assert "CACHE_SHARED_SCOPE is not allowed for the host service" in one_line_error(r)
    assert not (root / UNIT_DIR / UNIT_NAME).exists()


def test_service_settings_follow_flag_env_config_default(fleetci: RunCli, tmp_path: Path) -> None:
    """--group/--port/--socket are settings like any other: flag > environment > config file > default."""

    def installed_port(*flags: str, config: Path | None = None, env: dict[str, str] | None = None) -> str:
        root = tmp_path / f"root{len(list(tmp_path.iterdir()))}"
        pre = ("--config", str(config)) if config else ()
        r = fleetci(*pre, "cache", "service", "install", "--root", str(root), *flags, env=env)
        assert r.returncode == 0, r.stderr
        exec_start = unit_settings((root / UNIT_DIR / UNIT_NAME).read_text())["ExecStart"][0].split()
        return exec_start[exec_start.index("--port") + 1]

    config = tmp_path / "config.yml"
    config.write_text("cache:\n  service_port: 9401\n  upstream: https://api.github.com\n")
    assert installed_port(env=clean_env()) == "9101"
    assert installed_port(config=config, env=clean_env()) == "9401"
    env = clean_env(CACHE_SERVICE_PORT="9402", CACHE_SERVICE_GROUP=GROUP)
    assert installed_port(config=config, env=env) == "9402"
    assert installed_port("--port", "9403", config=config, env=env) == "9403"
    r = fleetci("cache", "service", "status", "--root", str(tmp_path), env=clean_env(
        CACHE_SERVICE_SOCKET=str(tmp_path / "env.sock")))  # fmt: skip
    assert r.returncode == 1 and f"{tmp_path / 'env.sock'} missing" in r.stdout
    r = fleetci("cache", "service", "install", "--root", str(tmp_path / "x"), env=clean_env(
        CACHE_SERVICE_PORT="http"))  # fmt: skip
    assert r.returncode == 2 and "invalid value for $CACHE_SERVICE_PORT" in one_line_error(r)
    config.write_text("cache:\n  service_prot: 1\n")
    r = fleetci("--config", str(config), "cache", "service", "status", env=clean_env())
    assert r.returncode == 2 and "did you mean 'service_port'" in one_line_error(r)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--group", "no-such-group-fleetci"), 2, "group 'no-such-group-fleetci' does not exist"),
        (("--port", "70000"), 2, "--port"),
        (("--env-file", "missing.env"), 2, "--env-file missing.env: no such file"),
        (("--env-file", "typo.env"), 2, "unknown cache variable 'CACHE_DEFAULT_TLL'"),
        (("--env-file", "corrupt.env"), 2, "corrupt.env cannot be read"),
        (("--env-file", "words.env"), 2, "words.env:1: expected NAME=value"),
        (("--bogus",), 2, "unrecognized arguments: --bogus"),
    ],
    ids=["unknown-group", "bad-port", "missing-env-file", "typo", "corrupt", "not-env", "wrong-flag"],
)
def test_install_refuses_bad_input_in_one_line(
    fleetci: RunCli,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    code: int,
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "typo.env").write_text("CACHE_DEFAULT_TLL=60\n")
    (tmp_path / "corrupt.env").write_bytes(b"\x00\xff garbage without equals\n")
    (tmp_path / "words.env").write_text("just words\n")
    r = fleetci("cache", "service", "install", "--root", str(tmp_path / "root"), *args)
    assert r.returncode == code
    assert message in one_line_error(r)
    assert not (tmp_path / "root" / UNIT_DIR / UNIT_NAME).exists()  # nothing half-written


def test_install_where_the_root_is_not_writable_is_one_line(fleetci: RunCli, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = fleetci("cache", "service", "install", "--root", str(blocker))
    assert r.returncode == 1 and "cannot write under" in one_line_error(r)


def test_uninstall_when_not_installed_and_status_without_a_socket(fleetci: RunCli, tmp_path: Path) -> None:
    r = fleetci("cache", "service", "uninstall", "--root", str(tmp_path))
    assert r.returncode == 1 and "is not installed" in one_line_error(r)
    r = fleetci("cache", "service", "status", "--root", str(tmp_path), "--socket", str(tmp_path / "x.sock"))
    assert r.returncode == 1 and "missing (the service is not running)" in r.stdout
    r = fleetci("cache", "service", "restart")
    assert r.returncode == 2 and "invalid choice" in one_line_error(r)


def test_status_of_a_socket_nobody_listens_on(fleetci: RunCli, tmp_path: Path) -> None:
    import socket

    path = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))  # a socket file left by a crashed proxy: nobody accepts
    r = fleetci("cache", "service", "status", "--root", str(tmp_path), "--socket", str(path))
    assert r.returncode == 1 and "not answering" in r.stdout, r.stdout


# --- the host-proxy setting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [("", ""), ("auto", ""), ("OFF", "off"), ("false", "off"), ("http://127.0.0.1:9101/", "http://127.0.0.1:9101"),
     ("/run/fleetci/proxy.sock", "/run/fleetci/proxy.sock")],
)  # fmt: skip
def test_host_proxy_setting_values(raw: str, value: str) -> None:
    assert cache_settings({}, {}, {"CACHE_HOST_PROXY": raw}).host_proxy == value
    assert cache_settings({}, {}, {"FLEETCI_HOST_PROXY": raw}).host_proxy == value


def test_host_proxy_precedence_and_bad_values(fleetci: RunCli, tmp_path: Path) -> None:
    # flag > environment
    s = cache_settings({"host_proxy": "off"}, {}, {"CACHE_HOST_PROXY": "/x.sock"})
    assert s.host_proxy == "off"
    r = fleetci("cache", "start", "--host-proxy", "ftp://example", "--cache-dir", str(tmp_path))
    assert r.returncode == 2 and "--host-proxy" in one_line_error(r)
    r = fleetci(
        "cache", "start", "--cache-dir", str(tmp_path), env=clean_env(CACHE_HOST_PROXY="relative.sock")
    )
    assert r.returncode == 2 and "CACHE_HOST_PROXY" in one_line_error(r)


def test_explicit_host_proxy_that_does_not_answer_is_one_line(fleetci: RunCli, tmp_path: Path) -> None:
    from fleetci.http import free_port

    for where in (str(tmp_path / "none.sock"), f"http://127.0.0.1:{free_port()}"):
        r = fleetci(
            "cache", "start", "--cache-dir", str(tmp_path / "c"), env=clean_env(FLEETCI_HOST_PROXY=where)
        )
        line = one_line_error(r)
        assert r.returncode == 1 and "is not usable" in line and "CACHE_HOST_PROXY=off" in line, line
        assert not (tmp_path / "c" / "proxy.pid").exists()


def test_stop_without_a_proxy_still_says_so(fleetci: RunCli, tmp_path: Path) -> None:
    r = fleetci("cache", "stop", "--cache-dir", str(tmp_path))
    assert r.returncode == 1 and "no running proxy recorded" in one_line_error(r)


def test_foreground_script_is_shipped_executable() -> None:
    script = REPO_ROOT / "scripts" / "start-distributed-cache.sh"
    assert os.access(script, os.X_OK)
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


# --- fleetci bench cache --host-proxy: its flags -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--host-proxy", "--p2p"), "--host-proxy and --p2p measure different fleets"),
        (("--host-proxy", "--runners", "-1"), "--runners"),
        (("--host-proxy=yes",), "ignored explicit argument"),
    ],
    ids=["with-p2p", "negative-runners", "switch-with-value"],
)
def test_bench_host_proxy_refuses_bad_flags(fleetci: RunCli, args: tuple[str, ...], message: str) -> None:
    r = fleetci("bench", "cache", *args)
    assert r.returncode == 2 and message in one_line_error(r)


# --- a host proxy that is not one: whatever answers there, the job is told in one line ----------------


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b"x" * (70 * 1024), "over 65536 bytes"),
        (200, b"<html>not json</html>", "not JSON"),
        (200, b'{"status": "pwned", "upstream": "https://api.github.com"}', "not a fleetci proxy's"),
        (404, b"{}", "HTTP 404"),
    ],
    ids=["huge", "not-json", "not-fleetci", "404"],
)
def test_something_else_posing_as_the_host_proxy_is_refused(status: int, body: bytes, reason: str) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from fleetci.cache.hostproxy import find_host_proxy
    from fleetci.errors import FleetciError

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        settings = cache_settings({}, {}, {"FLEETCI_HOST_PROXY": url})
        with pytest.raises(FleetciError, match="is not usable") as err:
            find_host_proxy(settings)
        assert reason in str(err.value) and "\n" not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()


def test_a_socket_anyone_could_have_planted_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs send the host proxy their tokens: found by itself in a world-writable directory, a socket
    (here a real listening one) is not trusted, whatever answers on it."""
    import socket

    import fleetci.cache.hostproxy as hostproxy

    shared = tmp_path / "run"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create a file here
    path = shared / "proxy.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        monkeypatch.setattr(hostproxy, "WELL_KNOWN_SOCKET", str(path))
        host, note = hostproxy.find_host_proxy(cache_settings({}, {}, {}))
    assert host is None and "is not trusted" in note and "writable by every user" in note
