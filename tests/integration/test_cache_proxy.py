"""The caching proxy as a real process in front of the real emulator (and real clients: gh, PyGithub)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import Proxy, clean_env, one_line_error, run_fleetci, start_proxy, wait_until


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


def admin(emulator: Any, **config: Any) -> None:
    r = httpx.post(f"{emulator.url}/_emulator/config", json=config, timeout=10)
    assert r.status_code < 300, r.text


def charged(emulator: Any, login: str) -> int:
    return int(emulator.emulator.charged(token(login)))


def org_repo(emulator: Any) -> str:
    r = httpx.get(f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {token('alice')}"})
    return str(r.json()[0]["full_name"])


def test_hit_after_miss_and_uncharged_revalidation(emulator: Any, proxy: Proxy) -> None:
    repo = org_repo(emulator)
    before = charged(emulator, "alice")
    with proxy.client(token("alice")) as c:
        first = c.get(f"/repos/{repo}")
        second = c.get(f"/repos/{repo}")
        third = c.get(f"/repos/{repo}", headers={"Cache-Control": "no-cache"})
    assert first.status_code == second.status_code == third.status_code == 200
    assert [r.headers["X-Fleetci-Cache"] for r in (first, second, third)] == ["MISS", "HIT", "REVALIDATED"]
    assert first.json() == second.json() == third.json()
    assert charged(emulator, "alice") - before == 1  # the 304 is free
    stats = proxy.stats()
    assert stats["local_hits"] == 1 and stats["revalidations"] == 1 and stats["misses"] == 1


def test_client_conditional_request_gets_304_from_cache(emulator: Any, proxy: Proxy) -> None:
    repo = org_repo(emulator)
    with proxy.client(token("alice")) as c:
        etag = c.get(f"/repos/{repo}").headers["ETag"]
        again = c.get(f"/repos/{repo}", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.headers["X-Fleetci-Cache"] == "HIT"


def test_fifty_concurrent_identical_requests_make_one_upstream_call(emulator: Any, proxy: Proxy) -> None:
    admin(emulator, latency_ms=[400, 400])
    repo = org_repo(emulator)
    before = charged(emulator, "alice")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=proxy.url,
            timeout=30,
            headers={"Authorization": f"token {token('alice')}"},
            limits=httpx.Limits(max_connections=60),
        ) as c:
            return await asyncio.gather(*(c.get(f"/repos/{repo}/actions/runs") for _ in range(50)))

    responses = asyncio.run(burst())
    assert all(r.status_code == 200 for r in responses)
    outcomes = sorted(r.headers["X-Fleetci-Cache"] for r in responses)
    assert charged(emulator, "alice") - before == 1
    assert outcomes.count("MISS") == 1 and outcomes.count("COALESCED") == 49
    assert len({r.content for r in responses}) == 1


def test_token_b_never_gets_token_a_private_data(emulator: Any, proxy: Proxy) -> None:
    with proxy.client(token("alice")) as a, proxy.client(token("bob")) as b:
        a_list = a.get("/user/repos?per_page=100")
        a_secret = a.get("/repos/alice/secret-project")
        b_list = b.get("/user/repos?per_page=100")
        b_secret = b.get("/repos/alice/secret-project")
        anon = httpx.get(f"{proxy.url}/repos/alice/secret-project")
    assert "alice/secret-project" in {r["full_name"] for r in a_list.json()}
    assert a_secret.status_code == 200
    assert b_list.headers["X-Fleetci-Cache"] == "MISS"  # not alice's entry
    assert "alice/secret-project" not in {r["full_name"] for r in b_list.json()}
    assert b_secret.status_code == 404 and anon.status_code in (401, 404)
    # and the token itself is nowhere in the cache file
    con = sqlite3.connect(proxy.cache_dir / "cache.db")
    dump = "\n".join(con.iterdump())
    assert token("alice") not in dump and token("bob") not in dump


def test_non_get_and_graphql_pass_through(emulator: Any, proxy: Proxy) -> None:
    before = charged(emulator, "alice")
    with proxy.client(token("alice")) as c:
        r1 = c.post("/orgs/octo-org/actions/runners/registration-token")
        r2 = c.post("/orgs/octo-org/actions/runners/registration-token")
        g = c.post(
            "/graphql", json={"query": 'mutation { addStar(input: {starrableId: "x"}) { clientMutationId } }'}
        )
        rl = c.get("/rate_limit")
    assert r1.status_code == r2.status_code == 201
    assert r1.headers["X-Fleetci-Cache"] == r2.headers["X-Fleetci-Cache"] == "BYPASS"
    assert g.headers["X-Fleetci-Cache"] == "BYPASS" and g.json()["errors"][0]["type"] == "NOT_FOUND"
    assert rl.headers["X-Fleetci-Cache"] == "BYPASS"
    # GraphQL spends its own budget (points), never the REST one; /rate_limit is free
    assert charged(emulator, "alice") - before == 2
    assert emulator.emulator.graphql_points(token("alice")) == 1


def test_link_pagination_points_back_at_proxy(emulator: Any, proxy: Proxy) -> None:
    seen: list[str] = []
    url: str | None = f"{proxy.url}/orgs/octo-org/repos?per_page=2"
    with proxy.client(token("alice")) as c:
        while url:
            r = c.get(url)
            assert r.status_code == 200
            seen += [x["full_name"] for x in r.json()]
            url = r.links.get("next", {}).get("url")
            if url:
                assert url.startswith(proxy.url), url
    direct = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos?per_page=100",
        headers={"Authorization": f"token {token('alice')}"},
    ).json()
    assert seen == [x["full_name"] for x in direct] and len(seen) > 2


def test_primary_rate_limit_stops_upstream_calls_and_serves_stale(emulator: Any, proxy: Proxy) -> None:
    repo = org_repo(emulator)
    with proxy.client(token("bob")) as c:
        assert c.get("/orgs/octo-org/repos").status_code == 200
        admin(emulator, primary_limit=charged(emulator, "bob") + 1)
        assert c.get(f"/repos/{repo}").status_code == 200  # the last allowed call: remaining hits 0
        spent = charged(emulator, "bob")
        blocked = c.get(f"/repos/{repo}/actions/runners")
        stale = c.get("/orgs/octo-org/repos", headers={"Cache-Control": "no-cache"})
    assert blocked.status_code == 429 and int(blocked.headers["Retry-After"]) > 0
    assert "rate limit" in blocked.json()["message"]
    assert stale.status_code == 200 and stale.headers["X-Fleetci-Cache"] == "STALE"
    assert charged(emulator, "bob") == spent  # nothing more reached GitHub for bob
    with proxy.client(token("alice")) as other:  # other tokens are unaffected
        assert other.get(f"/repos/{repo}/actions/runners").status_code == 200


@pytest.mark.parametrize("retry_after", [7, None])
def test_secondary_rate_limit(emulator: Any, proxy: Proxy, retry_after: int | None) -> None:
    repo = org_repo(emulator)
    with proxy.client(token("alice")) as c:
        assert c.get(f"/repos/{repo}").status_code == 200
        admin(emulator, secondary_for_seconds=300, secondary_retry_after=retry_after)
        stale = c.get(f"/repos/{repo}", headers={"Cache-Control": "no-cache"})
        requests_before = httpx.get(f"{emulator.url}/_emulator/stats").json()["requests"]
        blocked = c.get(f"/repos/{repo}/actions/runs")
        requests_after = httpx.get(f"{emulator.url}/_emulator/stats").json()["requests"]
    assert stale.status_code == 200 and stale.headers["X-Fleetci-Cache"] == "STALE"
    assert blocked.status_code == 429
    expected = retry_after if retry_after is not None else 60
    assert expected - 2 <= int(blocked.headers["Retry-After"]) <= expected
    assert requests_after - requests_before == 1  # only the stats call itself


def test_stale_if_error_on_5xx_drop_and_dead_upstream(emulator: Any, proxy: Proxy) -> None:
    repo = org_repo(emulator)
    with proxy.client(token("alice")) as c:
        good = c.get(f"/repos/{repo}")
        admin(emulator, error_rate=1.0)
        on_5xx = c.get(f"/repos/{repo}", headers={"Cache-Control": "no-cache"})
        fresh_url_5xx = c.get(f"/repos/{repo}/actions/runners")
        admin(emulator, error_rate=0.0, drop_rate=1.0)
        on_drop = c.get(f"/repos/{repo}", headers={"Cache-Control": "no-cache"})
        nothing = c.get("/user/repos")
        emulator.stop()
        on_dead = c.get(f"/repos/{repo}", headers={"Cache-Control": "no-cache"})
    assert on_5xx.headers["X-Fleetci-Cache"] == on_drop.headers["X-Fleetci-Cache"] == "STALE"
    assert on_dead.headers["X-Fleetci-Cache"] == "STALE"
    assert on_5xx.json() == on_drop.json() == on_dead.json() == good.json()
    assert fresh_url_5xx.status_code >= 500  # nothing cached: the error passes through
    assert nothing.status_code == 502 and "no cached copy" in nothing.json()["message"]


def test_restart_keeps_entries(emulator: Any, proxy_factory: Any, tmp_path: Path) -> None:
    repo = org_repo(emulator)
    p1 = proxy_factory(emulator.url, cache_dir=tmp_path / "c")
    with p1.client(token("alice")) as c:
        assert c.get(f"/repos/{repo}").headers["X-Fleetci-Cache"] == "MISS"
    assert p1.stop() == 0
    spent = charged(emulator, "alice")
    p2 = proxy_factory(emulator.url, cache_dir=tmp_path / "c")
    with p2.client(token("alice")) as c:
        assert c.get(f"/repos/{repo}").headers["X-Fleetci-Cache"] == "HIT"
    assert charged(emulator, "alice") == spent
    # counters of the first run were saved at shutdown
    saved = run_fleetci(
        "cache", "stats", "--json", "--cache-dir", str(tmp_path / "c"), "--socket", str(tmp_path / "nosock")
    )
    assert saved.returncode == 0, saved.stderr
    assert json.loads(saved.stdout)["misses"] >= 1


def test_kill_9_during_writes_leaves_no_broken_entry(
    emulator: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    writer = textwrap.dedent(
        """
        import sys, os
        from pathlib import Path
        from fleetci.cache.store import CacheStore, Entry
        s = CacheStore(Path(sys.argv[1]))
        i = 0
        while True:
            s.put(Entry.create(f"k{i}", "scope", f"/x/{i}", 200, (("ETag", str(i)),), os.urandom(20000), 600))
            i += 1
            if i == 50:
                print("ready", flush=True)
        """
    )
    db = tmp_path / "kill" / "cache.db"
    db.parent.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", writer, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    from fleetci.cache.store import CacheStore

    store = CacheStore(db)
    assert store.corrupt_moved_to is None and store.integrity_ok()
    keys = store.keys()
    assert len(keys) >= 50
    assert all(store.get(k) is not None for k in keys)  # every row's body matches its digest
    # and the proxy itself, killed with -9 while storing misses, restarts on the same directory
    p = proxy_factory(emulator.url, cache_dir=tmp_path / "p")
    repo = org_repo(emulator)
    with p.client(token("alice")) as c:
        for n in range(1, 30):
            c.get(f"/repos/{repo}/actions/runs?per_page={n}")
    p.stop(signal.SIGKILL)
    p2 = proxy_factory(emulator.url, cache_dir=tmp_path / "p")
    with p2.client(token("alice")) as c:
        assert c.get(f"/repos/{repo}/actions/runs?per_page=1").headers["X-Fleetci-Cache"] == "HIT"


def test_corrupt_database_is_moved_aside_and_rebuilt(
    emulator: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "corrupt"
    cache_dir.mkdir()
    garbage = b"SQLite format 3\x00" + os.urandom(8192)
    (cache_dir / "cache.db").write_bytes(garbage)
    p = proxy_factory(emulator.url, cache_dir=cache_dir)
    with p.client(token("alice")) as c:
        assert c.get("/user/repos").status_code == 200
    moved = list(cache_dir.glob("cache.db.corrupt-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == garbage  # nothing lost
    p.stop()
    assert "corrupt" in p.log.read_text()


def test_gh_cli_through_unix_socket(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    gh = shutil.which("gh")
    assert gh, "the gh CLI (Debian package gh) is required"
    cfg = tmp_path / "gh"
    cfg.mkdir()
    (cfg / "config.yml").write_text(f"http_unix_socket: {proxy.socket}\n")
    env = clean_env(
        GH_CONFIG_DIR=str(cfg),
        GH_TOKEN=token("alice"),
        GH_NO_UPDATE_NOTIFIER="1",
        GH_PROMPT_DISABLED="1",
        NO_COLOR="1",
    )
    repo = org_repo(emulator)
    before = charged(emulator, "alice")
    outs = [
        subprocess.run(
            [gh, "api", "-i", f"repos/{repo}"], env=env, capture_output=True, text=True, timeout=60
        )
        for _ in range(2)
    ]
    for o in outs:
        assert o.returncode == 0, o.stderr
    assert "X-Fleetci-Cache: MISS" in outs[0].stdout and "X-Fleetci-Cache: HIT" in outs[1].stdout
    assert charged(emulator, "alice") - before == 1
    paged = subprocess.run(
        [gh, "api", "--paginate", "orgs/octo-org/repos?per_page=2", "--jq", ".[].full_name"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert paged.returncode == 0, paged.stderr
    direct = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos?per_page=100",
        headers={"Authorization": f"token {token('alice')}"},
    ).json()
    assert paged.stdout.split() == [x["full_name"] for x in direct]


def test_pygithub_through_base_url(emulator: Any, proxy: Proxy) -> None:
    from github import Auth, Github

    def walk() -> tuple[list[str], int]:
        gh = Github(base_url=proxy.url, auth=Auth.Token(token("alice")), per_page=2, retry=None)
        org = gh.get_organization("octo-org")
        names = [r.full_name for r in org.get_repos()]
        queued = org.get_repo(names[0].split("/")[1]).get_workflow_runs(status="queued").totalCount
        gh.close()
        return names, queued

    before = charged(emulator, "alice")
    first = walk()
    spent = charged(emulator, "alice") - before
    second = walk()
    assert first == second and len(first[0]) > 2
    assert charged(emulator, "alice") - before == spent  # the second walk was served from the cache
    assert proxy.stats()["local_hits"] >= spent


def test_metrics_and_stats_cli(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    with proxy.client(token("alice")) as c:
        c.get("/user/repos")
        c.get("/user/repos")
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert "fleetci_cache_local_hits_total 1.0" in metrics
    summary = tmp_path / "summary.md"
    out = run_fleetci(
        "cache",
        "stats",
        "--summary",
        "--cache-dir",
        str(proxy.cache_dir),
        "--socket",
        str(proxy.socket),
        env=clean_env(GITHUB_STEP_SUMMARY=str(summary)),
    )
    assert out.returncode == 0, out.stderr
    assert "local_hits" in out.stdout and "| local_hits | 1 |" in summary.read_text()
    js = run_fleetci("cache", "stats", "--json", "--url", proxy.url)
    data = json.loads(js.stdout)
    for key in (
        "local_hits",
        "peer_hits",
        "misses",
        "revalidations",
        "coalesced",
        "stale_served",
        "hit_rate",
        "api_calls_saved",
        "rate_limit_remaining",
        "cache_size",
        "connected_peers",
    ):
        assert key in data
    assert data["source"] == "live" and data["cache_size"] == 1


def test_clear_and_clear_stale(emulator: Any, proxy: Proxy) -> None:
    with proxy.client(token("alice")) as c:
        c.get("/user/repos")
        c.get("/orgs/octo-org/actions/runners")
    args = ("--cache-dir", str(proxy.cache_dir), "--socket", str(proxy.socket))
    stale = run_fleetci("cache", "clear", "--stale", *args)
    assert stale.returncode == 0 and "removed 0 stale" in stale.stdout
    full = run_fleetci("cache", "clear", *args)
    assert full.returncode == 0 and "removed 2 entries" in full.stdout
    with proxy.client(token("alice")) as c:  # the running proxy notices
        assert c.get("/user/repos").headers["X-Fleetci-Cache"] == "MISS"


def test_python_api_seed_names(emulator: Any, tmp_path: Path) -> None:
    from fleetci.cache import CachedGitHubCLI, GitHubAPICache
    from fleetci.cache.settings import cache_settings

    settings = cache_settings({"upstream": emulator.url, "cache_dir": str(tmp_path / "inproc")}, {}, {})
    before = charged(emulator, "alice")
    with CachedGitHubCLI(token=token("alice"), settings=settings) as gh:
        repos = gh.list_repos(owner="octo-org")
        runs = gh.get_workflow_runs(repos[0]["name"], owner="octo-org", status="queued")
        again = gh.list_repos(owner="octo-org")
        stats = gh.get_cache_stats()
    assert repos == again and all(r["status"] == "queued" for r in runs)
    assert stats["local_hits"] >= 1 and stats["api_calls_saved"] >= 1
    spent = charged(emulator, "alice") - before
    assert spent == stats["misses"]
    cache = GitHubAPICache(settings)
    assert cache.get("/users/octo-org/repos?per_page=100", f"Bearer {token('alice')}") is not None
    assert cache.get("/users/octo-org/repos?per_page=100", f"Bearer {token('bob')}") is None
    assert cache.clear_stale() == 0


def test_python_api_through_running_proxy(emulator: Any, proxy: Proxy) -> None:
    from fleetci.cache import CachedGitHubCLI

    with CachedGitHubCLI(token=token("alice"), api_url=proxy.url) as gh:
        gh.list_repos(owner="octo-org")
        gh.list_repos(owner="octo-org")
        assert gh.get_cache_stats()["local_hits"] >= 1


def test_start_stop_background(emulator: Any, tmp_path: Path) -> None:
    from fleetci.http import free_port

    cache_dir = tmp_path / "bg"
    env = clean_env(GITHUB_ENV=str(tmp_path / "env"), GITHUB_OUTPUT=str(tmp_path / "out"))
    port = str(free_port())
    started = run_fleetci(
        "cache", "start", "--upstream", emulator.url, "--port", port, "--cache-dir", str(cache_dir), env=env
    )
    try:
        assert started.returncode == 0, started.stderr
        exported = (tmp_path / "env").read_text()
        assert f"FLEETCI_API_URL=http://127.0.0.1:{port}" in exported
        gh_dir = next(ln.split("=", 1)[1] for ln in exported.splitlines() if ln.startswith("GH_CONFIG_DIR="))
        assert "http_unix_socket" in (Path(gh_dir) / "config.yml").read_text()
        assert "api-url=" in (tmp_path / "out").read_text()
        r = httpx.get(
            f"http://127.0.0.1:{port}/user/repos", headers={"Authorization": f"token {token('alice')}"}
        )
        assert r.status_code == 200
        # private responses, the gh token (hosts.yml) and request paths: 0600 files in 0700 directories
        modes = {p.relative_to(cache_dir).as_posix(): p.stat().st_mode & 0o777 for p in cache_dir.rglob("*")}
        for name in ("proxy.log", "proxy.pid", "cache.db", "cache.db-wal", "cache.db-shm", "gh/config.yml"):
            assert modes.get(name) == 0o600, (name, modes)
        assert modes["gh"] == 0o700 and cache_dir.stat().st_mode & 0o777 == 0o700, modes
    finally:
        stopped = run_fleetci("cache", "stop", "--cache-dir", str(cache_dir), env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_until(lambda: not (cache_dir / "proxy.sock").exists())


def test_port_already_in_use(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    port = proxy.url.rsplit(":", 1)[1]
    out = run_fleetci(
        "cache", "serve", "--upstream", emulator.url, "--port", port, "--cache-dir", str(tmp_path / "x")
    )
    assert "address already in use" in one_line_error(out)


def test_unreachable_upstream(tmp_path: Path) -> None:
    from fleetci.http import free_port

    out = run_fleetci(
        "cache",
        "serve",
        "--upstream",
        f"http://127.0.0.1:{free_port()}",
        "--port",
        "0",
        "--cache-dir",
        str(tmp_path / "x"),
    )
    assert "unreachable" in one_line_error(out)


def test_unwritable_cache_dir(emulator: Any, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = run_fleetci(
        "cache", "serve", "--upstream", emulator.url, "--port", "0", "--cache-dir", str(blocker / "cache")
    )
    assert "cache dir" in one_line_error(out)
    ro = tmp_path / "ro"
    ro.mkdir()
    if (
        os.geteuid() == 0
        and shutil.which("mount")
        and subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True).returncode
        == 0
    ):
        try:
            out = run_fleetci(
                "cache", "serve", "--upstream", emulator.url, "--port", "0", "--cache-dir", str(ro)
            )
            assert "not writable" in one_line_error(out)
        finally:
            subprocess.run(["umount", str(ro)], check=False)


def test_upstream_userinfo_is_never_printed_or_served(
    emulator: Any, proxy_factory: Any, tmp_path: Path
) -> None:
    secret = "s3cret-pw"
    port = emulator.url.rsplit(":", 1)[1]
    p = proxy_factory(f"http://x-access-token:{secret}@127.0.0.1:{port}")
    health = httpx.get(f"{p.url}/_fleetci/health", timeout=10).json()
    assert health["upstream"] == f"http://***@127.0.0.1:{port}"
    with p.client(token("alice")) as c:  # the client's own token goes upstream, not the URL's userinfo
        assert c.get("/user").json()["login"] == "alice"
    verify = run_fleetci("cache", "verify", "--local-only", "--socket", str(p.socket))
    assert verify.returncode == 0 and "***@" in verify.stdout and secret not in verify.stdout
    from fleetci.http import free_port

    dead = f"http://u:{secret}@127.0.0.1:{free_port()}"
    out = run_fleetci("cache", "serve", "--upstream", dead, "--port", "0", "--cache-dir", str(tmp_path / "d"))
    assert "unreachable" in one_line_error(out) and secret not in out.stderr + out.stdout
    out = run_fleetci("cache", "stats", "--url", dead)
    assert "cannot read stats" in one_line_error(out) and secret not in out.stderr
    p.stop()
    log = p.log.read_text()
    assert "***@127.0.0.1" in log and secret not in log


def test_summary_outside_actions(emulator: Any, proxy: Proxy) -> None:
    out = run_fleetci("cache", "stats", "--summary", "--url", proxy.url)
    assert "GITHUB_STEP_SUMMARY" in one_line_error(out)


def test_start_reports_failure_in_one_line(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    port = proxy.url.rsplit(":", 1)[1]
    out = run_fleetci(
        "cache",
        "start",
        "--upstream",
        emulator.url,
        "--port",
        port,
        "--cache-dir",
        str(tmp_path / "s"),
        "--timeout",
        "20",
    )
    assert "address already in use" in one_line_error(out)


def test_start_proxy_helper_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="did not start"):
        start_proxy("http://127.0.0.1:1", tmp_path / "c")


def test_head_is_served_from_the_get_entry(emulator: Any, proxy: Proxy) -> None:
    repo = org_repo(emulator)
    with proxy.client(token("alice")) as c:
        got = c.get(f"/repos/{repo}")
        head = c.head(f"/repos/{repo}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["X-Fleetci-Cache"] == "HIT"
    assert int(head.headers["Content-Length"]) == len(got.content)


@pytest.mark.parametrize(("cap", "expect_refusals"), [(2, False), (20, True)])
def test_upstream_concurrency_is_capped_per_token(
    emulator: Any, proxy_factory: Any, cap: int, expect_refusals: bool
) -> None:
    # The emulator refuses (secondary limit) more than 3 in-flight requests per token.
    admin(emulator, latency_ms=[300, 300], secondary_concurrency=3)
    p = proxy_factory(emulator.url, "--max-concurrency", str(cap))
    repo = org_repo(emulator)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=p.url, timeout=60, headers={"Authorization": f"token {token('alice')}"}
        ) as c:
            return await asyncio.gather(
                *(c.get(f"/repos/{repo}/actions/runs?per_page={n}") for n in range(1, 13))
            )

    statuses = [r.status_code for r in asyncio.run(burst())]
    if expect_refusals:
        assert any(s in (403, 429) for s in statuses), statuses
    else:
        assert statuses == [200] * 12


def test_bench_and_demo_bad_input() -> None:
    assert "--runners" in one_line_error(run_fleetci("bench", "cache", "--runners", "0"))
    assert "--latency-ms" in one_line_error(run_fleetci("bench", "cache", "--latency-ms", "fast"))
    assert "--samples" in one_line_error(run_fleetci("bench", "cache", "--samples", "1"))
    assert "invalid choice" in one_line_error(run_fleetci("bench", "nothing"))
    assert "--calls" in one_line_error(run_fleetci("demo", "--calls", "-5"))
    assert "--time-scale" in one_line_error(run_fleetci("demo", "--time-scale", "0"))


def test_version_answers_without_building_the_parser() -> None:
    from fleetci import __version__

    out = run_fleetci("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"fleetci {__version__}"


def test_bench_cache_prints_one_json_object_with_the_issue_keys() -> None:
    out = run_fleetci(
        "bench",
        "cache",
        "--runners",
        "2",
        "--calls",
        "10",
        "--samples",
        "10",
        "--time-scale",
        "2400",
        "--latency-ms",
        "0-5",
        "--json",
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    for key in (
        "runners",
        "calls_per_runner",
        "baseline_charged",
        "upstream_charged",
        "saved_ratio",
        "local_hit_http_p50_ms",
        "local_hit_inproc_p50_ms",
        "direct_p50_ms",
        "miss_overhead_p50_ms",
    ):
        assert key in data, key
    assert data["baseline_charged"] == 20 and data["errors"] == 0
    assert 0 < data["upstream_charged"] < data["baseline_charged"]


def test_demo_prints_the_table_of_calls_saved() -> None:
    out = run_fleetci(
        "demo", "--runners", "2", "--calls", "10", "--time-scale", "2400", "--latency-ms", "0-5", timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "charged GitHub calls without fleetci : 20" in out.stdout
    assert "calls saved" in out.stdout and "runner" in out.stdout
