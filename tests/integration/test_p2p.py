"""Peer-to-peer cache sharing with real libp2p nodes on 127.0.0.1 (proxy processes and in-process nodes)."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.cache.policy import cache_key, normalize_target, scope_of
from fleetci.cache.store import Entry
from fleetci.http import free_port
from fleetci.p2p.crypto import FleetKeys
from fleetci.p2p.messages import INLINE_MAX, Announcement
from support import Proxy, clean_env, one_line_error, run_fleetci, start_proxy, wait_until
from support.p2p import FLEET, SECRET


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


def p2p_env(secret: str = SECRET, **extra: str) -> dict[str, str]:
    return clean_env(FLEETCI_CACHE_SECRET=secret, CACHE_FLEET=FLEET, **extra)


def start_node(
    emulator: Any,
    root: Path,
    name: str,
    *args: str,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Proxy:
    return start_proxy(
        emulator.url,
        root / name,
        "--enable-p2p",
        "--p2p-host",
        "127.0.0.1",
        "--listen-port",
        str(port or 0),  # 0: the node binds a free port itself (no race with other processes)
        *args,
        env=env or p2p_env(),
    )


def peers_of(p: Proxy) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{p.url}/_fleetci/peers", timeout=10).json()
    return data


def mesh_ready(origin: Proxy, others: list[Proxy], timeout: float = 30) -> None:
    """Until an announced probe entry comes back from every other node (mesh formed both ways)."""
    want = {peers_of(o)["peer_id"] for o in others}

    def ok() -> bool:
        r = httpx.post(f"{origin.url}/_fleetci/p2p/probe", timeout=30).json()
        return want <= set(r.get("shared_with", []))

    assert wait_until(ok, timeout=timeout, interval=0.5), "the fleet did not form a mesh"


@pytest.fixture
def fleet(emulator: Any, tmp_path: Path) -> Iterator[Any]:
    nodes: list[Proxy] = []

    def make(n: int, env: dict[str, str] | None = None) -> list[Proxy]:
        first = start_node(emulator, tmp_path, "n0", env=env)
        nodes.append(first)
        boot = peers_of(first)["addrs"][0]
        for i in range(1, n):
            nodes.append(start_node(emulator, tmp_path, f"n{i}", "--bootstrap-peers", boot, env=env))
        mesh_ready(first, nodes[1:])
        return nodes  # the fixture's own list: nodes a test appends are torn down too

    yield make
    for p in nodes:
        p.stop(signal.SIGKILL)


def test_five_nodes_one_miss_then_peers(emulator: Any, fleet: Any) -> None:
    nodes = fleet(5)
    h = {"Authorization": f"token {token('alice')}"}
    small, large = "/repos/octo-org/fleet-tools", "/repos/octo-org/api/actions/runs?per_page=100"
    before = emulator.emulator.charged(token("alice"))
    first = [httpx.get(nodes[0].url + u, headers=h) for u in (small, large)]
    assert [r.headers["X-Fleetci-Cache"] for r in first] == ["MISS", "MISS"]
    assert len(first[1].content) > INLINE_MAX  # the large one must be fetched on demand

    def all_peer_hits() -> bool:
        return all(
            httpx.get(n.url + u, headers=h).headers["X-Fleetci-Cache"] in ("PEER", "HIT")
            for n in nodes[1:]
            for u in (small, large)
        )

    time.sleep(0.3)
    outcomes = [httpx.get(n.url + u, headers=h) for n in nodes[1:] for u in (small, large)]
    assert all(r.status_code == 200 for r in outcomes)
    assert [r.headers["X-Fleetci-Cache"] for r in outcomes] == ["PEER"] * 8, [
        r.headers["X-Fleetci-Cache"] for r in outcomes
    ]

    def same(r: httpx.Response, node: Proxy) -> bytes:  # each proxy points API URLs at itself
        return r.content.replace(node.url.encode(), b"PROXY")

    pairs = list(zip([n for n in nodes[1:] for _ in (0, 1)], outcomes, strict=True))
    assert all(same(r, n) == same(first[i % 2], nodes[0]) for i, (n, r) in enumerate(pairs))
    assert all_peer_hits()
    assert emulator.emulator.charged(token("alice")) - before == 2  # one charged call per URL, fleet-wide
    stats = [n.stats() for n in nodes]
    assert sum(int(s["peer_hits"]) for s in stats) == 8
    assert all(int(s["connected_peers"]) >= 1 for s in stats)
    assert sum(int(peers_of(n)["stats"]["fetches"]) for n in nodes[1:]) >= 4  # the large body, on demand
    # All of that ran without py-libp2p's unused extras in memory (their C extensions never mapped).
    for n in nodes:
        maps = Path(f"/proc/{n.proc.pid}/maps").read_text()
        assert "fleetci" in Path(f"/proc/{n.proc.pid}/cmdline").read_text()
        assert not [
            m for m in ("/aioquic/", "/zeroconf/", "/cbor2/", "/pylsqpack/", "miniupnpc") if m in maps
        ]


def test_simultaneous_misses_on_five_nodes_cost_one_call(emulator: Any, fleet: Any) -> None:
    """Fleet-wide coalescing: five runners ask five different proxies for the same URLs at the same
    moment; claims let one node fetch while the others wait for its announcement."""
    nodes = fleet(5)
    h = {"Authorization": f"token {token('alice')}"}
    repos = [r["name"] for r in httpx.get(nodes[0].url + "/orgs/octo-org/repos", headers=h).json()][:4]
    urls = [f"/repos/octo-org/{name}/actions/runs?per_page=5" for name in repos]
    urls += [f"/repos/octo-org/{name}/actions/workflows" for name in repos]
    clients = [httpx.Client(base_url=n.url, headers=h, timeout=30) for n in nodes]
    for c in clients:
        c.get("/orgs/octo-org/repos")  # connections up (and a local hit) before the races
    pool = concurrent.futures.ThreadPoolExecutor(len(nodes))

    def race(url: str) -> list[str]:
        """All five proxies get ``url`` at the same moment."""
        barrier = threading.Barrier(len(nodes))

        def ask(c: httpx.Client) -> str:
            barrier.wait()
            r = c.get(url)
            assert r.status_code == 200, r.text
            return r.headers["X-Fleetci-Cache"]

        answers = list(pool.map(ask, clients))
        time.sleep(0.5)  # runners poll; they do not flood: let gossip drain between rounds
        return answers

    race("/orgs/octo-org/actions/runners?per_page=100")  # warm-up: first claims open gossip streams
    before = emulator.emulator.charged(token("alice"))
    outcomes = [race(url) for url in urls]
    pool.shutdown()
    for c in clients:
        c.close()
    charged = emulator.emulator.charged(token("alice")) - before
    # Without claims every proxy misses: 5 calls per URL. A claim loses its race only when the machine
    # delays gossip past the claim window (50 ms), so allow a second call per URL, not five.
    assert charged <= 2 * len(urls), (charged, outcomes)
    misses = sum(o.count("MISS") for o in outcomes)
    peer = sum(o.count("PEER") for o in outcomes)
    assert misses == charged and peer == len(urls) * len(nodes) - misses, outcomes
    assert sum(int(str(n.stats()["claim_waits"])) for n in nodes) >= peer, outcomes


def test_a_miss_waits_only_when_another_node_fetches_the_same_key(
    emulator: Any, fleet: Any, tmp_path: Path
) -> None:
    """Issue 16: fleet-wide coalescing is paid for only under contention. A miss in a token no other node
    uses asks nobody (no round trip, no gossip before the call); a miss in a token the fleet shares asks
    the key's owner for a lease (one sealed datagram between the event loops, the long-lived lease line per
    owner when that goes unanswered), never sits out the claim window;
    misses of the same key on two nodes at once still cost one upstream call. And a peer's newer copy
    announced without its body (too large to inline) makes the next call after expiry a free 304."""
    short = tmp_path / "short.yml"  # a 1 s fresh window for URLs marked short=1, the defaults elsewhere
    short.write_text('cache:\n  ttl:\n    - {pattern: "[?&]short=1", seconds: 1, name: short}\n')
    a, b = fleet(2, env=p2p_env(FLEETCI_CONFIG=str(short)))
    h = {"Authorization": f"token {token('alice')}"}
    repos = [r["name"] for r in httpx.get(a.url + "/orgs/octo-org/repos", headers=h).json()][:3]
    ca, cb = (httpx.Client(base_url=n.url, headers=h, timeout=30) for n in (a, b))
    own = httpx.Client(base_url=a.url, headers={"Authorization": f"token {token('bob')}"}, timeout=30)
    try:
        own.get(f"/repos/octo-org/{repos[0]}")  # bob's token: only node a ever uses it
        # Each node first hears that the other uses this token (an announcement), so the misses below take
        # the lease path, not the "nobody else uses this token" one, however fast gossip is today.
        for i, (client, other) in enumerate(((ca, b), (cb, a))):
            heard = int(peers_of(other)["stats"]["received"])
            assert client.get(f"/repos/octo-org/{repos[0]}/actions/runs?per_page={20 + i}").status_code == 200
            assert wait_until(lambda o=other, n=heard: int(peers_of(o)["stats"]["received"]) > n, timeout=30)
        before = emulator.emulator.charged(token("alice"))
        leases_before = [int(n.stats()["leases"]) for n in (a, b)]
        lines_before = [int(peers_of(n)["stats"]["lease_lines"]) for n in (a, b)]
        p2p_before = [peers_of(n)["stats"] for n in (a, b)]
        alone = [f"/repos/octo-org/{name}/actions/runs?per_page={i + 2}" for i in range(3) for name in repos]
        solo = [(ca if i % 2 else cb).get(url).headers["X-Fleetci-Cache"] for i, url in enumerate(alone)]
        assert solo == ["MISS"] * len(alone)
        assert emulator.emulator.charged(token("alice")) - before == len(alone)
        stats = [n.stats() for n in (a, b)]
        assert [s["claim_windows"] for s in stats] == [0, 0], stats  # nobody sat out a window
        assert sum(int(s["leases"]) for s in stats) - sum(leases_before) == len(alone), stats
        p2p = [peers_of(n)["stats"] for n in (a, b)]
        asked = {
            k: sum(int(s[k]) for s in p2p) - sum(int(s[k]) for s in p2p_before)
            for k in ("lease_datagrams", "lease_datagrams_served", "leases_asked", "lease_datagram_timeouts")
        }
        # the questions went as datagrams between the event loops, answered by the owner's; the lease line
        # (each node opened one to the other when they connected) only after a datagram went unanswered
        assert asked["lease_datagrams"] >= 1, asked
        assert asked["lease_datagrams_served"] >= asked["lease_datagrams"], asked
        assert asked["leases_asked"] == asked["lease_datagram_timeouts"], asked
        assert [s["lease_lines"] for s in p2p] == lines_before and all(n == 1 for n in lines_before), p2p

        # bob's token: nobody else uses it, so once node a has used it for a moment (claim_wait; a fleet
        # starting up is still asking), its misses ask nobody: no lease, no claim, no round trip
        fresh_urls = (f"/repos/octo-org/{repos[0]}/actions/runs?per_page={40 + i}" for i in range(60))

        def at_once() -> bool:
            was = int(a.stats()["fetched_at_once"])
            assert own.get(next(fresh_urls)).status_code == 200
            return int(a.stats()["fetched_at_once"]) > was

        assert wait_until(at_once, timeout=30, interval=0.2), a.stats()
        mine = [int(a.stats()[k]) for k in ("leases", "fetched_at_once")]
        sent = [int(peers_of(a)["stats"][k]) for k in ("leases_asked", "claims_sent")]
        bob_before = emulator.emulator.charged(token("bob"))
        quiet = [
            f"/repos/octo-org/{name}/actions/workflows?per_page={i + 2}" for i in range(3) for name in repos
        ]
        assert [own.get(url).headers["X-Fleetci-Cache"] for url in quiet] == ["MISS"] * len(quiet)
        assert emulator.emulator.charged(token("bob")) - bob_before == len(quiet)
        assert [int(a.stats()[k]) for k in ("leases", "fetched_at_once")] == [mine[0], mine[1] + len(quiet)]
        assert [int(peers_of(a)["stats"][k]) for k in ("leases_asked", "claims_sent")] == sent

        # a large entry (announced without its body) that node a fetched: after it expires, node b's miss
        # takes a's copy and asks GitHub conditionally, a free 304, as one cache holding that copy would
        large = f"/repos/octo-org/{repos[1]}/actions/runs?per_page=100&short=1"
        heard = int(peers_of(b)["stats"]["received"])
        first = ca.get(large)
        assert first.headers["X-Fleetci-Cache"] == "MISS" and len(first.content) > INLINE_MAX
        assert wait_until(lambda: int(peers_of(b)["stats"]["received"]) > heard, timeout=30)
        time.sleep(1.2)  # past the 1 s fresh window on both nodes
        before = emulator.emulator.charged(token("alice"))
        again = cb.get(large)
        assert again.headers["X-Fleetci-Cache"] == "REVALIDATED", again.headers
        assert again.content.replace(b.url.encode(), b"P") == first.content.replace(a.url.encode(), b"P")
        assert emulator.emulator.charged(token("alice")) - before == 0

        # the same keys on both nodes at the same moment, with GitHub slow enough for the fetches to overlap
        r = httpx.post(f"{emulator.url}/_emulator/config", json={"latency_ms": [300, 300]}, timeout=10)
        assert r.status_code < 300
        pool = concurrent.futures.ThreadPoolExecutor(2)
        both = [
            f"/repos/octo-org/{name}/actions/workflows?per_page={i + 2}" for i in range(2) for name in repos
        ]
        before = emulator.emulator.charged(token("alice"))
        outcomes = []
        for url in both:
            barrier = threading.Barrier(2)

            def ask(c: httpx.Client, url: str = url, barrier: threading.Barrier = barrier) -> str:
                barrier.wait()
                return c.get(url).headers["X-Fleetci-Cache"]

            outcomes.append(sorted(pool.map(ask, (ca, cb))))
        pool.shutdown()
        charged = emulator.emulator.charged(token("alice")) - before
        windows = sum(int(str(n.stats()["claim_windows"])) for n in (a, b))
        # a lease answer the loaded machine delayed past its timeout falls back to the claim window
        assert charged <= len(both) + windows and windows <= 1, (charged, windows, outcomes)
        assert outcomes.count(["MISS", "PEER"]) >= len(both) - windows, outcomes
    finally:
        httpx.post(f"{emulator.url}/_emulator/config", json={"latency_ms": [0, 0]}, timeout=10)
        ca.close()
        cb.close()
        own.close()


def test_twenty_nodes_five_hundred_announcements_nothing_lost(emulator: Any, tmp_path: Path) -> None:
    """Twenty proxy processes; a burst of 500 new entries spread over all of them (25 each, at once).
    Every node must receive all 475 announcements of the others, and serve them without GitHub."""
    nodes = [start_node(emulator, tmp_path, "n0")]
    try:
        boot = peers_of(nodes[0])["addrs"][0]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            nodes += pool.map(
                lambda i: start_node(emulator, tmp_path, f"n{i}", "--bootstrap-peers", boot), range(1, 20)
            )
        assert wait_until(lambda: all(len(peers_of(n)["connected"]) >= 3 for n in nodes), timeout=90)
        h = {"Authorization": f"token {token('alice')}"}
        urls = [f"/orgs/octo-org/repos?per_page=1&page={i}" for i in range(1, 501)]  # 10-minute TTL
        shares = [urls[i::20] for i in range(20)]
        before = emulator.emulator.charged(token("alice"))

        def fetch(node: Proxy, mine: list[str]) -> list[str]:
            with httpx.Client(base_url=node.url, headers=h, timeout=60) as c:
                answers = [c.get(u) for u in mine]
            return [r.headers.get("X-Fleetci-Cache", f"{r.status_code} {r.text[:80]}") for r in answers]

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            first = [o for got in pool.map(fetch, nodes, shares) for o in got]
        assert first.count("MISS") == 500, Counter(first)
        assert emulator.emulator.charged(token("alice")) - before == 500

        keys = {u: _key_for("alice", u) for u in urls}
        wanted = [{keys[u] for u in urls if u not in set(mine)} for mine in shares]

        def missing() -> list[int]:
            """Per node, how many of the other nodes' announcements it has not received (yet)."""
            got = [peers_of_receipts(n) for n in nodes]
            return [len(w - g) for w, g in zip(wanted, got, strict=True)]

        assert wait_until(lambda: not any(missing()), timeout=150, interval=2.0), {
            i: (m, peers_of(nodes[i])["stats"]) for i, m in enumerate(missing()) if m
        }
        # End to end on a sample of nodes: 1,500 answers from the fleet, not one new call to GitHub.
        sample = [nodes[1], nodes[10], nodes[19]]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            every = list(pool.map(fetch, sample, [urls] * 3))
        served = Counter(o for got in every for o in got)
        assert set(served) <= {"HIT", "PEER"}, served
        assert emulator.emulator.charged(token("alice")) - before == 500
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL)


