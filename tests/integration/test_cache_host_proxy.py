"""One proxy per host (issue 16): ``scripts/start-distributed-cache.sh`` runs it in the foreground from a
``.env.cache``, and jobs (``fleetci cache start``, setup-p2p-cache under act) reuse it instead of starting
their own. One GitHub emulator and one host proxy serve the whole module."""

from __future__ import annotations

import grp
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from fleetci.process import Service, fleetci_argv, spawn
from integration.test_actions import Emulator, act_with_a_cache, process_alive, proxies_for
from support import REPO_ROOT, RunCli, clean_env, one_line_error, run_fleetci
from support.emulator import tok

SCRIPT = REPO_ROOT / "scripts" / "start-distributed-cache.sh"
REPO = "octo-org/api"


@dataclass(frozen=True)
class Host:
    url: str
    socket: Path
    pid: int
    group: int
    workdir: Path


@pytest.fixture(scope="module")
def github() -> Iterator[Emulator]:
    svc = spawn(fleetci_argv("emulate", "github", "--port", "0", "--latency-ms", "0-0"))
    try:
        yield Emulator(svc.url, svc.proc)
    finally:
        svc.stop()


def _socket_group() -> str:
    """A group other than ours when we may chown to it (root), else our own."""
    if os.geteuid() == 0:
        others = [g.gr_name for g in grp.getgrall() if g.gr_gid not in (0, os.getgid())]
        if others:
            return others[0]
    return grp.getgrgid(os.getgid()).gr_name


@pytest.fixture(scope="module")
def host(github: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    """The foreground script, as an operator runs it: settings in .env.cache in its working directory."""
    work = tmp_path_factory.mktemp("host")
    sock = work / "proxy.sock"
    group = _socket_group()
    (work / ".env.cache").write_text(
        "# as copied from .env.cache.example, then edited\n"
        f"CACHE_UPSTREAM={github.url}\nCACHE_SOCKET={sock}\nCACHE_SOCKET_GROUP={group}\n"
        f"CACHE_PROXY_PORT=0\nCACHE_DIR={work / 'state'}\nCACHE_DEFAULT_TTL=600\n",
        encoding="utf-8",
    )
    # The script's environment holds no CACHE_* variable: everything comes from the file (and so the
    # act helpers, which find per-job proxies by CACHE_UPSTREAM in their environment, never match it).
    svc: Service = spawn(["bash", "-c", f'cd "{work}" && exec bash "{SCRIPT}"'], env=clean_env())
    try:
        yield Host(svc.url, sock, svc.proc.pid, grp.getgrnam(group).gr_gid, work)
    finally:
        svc.stop()


def get(base: str, path: str, login: str, uds: Path | None = None) -> httpx.Response:
    transport = httpx.HTTPTransport(uds=str(uds)) if uds else None
    with httpx.Client(transport=transport, timeout=10) as c:
        return c.get(base + path, headers={"Authorization": f"token {tok(login)}"})


def test_foreground_script_serves_real_requests_from_env_cache(host: Host) -> None:
    path = f"/repos/{REPO}?probe=foreground"
    first = get(host.url, path, "alice")
    assert first.status_code == 200 and first.headers["X-Fleetci-Cache"] == "MISS"
    again = get("http://localhost", path, "alice", uds=host.socket)  # the socket serves the same cache
    assert again.status_code == 200 and again.headers["X-Fleetci-Cache"] == "HIT"
    assert again.json()["full_name"] == REPO
    st = host.socket.stat()
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == host.group
    health = get("http://localhost", "/_fleetci/health", "alice", uds=host.socket).json()
    assert health["pid"] == host.pid and health["proxy_url"] == host.url
    assert (host.workdir / "state" / "cache.db").exists()  # CACHE_DIR from the file


def test_service_status_reports_the_socket_health(fleetci: RunCli, host: Host, tmp_path: Path) -> None:
    r = fleetci("cache", "service", "status", "--root", str(tmp_path), "--socket", str(host.socket))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"healthy (pid {host.pid}, {host.url}" in r.stdout


def _job_env(tmp_path: Path, github: Emulator, **extra: str) -> dict[str, str]:
    for name in ("GITHUB_ENV", "GITHUB_OUTPUT"):
        (tmp_path / name).write_text("")
    job = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_ENV": str(tmp_path / "GITHUB_ENV"),
        "GITHUB_OUTPUT": str(tmp_path / "GITHUB_OUTPUT"),
        "CACHE_UPSTREAM": github.url,
        "CACHE_DIR": str(tmp_path / "job-cache"),
    }
    return clean_env(**{**job, **extra})


