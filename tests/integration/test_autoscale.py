"""Issue 17 (autoscaler): the real emulator, a real proxy process with webhooks, the autoscaler in this
process, and a recording provider that is a real command (it appends its stdin to a file).

One emulator and one proxy for the module; an organization hook sends every repository's deliveries to
the proxy. The proxy's queued-list window is 3 s (a config rule), so a test with a short poll sees a
change without a webhook, and one with a 60 s poll can only see it in time through a webhook.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.autoscale import GitHubRunnerAutoscaler
from fleetci.cache.changes import CHANGES_PATH
from fleetci.cache.webhooks import WEBHOOK_PATH
from fleetci.http import free_port
from fleetci.process import alive, fleetci_argv
from fleetci.testing import EmulatorServer, GitHubEmulator
from support import Proxy, clean_env, start_proxy, wait_until
from support.emulator import auth, quiet_emulator, tok

SECRET = "autoscale-hook-Zq3"
QUEUED_TTL_S = 3


@dataclass
class World:
    emulator: EmulatorServer
    proxy: Proxy
    repo: str
    tmp: Path

    @property
    def emu(self) -> GitHubEmulator:
        return self.emulator.emulator

    def received(self) -> int:
        stats: dict[str, Any] = self.proxy.stats()
        return int(stats["webhooks"]["received"])  # type: ignore[call-overload]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("autoscale")
    config = tmp / "config.yml"
    rule = {"pattern": r"status=queued", "seconds": QUEUED_TTL_S, "name": "queued-short"}
    config.write_text(json.dumps({"cache": {"ttl": [rule]}}), encoding="utf-8")
    env = clean_env(CACHE_WEBHOOK_SECRET=SECRET, FLEETCI_CONFIG=str(config))
    with quiet_emulator(seed=11) as server, start_proxy(server.url, tmp / "cache", env=env) as proxy:
        r = httpx.post(
            f"{server.url}/orgs/octo-org/hooks",
            headers=auth("alice"),
            json={"config": {"url": proxy.url + WEBHOOK_PATH, "secret": SECRET}, "events": ["*"]},
        )
        assert r.status_code == 201, r.text
        repos = httpx.get(f"{server.url}/orgs/octo-org/repos", headers=auth("alice")).json()
        world = World(server, proxy, str(repos[0]["full_name"]), tmp)
        assert wait_until(lambda: world.received() >= 1)  # the hook's ping
        yield world


class Recorder:
    """The provider: ``sh -c 'cat >> FILE'``, one JSON request per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.command = f"sh -c {shlex.quote('cat >> ' + shlex.quote(str(path)))}"

    def calls(self, pool: str) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [r for r in rows if ",".join(r["labels"]) == pool]


@dataclass
class Running:
    scaler: GitHubRunnerAutoscaler
    thread: threading.Thread

    def stop(self) -> None:
        self.scaler.stop()
        self.thread.join(timeout=40)
        self.scaler.close()


def start(world: World, recorder: Recorder, pool: str, poll: float, **more: Any) -> Running:
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org",
        poll_interval=poll,
        api_url=world.proxy.url,
        token=tok("alice"),
        scale_cmd=recorder.command,
        pools=[f"{pool}:max=50"],
        env={},
        config={},
        say=lambda line: None,
        **more,
    )
    if scaler.cache is not None:
        scaler.cache.chunk = 1.0  # stop() waits for the long poll in flight: keep each one short
    thread = threading.Thread(target=scaler.run, daemon=True)
    thread.start()
    assert wait_until(lambda: scaler.cycles >= 1, timeout=30)
    return Running(scaler, thread)


def queue(world: World, labels: list[str]) -> int:
    owner, name = world.repo.split("/")
    run_id = world.emu.queue_run(owner, name, labels)
    return len(world.emu.job_ids(run_id))