def peers_of_receipts(p: Proxy) -> set[str]:
    data = httpx.get(f"{p.url}/_fleetci/peers", params={"receipts": "1"}, timeout=30).json()
    return set(data["receipts"])


def test_killed_node_rest_keep_serving_restarted_node_catches_up(
    emulator: Any, fleet: Any, tmp_path: Path
) -> None:
    nodes = fleet(3)
    h = {"Authorization": f"token {token('alice')}"}
    victim = nodes[2]
    old_id = peers_of(victim)["peer_id"]
    port = int(peers_of(victim)["addrs"][0].split("/tcp/")[1].split("/")[0])
    victim.stop(signal.SIGKILL)
    assert (
        httpx.get(nodes[0].url + "/repos/octo-org/fleet-tools", headers=h).headers["X-Fleetci-Cache"]
        == "MISS"
    )
    time.sleep(0.3)
    assert (
        httpx.get(nodes[1].url + "/repos/octo-org/fleet-tools", headers=h).headers["X-Fleetci-Cache"]
        == "PEER"
    )
    spent = emulator.emulator.charged(token("alice"))
    boot = peers_of(nodes[0])["addrs"][0]
    back = start_node(emulator, tmp_path, "n2", "--bootstrap-peers", boot, port=port)
    nodes.append(back)
    assert peers_of(back)["peer_id"] == old_id  # identity kept in CACHE_DIR
    assert wait_until(lambda: int(peers_of(back)["stats"]["received"]) >= 1, timeout=20)  # caught up
    r = httpx.get(back.url + "/repos/octo-org/fleet-tools", headers=h)
    assert r.headers["X-Fleetci-Cache"] == "PEER" and emulator.emulator.charged(token("alice")) == spent