def _lines(path: Path) -> dict[str, str]:
    return dict(ln.split("=", 1) for ln in path.read_text().splitlines() if "=" in ln)


def test_cache_start_reuses_the_host_proxy_and_stop_leaves_it(
    github: Emulator, host: Host, tmp_path: Path
) -> None:
    env = _job_env(tmp_path, github, FLEETCI_HOST_PROXY=str(host.socket))
    r = run_fleetci("cache", "start", env=env)
    assert r.returncode == 0, r.stderr
    assert f"fleetci cache: using the host proxy (pid {host.pid}) at {host.url}" in r.stdout
    assert proxies_for(github.url) == []  # no second proxy was started
    exported, outputs = _lines(tmp_path / "GITHUB_ENV"), _lines(tmp_path / "GITHUB_OUTPUT")
    assert exported["FLEETCI_API_URL"] == outputs["api-url"] == host.url
    assert exported["FLEETCI_CACHE_SOCKET"] == outputs["socket"] == str(host.socket)
    assert (
        Path(exported["GH_CONFIG_DIR"]) / "config.yml"
    ).read_text() == f"http_unix_socket: {host.socket}\n"
    # what another job fetched with this token is a HIT for this job; another token still misses
    path = f"/repos/{REPO}?probe=reuse"
    assert get(host.url, path, "alice").headers["X-Fleetci-Cache"] == "MISS"  # "the first job"
    assert get(exported["FLEETCI_API_URL"], path, "alice").headers["X-Fleetci-Cache"] == "HIT"
    assert get(exported["FLEETCI_API_URL"], path, "bob").headers["X-Fleetci-Cache"] == "MISS"
    # stats through the exported socket are the host proxy's
    stats = run_fleetci("cache", "stats", "--json", env={**env, **exported})
    assert stats.returncode == 0 and '"source": "live"' in stats.stdout, stats.stderr
    r = run_fleetci("cache", "stop", env={**env, **exported})
    assert r.returncode == 0, r.stderr
    assert f"the host proxy at {host.url} keeps running" in r.stdout
    assert process_alive(host.pid)
    r = run_fleetci("cache", "stop", env={**env, **exported})  # nothing of this job is left to stop
    assert "no running proxy recorded" in one_line_error(r)


def test_host_proxy_for_another_upstream_is_refused_in_one_line(
    github: Emulator, host: Host, tmp_path: Path
) -> None:
    env = _job_env(tmp_path, github, FLEETCI_HOST_PROXY=host.url, CACHE_UPSTREAM="http://127.0.0.1:9/api")
    r = run_fleetci("cache", "start", env=env)
    line = one_line_error(r)
    assert "is not usable (it caches" in line and "CACHE_HOST_PROXY=off" in line, line
    # the GitHub emulator is no fleetci proxy: a URL of something else is refused as well
    r = run_fleetci("cache", "start", env=_job_env(tmp_path, github, FLEETCI_HOST_PROXY=github.url))
    assert "is not usable (HTTP 404)" in one_line_error(r)
    assert not (tmp_path / "job-cache" / "proxy.pid").exists()


