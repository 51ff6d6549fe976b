"""Issue 17 (autoscaler): pools and decisions, settings, the CLI's bad input, the /_fleetci/changes long
poll (a real aiohttp server in this process), and the systemd template unit (checked by systemd)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetci.autoscale.pools import (
    Count,
    Planner,
    Pool,
    parse_pool,
    parse_pools,
    pool_for_job,
    pool_for_runner,
)
from fleetci.autoscale.settings import AutoscaleOptions, autoscale_settings
from fleetci.cache.changes import MAX_WAIT_S, ChangeFeed, handle_changes
from fleetci.errors import UsageError
from fleetci.process import alive
from fleetci.testing.openapi import OpenAPISpec
from support import RunCli, clean_env, one_line_error, wait_until
from support.emulator import tok

POOL = "self-hosted,linux,x64"


# -- pools and decisions -----------------------------------------------------------------------------------
def test_pool_syntax() -> None:
    p = parse_pool(" self-hosted, Linux ,X64:min=1:max=7 ")
    assert p == Pool(("self-hosted", "Linux", "X64"), 1, 7)
    assert parse_pool("gpu") == Pool(("gpu",), 0, 10)
    assert [x.name for x in parse_pools("a,b:max=3; c\nd,e")] == ["a,b", "c", "d,e"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "no pool"),
        (":max=3", "has no labels"),
        ("a:max=-1", "whole number"),
        ("a:max=x", "whole number"),
        ("a:max=99999999", "whole number"),
        ("a:min=5:max=2", "min 5 is more than max 2"),
        ("a:size=3", "expected min=N or max=N"),
        ("a:max", "expected min=N or max=N"),
        ("a;A", "given twice"),
    ],
)
def test_bad_pools_are_refused_in_one_line(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says) as err:
        parse_pools(text)
    assert "\n" not in str(err.value)


@given(st.text(max_size=200))
def test_any_pool_text_parses_or_is_one_line_value_error(text: str) -> None:
    try:
        pools = parse_pools(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert pools and all(p.labels and 0 <= p.min <= p.max for p in pools)


def test_a_job_goes_to_the_smallest_pool_having_all_its_labels() -> None:
    pools = parse_pools("self-hosted,linux,x64,gpu;self-hosted,linux,x64;self-hosted,linux,arm64")
    assert pool_for_job(pools, ["self-hosted", "Linux", "X64"]) == pools[1]  # case-insensitive
    assert pool_for_job(pools, ["self-hosted", "gpu"]) == pools[0]
    assert pool_for_job(pools, ["linux"]) == pools[1]  # ties: the first configured of the smallest
    assert pool_for_job(pools, ["ubuntu-latest"]) is None  # GitHub-hosted: not ours
    assert pool_for_runner(pools, ["self-hosted", "Linux", "X64", "gpu", "extra"]) == pools[0]
    assert pool_for_runner(pools, ["self-hosted", "Linux", "X64"]) == pools[1]
    assert pool_for_runner(pools, ["self-hosted"]) is None


def _plan(planner: Planner, pool: Pool, now: float, queued: int, busy: int = 0, idle: int = 0) -> Any:
    (d,) = planner.plan({pool.key: Count(queued, busy, idle)}, now)
    if d.call:
        planner.provided(pool, d.desired)
    return d


def test_min_max_clamp_and_scale_down_only_after_the_delay() -> None:
    pool = parse_pool("a:min=1:max=5")
    p = Planner((pool,), scale_down_delay=60)
    d = _plan(p, pool, 0, queued=0)
    assert (d.desired, d.call) == (1, True)  # min
    d = _plan(p, pool, 1, queued=9, busy=2)
    assert (d.wanted, d.desired, d.call) == (5, 5, True)  # max, at once
    d = _plan(p, pool, 2, queued=1, busy=1)
    assert (d.wanted, d.desired, d.held, d.call) == (2, 5, True, False)  # lower: held
    d = _plan(p, pool, 61, queued=1, busy=1)
    assert (d.desired, d.held) == (5, True)  # 59 s lower so far
    d = _plan(p, pool, 62, queued=0, busy=3)
    assert (d.desired, d.call) == (3, True)  # 60 s lower: shrinks to what is wanted now
    d = _plan(p, pool, 63, queued=0, busy=0)
    assert d.held and d.desired == 3
    d = _plan(p, pool, 64, queued=4, busy=0)
    assert (d.desired, d.held, d.call) == (4, False, True)  # growing again resets the delay
    d = _plan(p, pool, 65, queued=4, busy=0)
    assert not d.call  # unchanged: the provider is not asked again


def test_zero_delay_scales_down_at_once() -> None:
    pool = parse_pool("a:max=5")
    p = Planner((pool,), scale_down_delay=0)
    assert _plan(p, pool, 0, queued=3).desired == 3
    assert _plan(p, pool, 0, queued=0).desired == 0


@given(
    lo=st.integers(0, 20),
    span=st.integers(0, 20),
    steps=st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), min_size=1, max_size=20),
)
def test_desired_stays_within_bounds_and_never_drops_before_the_delay(
    lo: int, span: int, steps: list[tuple[int, int]]
) -> None:
    pool = Pool(("a",), lo, lo + span)
    p = Planner((pool,), scale_down_delay=1000)
    peak = -1
    for t, (queued, busy) in enumerate(steps):
        d = _plan(p, pool, float(t), queued, busy)
        assert pool.min <= d.desired <= pool.max
        assert d.desired >= peak  # the delay (1000 s) never passes within 20 steps
        peak = max(peak, d.desired)


# -- settings ----------------------------------------------------------------------------------------------
def test_settings_follow_flag_env_config_default() -> None:
    config = {"autoscale": {"owner": "cfg-org", "poll_interval": 30, "pools": ["a,b:max=3", "c"]}}
    s = autoscale_settings({}, config, {})
    assert (s.owner, s.poll_interval, [p.name for p in s.pools]) == ("cfg-org", 30.0, ["a,b", "c"])
    env = {"AUTOSCALE_POLL_INTERVAL": "15", "AUTOSCALE_POOLS": "x:max=2;y", "GH_TOKEN": "t0k"}
    s = autoscale_settings({}, config, env)
    assert (s.poll_interval, [p.name for p in s.pools], s.token) == (15.0, ["x", "y"], "t0k")
    s = autoscale_settings({"poll_interval": "5", "pools": ["z:min=1"]}, config, env)
    assert (s.poll_interval, s.pools) == (5.0, (Pool(("z",), 1, 10),))
    d = autoscale_settings({"owner": "o"}, {}, {})
    assert (d.poll_interval, d.scale_down_delay, [p.name for p in d.pools]) == (120.0, 300.0, [POOL])
    assert "t0k" not in repr(autoscale_settings({"owner": "o"}, {}, {"GH_TOKEN": "t0k"}))


@pytest.mark.parametrize(
    ("flags", "config", "env", "says"),
    [
        ({}, {}, {}, "no owner"),
        ({"owner": "o", "poll_interval": "0"}, {}, {}, "invalid value for --poll-interval"),
        ({"owner": "o"}, {}, {"AUTOSCALE_SCALE_DOWN_DELAY": "nan"}, "$AUTOSCALE_SCALE_DOWN_DELAY"),
        ({"owner": "bad owner"}, {}, {}, "organization or user name"),
        ({"owner": "o"}, {"autoscale": {"pools": [1, 2]}}, {}, "list of strings"),
        ({"owner": "o"}, {"autoscale": {"pools": "a:max=x"}}, {}, "config key 'autoscale.pools'"),
        ({"owner": "o"}, {"autoscale": {"pol_interval": 3}}, {}, "did you mean 'poll_interval'"),
        ({"owner": "o", "scale_cmd": "x", "docker_image": "y"}, {}, {}, "choose one"),
        ({"owner": "o", "api_url": "ftp://x"}, {}, {}, "http(s) URL"),
    ],
)
def test_bad_settings_are_one_line(
    flags: dict[str, Any], config: dict[str, Any], env: dict[str, str], says: str
) -> None:
    with pytest.raises(UsageError) as err:
        autoscale_settings(flags, config, env)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_every_setting_has_a_flag_or_is_documented_as_env_only() -> None:
    assert {s.name for s in AutoscaleOptions.settings if not s.flag} == {"pools", "token"}


# -- the command line --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "env", "says", "code"),
    [
        (("autoscale", "--bogus"), {}, "unrecognized arguments: --bogus", 2),
        (("autoscale", "--once"), {"GH_TOKEN": "x"}, "no owner", 2),
        (
            ("autoscale", "--once", "--owner", "o", "--api-url", "http://127.0.0.1:9"),
            {},
            "no GitHub token",
            2,
        ),
        (("autoscale", "--once", "--owner", "o", "--pool", "a:min=3:max=1"), {"GH_TOKEN": "x"}, "--pool", 2),
        (("autoscale", "--owner", "o", "--poll-interval", "inf"), {"GH_TOKEN": "x"}, "--poll-interval", 2),
        (("autoscale", "--owner", "o", "--budget-reserve", "-1"), {"GH_TOKEN": "x"}, "--budget-reserve", 2),
        (("autoscale", "--owner", "o"), {"GH_TOKEN": "x", "AUTOSCALE_BUDGET_RESERVE": "many"}, "RESERVE", 2),
        (("autoscale", "--owner", "o", "--scale-cmd", "'unclosed"), {"GH_TOKEN": "x"}, "cannot be split", 2),
    ],
)
def test_cli_bad_input_is_one_line(
    fleetci: RunCli, args: tuple[str, ...], env: dict[str, str], says: str, code: int
) -> None:
    r = fleetci(*args, env=clean_env(**env))
    assert r.returncode == code, r
    assert says in one_line_error(r)


def test_cli_unreachable_api_is_one_line(fleetci: RunCli, unused_port: int) -> None:
    r = fleetci(
        "autoscale", "--once", "--owner", "o", "--api-url", f"http://127.0.0.1:{unused_port}",
        env=clean_env(GH_TOKEN="sekrit-token"),
    )  # fmt: skip
    line = one_line_error(r)
    assert r.returncode == 1 and "unreachable" in line and "sekrit-token" not in r.stderr + r.stdout


def test_cli_corrupt_config_file_is_one_line(fleetci: RunCli, tmp_path: Path) -> None:
    bad = tmp_path / "config.yml"
    bad.write_text("autoscale: [unclosed\n")
    r = fleetci("--config", str(bad), "autoscale", "--once", "--owner", "o", env=clean_env(GH_TOKEN="x"))
    assert r.returncode == 2 and "not valid YAML" in one_line_error(r)
    bad.write_text("autoscale:\n  pools: {a: 1}\n")
    r = fleetci("--config", str(bad), "autoscale", "--once", "--owner", "o", env=clean_env(GH_TOKEN="x"))
    assert r.returncode == 2 and "autoscale.pools" in one_line_error(r)


def test_cli_once_against_the_emulator_calls_the_command_and_logs_cache_stats(
    fleetci_fd: RunCli, emulator: Any, tmp_path: Path
) -> None:
    out = tmp_path / "calls.jsonl"
    cmd = f"sh -c {shlex.quote('cat >> ' + str(out))}"
    r = fleetci_fd(
        "autoscale", "--once", "--owner", "octo-org", "--api-url", emulator.url, "--scale-cmd", cmd,
        "--pool", "self-hosted,linux,x64:max=2", "--pool", "self-hosted,linux,arm64",
        env=clean_env(GH_TOKEN=tok("alice")),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert [c["labels"] for c in calls] == [
        ["self-hosted", "linux", "x64"],
        ["self-hosted", "linux", "arm64"],
    ]
    assert all(c["desired"] <= (2 if "x64" in c["labels"] else 10) for c in calls)
    assert all(set(c) == {"owner", "labels", "current", "desired", "queued", "busy", "idle"} for c in calls)
    cycle = [ln for ln in r.stderr.splitlines() if "cycle 1:" in ln]
    assert len(cycle) == 1 and "no cache proxy" in cycle[0]  # straight to the API: said, not hidden
    assert tok("alice") not in r.stderr + r.stdout


def test_cli_once_writes_the_decisions_to_the_step_summary(
    fleetci: RunCli, emulator: Any, tmp_path: Path
) -> None:
    summary = tmp_path / "summary.md"
    r = fleetci(
        "autoscale", "--once", "--owner", "octo-org", "--api-url", emulator.url,
        "--pool", "self-hosted,qpu:min=2",
        env=clean_env(GH_TOKEN=tok("alice"), GITHUB_STEP_SUMMARY=str(summary)),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    text = summary.read_text()
    assert (
        "| pool | queued | busy | current | desired |" in text
        and "| self-hosted,qpu | 0 | 0 | 0 | 2 |" in text
    )


def test_hostile_job_labels_reach_the_log_without_control_characters(emulator: Any) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    repos = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {tok('alice')}"}
    ).json()
    owner, name = repos[0]["full_name"].split("/")
    emulator.emulator.queue_run(owner, name, ["evil\nfleetci autoscale: cycle 99: fake\x1b[2J"])
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org",
        api_url=emulator.url,
        token=tok("alice"),
        pools=["gpu"],
        env={},
        config={},
        say=lines.append,
    )
    try:
        scaler.once()
    finally:
        scaler.close()
    unmatched = [ln for ln in lines if "match no pool" in ln]
    assert len(unmatched) == 1 and "evil?fleetci autoscale: cycle 99: fake?[2J" in unmatched[0]
    assert all("\n" not in ln and "\x1b" not in ln for ln in lines)


def test_without_a_proxy_the_loop_polls_and_a_failing_cycle_does_not_end_it(emulator: Any) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", poll_interval=0.1, api_url=emulator.url, token=tok("alice"), pools=["gpu"],
        env={}, config={}, say=lines.append,
    )  # fmt: skip
    try:
        assert scaler.cache is None  # the emulator is no fleetci proxy: plain polling
        assert scaler.run(cycles=3) == 3 and scaler.cycles == 3
        emulator.emulator.configure(error_rate=1.0)  # every call 502/503: retried, then one line
        assert scaler.run(cycles=1) == 1 and scaler.cycles == 3
        assert any(ln.startswith("error: cycle failed:") and "HTTP 50" in ln for ln in lines), lines
    finally:
        emulator.emulator.configure(error_rate=0.0)
        scaler.close()


def test_cli_failing_and_hanging_scale_commands_fail_once_in_one_line(
    fleetci: RunCli, emulator: Any, tmp_path: Path
) -> None:
    base = ("autoscale", "--once", "--owner", "octo-org", "--api-url", emulator.url, "--pool", "gpu")
    env = clean_env(GH_TOKEN=tok("alice"))
    r = fleetci(*base, "--scale-cmd", "sh -c 'echo out of quota >&2; exit 4'", env=env)
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert errors == [
        "fleetci autoscale: error: pool gpu: scale command sh exited 4: out of quota (asked again in 5s)"
    ]
    r = fleetci(*base, "--scale-cmd", "sleep 30", "--scale-cmd-timeout", "0.3", env=env)
    assert r.returncode == 1 and "did not finish within 0.3s (killed)" in r.stderr
    r = fleetci(*base, "--scale-cmd", str(tmp_path / "missing-script"), env=env)
    assert r.returncode == 1 and "cannot run" in r.stderr and "Traceback" not in r.stderr


def test_docker_image_without_a_daemon_is_one_line(fleetci: RunCli, emulator: Any, tmp_path: Path) -> None:
    r = fleetci(
        "autoscale", "--once", "--owner", "octo-org", "--api-url", emulator.url, "--docker-image", "runner:1",
        "--docker-host", f"unix://{tmp_path}/no-docker.sock", env=clean_env(GH_TOKEN=tok("alice")),
    )  # fmt: skip
    assert r.returncode == 1 and "no docker daemon reachable" in one_line_error(r)


@pytest.fixture
def unused_port() -> int:
    from fleetci.http import free_port

    return free_port()


# -- GET /_fleetci/changes ---------------------------------------------------------------------------------
@pytest.fixture
def changes() -> Iterator[tuple[str, ChangeFeed, asyncio.AbstractEventLoop]]:
    """``handle_changes`` behind a real aiohttp server on 127.0.0.1, in a loop thread of its own."""
    import threading

    feed = ChangeFeed(max_waiters=2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    app = web.Application()

    async def route(request: web.Request) -> web.Response:
        return await handle_changes(feed, request)

    app.router.add_get("/_fleetci/changes", route)
    server = TestServer(app, host="127.0.0.1")
    asyncio.run_coroutine_threadsafe(server.start_server(), loop).result(10)
    try:
        yield str(server.make_url("/_fleetci/changes")), feed, loop
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_changes_answers_when_the_counter_moves_and_on_timeout(
    changes: tuple[str, ChangeFeed, asyncio.AbstractEventLoop],
) -> None:
    url, feed, loop = changes
    assert httpx.get(url).json() == {"seq": 0}
    assert httpx.get(url, params={"after": "0", "wait": "0.2"}).json() == {"seq": 0}  # timed out
    with httpx.Client(timeout=20) as c:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(c.get, url, params={"after": "0", "wait": "15"})
            from support import wait_until

            assert wait_until(lambda: feed.waiting == 1)
            loop.call_soon_threadsafe(feed.bump)
            assert waiting.result(10).json() == {"seq": 1}
    assert httpx.get(url, params={"after": "0", "wait": "15"}).json() == {"seq": 1}  # already past


def test_changes_caps_waiters_and_refuses_bad_parameters(
    changes: tuple[str, ChangeFeed, asyncio.AbstractEventLoop],
) -> None:
    import concurrent.futures

    url, feed, loop = changes
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        # held for 30 s (no timing race on a loaded box), released explicitly below
        held = [
            pool.submit(httpx.get, url, params={"after": "0", "wait": "30"}, timeout=60) for _ in range(2)
        ]
        from support import wait_until

        assert wait_until(lambda: feed.waiting == 2)
        r = httpx.get(url, params={"after": "0", "wait": "2"})
        assert (
            r.status_code == 503 and r.headers["Retry-After"] == "1" and "long polls" in r.json()["message"]
        )
        loop.call_soon_threadsafe(feed.bump)
        assert [f.result(30).json() for f in held] == [{"seq": 1}, {"seq": 1}]
    for query in (
        "after=-1",
        "after=1.5",
        "after=%EF%BC%91",
        "wait=abc",
        "wait=inf",
        "wait=-1",
        "wait=1&wait=2",
        "after=" + "1" * 100,
    ):
        r = httpx.get(f"{url}?{query}")
        assert r.status_code == 400 and "\n" not in r.json()["message"], (query, r.text)


def test_changes_wait_is_capped() -> None:
    from aiohttp.test_utils import make_mocked_request

    from fleetci.cache.changes import parse_changes_query

    assert parse_changes_query(make_mocked_request("GET", "/?after=3&wait=1e9"), 0) == (3, MAX_WAIT_S)
    assert parse_changes_query(make_mocked_request("GET", "/"), 7) == (7, 0.0)


# -- systemd -----------------------------------------------------------------------------------------------
def test_service_template_is_verified_by_systemd_and_keeps_the_token_private(
    fleetci: RunCli, tmp_path: Path
) -> None:
    from tests.unit.test_cache_service import unit_settings, verify

    from fleetci.autoscale.service import TEMPLATE, env_path

    root = tmp_path / "root"
    env = clean_env(GH_TOKEN="ghp_sekrit", AUTOSCALE_POLL_INTERVAL="45")
    r = fleetci(
        "autoscale", "service", "install", "--root", str(root), "--owner", "octo-org",
        "--pool", "self-hosted,gpu:max=4", "--scale-cmd", "/usr/local/bin/scale-gpu", env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "ghp_sekrit" not in r.stdout + r.stderr and "enabling was skipped (a --root prefix" in r.stdout
    unit = root / "etc/systemd/system" / TEMPLATE
    text = unit.read_text()
    found = unit_settings(text)
    assert found["ExecStart"][0].endswith("autoscale --owner %i") and found["DynamicUser"] == ["yes"]
    assert found["Alias"] == ["github-autoscaler@.service"] and found["EnvironmentFile"] == [
        "/etc/fleetci/autoscale-%i.env"
    ]
    envf = root / env_path("octo-org")
    assert stat.S_IMODE(envf.stat().st_mode) == 0o600 and stat.S_IMODE(envf.parent.stat().st_mode) == 0o700
    values = dict(
        line.split("=", 1) for line in envf.read_text().splitlines() if line and not line.startswith("#")
    )
    assert values["GH_TOKEN"] == '"ghp_sekrit"' and values["AUTOSCALE_POLL_INTERVAL"] == '"45"'
    assert values["AUTOSCALE_POOLS"] == '"self-hosted,gpu:min=0:max=4"'
    # systemd itself checks an instance of the template
    inst = tmp_path / "verify" / "fleetci-autoscale@octo-org.service"
    inst.parent.mkdir()
    inst.write_text(text.replace("%i", "octo-org").replace("EnvironmentFile=/", "EnvironmentFile=-/"))
    v = verify(inst)
    assert v.returncode == 0, v.stderr
    r = fleetci("autoscale", "service", "status", "--root", str(root), "--owner", "octo-org", env=env)
    assert r.returncode == 0 and "present" in r.stdout
    r = fleetci("autoscale", "service", "uninstall", "--root", str(root), "--owner", "octo-org", env=env)
    assert r.returncode == 0 and not unit.exists() and not envf.exists()
    r = fleetci("autoscale", "service", "uninstall", "--root", str(root), "--owner", "octo-org", env=env)
    assert r.returncode == 1 and "is not installed" in one_line_error(r)
    r = fleetci("autoscale", "service", "install", "--root", str(root), env=env)
    assert r.returncode == 2 and "no owner" in one_line_error(r)


def test_no_unit_weakens_the_shared_hardening() -> None:
    """Review finding 14: each hardening directive's effective value (systemd uses the last assignment) is
    the shared one in both units, whatever lines a unit adds (state directory, groups, HOME)."""
    from tests.unit.test_cache_service import unit_settings

    from fleetci.autoscale.service import render_unit as autoscale_unit
    from fleetci.cache.service import render_unit as cache_unit
    from fleetci.systemd import HARDENING

    shared = unit_settings(HARDENING)
    units = [
        cache_unit(["/usr/bin/python3", "-m", "fleetci"], group="runners"),
        autoscale_unit(["/usr/bin/python3", "-m", "fleetci"], docker=True, groups=["fleetci-cache"]),
    ]
    for text in units:
        found = unit_settings(text)
        for key, values in shared.items():
            assert found[key][-len(values) :] == values, key
        assert not {"User", "Group"} & set(shared) and found["DynamicUser"] == ["yes"]
    assert unit_settings(units[1])["SupplementaryGroups"] == ["fleetci-cache docker"]


def test_install_next_to_the_cache_service_reads_through_it_with_a_home(
    fleetci: RunCli, tmp_path: Path
) -> None:
    """Review finding 7: with the host's cache service installed, the autoscale unit joins its socket's
    group (so find_api_url opens and checks the socket), or, when that socket has no group, its env file
    names the proxy's loopback port; each instance has a state directory as HOME. systemd verifies it."""
    from tests.unit.test_cache_service import unit_settings, verify

    from fleetci.autoscale.service import TEMPLATE, env_path

    env = clean_env(GH_TOKEN="ghp_x")
    grouped, plain = tmp_path / "grouped", tmp_path / "plain"
    for root, extra in ((grouped, ["--group", "daemon"]), (plain, ["--port", "9123"])):
        r = fleetci("cache", "service", "install", "--root", str(root), *extra, env=env)
        assert r.returncode == 0, r.stderr
        r = fleetci("autoscale", "service", "install", "--root", str(root), "--owner", "octo-org", env=env)
        assert r.returncode == 0, r.stderr
    unit = unit_settings((grouped / "etc/systemd/system" / TEMPLATE).read_text())
    assert unit["SupplementaryGroups"] == ["daemon"]
    assert unit["StateDirectory"] == ["fleetci-autoscale/%i"]
    assert unit["Environment"] == ["HOME=%S/fleetci-autoscale/%i"]
    assert "FLEETCI_API_URL=" not in (grouped / env_path("octo-org")).read_text()
    assert "SupplementaryGroups" not in unit_settings((plain / "etc/systemd/system" / TEMPLATE).read_text())
    assert 'FLEETCI_API_URL="http://127.0.0.1:9123"' in (plain / env_path("octo-org")).read_text()
    assert "note: reading through the host cache at http://127.0.0.1:9123" in r.stdout
    inst = tmp_path / "verify" / "fleetci-autoscale@octo-org.service"
    inst.parent.mkdir()
    text = (grouped / "etc/systemd/system" / TEMPLATE).read_text()
    inst.write_text(text.replace("%i", "octo-org").replace("EnvironmentFile=/", "EnvironmentFile=-/"))
    v = verify(inst)
    assert v.returncode == 0, v.stderr
    # an API URL the operator chose is kept: no group, no rewrite
    r = fleetci(
        "autoscale", "service", "install", "--root", str(plain), "--owner", "org-b",
        "--api-url", "http://127.0.0.1:7000", env=env,
    )  # fmt: skip
    assert r.returncode == 0 and "note:" not in r.stdout
    assert 'FLEETCI_API_URL="http://127.0.0.1:7000"' in (plain / env_path("org-b")).read_text()


