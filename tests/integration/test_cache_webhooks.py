"""Issue 17: signed deliveries from the real emulator to a real proxy process invalidate cached entries.

One emulator and one proxy for the module (the proxy's hook is registered once); the reconciliation test
starts a second proxy with a webhook listener of its own.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from fleetci.cache.webhooks import WEBHOOK_PATH, signature
from fleetci.http import free_port
from fleetci.testing import EmulatorConfig, EmulatorServer, GitHubEmulator
from fleetci.testing.openapi import OpenAPISpec, WebhookSpec
from fleetci.testing.server import BackgroundApp
from support import Proxy, clean_env, read_answer, start_proxy, wait_until
from support.emulator import R, auth, quiet_emulator, tok

SECRET = "hook-secret-Zq3"
QUEUED = "/actions/runs?status=queued"


@dataclass
class World:
    emulator: EmulatorServer
    proxy: Proxy
    repo: str  # owner/name with the hook
    hook_id: int

    @property
    def emu(self) -> GitHubEmulator:
        return self.emulator.emulator

    def read(self, path: str, login: str = "alice") -> httpx.Response:
        return httpx.get(f"{self.proxy.url}{path}", headers=auth(login), timeout=30)

    def webhooks(self, proxy: Proxy | None = None) -> dict[str, Any]:
        stats: dict[str, Any] = (proxy or self.proxy).stats()
        return dict(stats["webhooks"])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    cache = tmp_path_factory.mktemp("webhooks") / "cache"
    env = clean_env(CACHE_WEBHOOK_SECRET=SECRET, CACHE_MAX_BODY_BYTES=str(256 * 1024))
    with quiet_emulator() as server, start_proxy(server.url, cache, env=env) as proxy:
        repos = httpx.get(f"{server.url}/orgs/octo-org/repos", headers=auth("alice")).json()
        repo = str(repos[0]["full_name"])
        r = httpx.post(
            f"{server.url}/repos/{repo}/hooks",
            headers=auth("alice"),
            json={
                "config": {"url": proxy.url + WEBHOOK_PATH, "secret": SECRET},
                "events": ["workflow_job", "workflow_run"],
            },
        )
        assert r.status_code == 201, r.text
        world = World(server, proxy, repo, int(r.json()["id"]))
        assert wait_until(lambda: world.webhooks()["events"].get("ping") == 1)  # the hook's ping arrived
        yield world


def _run_ids(resp: httpx.Response) -> set[int]:
    return {int(r["id"]) for r in resp.json()["workflow_runs"]}


def test_a_queued_job_reaches_the_cached_queued_list_at_once(world: World) -> None:
    owner, name = world.repo.split("/")
    queued = f"/repos/{world.repo}{QUEUED}"
    runners = "/orgs/octo-org/actions/runners"
    first = world.read(queued)
    assert first.headers["X-Fleetci-Cache"] in ("MISS", "REVALIDATED")
    assert world.read(queued).headers["X-Fleetci-Cache"] == "HIT"
    assert world.read(runners).status_code == 200
    received = world.webhooks()["received"]

    new_run = world.emu.queue_run(owner, name)
    assert wait_until(lambda: world.webhooks()["received"] >= received + 2)  # workflow_run + workflow_job(s)

    charged = world.emu.charged(tok("alice"))
    after = world.read(queued)
    assert after.headers["X-Fleetci-Cache"] == "MISS"  # revalidated: it changed, so a full answer
    assert new_run in _run_ids(after) and new_run not in _run_ids(first)
    assert world.emu.charged(tok("alice")) == charged + 1
    # the org runner list was marked stale too: its revalidation is a free 304 (nothing changed there)
    assert world.read(runners).headers["X-Fleetci-Cache"] == "REVALIDATED"
    assert world.emu.charged(tok("alice")) == charged + 1
    # another credential's copy of the same list was invalidated as well (every partition)
    assert new_run in _run_ids(world.read(queued, login="bob"))
    assert world.read(queued).headers["X-Fleetci-Cache"] == "HIT"


def test_an_unrelated_repository_keeps_its_fresh_entries(world: World) -> None:
    repos = httpx.get(f"{world.emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
    other = next(str(r["full_name"]) for r in repos if r["full_name"] != world.repo)
    path = f"/repos/{other}{QUEUED}"
    world.read(path)
    owner, name = world.repo.split("/")
    received = world.webhooks()["received"]
    world.emu.queue_run(owner, name)
    assert wait_until(lambda: world.webhooks()["received"] >= received + 2)
    assert world.read(path).headers["X-Fleetci-Cache"] == "HIT"


def _post(world: World, body: bytes, headers: dict[str, str], proxy: Proxy | None = None) -> httpx.Response:
    return httpx.post(
        f"{(proxy or world.proxy).url}{WEBHOOK_PATH}", content=body, headers=headers, timeout=30
    )


def _signed(body: bytes, event: str = "workflow_job", delivery: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": signature(SECRET, body),
    }


def _one_line_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    message = str(resp.json()["message"])
    assert "\n" not in message and message.startswith("fleetci: ")
    return message


def test_bad_or_missing_signature_is_refused_in_one_line(world: World) -> None:
    body = json.dumps({"action": "queued", "repository": {"full_name": world.repo}}).encode()
    before = world.webhooks()
    wrong = _signed(body) | {"X-Hub-Signature-256": signature("not-the-secret", body)}
    assert "does not match" in _one_line_error(_post(world, body, wrong), 401)
    tampered = _signed(body)
    assert "does not match" in _one_line_error(_post(world, body + b" ", tampered), 401)
    unsigned = {k: v for k, v in _signed(body).items() if k != "X-Hub-Signature-256"}
    assert "unsigned" in _one_line_error(_post(world, body, unsigned), 401)
    after = world.webhooks()
    assert after["bad_signature"] == before["bad_signature"] + 3
    assert after["received"] == before["received"]


def test_a_replayed_delivery_is_ignored(world: World) -> None:
    body = json.dumps(
        {"action": "completed", "workflow_run": {"id": 1}, "repository": {"full_name": world.repo}}
    ).encode()
    headers = _signed(body, event="workflow_run")
    queued = f"/repos/{world.repo}{QUEUED}"
    world.read(queued)
    first = _post(world, body, headers)
    assert first.status_code == 200 and first.json()["duplicate"] is False
    world.read(queued)  # fresh again after the first delivery
    again = _post(world, body, headers)
    assert again.status_code == 200 and again.json() == {
        "delivery": headers["X-GitHub-Delivery"],
        "duplicate": True,
        "invalidated": 0,
    }
    assert world.read(queued).headers["X-Fleetci-Cache"] == "HIT"


def test_unknown_events_are_accepted_and_counted(world: World) -> None:
    body = json.dumps({"action": "created", "repository": {"full_name": world.repo}}).encode()
    before = world.webhooks()["unknown_events"]
    resp = _post(world, body, _signed(body, event="sponsorship"))
    assert resp.status_code == 200 and resp.json()["invalidated"] == 0
    assert world.webhooks()["unknown_events"] == before + 1


def test_oversize_and_malformed_deliveries(world: World) -> None:
    big = b'{"pad": "' + b"x" * (300 * 1024) + b'"}'
    resp = _post(world, big, _signed(big))
    assert resp.status_code == 413
    for body, headers in (
        (b"[1, 2]", _signed(b"[1, 2]")),
        (b"{nope", _signed(b"{nope")),
        (b"{}", _signed(b"{}") | {"X-GitHub-Event": "Bad Event!"}),
        (b"{}", {k: v for k, v in _signed(b"{}").items() if k != "X-GitHub-Delivery"}),
    ):
        _one_line_error(_post(world, body, headers), 400)


def test_lost_deliveries_are_redelivered_by_the_reconciliation(world: World, tmp_path: Path) -> None:
    """The safety net: every first attempt is lost; the proxy lists the hook's deliveries and asks for
    the failed ones again, on a webhook listener of its own."""
    repos = httpx.get(f"{world.emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
    repo = str(repos[1]["full_name"])
    owner, name = repo.split("/")
    port = free_port()
    r = httpx.post(
        f"{world.emulator.url}/repos/{repo}/hooks",
        headers=auth("alice"),
        json={"config": {"url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}", "secret": SECRET}, "events": ["*"]},
    )
    assert r.status_code == 201, r.text
    env = clean_env(
        CACHE_WEBHOOK_SECRET=SECRET,
        CACHE_WEBHOOK_TOKEN=tok("alice"),
        CACHE_WEBHOOK_RECONCILE_INTERVAL="0.3",
    )
    world.emu.configure(webhook_drop_rate=1.0)
    proxy = start_proxy(
        world.emulator.url,
        tmp_path / "cache",
        "--webhook-port",
        str(port),
        "--webhook-reconcile",
        f"{repo}:{r.json()['id']}",
        env=env,
    )
    try:
        # the listener of its own takes the deliveries; the proxy's port says where they go
        assert str(port) in _one_line_error(_post(world, b"{}", _signed(b"{}"), proxy=proxy), 404)
        queued = f"/repos/{repo}{QUEUED}"
        first = httpx.get(f"{proxy.url}{queued}", headers=auth("alice"))
        new_run = world.emu.queue_run(owner, name)
        assert world.emu.hooks.dropped >= 2
        assert wait_until(lambda: world.webhooks(proxy)["redelivered"] >= 2, timeout=20)
        assert wait_until(lambda: world.webhooks(proxy)["received"] >= 2, timeout=20)
        after = httpx.get(f"{proxy.url}{queued}", headers=auth("alice"))
        assert new_run in _run_ids(after) and new_run not in _run_ids(first)
        deliveries = httpx.get(
            f"{world.emulator.url}/repos/{repo}/hooks/{r.json()['id']}/deliveries", headers=auth("alice")
        ).json()
        assert any(d["redelivery"] and d["status_code"] == 200 for d in deliveries)
    finally:
        world.emu.configure(webhook_drop_rate=0.0)
        proxy.stop()


def test_emulator_deliveries_and_hook_endpoints_match_githubs_descriptions(
    spec: OpenAPISpec, webhook_spec: WebhookSpec
) -> None:
    """Every delivery the emulator sends (ping, workflow_run and workflow_job in each action) against
    @octokit/openapi-webhooks; the hook endpoints' answers against @octokit/openapi."""
    got: list[tuple[dict[str, str], bytes]] = []

    async def receive(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.json_response({})

    def app() -> web.Application:
        a = web.Application()
        a.router.add_post("/hook", receive)
        return a

    receiver = BackgroundApp(app, "127.0.0.1", 0)
    receiver.start()
    server = EmulatorServer(GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=3))).start()
    try:
        url = server.url
        repo = httpx.get(f"{url}/orgs/octo-org/repos", headers=auth("alice")).json()[0]["full_name"]
        config = {"config": {"url": receiver.url + "/hook", "secret": SECRET}, "events": ["*"]}
        made = httpx.post(f"{url}/repos/{repo}/hooks", headers=auth("alice"), json=config)
        spec.validate("post", R + "/hooks", 201, made.json())
        org = httpx.post(f"{url}/orgs/octo-org/hooks", headers=auth("alice"), json=config)
        spec.validate("post", "/orgs/{org}/hooks", 201, org.json())
        server.emulator.mutate(25)
        assert wait_until(server.emulator.hooks.settled, timeout=20)
        seen = set()
        for headers, body in got:
            payload = json.loads(body)
            assert headers["X-Hub-Signature-256"] == signature(SECRET, body)
            webhook_spec.validate(headers["X-GitHub-Event"], payload.get("action"), payload)
            seen.add((headers["X-GitHub-Event"], payload.get("action")))
        wanted = {("workflow_job", a) for a in ("queued", "in_progress", "completed")}
        wanted |= {("workflow_run", a) for a in ("requested", "in_progress", "completed")} | {("ping", None)}
        assert wanted <= seen
        hook = f"{R}/hooks/{{hook_id}}"
        base = f"{url}/repos/{repo}/hooks/{made.json()['id']}"
        spec.validate(
            "get", R + "/hooks", 200, httpx.get(f"{url}/repos/{repo}/hooks", headers=auth("alice")).json()
        )
        spec.validate(
            "get",
            "/orgs/{org}/hooks",
            200,
            httpx.get(f"{url}/orgs/octo-org/hooks", headers=auth("alice")).json(),
        )
        spec.validate("get", hook, 200, httpx.get(base, headers=auth("alice")).json())
        listed = httpx.get(f"{base}/deliveries", headers=auth("alice")).json()
        spec.validate("get", hook + "/deliveries", 200, listed)
        one = httpx.get(f"{base}/deliveries/{listed[0]['id']}", headers=auth("alice"))
        spec.validate("get", hook + "/deliveries/{delivery_id}", 200, one.json())
        again = httpx.post(f"{base}/deliveries/{listed[0]['id']}/attempts", headers=auth("alice"))
        spec.validate("post", hook + "/deliveries/{delivery_id}/attempts", 202, again.json())
        # hooks are an admin's business: bob (no member of octo-org) sees no hooks and makes none
        assert httpx.get(f"{url}/repos/{repo}/hooks", headers=auth("bob")).status_code in (403, 404)
        assert httpx.post(f"{url}/orgs/octo-org/hooks", headers=auth("bob"), json=config).status_code == 403
        bad = httpx.post(f"{url}/repos/{repo}/hooks", headers=auth("alice"), json={"config": {}})
        assert bad.status_code == 422
    finally:
        server.stop()
        receiver.stop()