def test_webhook_wakes_the_autoscaler_long_before_its_poll(world: World) -> None:
    pool = "self-hosted,gpu-push"
    rec = Recorder(world.tmp / "push.jsonl")
    running = start(world, rec, pool, poll=600.0)
    try:
        assert [c["desired"] for c in rec.calls(pool)] == [0]  # the first cycle: nothing queued
        received = world.received()
        jobs = queue(world, ["self-hosted", "gpu-push"])
        # the poll is 600 s away: only the webhook -> /_fleetci/changes -> re-read path reacts within
        # 40 s (a loose bound: a loaded 2-core CI box must not flake; it still proves the path)
        assert wait_until(lambda: any(c["desired"] >= 1 for c in rec.calls(pool)), timeout=40)
        last = rec.calls(pool)[-1]
        assert last["desired"] == last["queued"] == jobs and last["owner"] == "octo-org"
        assert world.received() > received
        assert running.scaler.cycles >= 2
    finally:
        running.stop()


def test_lost_webhooks_are_caught_by_the_next_poll(world: World) -> None:
    pool = "self-hosted,gpu-pull"
    rec = Recorder(world.tmp / "pull.jsonl")
    world.emu.configure(webhook_drop_rate=1.0)
    running = start(world, rec, pool, poll=1.0)
    try:
        received = world.received()
        jobs = queue(world, ["self-hosted", "gpu-pull"])
        assert wait_until(lambda: any(c["desired"] == jobs for c in rec.calls(pool)), timeout=15)
        assert world.received() == received  # no delivery arrived: the poll (and the TTL) did it
    finally:
        running.stop()
        world.emu.configure(webhook_drop_rate=0.0)


def test_a_failing_scale_command_is_logged_and_retried_next_cycle(world: World) -> None:
    pool = "self-hosted,gpu-flaky"
    marker = world.tmp / "fail-once"
    marker.write_text("x")
    rec = Recorder(world.tmp / "flaky.jsonl")
    script = world.tmp / "flaky.sh"
    script.write_text(
        f'if [ -e {shlex.quote(str(marker))} ]; then rm {shlex.quote(str(marker))}; echo "no capacity" >&2; '
        f"exit 3; fi\ncat >> {shlex.quote(str(rec.path))}\n"
    )
    lines: list[str] = []
    now = [0.0]
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org",
        api_url=world.proxy.url,
        token=tok("alice"),
        scale_cmd=f"sh {shlex.quote(str(script))}",
        pools=[pool],
        env={},
        config={},
        say=lines.append,
        clock=lambda: now[0],
    )
    try:
        scaler.once()
        assert scaler.last.errors and "exited 3: no capacity" in scaler.last.errors[0]
        assert any(
            ln.startswith("error: pool self-hosted,gpu-flaky: scale command sh exited 3") for ln in lines
        )
        assert rec.calls(pool) == []
        now[0] = 5.0  # after the pool's back-off
        scaler.once()  # the same desired count is asked for again, and now accepted
        assert [c["desired"] for c in rec.calls(pool)] == [0] and not scaler.last.errors
        scaler.once()
        assert len(rec.calls(pool)) == 1  # unchanged: not asked again
        assert any("cache hits=" in ln and "hit_rate=" in ln for ln in lines)  # cache stats in the log
        assert not any(tok("alice") in ln for ln in lines)
    finally:
        scaler.close()


def test_changes_endpoint_of_the_real_proxy(world: World) -> None:
    url = world.proxy.url + CHANGES_PATH
    seq = httpx.get(url, params={"wait": "0"}).json()["seq"]
    owner, name = world.repo.split("/")
    world.emu.queue_run(owner, name)
    moved = httpx.get(url, params={"after": str(seq), "wait": "10"}, timeout=20).json()["seq"]
    assert moved > seq
    for query in ("after=-1", "after=abc", "wait=nan", "wait=-2", "after=1&after=2", "after=" + "9" * 40):
        r = httpx.get(f"{url}?{query}")
        assert r.status_code == 400, (query, r.text)
        assert "\n" not in r.json()["message"]
    # no repository names, nothing a reader with another token could learn from
    assert set(httpx.get(url).json()) == {"seq"}
    # DNS rebinding guard as for the proxy's other pages
    assert httpx.get(url, headers={"Host": "evil.example"}).status_code == 403