# -- the emulator's queue endpoint (what the benchmark drives) -----------------------------------------------
def test_emulator_queue_endpoint_refuses_bad_bodies(emulator: Any) -> None:
    url = f"{emulator.url}/_emulator/queue"
    good = {"owner": "octo-org", "repo": "no-such-repo", "labels": ["a"]}
    assert httpx.post(url, content=b"{").status_code == 400
    for body in (
        {},
        {"owner": "octo-org", "repo": 1},
        {**good, "labels": []},
        {**good, "labels": ["a" * 101]},
    ):
        assert httpx.post(url, json=body).status_code == 422, body
    assert httpx.post(url, json=good).status_code == 404  # no such repository
    repos = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {tok('alice')}"}
    ).json()
    owner, name = repos[0]["full_name"].split("/")
    r = httpx.post(url, json={"owner": owner, "repo": name, "labels": ["self-hosted", "gpu"]})
    assert r.status_code == 201
    jobs = [emulator.emulator._world.jobs[j] for j in r.json()["job_ids"]]
    assert jobs and all(j.labels == ["self-hosted", "gpu"] and j.status == "queued" for j in jobs)


def test_emulator_queue_endpoint_makes_an_in_progress_run_with_queued_matrix_jobs(emulator: Any) -> None:
    url = f"{emulator.url}/_emulator/queue"
    repos = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {tok('alice')}"}
    )
    owner, name = repos.json()[0]["full_name"].split("/")
    good = {"owner": owner, "repo": name, "labels": ["self-hosted", "gpu"]}
    for bad in (
        {"matrix": 0},
        {"matrix": 257},
        {"matrix": "3"},
        {"matrix": True},
        {"matrix": 3, "started": 4},
        {"started": -1},
        {"matrix": 2, "started": 1.0},
    ):
        r = httpx.post(url, json={**good, **bad})
        assert r.status_code == 422 and "matrix" in r.json()["message"], bad
    r = httpx.post(url, json={**good, "matrix": 3, "started": 1})
    assert r.status_code == 201
    world = emulator.emulator._world
    assert world.runs[r.json()["run_id"]].status == "in_progress"
    jobs = [world.jobs[j] for j in r.json()["job_ids"]]
    assert [j.status for j in jobs] == ["in_progress", "queued", "queued"]
    assert [j.name for j in jobs] == ["test (1)", "test (2)", "test (3)"]