def test_token_scopes_stay_apart_across_peers(emulator: Any, fleet: Any) -> None:
    nodes = fleet(2)
    a, b = {"Authorization": f"token {token('alice')}"}, {"Authorization": f"token {token('bob')}"}
    assert httpx.get(nodes[0].url + "/user/repos?per_page=100", headers=a).status_code == 200
    time.sleep(0.3)
    for_bob = httpx.get(nodes[1].url + "/user/repos?per_page=100", headers=b)
    assert for_bob.headers["X-Fleetci-Cache"] == "MISS"
    assert "alice/secret-project" not in {r["full_name"] for r in for_bob.json()}
    for_alice = httpx.get(nodes[1].url + "/user/repos?per_page=100", headers=a)
    assert for_alice.headers["X-Fleetci-Cache"] == "PEER"
    assert "alice/secret-project" in {r["full_name"] for r in for_alice.json()}


class Rogue:
    """A libp2p node we control, for the tamper and wrong-secret cases."""

    def __init__(self, tmp: Path, secret: str, bootstrap: str, serve: dict[str, Entry] | None = None) -> None:
        from fleetci.p2p.node import P2PConfig, P2PNode

        self.received: list[Announcement] = []
        serve = serve or {}
        self.node = P2PNode(
            P2PConfig("127.0.0.1", free_port(), tmp / "rogue.key", bootstrap=(bootstrap,)),
            FleetKeys(secret, FLEET),
            on_announcements=self.received.extend,
            lookup=serve.get,
        )
        self.node.start()
        assert wait_until(lambda: len(self.node.connected_peers()) >= 1, timeout=20)
        time.sleep(2.5)  # two gossipsub heartbeats: the rogue joins the topic mesh

    def stop(self) -> None:
        self.node.stop()