def test_without_an_api_url_it_reads_through_the_proxy_on_its_socket(world: World, tmp_path: Path) -> None:
    from fleetci.autoscale.scaler import find_api_url
    from fleetci.autoscale.settings import UPSTREAM

    url, note = find_api_url("", world.proxy.socket, upstream=world.emulator.url)
    assert url == world.proxy.url and "cache proxy" in note
    assert find_api_url("", tmp_path / "no.sock") == (UPSTREAM, "")
    assert find_api_url("http://example.test", world.proxy.socket) == ("http://example.test", "")
    # a host proxy in front of another upstream never gets this token
    url, note = find_api_url("", world.proxy.socket)
    assert url == UPSTREAM and "not reading through the host proxy" in note and "caches" in note


def test_queued_matrix_jobs_of_a_started_run_are_scaled_for(world: World) -> None:
    """The fleet is saturated: the run started (one job got a runner), two matrix jobs still wait. Only
    ``status=queued`` runs were read before: the run was invisible and nothing was scaled for them."""
    pool = "self-hosted,gpu-matrix"
    rec = Recorder(world.tmp / "matrix.jsonl")
    running = start(world, rec, pool, poll=60.0)
    try:
        assert [c["desired"] for c in rec.calls(pool)] == [0]
        owner, name = world.repo.split("/")
        world.emu.queue_run(owner, name, pool.split(","), matrix=3, started=1)
        # the poll is 60 s away: the workflow_job/workflow_run deliveries made the lists stale
        assert wait_until(lambda: any(c["desired"] >= 1 for c in rec.calls(pool)), timeout=10)
        last = rec.calls(pool)[-1]
        assert (last["queued"], last["desired"]) == (2, 2)
    finally:
        running.stop()


def _autoscale_cli(world: World, pool: str, scale_cmd: str, log: Path, *more: str) -> subprocess.Popen[bytes]:
    argv = fleetci_argv(
        "autoscale", "--owner", "octo-org", "--api-url", world.proxy.url, "--pool", pool,
        "--poll-interval", "600", "--scale-cmd", scale_cmd, *more,
    )  # fmt: skip
    with log.open("wb") as err:
        return subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, env=clean_env(GH_TOKEN=tok("alice"))
        )