def test_queued_jobs_inside_an_in_progress_run_are_counted(emulator: Any, spec: OpenAPISpec) -> None:
    """A saturated fleet: the run started, two of its three matrix jobs wait for a runner. The planner's
    input counts them (only queued runs were read before), and the emulator's answers are GitHub's shape."""
    from fleetci.autoscale import GitHubRunnerAutoscaler
    from fleetci.cache.webhooks import affected_prefixes

    h = {"Authorization": f"token {tok('alice')}"}
    repos = httpx.get(f"{emulator.url}/orgs/octo-org/repos", headers=h).json()
    owner, name = repos[0]["full_name"].split("/")
    pool = ["self-hosted", "matrix-unit"]
    run_id = emulator.emulator.queue_run(owner, name, pool, matrix=3, started=1)
    runs = httpx.get(f"{emulator.url}/repos/{owner}/{name}/actions/runs?status=in_progress", headers=h)
    spec.validate("GET", "/repos/{owner}/{repo}/actions/runs", 200, runs.json())
    assert run_id in [r["id"] for r in runs.json()["workflow_runs"]]
    jobs_path = f"/repos/{owner}/{name}/actions/runs/{run_id}/jobs?filter=latest&per_page=100"
    jobs = httpx.get(emulator.url + jobs_path, headers=h).json()
    spec.validate("GET", "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs", 200, jobs)
    assert [j["status"] for j in jobs["jobs"]] == ["in_progress", "queued", "queued"]
    seen: list[Any] = []

    class Record:
        def scale(self, request: Any) -> None:
            seen.append(request)

    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=emulator.url, token=tok("alice"), pools=[",".join(pool)],
        env={}, config={}, say=lambda line: None, provider=Record(),
    )  # fmt: skip
    try:
        (decision,) = scaler.once()
    finally:
        scaler.close()
    assert (decision.queued, decision.desired) == (2, 2)
    assert [(r.queued, r.desired) for r in seen] == [(2, 2)]
    # a workflow_job delivery about the repository makes both lists the count came from stale
    payload = {"repository": {"full_name": f"{owner}/{name}"}, "workflow_job": {"id": 1}}
    stale = affected_prefixes("workflow_job", payload).prefixes
    for path in (f"/repos/{owner}/{name}/actions/runs?status=in_progress&per_page=100", jobs_path):
        assert any(path.startswith(p) for p in stale), path