def _key_for(login: str, target: str) -> str:
    return cache_key(scope_of(f"token {token(login)}"), normalize_target(target), {})


def test_tampered_content_is_rejected(emulator: Any, fleet: Any, tmp_path: Path) -> None:
    nodes = fleet(2)
    target = "/repos/octo-org/fleet-tools"
    key, scope = _key_for("alice", target), scope_of(f"token {token('alice')}")
    fake = Entry.create(key, scope, target, 200, (("Content-Type", "application/json"),), b'{"evil": 1}', 600)
    honest_cid = Entry.create(key, scope, target, 200, (), b'{"something": "else"}', 600).cid()
    rogue = Rogue(tmp_path, SECRET, peers_of(nodes[0])["addrs"][0], serve={key: fake})
    try:
        # inline body whose CID does not match
        inline = Announcement.of(fake, rogue.node.peer_id)
        rogue.node.publish_announcement(Announcement(**{**inline.__dict__, "cid": honest_cid}))
        # announced without body; the body served on request does not match the CID either
        rogue.node.publish_announcement(Announcement(**{**inline.__dict__, "cid": honest_cid, "body": None}))
        assert wait_until(
            lambda: all(int(peers_of(n)["stats"]["cid_mismatch"]) >= 1 for n in nodes), timeout=15
        )
        r = httpx.get(nodes[1].url + target, headers={"Authorization": f"token {token('alice')}"})
        assert r.status_code == 200 and "evil" not in r.text
        assert r.headers["X-Fleetci-Cache"] == "MISS"
    finally:
        rogue.stop()