def _stopped(proc: subprocess.Popen[bytes], log: Path) -> list[str]:
    """SIGTERM, as systemd stops the unit; the exit status and the log's lines."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = log.read_text().splitlines()
    assert code == 0, lines
    assert not any("Traceback" in ln for ln in lines), lines
    return lines


def test_sigterm_between_cycles_stops_at_once_with_one_line(world: World) -> None:
    """SIGTERM while the CLI long-polls the proxy's change feed (up to 30 s): it leaves the poll, says
    "stopped" and exits 0 (it used to die of the signal)."""
    pool = "self-hosted,gpu-stop-idle"
    rec, log = Recorder(world.tmp / "stop-idle.jsonl"), world.tmp / "stop-idle.log"
    proc = _autoscale_cli(world, pool, rec.command, log)
    assert wait_until(lambda: "cycle 1:" in log.read_text() or proc.poll() is not None, timeout=60)
    lines = _stopped(proc, log)
    assert [ln for ln in lines if "stopped" in ln] == [
        "fleetci autoscale: stopped (SIGTERM) after 1 cycle(s)"
    ]
    assert [c["desired"] for c in rec.calls(pool)] == [0]


def test_sigterm_during_a_scale_command_kills_its_process_group(world: World) -> None:
    """SIGTERM while a scale command hangs (with a child of its own): the command gets its grace (here the
    4 s timeout), then its whole process group is killed; the CLI says "stopped" and exits 0."""
    pool = "self-hosted,gpu-stop-busy"
    pids, log = world.tmp / "busy-pids", world.tmp / "stop-busy.log"
    script = world.tmp / "hang.sh"
    script.write_text(f"sleep 300 &\necho $$ $! > {shlex.quote(str(pids))}\nwait\n")
    proc = _autoscale_cli(world, pool, f"sh {shlex.quote(str(script))}", log, "--scale-cmd-timeout", "4")
    assert wait_until(
        lambda: (pids.exists() and len(pids.read_text().split()) == 2) or proc.poll(), timeout=60
    )
    lines = _stopped(proc, log)
    assert [ln for ln in lines if "stopped (" in ln] == [
        "fleetci autoscale: stopped (SIGTERM) after 1 cycle(s)"
    ]
    errors = [ln for ln in lines if "error: pool self-hosted,gpu-stop-busy:" in ln]
    assert len(errors) == 1 and "killed" in errors[0], lines
    assert not any(alive(int(pid)) for pid in pids.read_text().split())


def test_a_socket_in_a_world_writable_dir_never_gets_the_token(world: World, tmp_path: Path) -> None:
    """Review finding 10: the well-known socket is found, not named, so the planted-socket check of
    ``fleetci cache start`` applies: in a directory anyone may write to, a socket vouching for a real proxy
    (a hard link to the real proxy's socket, so everything else checks out) is not used."""
    from fleetci.autoscale.scaler import find_api_url

    shared = tmp_path / "run"
    shared.mkdir()
    os.link(world.proxy.socket, shared / "proxy.sock")
    url, note = find_api_url("", shared / "proxy.sock", upstream=world.emulator.url)
    assert url == world.proxy.url  # trusted while only root may write there
    shared.chmod(0o1777)
    url, note = find_api_url("", shared / "proxy.sock", upstream=world.emulator.url)
    assert url == world.emulator.url and "not trusted" in note and "writable by every user" in note


def test_a_deleted_repository_is_skipped_and_the_cycle_goes_on(world: World) -> None:
    """The cached organization listing still names a deleted repository: its 404 skips it (said once),
    the other repositories' queued jobs are still scaled for."""
    pool = "self-hosted,gpu-gone"
    rec = Recorder(world.tmp / "gone.jsonl")
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=world.proxy.url, token=tok("alice"), scale_cmd=rec.command,
        pools=[f"{pool}:max=50"], env={}, config={}, say=lines.append,
    )  # fmt: skip
    repos = httpx.get(f"{world.emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
    victim = str(repos[-1]["full_name"])
    assert victim != world.repo
    try:
        scaler.once()  # the listing with the victim is now in the proxy's cache
        world.emu.delete_repo(*victim.split("/"))
        jobs = queue(world, ["self-hosted", "gpu-gone"])

        def skipped() -> bool:
            scaler.once()  # raised ApiError (404) and scaled nothing before the fix
            return any(s.startswith(victim) for s in scaler.last.skipped)

        assert wait_until(skipped, timeout=30)  # once the victim's queued list (3 s window) revalidates
        assert not scaler.last.errors and rec.calls(pool)[-1]["desired"] == jobs
        assert sum("skipped 1 repository/run read" in ln and victim in ln for ln in lines) == 1
    finally:
        scaler.close()


def test_a_proxy_that_starts_after_the_autoscaler_is_long_polled(world: World) -> None:
    """After a reboot the proxy may bind after the autoscaler started: it is probed again each cycle."""
    port = free_port()
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", api_url=f"http://127.0.0.1:{port}", token=tok("alice"), pools=["gpu"],
        env={}, config={}, say=lines.append,
    )  # fmt: skip
    try:
        assert scaler.cache is None  # nothing answers yet
        with start_proxy(world.emulator.url, world.tmp / "late" / "cache", port=port):
            scaler.once()
            assert scaler.cache is not None and scaler.cache.long_poll
            (cycle,) = [ln for ln in lines if ln.startswith("cycle ")]
            assert "cache hits=" in cycle and "no cache proxy" not in cycle
    finally:
        scaler.close()


def test_a_burst_of_webhooks_is_coalesced_into_few_cycles(world: World) -> None:
    """Each delivery moves the proxy's counter; cycles start at least WAKE_SPACING_S apart, so a burst of
    deliveries costs a bounded number of cycles (before: about one cycle per delivery)."""
    import time

    from fleetci.autoscale.scaler import WAKE_SPACING_S

    pool = "self-hosted,gpu-burst"
    rec = Recorder(world.tmp / "burst.jsonl")
    running = start(world, rec, pool, poll=60.0)
    try:
        before, received = running.scaler.cycles, world.received()
        began = time.monotonic()
        jobs = 0
        for _ in range(20):  # a busy organization: a run queued every 150 ms for 3 s
            jobs += queue(world, ["self-hosted", "gpu-burst"])
            time.sleep(0.15)
        assert wait_until(lambda: any(c["desired"] == jobs for c in rec.calls(pool)), timeout=40)
        elapsed = time.monotonic() - began
        assert world.received() - received >= 20  # at least one delivery per queued run
        cycles = running.scaler.cycles - before
        assert cycles <= elapsed / WAKE_SPACING_S + 2, (cycles, elapsed)
    finally:
        running.stop()