def test_run_with_input_stops_a_command_when_cancelled(tmp_path: Path) -> None:
    """The caller is stopping: a command that ends within the grace finishes; one that does not has its
    whole process group killed (the background child too), in one line."""
    import threading

    from fleetci.errors import FleetciError
    from fleetci.process import run_with_input

    cancel = threading.Event()
    cancel.set()
    done = run_with_input(["sh", "-c", "cat; echo finished"], "in\n", timeout=30, cancel=cancel, grace=30)
    assert done.returncode == 0 and done.stdout == "in\nfinished\n"  # within the grace: it finishes
    child = tmp_path / "child.pid"
    script = f"sleep 300 & echo $! > {shlex.quote(str(child))}; wait"
    cancel.clear()
    threading.Thread(
        target=lambda: wait_until(child.exists, timeout=30) and cancel.set(), daemon=True
    ).start()
    with pytest.raises(FleetciError, match=r"^sh stopped after 0.2s as fleetci is stopping \(process"):
        run_with_input(["sh", "-c", script], "", timeout=120, cancel=cancel, grace=0.2)
    assert not alive(int(child.read_text()))


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--jobs", "0"), "--jobs"),
        (("--spread", "nan"), "--spread"),
        (("--poll-without-webhooks", "0"), "--poll-without-webhooks"),
        (("--webhook-loss", "1.5"), "--webhook-loss"),
        (("--latency-ms", "9-1"), "--latency-ms"),
        (("--bogus",), "unrecognized arguments"),
    ],
)
def test_bench_autoscale_refuses_bad_flags(fleetci: RunCli, args: tuple[str, ...], says: str) -> None:
    r = fleetci("bench", "autoscale", *args)
    assert r.returncode == 2 and says in one_line_error(r)