def test_wrong_secret_can_neither_read_nor_inject(emulator: Any, fleet: Any, tmp_path: Path) -> None:
    nodes = fleet(2)
    rogue = Rogue(tmp_path, "not the fleet secret", peers_of(nodes[0])["addrs"][0])
    try:
        target = "/repos/octo-org/fleet-tools"
        h = {"Authorization": f"token {token('alice')}"}
        assert httpx.get(nodes[0].url + target, headers=h).headers["X-Fleetci-Cache"] == "MISS"
        assert wait_until(lambda: rogue.node.stats.rejected >= 1, timeout=15)  # it saw the gossip...
        assert rogue.received == []  # ...and could not read it
        key, scope = _key_for("alice", "/orgs/octo-org/repos"), scope_of(f"token {token('alice')}")
        forged = Entry.create(key, scope, "/orgs/octo-org/repos", 200, (), b"[]", 600)
        rogue.node.announce(forged)
        assert wait_until(lambda: int(peers_of(nodes[1])["stats"]["rejected"]) >= 1, timeout=15)
        r = httpx.get(nodes[1].url + "/orgs/octo-org/repos", headers=h)
        assert r.headers["X-Fleetci-Cache"] == "MISS" and r.json() != []
        stolen = rogue.node.fetch(Announcement.of(forged, peers_of(nodes[0])["peer_id"], inline=False))
        assert stolen.result(timeout=10) is None  # bodies are sealed for the fleet only
        # nor hold a lease: the owner cannot open its question, answers "0" and hangs up the lease line
        owner = peers_of(nodes[0])
        asked = rogue.node.lease(scope, _key_for("alice", "/repos/octo-org/docs"), owner["peer_id"])
        assert asked.result(timeout=10) is None
        assert int(peers_of(nodes[0])["stats"]["rejected"]) > int(owner["stats"]["rejected"])
    finally:
        rogue.stop()


