"""Peer-to-peer cache sharing with real libp2p nodes on 127.0.0.1 (proxy processes and in-process nodes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetci.cache.store import Entry
from fleetci.http import free_port
from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.discovery import PeerRegistry
from fleetci.p2p.messages import (
    INLINE_MAX,
    Announcement,
    MessageError,
    decode_lease_answer,
    decode_lease_line,
    decode_lease_request,
    decode_message,
    encode_batch,
    encode_claims,
    encode_lease_answer,
    encode_lease_request,
    open_lease_answer,
    seal_lease_answer,
)
from support import RunCli, clean_env, one_line_error
from support.p2p import FLEET, SECRET


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


def test_peers_init_and_discover_and_bootstrap_script(tmp_path: Path, fleetci: RunCli) -> None:
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
    first = json.loads(fleetci("cache", "peers", "init", "--json", env=envs[0]).stdout)
    again = json.loads(fleetci("cache", "peers", "init", "--json", env=envs[0]).stdout)
    assert first == again and first["addr"].endswith("/p2p/" + first["peer_id"])  # stable identity
    script = Path(__file__).resolve().parents[2] / "scripts" / "p2p_peer_bootstrap.sh"
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
        fleetci("cache", "peers", "discover", env=clean_env(CACHE_DIR=str(tmp_path / "x")))
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


def test_lean_keys_are_the_same_aes_gcm_and_hkdf_as_cryptography() -> None:
    """A proxy on a shared store seals with pycryptodome (``lean``), a libp2p node with cryptography: each
    opens what the other sealed, derives the same fleet id, and refuses the same tampering."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    lean, full = FleetKeys(SECRET, lean=True), FleetKeys(SECRET)
    assert lean.fleet_id == full.fleet_id and lean.topic == full.topic
    for plain in (b"", b"x", os.urandom(5000)):
        for a, b in ((lean, full), (full, lean)):
            sealed = a.seal("scope", plain, b"aad")
            assert b.open("scope", sealed, b"aad") == plain
            with pytest.raises(SealError):
                b.open("other scope", sealed, b"aad")
            with pytest.raises(SealError):
                b.open("scope", sealed, b"other aad")
            tampered = bytearray(sealed)
            tampered[-1] ^= 1
            with pytest.raises(SealError):
                b.open("scope", bytes(tampered), b"aad")
            with pytest.raises(SealError):
                b.open("scope", sealed[: 12 + 15], b"aad")
    # Against the primitives themselves: HKDF-SHA256 (RFC 5869) key, nonce || ciphertext || tag.
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"fleetci-p2p-v1", info=b"fleetci/scope/v1/s")
    sealed = lean.seal("s", b"body", b"aad")
    assert AESGCM(key.derive(SECRET.encode())).decrypt(sealed[:12], sealed[12:], b"aad") == b"body"


def test_a_hung_owner_is_backed_off_and_a_closed_line_never_waited_on(tmp_path: Path) -> None:
    """Review t2 #5, on the lease line machinery itself (trio's virtual clock, so no real waiting): a
    written question its owner leaves unanswered drops the line and takes the owner out of key ownership
    for LEASE_BACKOFF_S; a question on a line whose reader has finished returns at once. And #1: a
    connected peer that never proved the fleet secret is no candidate owner."""
    import trio
    import trio.testing

    from fleetci.p2p.node import LEASE_BACKOFF_S, LEASE_TIMEOUT_S, P2PConfig, P2PNode, _LeaseLine

    node = P2PNode(
        P2PConfig("127.0.0.1", 0, tmp_path / "id.key"),
        FleetKeys(SECRET, FLEET),
        on_announcements=lambda anns: None,
        lookup=lambda key: None,
    )
    written: list[bytes] = []

    class Hung:  # a libp2p stream to an owner that reads questions and never answers
        async def write(self, data: bytes) -> None:
            written.append(data)

    node._peers = {"owner", "stranger"}
    node._prove("owner")
    assert node.lease_candidates() == (["owner"], frozenset())  # the stranger never owns keys

    async def ask(closed: bool) -> tuple[bool | None, _LeaseLine]:
        line = _LeaseLine(Hung(), trio.Lock(), trio.CancelScope(), closed=closed)
        answer: bool | None = None
        with trio.move_on_after(LEASE_TIMEOUT_S):  # as _lease_one does
            answer = await node._ask(line, "owner", "scope", "key")
            return answer, line
        return answer, line

    clock = trio.testing.MockClock(autojump_threshold=0)
    answer, line = trio.run(ask, True, clock=clock)
    assert answer is None and written == [] and node.stats.lease_timeouts == 0  # closed: not even asked
    assert node.lease_candidates() == (["owner"], frozenset())
    answer, line = trio.run(ask, False, clock=clock)
    assert answer is None and len(written) == 1 and node.stats.lease_timeouts == 1
    assert line.reader.cancel_called  # the line is dropped: the next question opens a new one
    assert node.lease_candidates() == ([], frozenset({"owner"}))
    assert 0 < node._backoff["owner"] - time.monotonic() <= LEASE_BACKOFF_S