def test_the_seeds_call_takes_everything_else_from_the_environment(
    emulator: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Seed 004: ``GitHubRunnerAutoscaler(owner=..., poll_interval=120)``; token and API from the
    environment (what the setup-p2p-cache action exports), the default pool, no provider (logged only)."""
    from fleetci.autoscale import GitHubRunnerAutoscaler

    for var in [v for v in os.environ if v.startswith(("AUTOSCALE_", "FLEETCI_", "GITHUB_", "GH_"))]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # no config file
    monkeypatch.setenv("GH_TOKEN", tok("alice"))
    monkeypatch.setenv("FLEETCI_API_URL", emulator.url)
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(owner="octo-org", poll_interval=120, say=lines.append)
    try:
        (decision,) = scaler.step()
        assert decision.pool.name == "self-hosted,linux,x64" and decision.desired >= 1
        assert scaler.settings.poll_interval == 120 and scaler.provider is None
        assert any("cycle 1: self-hosted,linux,x64: queued=" in ln for ln in lines)
    finally:
        scaler.close()
    with pytest.raises(UsageError, match="unknown setting"):
        GitHubRunnerAutoscaler(owner="octo-org", pol_interval=3)


def test_uninstall_stops_that_owners_instance_and_keeps_the_template_for_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review finding 12. ``systemctl`` here is a real script on PATH recording its argv: tests cannot
    drive PID 1 on this machine (no running systemd), so systemctl is the one thing stubbed; the unit files
    and environment files are real and ``systemd=True`` says systemd runs."""
    from fleetci.autoscale import service
    from fleetci.autoscale.settings import autoscale_settings

    bin_dir, calls = tmp_path / "bin", tmp_path / "systemctl.log"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {shlex.quote(str(calls))}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    root = tmp_path / "root"
    for owner in ("org-a", "org-b"):
        settings = autoscale_settings({"owner": owner}, {}, {})
        service.install(settings, root, argv=["/usr/bin/fleetci"])
    template = root / "etc/systemd/system" / service.TEMPLATE
    service.uninstall("org-a", root, systemd=True)
    assert calls.read_text().splitlines() == ["disable --now fleetci-autoscale@org-a.service"]
    assert template.exists() and (root / service.env_path("org-b")).exists()
    assert not (root / service.env_path("org-a")).exists()
    service.uninstall("org-b", root, systemd=True)
    assert calls.read_text().splitlines()[1:] == [
        "disable --now fleetci-autoscale@org-b.service",
        "daemon-reload",
    ]
    assert not template.exists()
    # a failing systemctl is one line, and the owner's file is kept (nothing lost)
    service.install(autoscale_settings({"owner": "org-c"}, {}, {}), root, ["x"])
    fake.write_text("#!/bin/sh\necho 'Failed to disable unit: Access denied' >&2\nexit 1\n")
    with pytest.raises(Exception, match=r"^systemctl disable --now fleetci-autoscale@org-c.service failed: "
                       r"Failed to disable unit: Access denied$"):  # fmt: skip
        service.uninstall("org-c", root, systemd=True)
    assert (root / service.env_path("org-c")).exists()


def test_a_cycle_counts_the_emulators_busy_and_idle_runners_and_leaves_out_offline_ones() -> None:
    """Review finding 14: what one cycle counts is what the runners API says (an independent reading of
    the same listing): online runners of the pool split into busy and idle, offline ones left out."""
    from fleetci.autoscale import GitHubRunnerAutoscaler
    from support.emulator import quiet_emulator

    with quiet_emulator(seed=11) as server:
        world = server.emulator._world
        fitting = sorted(
            (
                r
                for r in world.runners.values()
                if r.repo_id is None and {"self-hosted", "linux", "x64"} <= {lb[1].lower() for lb in r.labels}
            ),
            key=lambda r: r.id,
        )
        assert len(fitting) >= 3
        fitting[0].status, fitting[0].busy = "online", True
        fitting[1].status, fitting[1].busy = "online", False
        fitting[2].status, fitting[2].busy = "offline", False
        listed = httpx.get(
            f"{server.url}/orgs/octo-org/actions/runners?per_page=100",
            headers={"Authorization": f"token {tok('alice')}"},
        ).json()["runners"]
        mine = [
            r
            for r in listed
            if {"self-hosted", "linux", "x64"} <= {lb["name"].lower() for lb in r["labels"]}
            and r["status"] == "online"
        ]
        scaler = GitHubRunnerAutoscaler(
            owner="octo-org", api_url=server.url, token=tok("alice"), pools=[POOL + ":max=50"],
            env={}, config={}, say=lambda line: None,
        )  # fmt: skip
        try:
            (d,) = scaler.once()
        finally:
            scaler.close()
    busy = sum(1 for r in mine if r["busy"])
    assert busy >= 1 and len(mine) - busy >= 1
    assert (d.busy, d.idle, d.current) == (busy, len(mine) - busy, len(mine))
    assert fitting[2].name not in {r["name"] for r in mine}


# -- review 17a: findings 1, 2, 4, 5, 6, 8, 9, 11 ----------------------------------------------------------
DOCS_POOLS = "self-hosted,linux,x64:min=1:max=20;self-hosted,gpu:max=4"  # docs/autoscale.md's example


def test_runners_with_githubs_default_labels_count_in_their_own_pool() -> None:
    linux, gpu = parse_pools(DOCS_POOLS)
    pools = (linux, gpu)
    # every self-hosted runner carries self-hosted, its OS and its arch besides its own labels
    assert pool_for_runner(pools, ["self-hosted", "Linux", "X64", "gpu", "cuda-12"]) == gpu
    assert pool_for_runner(pools, ["self-hosted", "Linux", "X64", "docker"]) == linux
    assert pool_for_runner(pools, ["self-hosted", "Linux", "ARM64"]) is None
    assert pool_for_job(pools, ["self-hosted", "gpu"]) == gpu
    assert pool_for_job(pools, ["self-hosted", "Linux", "X64"]) == linux  # not the GPU pool
    assert pool_for_job(pools, ["self-hosted", "linux", "gpu"]) == gpu  # its runners are Linux too
    assert pool_for_job(pools, ["self-hosted", "linux", "arm64"]) is None  # linux pool is x64
    assert pool_for_job(pools, []) is None  # nothing asked for: unmatched, not the smallest pool
    bare = parse_pools("gpu")
    assert pool_for_job(bare, ["self-hosted", "gpu"]) == bare[0]  # self-hosted is on every runner
    assert pool_for_job(bare, ["self-hosted", "linux", "windows", "gpu"]) is None  # one OS per runner


def test_a_busy_gpu_runner_counts_in_the_gpu_pool_of_the_docs_example(emulator: Any) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    emu = emulator.emulator
    repos = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {tok('alice')}"}
    )
    owner, name = repos.json()[0]["full_name"].split("/")
    run = emu.queue_run(owner, name, ["self-hosted", "gpu"])
    emu.start_run(run)  # the job runs on fleet-gpu-01 (self-hosted, Linux, X64, gpu, cuda-12)
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=emulator.url, token=tok("alice"), pools=DOCS_POOLS.split(";"),
        env={}, config={}, say=lambda _: None,
    )  # fmt: skip
    try:
        linux, gpu = scaler.once()
    finally:
        scaler.close()
    assert (gpu.busy, gpu.wanted) == (1, 1)  # the old rule counted it in the linux pool
    listed = httpx.get(
        f"{emulator.url}/orgs/octo-org/actions/runners", headers={"Authorization": f"token {tok('alice')}"}
    ).json()["runners"]
    plain = [
        r for r in listed
        if r["busy"] and r["status"] == "online" and {lb["name"] for lb in r["labels"]} >= {"Linux", "X64"}
        and "gpu" not in {lb["name"] for lb in r["labels"]}
    ]  # fmt: skip
    assert linux.busy == len(plain)