def test_only_members_own_keys_and_a_hung_owner_is_backed_off(
    emulator: Any, fleet: Any, tmp_path: Path
) -> None:
    """Review t2 #1: a stranger connected over libp2p (no fleet secret) that answers "wait" to every lease
    question never becomes the owner of a key, so no miss asks it or waits for it. #5: an owner whose
    process hangs with its connection up costs one timed-out question; its line is dropped and it owns
    no keys for a while, instead of every miss it owns paying the whole timeout."""
    a, b = fleet(2)
    rogue = Rogue(tmp_path, "not the fleet secret", peers_of(a)["addrs"][0])
    asked: list[str] = []

    def hostile(stream: Any, scope: str, sealed: bytes, *_: Any) -> Any:
        asked.append(scope)
        return b"w"  # "someone else is fetching it": the asker would wait for an announcement

    rogue.node._grant = hostile  # type: ignore[method-assign]
    rogue.node._grant_for = lambda *args: (hostile(*args), "", "")  # type: ignore[method-assign]
    h = {"Authorization": f"token {token('alice')}"}
    ca = httpx.Client(base_url=a.url, headers=h, timeout=30)
    try:
        assert wait_until(lambda: rogue.node.peer_id in peers_of(a)["connected"], timeout=15)
        heard = int(peers_of(a)["stats"]["received"])  # a hears that b uses alice's token: misses ask owners
        assert httpx.get(b.url + "/orgs/octo-org/repos", headers=h, timeout=30).status_code == 200
        assert wait_until(lambda: int(peers_of(a)["stats"]["received"]) > heard, timeout=30)
        before = a.stats()
        urls = [f"/repos/octo-org/docs/actions/runs?per_page={i + 2}" for i in range(15)]
        assert [ca.get(url).headers["X-Fleetci-Cache"] for url in urls] == ["MISS"] * len(urls)
        after = a.stats()
        assert int(after["leases"]) - int(before["leases"]) == len(urls), after  # the lease path each time
        assert asked == []  # the stranger owned none of the 15 keys (about 5 on the old code)
        for k in ("claim_windows", "claim_waits"):
            assert after[k] == before[k], (k, after)

        b.proc.send_signal(signal.SIGSTOP)  # b hangs; its connection stays up
        was = peers_of(a)["stats"]
        hung = [f"/repos/octo-org/docs/actions/workflows?per_page={i + 2}" for i in range(12)]
        assert [ca.get(url).headers["X-Fleetci-Cache"] for url in hung] == ["MISS"] * len(hung)
        now = peers_of(a)["stats"]
        # one question to b timed out; the misses b owned after it asked nobody (about 6 on the old code)
        assert now["lease_timeouts"] - was["lease_timeouts"] == 1, now
        assert now["leases_asked"] - was["leases_asked"] == 1, now
    finally:
        b.proc.send_signal(signal.SIGCONT)
        ca.close()
        rogue.stop()