def test_a_host_proxy_that_appears_later_on_the_socket_is_read_through(world: World, tmp_path: Path) -> None:
    """No api_url and no proxy on the well-known socket at start: the autoscaler read the API directly for
    its whole life. Now each poll looks for the socket again and switches to a proxy that appeared."""
    cache_dir = tmp_path / "run" / "late-socket"
    lines: list[str] = []
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", token=tok("alice"), pools=["gpu"], env={}, config={}, say=lines.append,
        socket=cache_dir / "proxy.sock", upstream=world.emulator.url,
    )  # fmt: skip
    try:
        scaler.once()
        assert scaler.api_url == world.emulator.url and scaler.cache is None
        with start_proxy(world.emulator.url, cache_dir) as proxy:
            scaler.once()
            assert scaler.api_url == proxy.url and scaler.cache is not None
            switched = [ln for ln in lines if ln.startswith("switched to the host proxy")]
            assert len(switched) == 1 and proxy.url in switched[0]
            cycle = [ln for ln in lines if ln.startswith("cycle ")][-1]
            assert "cache hits=" in cycle  # read through the proxy: its stats in the log
            scaler.once()
            assert len([ln for ln in lines if ln.startswith("switched")]) == 1  # said once
    finally:
        scaler.close()


def test_below_the_budget_reserve_woken_cycles_stop_and_the_poll_goes_on(world: World) -> None:
    """A webhook storm must not spend the token's budget: with the emulator's limit low (150 calls in a
    20 s window) and a reserve the first cycle's reads take the token under, every wake is skipped (one log
    line), the 2 s poll still scales for the queued jobs, and the guard releases once the window resets."""
    pool = "self-hosted,gpu-budget"
    poll = 2.0
    rec = Recorder(world.tmp / "budget.jsonl")
    lines: list[str] = []
    world.emu.set_primary_limit(150, window_seconds=20)  # fleet-bot's first call opens its window
    scaler = GitHubRunnerAutoscaler(
        owner="octo-org", poll_interval=poll, api_url=world.proxy.url, token=tok("fleet-bot"),
        scale_cmd=rec.command, pools=[f"{pool}:max=50"], env={}, config={}, say=lines.append,
        budget_reserve=140,
    )  # fmt: skip
    assert scaler.cache is not None
    scaler.cache.chunk = 1.0
    running = Running(scaler, threading.Thread(target=scaler.run, daemon=True))
    running.thread.start()
    try:
        assert wait_until(lambda: scaler.cycles >= 1, timeout=30)
        remaining = scaler.reader.budget.remaining
        assert remaining is not None and remaining < 140  # the first cycle's reads were charged
        before, began, jobs = scaler.cycles, time.monotonic(), 0
        for _ in range(12):  # a run queued every 0.3 s: each one's deliveries wake the autoscaler
            jobs += queue(world, ["self-hosted", "gpu-budget"])
            time.sleep(0.3)
        assert wait_until(lambda: any(c["desired"] == jobs for c in rec.calls(pool)), timeout=30)
        elapsed = time.monotonic() - began
        cycles = scaler.cycles - before
        assert cycles <= elapsed / poll + 2, (cycles, elapsed)  # the polls only (every wake: one per 0.5 s)
        assert scaler.wakes_skipped >= 3, scaler.wakes_skipped
        guard = [ln.split(":")[0] for ln in lines if ln.startswith("budget guard")]
        assert guard == ["budget guard on"], lines
        # the window resets (20 s after fleet-bot's first call): the guard releases, said once
        assert wait_until(lambda: any(ln.startswith("budget guard off") for ln in lines), timeout=40)
        guard = [ln.split(":")[0] for ln in lines if ln.startswith("budget guard")]
        assert guard[:2] == ["budget guard on", "budget guard off"], lines
    finally:
        running.stop()
        world.emu.set_primary_limit(5000, window_seconds=3600)