def test_the_command_is_asked_again_while_ephemeral_runners_are_gone() -> None:
    """The review's table: desired stays 5 while the 5 ephemeral runners finish and 5 new jobs queue."""
    pool = parse_pool("self-hosted,linux,x64:max=10")
    p = Planner((pool,), scale_down_delay=300, recall_after=30)
    calls = []
    for t, queued, busy in [(0, 5, 0), (10, 0, 5), (20, 5, 0), (30, 5, 0), (40, 5, 0), (60, 5, 0)]:
        (d,) = p.plan({pool.key: Count(queued, busy, 0)}, float(t))
        assert d.desired == 5
        if d.call:
            p.provided(pool, d.desired, float(t))
            calls.append(t)
    assert calls == [0, 30, 60]  # again while no runner is online, at most every 30 s
    (d,) = p.plan({pool.key: Count(0, 5, 0)}, 100.0)
    assert not d.call  # the runners are there: not asked


def test_a_scale_command_gets_a_second_call_when_runners_went_away(emulator: Any, tmp_path: Path) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    emu = emulator.emulator
    repos = httpx.get(
        f"{emulator.url}/orgs/octo-org/repos", headers={"Authorization": f"token {tok('alice')}"}
    )
    owner, name = repos.json()[0]["full_name"].split("/")
    jobs = len(emu.job_ids(emu.queue_run(owner, name, ["self-hosted", "qpu"])))
    out = tmp_path / "calls.jsonl"
    now = [0.0]
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", poll_interval=1, api_url=emulator.url, token=tok("alice"),
        pools=["self-hosted,qpu"], scale_cmd=f"sh -c {shlex.quote('cat >> ' + str(out))}",
        env={}, config={}, say=lambda _: None, clock=lambda: now[0],
    )  # fmt: skip
    try:
        scaler.once()
        now[0] = 10.0
        scaler.once()  # no runner yet, but asked 10 s ago: the VM may still boot
        now[0] = 31.0
        scaler.once()  # still none online: asked again
    finally:
        scaler.close()
    calls = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(c["desired"], c["current"]) for c in calls] == [(jobs, 0), (jobs, 0)]