def test_a_lost_delivery_costs_freshness_up_to_the_ttl_a_delivered_one_none(world: World) -> None:
    """Through the receiver: an engine on a virtual clock behind a real webhook listener, a hook of the
    real emulator pointing at it. A lost delivery leaves the entry fresh-but-old until its TTL ends; the
    next change, delivered, ends the window at once."""
    import asyncio

    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.server import webhook_app
    from fleetci.cache.settings import cache_settings
    from fleetci.cache.webhooks import WebhookReceiver
    from fleetci.wait import wait_until_async

    repos = httpx.get(f"{world.emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
    repo = str(repos[3]["full_name"])
    owner, name = repo.split("/")
    settings = cache_settings(
        {"upstream": world.emulator.url, "cache_dir": str(world.proxy.cache_dir.parent / "ttl")}, {}, {}
    )
    now = [1_000_000.0]
    path = f"/repos/{repo}{QUEUED}"
    headers = [("Authorization", f"token {tok('alice')}")]

    def ids(body: bytes) -> set[int]:
        return {int(r["id"]) for r in json.loads(body)["workflow_runs"]}

    async def scenario() -> None:
        engine = CacheEngine(settings, clock=lambda: now[0])
        receiver = WebhookReceiver(engine, SECRET)
        runner = web.AppRunner(webhook_app(receiver))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        hook = await asyncio.to_thread(
            httpx.post,
            f"{world.emulator.url}/repos/{repo}/hooks",
            headers=auth("alice"),
            json={
                "config": {"url": f"http://127.0.0.1:{port}{WEBHOOK_PATH}", "secret": SECRET},
                "events": ["workflow_job", "workflow_run"],
            },
        )
        assert hook.status_code == 201, hook.text
        try:
            await wait_until_async(
                lambda: receiver.events["ping"] == 1 or None, timeout=10, what="the hook's ping"
            )
            first = await engine.handle("GET", path, headers)
            assert first.outcome == "MISS"
            world.emu.configure(webhook_drop_rate=1.0)
            dropped = world.emu.hooks.dropped
            lost_run = world.emu.queue_run(owner, name)
            assert world.emu.hooks.dropped > dropped  # its deliveries were lost
            now[0] += 59
            stale = await engine.handle("GET", path, headers)
            assert stale.outcome == "HIT" and lost_run not in ids(stale.body)
            now[0] += 2  # past the 60 s window of the queue class
            late = await engine.handle("GET", path, headers)
            assert late.outcome == "MISS" and lost_run in ids(late.body)

            world.emu.configure(webhook_drop_rate=0.0)
            received = receiver.counts["received"]
            new_run = world.emu.queue_run(owner, name)
            await wait_until_async(
                lambda: receiver.counts["received"] >= received + 2 or None,
                timeout=10,
                what="the new run's deliveries",
            )
            assert receiver.counts["invalidated"] >= 1
            now[0] += 1  # well inside the new window: only the delivery can end it
            fresh = await engine.handle("GET", path, headers)
            assert fresh.outcome == "MISS" and new_run in ids(fresh.body)
        finally:
            world.emu.configure(webhook_drop_rate=0.0)
            await asyncio.to_thread(
                httpx.delete,
                f"{world.emulator.url}/repos/{repo}/hooks/{hook.json()['id']}",
                headers=auth("alice"),
            )
            await runner.cleanup()
            await engine.close()

    asyncio.run(scenario())


def test_a_webhook_at_one_proxy_reaches_the_proxies_of_a_shared_store(world: World, tmp_path: Path) -> None:
    """With CACHE_BACKEND (Redis), the receiving proxy publishes the invalidation on the store's channel:
    another proxy drops its own fresh copy, and the store's copy from before the change counts as stale."""
    from support.redis import PASSWORD, RedisServer

    store = RedisServer(tmp_path / "redis").start()
    env = clean_env(
        CACHE_BACKEND=store.url,
        CACHE_REDIS_PASSWORD=PASSWORD,
        FLEETCI_CACHE_SECRET="fleet-secret",
        CACHE_WEBHOOK_SECRET=SECRET,
    )
    a = start_proxy(world.emulator.url, tmp_path / "a" / "cache", env=env)
    b = start_proxy(world.emulator.url, tmp_path / "b" / "cache", env=env)
    try:
        repos = httpx.get(f"{world.emulator.url}/orgs/octo-org/repos", headers=auth("alice")).json()
        repo = str(repos[2]["full_name"])
        queued = f"{repo and '/repos/' + repo}{QUEUED}"

        def read(p: Proxy) -> httpx.Response:
            return httpx.get(p.url + queued, headers=auth("alice"), timeout=30)

        old = read(a)
        assert wait_until(lambda: read(b).headers["X-Fleetci-Cache"] == "HIT")  # b: SHARED, then its own copy
        owner, name = repo.split("/")
        new_run = world.emu.queue_run(owner, name)
        assert new_run not in _run_ids(read(b))  # still fresh everywhere: nothing told b yet
        body = json.dumps(
            {"action": "queued", "workflow_job": {"id": 1}, "repository": {"full_name": repo}}
        ).encode()
        assert _post(world, body, _signed(body), proxy=a).json()["invalidated"] >= 1
        assert wait_until(lambda: new_run in _run_ids(read(b)), timeout=10)
        assert new_run not in _run_ids(old)
    finally:
        for p in (a, b):
            p.stop()
        store.kill()


# -- review findings: whole bodies, bounded bodies, replays under fresh ids, relabelled events ---------------


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def test_a_signed_body_in_several_tcp_writes_is_read_whole(world: World) -> None:
    """A 200 KB workflow_job body arriving in three writes 0.3 s apart (a tunnel): acted on, not 401."""
    body = json.dumps(
        {
            "action": "queued",
            "workflow_job": {"id": 77, "pad": "x" * (200 * 1024)},
            "repository": {"full_name": world.repo},
        }
    ).encode()
    headers = _signed(body) | {"Content-Length": str(len(body)), "Host": "127.0.0.1"}
    head = "POST " + WEBHOOK_PATH + " HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    received = world.webhooks()["received"]
    with _raw(world.proxy.url) as sock:
        sock.sendall(head.encode() + b"\r\n" + body[:1000])
        for part in (body[1000:100_000], body[100_000:]):
            time.sleep(0.3)
            sock.sendall(part)
        answer = read_answer(sock)
    assert answer.status == 200, answer.body
    assert answer.json()["duplicate"] is False
    assert world.webhooks()["received"] == received + 1


def test_many_concurrent_oversize_unsigned_bodies_are_bounded(world: World) -> None:
    """Twelve chunked (undeclared) unsigned bodies over the cap, all open at once: at most
    MAX_BODIES_IN_FLIGHT are read at a time, each is refused, and a signed delivery still gets through."""
    from fleetci.cache.webhooks import MAX_BODIES_IN_FLIGHT

    head = (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        "X-GitHub-Event: workflow_job\r\nX-GitHub-Delivery: x\r\n\r\n"
    ).encode()
    piece = b"y" * (100 * 1024)
    chunk = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    socks = [_raw(world.proxy.url) for _ in range(12)]
    statuses = []
    try:
        for sock in socks:
            sock.sendall(head + chunk)
        time.sleep(0.5)  # every body is now open; some are being read, the rest wait for a slot
        for sock in socks:
            with contextlib.suppress(OSError):  # refused and closed already
                sock.sendall(chunk * 2 + b"0\r\n\r\n")  # 300 KB in all: over the 256 KB cap
        for sock in socks:
            try:
                statuses.append(read_answer(sock).status)
            except OSError:
                statuses.append(-1)
    finally:
        for sock in socks:
            sock.close()
    assert set(statuses) <= {413, 503, -1} and 413 in statuses, statuses
    stats = world.webhooks()
    assert 1 <= stats["bodies_in_flight_max"] <= MAX_BODIES_IN_FLIGHT
    body = json.dumps(
        {"action": "queued", "workflow_job": {"id": 78}, "repository": {"full_name": world.repo}}
    ).encode()
    assert _post(world, body, _signed(body)).json()["duplicate"] is False


def test_a_signed_body_replayed_under_a_fresh_delivery_id_is_a_duplicate(world: World) -> None:
    queued = f"/repos/{world.repo}{QUEUED}"
    body = json.dumps(
        {"action": "completed", "workflow_run": {"id": 79}, "repository": {"full_name": world.repo}}
    ).encode()
    world.read(queued)
    assert _post(world, body, _signed(body, event="workflow_run")).json()["duplicate"] is False
    world.read(queued)  # fresh again
    before = world.webhooks()["duplicates"]
    replay = _post(world, body, _signed(body, event="workflow_run", delivery=str(uuid.uuid4())))
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert world.webhooks()["duplicates"] == before + 1
    assert world.read(queued).headers["X-Fleetci-Cache"] == "HIT"


def test_an_event_header_that_disagrees_with_the_signed_body_is_refused(world: World) -> None:
    job = json.dumps(
        {"action": "queued", "workflow_job": {"id": 80}, "repository": {"full_name": world.repo}}
    ).encode()
    bare = json.dumps({"action": "completed", "repository": {"full_name": world.repo}}).encode()
    before = world.webhooks()
    relabelled = _post(world, job, _signed(job, event="repository"))  # would reach the whole repository
    assert "does not match" in _one_line_error(relabelled, 400)
    assert "does not match" in _one_line_error(_post(world, bare, _signed(bare, event="workflow_run")), 400)
    after = world.webhooks()
    assert after["mismatched_events"] == before["mismatched_events"] + 2
    assert after["received"] == before["received"]
    # the same body under its own event is still good (a refused one is not remembered as seen)
    assert _post(world, job, _signed(job)).json()["duplicate"] is False


def test_stopping_the_emulator_ends_its_delivery_thread() -> None:
    before = set(threading.enumerate())
    server = EmulatorServer(GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=5))).start()
    try:
        repo = httpx.get(f"{server.url}/orgs/octo-org/repos", headers=auth("alice")).json()[0]["full_name"]
        made = httpx.post(  # its ping starts the delivery thread (to a port nobody listens on)
            f"{server.url}/repos/{repo}/hooks",
            headers=auth("alice"),
            json={"config": {"url": f"http://127.0.0.1:{free_port()}/hook", "secret": SECRET}},
        )
        assert made.status_code == 201, made.text
        assert wait_until(server.emulator.hooks.settled, timeout=20)
        started = [t for t in set(threading.enumerate()) - before if t.name == "emulator-webhooks"]
        assert len(started) == 1 and started[0].is_alive()
    finally:
        server.stop()
    assert not started[0].is_alive()