def test_well_known_socket_is_found_and_can_be_opted_out_of(
    fleetci_fd: RunCli, github: Emulator, host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auto-detection (no variable set): the host's well-known socket, here pointed at the module's host
    proxy (the real /run/fleetci belongs to this machine); ``--no-host-proxy`` starts a proxy anyway."""
    import fleetci.cache.hostproxy as hostproxy

    monkeypatch.setattr(hostproxy, "WELL_KNOWN_SOCKET", str(host.socket))
    env = _job_env(tmp_path, github)
    r = fleetci_fd("cache", "start", "--no-probe", env=env)
    assert r.returncode == 0 and f"using the host proxy (pid {host.pid})" in r.stdout, r.stderr
    # the same cache dir, opted out: a proxy of its own, which stop then stops (the marker is gone)
    r = fleetci_fd("cache", "start", "--no-host-proxy", "--port", "0", env=env)
    try:
        assert r.returncode == 0, r.stderr
        m = re.search(r"fleetci cache running \(pid (\d+)\)", r.stdout)
        assert m and int(m.group(1)) != host.pid, r.stdout
    finally:
        stopped = fleetci_fd("cache", "stop", env=env)
    assert stopped.returncode == 0 and "fleetci cache stopped" in stopped.stdout
    assert "no running proxy recorded" in one_line_error(fleetci_fd("cache", "stop", env=env))
    own_dir = tmp_path / "own"
    # a dead socket where the host service's should be: a note, and the job gets its own proxy
    dead = tmp_path / "dead.sock"
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(dead))
    monkeypatch.setattr(hostproxy, "WELL_KNOWN_SOCKET", str(dead))
    r = fleetci_fd("cache", "start", "--no-probe", "--port", "0", "--cache-dir", str(own_dir), env=env)
    try:
        assert r.returncode == 0, r.stderr
        assert f"fleetci: note: host proxy {dead} is not usable" in r.stderr
        assert "fleetci cache running (pid" in r.stdout
    finally:
        fleetci_fd("cache", "stop", "--cache-dir", str(own_dir), env=env)


TWO_JOBS = """\
name: two-jobs-one-host-proxy
on: push
jobs:
  first:
    runs-on: ubuntu-latest
    steps:
      - name: Start the API cache
        id: cache
        uses: fleetci/fleetci/actions/setup-p2p-cache@v1
        with:
          host-proxy: ${{ vars.HOST_PROXY }}
          upstream: ${{ vars.FLEETCI_UPSTREAM }}
      - name: Read through the cache
        env:
          TOKEN: ${{ secrets.GITHUB_TOKEN }}
          API: ${{ steps.cache.outputs.api-url }}
          URL_PATH: /repos/${{ vars.FLEETCI_REPO }}/actions/runs?per_page=7
        run: |
          head="$(curl -fsS -o /dev/null -D - -H "Authorization: token $TOKEN" "$API$URL_PATH")"
          echo "first job: $(printf '%s' "$head" | tr -d '\\r' | sed -n 's/^x-fleetci-cache: //Ip') via $API"
      - name: Stop the API cache
        if: always()
        run: fleetci cache stop
  second:
    needs: first
    runs-on: ubuntu-latest
    steps:
      - name: Start the API cache
        id: cache
        uses: fleetci/fleetci/actions/setup-p2p-cache@v1
        with:
          host-proxy: ${{ vars.HOST_PROXY }}
          upstream: ${{ vars.FLEETCI_UPSTREAM }}
      - name: Read through the cache
        env:
          TOKEN: ${{ secrets.GITHUB_TOKEN }}
          OTHER: ${{ secrets.OTHER_TOKEN }}
          URL_PATH: /repos/${{ vars.FLEETCI_REPO }}/actions/runs?per_page=7
        run: |
          for who in TOKEN OTHER; do
            url="$FLEETCI_API_URL$URL_PATH"
            head="$(curl -fsS -o /dev/null -D - -H "Authorization: token ${!who}" "$url")"
            outcome="$(printf '%s' "$head" | tr -d '\\r' | sed -n 's/^x-fleetci-cache: //Ip')"
            echo "second job $who: $outcome via $FLEETCI_API_URL"
          done
      - name: Stop the API cache
        if: always()
        run: fleetci cache stop
"""


@pytest.mark.timeout(240)
def test_two_jobs_share_the_host_proxy_under_act(github: Emulator, host: Host, tmp_path: Path) -> None:
    workflow = tmp_path / "two-jobs.yml"
    workflow.write_text(TWO_JOBS, encoding="utf-8")
    run, leftovers = act_with_a_cache(
        github,
        workflow,
        tmp_path,
        variables={"HOST_PROXY": str(host.socket)},
        secrets={"OTHER_TOKEN": tok("bob")},
        timeout=220,
    )
    assert run.proc.returncode == 0, run.describe()
    assert run.job_results == ["success", "success"], run.describe()
    lines = [part for ln in run.output_lines for part in ln.splitlines()]
    using = [ln for ln in lines if "fleetci cache: using the host proxy" in ln]
    assert len(using) == 2 and all(f"(pid {host.pid})" in ln for ln in using), run.describe()
    assert f"first job: MISS via {host.url}" in lines, run.describe()
    # the second job's first read of the URL the first job fetched is a HIT; another token misses
    assert f"second job TOKEN: HIT via {host.url}" in lines, run.describe()
    assert f"second job OTHER: MISS via {host.url}" in lines, run.describe()
    kept = [ln for ln in lines if f"the host proxy at {host.url} keeps running" in ln]
    assert len(kept) == 2, run.describe()
    assert leftovers == [], f"the jobs started proxies of their own: {leftovers}"
    assert process_alive(host.pid)


# --- review findings (issue 16): a degraded host proxy, impostors on its TCP port, jobs sharing a dir ---


def _serve(github: Emulator, work: Path, *argv: str, netns: bool = False, **env: str) -> Service:
    """A second host proxy of its own (function-scoped), on a socket in ``work``; ``netns``: in a network
    namespace of its own (as in a container with the socket bind-mounted): its loopback TCP port is not
    the one jobs on the host reach."""
    serve = fleetci_argv(
        "cache", "serve", "--no-probe", "--upstream", github.url, "--socket", str(work / "proxy.sock"),
        "--cache-dir", str(work / "state"), *argv,
    )  # fmt: skip
    if netns:
        serve = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *serve]
    return spawn(serve, env=clean_env(**env))


def test_a_degraded_host_proxy_is_reused_with_a_note(
    fleetci: RunCli, github: Emulator, tmp_path: Path
) -> None:
    """Its shared store (a real redis-server, stopped) is down: it still serves, so jobs use it."""
    from support.redis import RedisServer

    store = RedisServer(tmp_path / "redis").start()
    store.kill()
    work = tmp_path / "degraded"
    svc = _serve(
        github, work, "--port", "0", "--backend", store.url,
        CACHE_REDIS_PASSWORD=store.password, FLEETCI_CACHE_SECRET="fleet-secret-for-the-degraded-test",
    )  # fmt: skip
    try:
        sock = work / "proxy.sock"
        r = run_fleetci("cache", "start", env=_job_env(tmp_path, github, FLEETCI_HOST_PROXY=str(sock)))
        assert r.returncode == 0, r.stderr
        assert f"using the host proxy (pid {svc.proc.pid}) at {svc.url}" in r.stdout
        notes = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(notes) == 1 and "is degraded (its shared store redis://" in notes[0], r.stderr
        assert store.password not in r.stderr
        status = fleetci("cache", "service", "status", "--root", str(tmp_path), "--socket", str(sock))
        assert status.returncode == 0 and "degraded (shared store down)" in status.stdout, status.stdout
    finally:
        svc.stop()


class _Impostor:
    """Whoever holds a loopback TCP port: answers health as a fleetci proxy would and keeps every
    Authorization header it is sent (what a local user who took the port would collect)."""

    def __init__(self, port: int, health: dict[str, object]) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        collected = self.collected = []  # type: list[str]
        body = json.dumps(health).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization"):
                    collected.append(self.headers["Authorization"])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_impostor_on_the_tcp_port_the_socket_names_is_refused(
    fleetci_fd: RunCli, github: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket (its permissions are the trust anchor) names a TCP port that, from the job, another
    process answers: the job refuses to send it tokens (named: an error; found by itself: its own proxy)."""
    from fleetci.http import free_port

    port = free_port()
    work = tmp_path / "netns"
    svc = _serve(github, work, "--port", str(port), netns=True)
    sock = work / "proxy.sock"
    real = get("http://localhost", "/_fleetci/health", "alice", uds=sock).json()
    assert real["proxy_url"] == f"http://127.0.0.1:{port}"
    impostor = _Impostor(port, {**real, "instance": "0" * 32})  # all it can know, but not the instance
    try:
        env = _job_env(tmp_path, github, FLEETCI_HOST_PROXY=str(sock))
        r = run_fleetci("cache", "start", env=env)
        line = one_line_error(r)
        assert f"its TCP address http://127.0.0.1:{port} is answered by another process" in line, line
        assert "FLEETCI_API_URL" not in (tmp_path / "GITHUB_ENV").read_text()
        import fleetci.cache.hostproxy as hostproxy

        monkeypatch.setattr(hostproxy, "WELL_KNOWN_SOCKET", str(sock))
        own = tmp_path / "own"
        env = _job_env(tmp_path, github, CACHE_DIR=str(own))
        r = fleetci_fd("cache", "start", "--no-probe", "--port", "0", env=env)
        try:
            assert r.returncode == 0, r.stderr
            assert "is answered by another process" in r.stderr and "fleetci cache running (pid" in r.stdout
        finally:
            fleetci_fd("cache", "stop", env=env)
        assert impostor.collected == []
    finally:
        impostor.close()
        svc.stop()


def test_an_impostor_named_by_url_is_checked_against_the_socket(
    github: Emulator, host: Host, tmp_path: Path
) -> None:
    """``CACHE_HOST_PROXY=http://…`` names a port another process holds; it relays the real proxy's
    health word for word (the TCP port serves it to anyone). The socket it names says otherwise."""
    real = get(host.url, "/_fleetci/health", "alice").json()
    impostor = _Impostor(0, real)
    try:
        r = run_fleetci("cache", "start", env=_job_env(tmp_path, github, FLEETCI_HOST_PROXY=impostor.url))
        line = one_line_error(r)
        assert f"says its TCP address is {host.url}, not {impostor.url}" in line, line
        assert impostor.collected == []
    finally:
        impostor.close()


def test_a_host_proxy_sharing_entries_between_tokens_is_not_reused(github: Emulator, tmp_path: Path) -> None:
    work = tmp_path / "scoped"
    svc = _serve(github, work, "--port", "0", CACHE_SHARED_SCOPE="fleet")
    try:
        r = run_fleetci(
            "cache", "start", env=_job_env(tmp_path, github, FLEETCI_HOST_PROXY=str(work / "proxy.sock"))
        )
        line = one_line_error(r)
        assert "shares entries between tokens (CACHE_SHARED_SCOPE)" in line and "=off" in line, line
    finally:
        svc.stop()


def test_concurrent_jobs_in_one_cache_dir_keep_their_own_state(
    github: Emulator, host: Host, tmp_path: Path
) -> None:
    """Two jobs reuse the host proxy and a third runs its own proxy, all in one cache dir (the default
    ~/.cache/fleetci of a runner user): each stop releases only its own job's state."""
    shared_dir = str(tmp_path / "shared-cache")

    def job(name: str, **extra: str) -> dict[str, str]:
        d = tmp_path / name
        d.mkdir()
        return _job_env(d, github, CACHE_DIR=shared_dir, **extra)

    own, first, second = job("own"), job("first"), job("second", FLEETCI_HOST_PROXY=str(host.socket))
    first["FLEETCI_HOST_PROXY"] = str(host.socket)
    r = run_fleetci("cache", "start", "--no-host-proxy", "--port", "0", "--no-probe", env=own)
    assert r.returncode == 0, r.stderr
    m = re.search(r"fleetci cache running \(pid (\d+)\)", r.stdout)
    assert m, r.stdout
    own_pid = int(m.group(1))
    try:
        for env in (first, second):
            r = run_fleetci("cache", "start", env=env)
            assert r.returncode == 0 and "using the host proxy" in r.stdout, r.stderr
        for env in (first, second):  # later steps of each job see what its own start exported
            exported = _lines(Path(env["GITHUB_ENV"]))
            r = run_fleetci("cache", "stop", env={**env, **exported})
            assert r.returncode == 0, r.stderr
            assert f"the host proxy at {host.url} keeps running" in r.stdout
            assert process_alive(own_pid)  # the other job's proxy, and its pid file, are untouched
        r = run_fleetci("cache", "stop", env={**own, **_lines(Path(own["GITHUB_ENV"]))})
        assert r.returncode == 0 and f"fleetci cache stopped (pid {own_pid})" in r.stdout, r.stderr
    finally:
        if process_alive(own_pid):
            os.kill(own_pid, 15)
    assert process_alive(host.pid)