def test_a_restart_keeps_the_existing_runners_for_the_delay() -> None:
    pool = parse_pool("a:max=20")
    p = Planner((pool,), scale_down_delay=300)
    d = _plan(p, pool, 0, queued=0, busy=0, idle=12)  # the first cycle after a restart, 12 warm runners
    assert (d.wanted, d.desired, d.held, d.call) == (0, 12, True, True)
    assert _plan(p, pool, 299, queued=0).desired == 12
    assert _plan(p, pool, 300, queued=0).desired == 0
    p = Planner((pool,), scale_down_delay=300)
    assert _plan(p, pool, 0, queued=3, busy=0, idle=30).desired == 20  # never above max


def test_the_pool_shrinks_to_the_highest_count_of_the_delay_window() -> None:
    pool = parse_pool("a:max=20")
    p = Planner((pool,), scale_down_delay=300)
    assert _plan(p, pool, 0, queued=10).desired == 10
    assert _plan(p, pool, 1, queued=2).desired == 10
    assert _plan(p, pool, 299, queued=9).desired == 10
    assert _plan(p, pool, 301, queued=2).desired == 9  # 9 were wanted 2 s ago: not 2
    assert _plan(p, pool, 600, queued=2).desired == 2  # the 9 is older than the delay now


@settings(deadline=None)  # pure logic; a loaded CI box must not turn a slow example into a failure
@given(
    delay=st.integers(0, 50),
    steps=st.lists(st.tuples(st.integers(1, 20), st.integers(0, 30)), min_size=1, max_size=40),
)
def test_a_scale_down_never_goes_below_a_count_wanted_within_the_delay(
    delay: int, steps: list[tuple[int, int]]
) -> None:
    pool = Pool(("a",), 0, 30)
    p = Planner((pool,), scale_down_delay=delay)
    seen: list[tuple[int, int]] = []
    t, before = 0, None
    for gap, wanted in steps:
        t += gap
        d = _plan(p, pool, float(t), wanted)
        seen.append((t, wanted))
        assert d.desired >= wanted
        if before is not None and d.desired < before:
            assert d.desired >= max(w for s, w in seen if s > t - delay or s == t)
        before = d.desired


