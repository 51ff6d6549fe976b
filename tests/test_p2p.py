"""Peer-to-peer cache sharing with real libp2p nodes on 127.0.0.1 (proxy processes and in-process nodes)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Proxy, clean_env, one_line_error, run_fleetci, start_proxy, wait_until
from fleetci.cache.policy import cache_key, normalize_target, scope_of
from fleetci.cache.store import Entry
from fleetci.http import free_port
from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.discovery import PeerRegistry
from fleetci.p2p.messages import INLINE_MAX, Announcement, decode_message, encode_batch, encode_claims

SECRET = "correct horse battery staple"
FLEET = "test-fleet"


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


# -- unit: sealing and wire format ----------------------------------------------------------------------


def _entry(key: str = "k" * 64, body: bytes = b'{"a": 1}') -> Entry:
    return Entry.create(key, "scope-a", "/repos/o/r", 200, (("ETag", '"x"'),), body, 60)


def test_batches_open_only_with_the_fleet_secret() -> None:
    keys = FleetKeys(SECRET, FLEET)
    ann = Announcement.of(_entry(), "peerA")
    data = encode_batch(keys, "peerA", "scope-a", [ann])
    msg = decode_message(keys, data)
    peer, anns = msg.peer, msg.announcements
    assert peer == "peerA" and anns[0].body == ann.body and anns[0].cid == ann.cid and not msg.claims
    assert b"/repos/o/r" not in data  # the URL is sealed, only the scope hash is in clear
    with pytest.raises(SealError):
        decode_message(FleetKeys("wrong secret", FLEET), data)
    forged = data.replace(b'"p":"peerA"', b'"p":"peerB"')  # the header is authenticated too
    with pytest.raises(SealError):
        decode_message(keys, forged)


def test_claims_open_only_with_the_fleet_secret() -> None:
    keys = FleetKeys(SECRET, FLEET)
    data = encode_claims(keys, "peerA", "scope-a", [("claimed-key-one", False), ("claimed-key-two", True)])
    msg = decode_message(keys, data)
    assert not msg.announcements and msg.peer == "peerA"
    assert [(c.key, c.release, c.peer, c.scope) for c in msg.claims] == [
        ("claimed-key-one", False, "peerA", "scope-a"),
        ("claimed-key-two", True, "peerA", "scope-a"),
    ]
    assert b"claimed-key" not in data  # claimed keys are sealed like announcements
    with pytest.raises(SealError):
        decode_message(FleetKeys("wrong secret", FLEET), data)
    forged = data.replace(b'"m":"claim"', b'"m":"ann"')  # the message kind is authenticated too
    with pytest.raises(SealError):
        decode_message(keys, forged)


def test_scope_keys_differ_and_topic_follows_secret_unless_named() -> None:
    keys = FleetKeys(SECRET)
    sealed = keys.seal("scope-a", b"body", b"aad")
    with pytest.raises(SealError):
        keys.open("scope-b", sealed, b"aad")
    assert FleetKeys(SECRET).topic == FleetKeys(SECRET).topic != FleetKeys("other").topic
    assert FleetKeys(SECRET, FLEET).topic == FleetKeys("other", FLEET).topic
    with pytest.raises(ValueError):
        FleetKeys("")


def test_fetch_requests_round_trip() -> None:
    from fleetci.p2p.messages import (
        PX,
        SYNC,
        MessageError,
        decode_fetch_request,
        encode_fetch_request,
        encode_sync_request,
    )

    assert decode_fetch_request(encode_fetch_request("k1", "s1").strip()) == ("k1", "s1")
    op, me = decode_fetch_request(encode_sync_request(SYNC, b"sealed").strip())
    assert op == SYNC and me
    assert decode_fetch_request(encode_sync_request(PX, b"x").strip())[0] == PX
    with pytest.raises(MessageError):
        decode_fetch_request(b'{"v": 1}')


def test_large_bodies_do_not_ride_inline() -> None:
    assert Announcement.of(_entry(body=b"x" * (INLINE_MAX + 1)), "p").body is None
    assert Announcement.of(_entry(body=b"x" * 10), "p").body == b"x" * 10


SLIM_PROBE = """
import sys
from fleetci.p2p import slim
stubbed = slim.install(public_peers=sys.argv[1:] == ["public"])
import libp2p, libp2p.transport.quic.transport as quic
print(sorted(stubbed), slim.stubbed("aioquic"), slim.stubbed("zeroconf"), "libp2p" in sys.modules)
try:
    from libp2p.crypto.ed25519 import create_new_key_pair
    quic.QUICTransport(create_new_key_pair().private_key)
except Exception as exc:  # py-libp2p wraps it in its own QUICSecurityError; the reason survives
    print("refused:", str(exc).split(": ", 1)[-1])