@pytest.mark.parametrize("case", ["malformed", "unreachable", "port-in-use", "no-secret"])
def test_bad_p2p_input_keeps_serving_locally(emulator: Any, tmp_path: Path, case: str) -> None:
    import socket

    env = p2p_env()
    args: list[str] = []
    holder = None
    port = free_port()
    if case == "malformed":
        args = ["--bootstrap-peers", "/ip4/not-an-ip/tcp/x"]
    elif case == "unreachable":
        args = [
            "--bootstrap-peers",
            f"/ip4/127.0.0.1/tcp/{free_port()}/p2p/12D3KooWRosXT6L57UsJbQUkbWmPPnyGZ2Bs3SXu2JKYvUqN1YqY",
        ]
    elif case == "port-in-use":
        holder = socket.socket()
        holder.bind(("127.0.0.1", port))
        holder.listen()
    else:
        env = clean_env(CACHE_FLEET=FLEET)
    try:
        p = start_node(emulator, tmp_path, "bad", *args, env=env, port=port)
        r = httpx.get(
            p.url + "/repos/octo-org/fleet-tools", headers={"Authorization": f"token {token('alice')}"}
        )
        assert r.status_code == 200
        verify = run_fleetci("cache", "verify", "--socket", str(p.socket), "--cache-dir", str(p.cache_dir))
        p.stop()
    finally:
        if holder is not None:
            holder.close()
    log = p.log.read_text()
    warnings = [ln for ln in log.splitlines() if ln.startswith("fleetci: warning:")]
    expected = {
        "malformed": "invalid peer multiaddr",
        "unreachable": None,
        "port-in-use": "cannot listen",
        "no-secret": "no fleet secret",
    }[case]
    if expected:
        assert len(warnings) == 1 and expected in warnings[0], log
        line = one_line_error(verify)
        if case == "malformed":  # the node runs (the bad address is left out), it just has no peers
            assert line == "fleetci: error: 0 connected peers, fewer than --min-peers 1", line
        else:  # `fleetci cache verify` says what failed and why, in one line (the reason the proxy logged)
            prefix = "fleetci: error: cannot verify the fleet: peer-to-peer sharing did not start: "
            assert line.startswith(prefix) and expected in line, line
    else:
        assert warnings == [] and "Traceback" not in log
    assert "Traceback" not in log