def test_a_failing_provider_backs_off_per_pool(emulator: Any, tmp_path: Path) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    out = tmp_path / "calls"
    now = [0.0]
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", poll_interval=60, api_url=emulator.url, token=tok("alice"),
        pools=["self-hosted,qpu:min=1"], env={}, config={}, say=lines.append, clock=lambda: now[0],
        scale_cmd=f"sh -c {shlex.quote('echo x >> ' + str(out) + '; echo no quota >&2; exit 3')}",
    )  # fmt: skip
    try:
        for t in (0.0, 1.0, 2.0, 5.0, 6.0, 14.0, 16.0):  # woken cycles, a burst of them
            now[0] = t
            scaler.once()
    finally:
        scaler.close()
    # asked at 0, then after 5 s (5), then after 10 s (15: not at 14, at 16)
    assert len(out.read_text().split()) == 3
    assert [ln.rsplit("(", 1)[1] for ln in lines if ln.startswith("error:")] == [
        "asked again in 5s)", "asked again in 10s)", "asked again in 20s)"
    ]  # fmt: skip


def test_a_woken_cycle_reuses_a_recent_runner_list(emulator: Any) -> None:
    from fleetci.autoscale import GitHubRunnerAutoscaler

    now = [0.0]
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=emulator.url, token=tok("alice"), pools=DOCS_POOLS.split(";"),
        env={}, config={}, say=lambda _: None, clock=lambda: now[0],
    )  # fmt: skip
    emu = emulator.emulator

    def cost(t: float, woken: bool) -> int:
        """Charged calls of one cycle (the emulator is quiet: the same reads each time, no 304s)."""
        before = emu.total_charged
        scaler.woken, now[0] = woken, t
        scaler.once()
        return int(emu.total_charged - before)

    try:
        poll = cost(0.0, False)
        assert cost(30.0, True) == poll - 1  # woken by a webhook, the runner list 30 s old: kept
        assert cost(61.0, True) == poll  # older than a minute: re-read even when woken
        assert cost(62.0, False) == poll  # the poll always re-reads
        assert cost(63.0, True) == poll - 1
    finally:
        scaler.close()

    class EveryCycle:  # like the docker provider: it removes containers by the runners' busy flags
        every_cycle = True

        def scale(self, request: Any) -> None:
            pass

    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=emulator.url, token=tok("alice"), pools=DOCS_POOLS.split(";"),
        provider=EveryCycle(), env={}, config={}, say=lambda _: None, clock=lambda: now[0],
    )  # fmt: skip
    try:
        assert cost(100.0, False) == poll and cost(101.0, True) == poll  # always a fresh list
    finally:
        scaler.close()


# -- the budget guard (issue 17 deliverable 5) --------------------------------------------------------------
def _budget(remaining: int, reset: int) -> Any:
    from fleetci.autoscale.github import Budget

    b = Budget()
    b.observe({"x-ratelimit-remaining": str(remaining), "x-ratelimit-reset": str(reset)})
    return b


def test_the_budget_keeps_the_lowest_count_of_a_window_and_renews_with_the_next() -> None:
    b = _budget(400, 1000)
    b.observe({"x-ratelimit-remaining": "420", "x-ratelimit-reset": "1000"})  # an earlier answer, late
    assert (b.remaining, b.reset) == (400, 1000.0)
    b.observe({"x-ratelimit-remaining": "4999", "x-ratelimit-reset": "4600"})  # the next window
    assert (b.remaining, b.reset) == (4999, 4600.0)
    for bad in ({}, {"x-ratelimit-remaining": "x", "x-ratelimit-reset": "1"}, {"x-ratelimit-remaining": "3"}):
        b.observe(bad)  # a hostile or partial answer changes nothing
    assert (b.remaining, b.reset) == (4999, 4600.0)


def test_the_budget_guard_skips_wakes_below_the_reserve_until_the_reset_and_says_so_twice() -> None:
    from fleetci.autoscale.scaler import BudgetGuard

    lines: list[str] = []
    guard = BudgetGuard(500, lines.append)
    assert guard.allows_wake(_budget(501, 1000), now=100.0)
    low = _budget(499, 1000)
    assert not guard.allows_wake(low, now=100.0) and not guard.allows_wake(low, now=999.0)
    assert guard.reset_in(low, now=400.0) == 600.0
    assert len(lines) == 1 and lines[0].startswith("budget guard on: the token has 499 calls left")
    assert guard.allows_wake(low, now=1000.0)  # the window reset: the stale count no longer holds
    assert guard.reset_in(low, now=1000.0) is None
    assert len(lines) == 2 and lines[1].startswith("budget guard off")
    assert guard.allows_wake(_budget(4990, 4600), now=1001.0) and len(lines) == 2
    off = BudgetGuard(0, lines.append)  # reserve 0: never engaged
    assert off.allows_wake(_budget(0, 1000), now=100.0) and len(lines) == 2