try:
    from libp2p.crypto.rsa import create_new_key_pair as rsa_pair
    print("rsa:", rsa_pair(1024).private_key.get_type().name)
except Exception as exc:
    print("rsa refused:", exc)
"""


def _bare_node(tmp_path: Path) -> Any:
    """A node that is never started: for the router and publishing logic alone."""
    from fleetci.p2p.node import P2PConfig, P2PNode

    return P2PNode(
        P2PConfig("127.0.0.1", free_port(), tmp_path / "n.key"),
        FleetKeys(SECRET, FLEET),
        on_announcements=lambda _a: None,
        lookup=lambda _k: None,
    )


def test_equivocation_check_keeps_fingerprints_not_messages(tmp_path: Path) -> None:
    """py-libp2p kept every whole message (inline bodies too) for this check; ours keeps 32 bytes each."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2

    from fleetci.p2p import tuning

    node = _bare_node(tmp_path)
    router = node._gossipsub()
    sender = ID.from_pubkey(create_new_key_pair(b"s" * 32).public_key).to_bytes()

    def msg(seq: int, data: bytes, topic: str = "t") -> Any:
        return rpc_pb2.Message(from_id=sender, seqno=seq.to_bytes(8, "big"), data=data, topicIDs=[topic])

    body = b"x" * 50_000
    assert router._check_equivocation(msg(1, body))
    assert router._check_equivocation(msg(1, body))  # the same message again (gossip) is fine
    assert not router._check_equivocation(msg(1, body + b"!"))  # same seqno, other data
    assert not router._check_equivocation(msg(1, body, topic="other"))  # same seqno, other topic
    assert all(isinstance(v, bytes) and len(v) == 32 for v in router.equivocation_detection.values())
    for seq in range(2, tuning.EQUIVOCATION_KEPT + 50):
        assert router._check_equivocation(msg(seq, b"y"))
    assert len(router.equivocation_detection) == tuning.EQUIVOCATION_KEPT  # oldest IDs dropped
    assert sender + (1).to_bytes(8, "big") not in router.equivocation_detection


def test_publishing_holds_back_while_peers_queues_are_deep(tmp_path: Path) -> None:
    """Back-pressure: a node whose typical peer still has a deep outbound queue waits (bounded)."""
    import trio

    from fleetci.p2p import node as node_module

    node = _bare_node(tmp_path)

    class Pubsub:
        def __init__(self, depths: list[int]) -> None:
            self.peer_queues = {f"peer{i}": [None] * d for i, d in enumerate(depths)}

    deep = node_module.BACKLOG_RPCS
    trio.run(node._hold_while_backlogged, Pubsub([0, 1, deep * 3]), 5.0)  # one slow peer: no wait
    trio.run(node._hold_while_backlogged, Pubsub([]), 5.0)
    assert node.stats.held == 0
    backlog = Pubsub([deep, deep + 1, 0])
    started = time.monotonic()
    trio.run(node._hold_while_backlogged, backlog, 0.1)  # the median peer is behind: hold, bounded
    assert node.stats.held > 0 and time.monotonic() - started < 5.0

    async def drains() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._hold_while_backlogged, backlog, 30.0)
            await trio.sleep(0.05)
            for q in backlog.peer_queues.values():
                q.clear()  # peers caught up: the hold ends well before its limit

    started = time.monotonic()
    trio.run(drains)
    assert time.monotonic() - started < 10.0


def test_slim_keeps_unused_libp2p_extras_out_and_refuses_their_use() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SLIM_PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out[0].startswith("['Crypto', 'aioquic', 'cbor2', 'h11', 'httpcore', 'httpx', 'miniupnpc',")
    assert out[0].endswith("] True True True")
    # The one QUIC path that needs aioquic fails with the reason and the way back, not an obscure error.
    assert len(out) == 3 and out[1].startswith("refused: aioquic.") and "FLEETCI_P2P_SLIM=0" in out[1]
    assert out[2].startswith("rsa refused:") and "RSA peer identities" in out[2]