def test_verify_and_peers_cli(emulator: Any, fleet: Any, tmp_path: Path) -> None:
    nodes = fleet(2)
    sock = ("--socket", str(nodes[0].socket), "--cache-dir", str(nodes[0].cache_dir))
    ok = run_fleetci("cache", "verify", *sock, env=p2p_env())
    assert ok.returncode == 0, ok.stderr
    assert "shared end to end with 1 of 1 peers" in ok.stdout
    listing = json.loads(run_fleetci("cache", "peers", "--json", *sock, env=p2p_env()).stdout)
    assert listing["connected"] == [peers_of(nodes[1])["peer_id"]]
    too_many = run_fleetci("cache", "verify", "--min-peers", "3", *sock, env=p2p_env())
    assert "fewer than --min-peers 3" in one_line_error(too_many)


def test_verify_fails_clearly(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    sock = ("--socket", str(proxy.socket), "--cache-dir", str(proxy.cache_dir))
    assert one_line_error(run_fleetci("cache", "verify", *sock)) == (
        "fleetci: error: cannot verify the fleet: this proxy runs without peer-to-peer sharing "
        "(start it with --enable-p2p or CACHE_ENABLE_P2P=true)"
    )
    assert run_fleetci("cache", "verify", "--local-only", *sock).returncode == 0
    nothing = ("--socket", str(tmp_path / "none.sock"), "--cache-dir", str(tmp_path))
    assert "no proxy answering" in one_line_error(run_fleetci("cache", "verify", *nothing))
    for bad in ("-1", "soon", "nan", "inf"):
        line = one_line_error(run_fleetci("cache", "verify", "--wait", bad, *sock))
        assert f"--wait: expected a number of seconds between 0 and 315360000, got '{bad}'" in line


def test_registry_discovery_without_bootstrap(emulator: Any, tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    a = start_node(emulator, tmp_path, "a", "--peer-registry", str(reg))
    b = start_node(emulator, tmp_path, "b", "--peer-registry", str(reg))
    try:
        assert wait_until(lambda: peers_of(a)["connected"] == [peers_of(b)["peer_id"]], timeout=30)
        mesh_ready(a, [b])
    finally:
        a.stop()
        b.stop()
    assert not any(reg.glob("*.json"))  # clean shutdown unregisters


def test_a_webhook_at_one_proxy_invalidates_the_whole_fleet(emulator: Any, tmp_path: Path) -> None:
    """Issue 17: a signed delivery reaches one proxy; the invalidation is gossiped, and another proxy's
    cached queued list (its own copy, and the peer's copy from before the change) revalidates at once."""
    from fleetci.cache.webhooks import WEBHOOK_PATH, signature

    env = p2p_env(CACHE_WEBHOOK_SECRET="hook-secret")
    a = start_node(emulator, tmp_path, "a", env=env)
    b = start_node(emulator, tmp_path, "b", "--bootstrap-peers", peers_of(a)["addrs"][0], env=env)
    try:
        mesh_ready(a, [b])
        h = {"Authorization": f"token {token('alice')}"}
        queued = "/repos/octo-org/api/actions/runs?status=queued"
        old = httpx.get(a.url + queued, headers=h)
        assert wait_until(lambda: httpx.get(b.url + queued, headers=h).headers["X-Fleetci-Cache"] == "HIT")
        new_run = emulator.emulator.queue_run("octo-org", "api")
        body = json.dumps(
            {"action": "queued", "workflow_job": {"id": 1}, "repository": {"full_name": "octo-org/api"}}
        ).encode()
        delivery = httpx.post(
            a.url + WEBHOOK_PATH,
            content=body,
            headers={
                "X-GitHub-Event": "workflow_job",
                "X-GitHub-Delivery": "d-1",
                "X-Hub-Signature-256": signature("hook-secret", body),
            },
        )
        assert delivery.status_code == 200 and delivery.json()["invalidated"] >= 1
        assert wait_until(lambda: peers_of(b)["stats"]["invalidations_received"] >= 1, timeout=10)
        seen = httpx.get(b.url + queued, headers=h)
        assert seen.headers["X-Fleetci-Cache"] != "HIT"
        ids = {r["id"] for r in seen.json()["workflow_runs"]}
        assert new_run in ids and new_run not in {r["id"] for r in old.json()["workflow_runs"]}
        assert peers_of(a)["stats"]["invalidations_sent"] == 1
    finally:
        for p in (a, b):
            p.stop(signal.SIGKILL)