def test_lease_lines_round_trip_and_refuse_hostile_lines() -> None:
    """The lease line (issue 16): numbered questions and answers; anything else is refused in one line,
    never a crash of the stream handler's loop with something other than MessageError."""
    line = encode_lease_request("scope", b"sealed", 7)
    assert line.endswith(b"\n") and decode_lease_line(line[:-1]) == (7, "scope", b"sealed")
    assert decode_lease_request(line[:-1]) == ("scope", b"sealed")  # the one-shot form still reads it
    assert decode_lease_line(encode_lease_request("s", b"x")[:-1]) == (0, "s", b"x")  # no number: 0
    assert decode_lease_line(b'{"v":1,"op":"sync","me":""}') is None  # another op
    keys, stranger = FleetKeys(SECRET, FLEET), FleetKeys("not the fleet secret", FLEET)
    for rid, answer, want in ((3, b"g", "g"), (4, b"w", "w"), (6, b"h", "h")):
        sealed = seal_lease_answer(keys, "s", "asker", "owner", rid, "k", answer)
        got = decode_lease_answer(encode_lease_answer(rid, answer, sealed)[:-1])
        assert got == (rid, answer, sealed)
        assert open_lease_answer(keys, "s", "asker", "owner", rid, "k", answer, sealed) == want
        # review t2 #1: an answer opens only with the fleet secret, for exactly this asker, owner, number
        # and key, and says what its seal says; an unsealed "g"/"w"/"h" is no answer at all
        forged = seal_lease_answer(stranger, "s", "asker", "owner", rid, "k", answer)
        other = b"w" if answer != b"w" else b"g"
        for case in (
            ("s", "asker", "owner", rid, "k", answer, forged),
            ("s", "asker", "owner", rid, "k", answer, b""),
            ("s", "asker", "owner", rid, "k", other, sealed),
            ("s2", "asker", "owner", rid, "k", answer, sealed),
            ("s", "someone", "owner", rid, "k", answer, sealed),
            ("s", "asker", "stranger", rid, "k", answer, sealed),
            ("s", "asker", "owner", rid + 1, "k", answer, sealed),
            ("s", "asker", "owner", rid, "k2", answer, sealed),
        ):
            with pytest.raises(SealError):
                open_lease_answer(keys, *case)
    assert decode_lease_answer(encode_lease_answer(5, b"0")[:-1]) == (5, b"0", b"")
    assert open_lease_answer(keys, "s", "a", "o", 5, "k", b"0", b"") is None  # the owner could not answer
    assert len(encode_lease_answer(2**53, b"g", seal_lease_answer(keys, "s", "a", "o", 1, "k", b"g"))) < 128
    hostile = [
        b"",
        b"not json",
        b'{"v":1,"op":"lease","s":"s","me":"!!"}',  # not base64
        b'{"v":1,"op":"lease","s":"s","me":"eA==","i":true}',
        b'{"v":1,"op":"lease","s":"s","me":"eA==","i":-1}',
        b'{"v":1,"op":"lease","s":"s","me":"eA==","i":9007199254740993}',
        b'{"v":1,"op":"lease","s":"s","me":"eA==","i":"1"}',
        b'{"v":1,"op":"lease","me":"eA=="}',
    ]
    for bad in hostile:
        with pytest.raises(MessageError):
            decode_lease_line(bad)
    for bad in (b"", b"x g", b"-1 g", b"1" * 17 + b" g", b"\xff g", b"1 g !!", b"1 g eA== x"):
        with pytest.raises(MessageError):
            decode_lease_answer(bad)