def test_slim_keeps_rsa_for_public_bootstrap_nodes() -> None:
    """Public libp2p nodes include RSA identities: opting in to them keeps pycryptodome loaded."""
    out = subprocess.run(
        [sys.executable, "-c", SLIM_PROBE, "public"], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert "'Crypto'" not in out[0] and "'aioquic'" in out[0]
    assert out[-1] == "rsa: RSA"


def test_slim_off_loads_the_real_packages() -> None:
    env = {**os.environ, "FLEETCI_P2P_SLIM": "0"}
    out = subprocess.run(
        [sys.executable, "-c", SLIM_PROBE], capture_output=True, text=True, timeout=120, env=env
    ).stdout.splitlines()
    assert out[0] == "[] False False True"


def test_registry_expires_peers_after_thirty_minutes(tmp_path: Path) -> None:
    reg = PeerRegistry(tmp_path / "reg")
    reg.register("peerA", ["/ip4/127.0.0.1/tcp/1/p2p/peerA"])
    (tmp_path / "reg" / "junk.json").write_text("{not json")
    assert [r.peer_id for r in reg.active()] == ["peerA"]
    assert reg.active(now=time.time() + 31 * 60) == []
    assert not (tmp_path / "reg" / "peerA.json").exists()


# -- fleets of real proxy processes ----------------------------------------------------------------------


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

    def make(n: int) -> list[Proxy]:
        first = start_node(emulator, tmp_path, "n0")
        nodes.append(first)
        boot = peers_of(first)["addrs"][0]
        for i in range(1, n):
            nodes.append(start_node(emulator, tmp_path, f"n{i}", "--bootstrap-peers", boot))
        mesh_ready(first, nodes[1:])
        return nodes  # the fixture's own list: nodes a test appends are torn down too

    yield make
    for p in nodes:
        p.stop(signal.SIGKILL)


pytestmark_integration = pytest.mark.integration


@pytestmark_integration
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


@pytestmark_integration
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


@pytestmark_integration
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


@pytestmark_integration
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


@pytestmark_integration
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


# -- attackers: real libp2p nodes in this process ----------------------------------------------------------


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


@pytestmark_integration
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


@pytestmark_integration
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
    finally:
        rogue.stop()


# -- bad input: one clear line, and the proxy still serves locally ----------------------------------------


@pytestmark_integration
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
    else:
        assert warnings == [] and "Traceback" not in log
    assert "Traceback" not in log


# -- CLI: peers, verify, registry, bootstrap script ------------------------------------------------------


@pytestmark_integration
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


@pytestmark_integration
def test_verify_fails_clearly(emulator: Any, proxy: Proxy, tmp_path: Path) -> None:
    sock = ("--socket", str(proxy.socket), "--cache-dir", str(proxy.cache_dir))
    assert "peer-to-peer sharing is off" in one_line_error(run_fleetci("cache", "verify", *sock))
    assert run_fleetci("cache", "verify", "--local-only", *sock).returncode == 0
    nothing = ("--socket", str(tmp_path / "none.sock"), "--cache-dir", str(tmp_path))
    assert "no proxy answering" in one_line_error(run_fleetci("cache", "verify", *nothing))
    for bad in ("-1", "soon", "nan", "inf"):
        line = one_line_error(run_fleetci("cache", "verify", "--wait", bad, *sock))
        assert f"--wait: expected a number of seconds between 0 and 315360000, got '{bad}'" in line


@pytestmark_integration
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


def test_peers_init_and_discover_and_bootstrap_script(tmp_path: Path) -> None:
    import subprocess

    reg = tmp_path / "reg"
    envs = [
        clean_env(
            CACHE_DIR=str(tmp_path / f"r{i}"),
            CACHE_PEER_REGISTRY=str(reg),
            CACHE_LISTEN_PORT=str(9100 + i),
            CACHE_P2P_HOST="127.0.0.1",
            GITHUB_ENV=str(tmp_path / f"env{i}"),
            GITHUB_OUTPUT=str(tmp_path / f"out{i}"),
        )
        for i in range(2)
    ]
    first = json.loads(run_fleetci("cache", "peers", "init", "--json", env=envs[0]).stdout)
    again = json.loads(run_fleetci("cache", "peers", "init", "--json", env=envs[0]).stdout)
    assert first == again and first["addr"].endswith("/p2p/" + first["peer_id"])  # stable identity
    script = Path(__file__).resolve().parents[1] / "scripts" / "p2p_peer_bootstrap.sh"
    out = subprocess.run(
        ["bash", str(script), "init"], env=envs[1], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = subprocess.run(
        ["bash", str(script), "discover"], env=envs[1], capture_output=True, text=True, timeout=60
    )
    assert found.stdout.strip() == first["addr"]
    assert f"CACHE_BOOTSTRAP_PEERS={first['addr']}" in (tmp_path / "env1").read_text()
    assert "no peer registry" in one_line_error(
        run_fleetci("cache", "peers", "discover", env=clean_env(CACHE_DIR=str(tmp_path / "x")))
    )
    bad = subprocess.run(["bash", str(script), "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr


def test_peer_identity_is_private_and_an_old_wide_file_is_tightened(tmp_path: Path) -> None:
    import stat

    from fleetci.p2p.node import load_identity

    path = tmp_path / "cache" / "p2p-identity.key"
    seed = load_identity(path)
    assert len(seed) == 32 and path.read_bytes() == seed
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    path.chmod(0o644)
    assert load_identity(path) == seed  # the same peer ID after a restart
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
