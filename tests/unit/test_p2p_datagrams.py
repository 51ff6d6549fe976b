"""Lease questions as sealed UDP datagrams between event loops (issue 16, fleetci.p2p.datagrams), on real
sockets on 127.0.0.0/8: answered only for fleet members whose datagram address the owner learned, from
that IP and to that address, once, within the replay window; answers bound to their question; the scope
never on the wire; an owner that never answers is asked on its lease line instead, less and less often."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from fleetci.p2p import datagrams
from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.datagrams import (
    DOWN_AFTER,
    DOWN_MAX_S,
    DOWN_S,
    REPLAY_WINDOW_S,
    LeaseDatagrams,
    parse_udp_addr,
)
from fleetci.p2p.messages import (
    QUESTION_ID,
    MessageError,
    decode_lease_datagram,
    decode_lease_reply,
    encode_lease_datagram,
    encode_lease_reply,
    open_lease_datagram,
    question_number,
    seal_lease_answer,
)
from fleetci.p2p.node import P2PStats
from support.p2p import FLEET, SECRET

SHORT = 0.3  # how long a question that gets no answer is waited for (the answer never comes)


class Sniffer(asyncio.DatagramProtocol):
    """A plain UDP socket: what an attacker on the path sees and sends."""

    def __init__(self) -> None:
        self.got: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.put_nowait((data, addr))


async def _bind(proto: asyncio.DatagramProtocol, host: str = "127.0.0.1") -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=(host, 0))
    addr: tuple[str, int] = transport.get_extra_info("sockname")[:2]
    return addr


def _side(
    name: str,
    members: dict[str, tuple[str, int]],
    answers: list[tuple[str, str, str]] | None = None,
    **kw: Any,
) -> Any:
    """One side; ``members``: the peers' datagram addresses it learned (filled in once they are bound)."""
    keys = kw.pop("keys", FleetKeys(SECRET, FLEET))

    def on_lease(key: str, asker: str, scope: str) -> str:
        assert answers is not None
        answers.append((key, asker, scope))
        return "g" if len(answers) == 1 else "w"

    return LeaseDatagrams(
        keys, name, P2PStats(), on_lease if answers is not None else None, members.get, **kw
    )


SCOPE = "0123456789abcdef0123456789abcdef"  # what scope_of makes: must never be on the wire


async def _owner_and_asker(asked: list[tuple[str, str, str]]) -> tuple[Any, tuple[str, int], Any]:
    """(owner, its address, asker), bound on 127.0.0.1, each knowing the other's datagram address; the
    owner's engine records its questions in ``asked``."""
    learned: dict[str, tuple[str, int]] = {}
    owner = _side("owner", learned, asked)
    at = await _bind(owner)
    asker = _side("asker", {"owner": at})
    learned["asker"] = await _bind(asker)
    return owner, at, asker


def test_a_question_is_answered_once_by_its_owner_for_known_fleet_members_only() -> None:
    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        owner, at, asker = await _owner_and_asker(asked)
        assert await asker.ask(SCOPE, "key-1", "owner", at) == "g"
        assert await asker.ask(SCOPE, "key-2", "owner", at) == "w"  # whatever the owner's engine says
        assert asked == [("key-1", "asker", SCOPE), ("key-2", "asker", SCOPE)]
        assert (asker.stats.lease_datagrams, owner.stats.lease_datagrams_served) == (2, 2)

        # the wrong fleet secret: the owner cannot open the question and says nothing
        rogue = _side("asker", {"owner": at}, keys=FleetKeys("not the fleet secret", FLEET))
        await _bind(rogue)
        assert await rogue.ask(SCOPE, "key-3", "owner", at, timeout=SHORT) is None
        # a fleet member whose datagram address the owner never learned (or another owner's question)
        outsider = _side("outsider", {"owner": at})
        await _bind(outsider)
        assert await outsider.ask(SCOPE, "key-3", "owner", at, timeout=SHORT) is None
        assert await asker.ask(SCOPE, "key-3", "someone-else", at, timeout=SHORT) is None
        assert len(asked) == 2 and owner.stats.rejected == 3
        assert rogue.stats.lease_datagram_timeouts == 1 and asker.stats.lease_datagram_timeouts == 1

    asyncio.run(main())


class CountingKeys(FleetKeys):
    """The fleet's keys, counting how often a datagram made the owner open something."""

    opened = 0

    def open(self, scope: str, sealed: bytes, aad: bytes) -> bytes:
        self.opened += 1
        return super().open(scope, sealed, aad)


def test_the_answer_goes_to_the_learned_address_never_to_the_datagrams_source() -> None:
    """Review 25, 2: UDP's source address is anyone's to write. A copy of a question sent first from
    elsewhere is answered to the real asker (the sender gets nothing, and the asker's own copy is then a
    replay it already has the answer to); a question from another IP than the asker's learned one is
    dropped before any crypto."""

    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        learned: dict[str, tuple[str, int]] = {}
        keys = CountingKeys(SECRET, FLEET)
        owner = _side("owner", learned, asked, keys=keys)
        at = await _bind(owner)
        home, sniffer = Sniffer(), Sniffer()  # the asker's learned address; an attacker on the path
        learned["asker"], spy = await _bind(home), await _bind(sniffer)
        question, _ = encode_lease_datagram(keys, SCOPE, "asker", "owner", "key-1", time.time())
        sniffer.transport.sendto(question, at)  # the copy, from the attacker's address
        reply, _ = await asyncio.wait_for(home.got.get(), 10)
        qid, answer, _sealed = decode_lease_reply(reply)
        assert answer == b"g" and qid == question.partition(b"\n")[2][:QUESTION_ID]
        assert sniffer.got.empty() and len(asked) == 1 and keys.opened == 1

        # the asker's learned address is on another IP: whatever comes from 127.0.0.1 is not opened
        other = Sniffer()
        learned["asker"] = await _bind(other, "127.0.0.2")
        question, _ = encode_lease_datagram(keys, SCOPE, "asker", "owner", "key-2", time.time())
        sniffer.transport.sendto(question, at)
        while owner.stats.rejected == 0:
            await asyncio.sleep(0.01)
        assert keys.opened == 1 and len(asked) == 1 and other.got.empty() and sniffer.got.empty()
        assert spy[0] == "127.0.0.1"

    asyncio.run(main())


def test_a_copied_question_is_not_answered_again_nor_when_asked_too_long_ago() -> None:
    """An attacker on the path who copies a question cannot make the owner grant it again later (the
    libp2p line's noise channel prevented that; a datagram carries its own time and id)."""

    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        learned: dict[str, tuple[str, int]] = {}
        owner = _side("owner", learned, asked)
        home, sniffer = Sniffer(), Sniffer()
        at, spy = await _bind(owner), await _bind(sniffer)
        learned["asker"] = await _bind(home)
        keys = FleetKeys(SECRET, FLEET)
        question, _ = encode_lease_datagram(keys, SCOPE, "asker", "owner", "key-1", time.time())
        sniffer.transport.sendto(question, at)
        await asyncio.wait_for(home.got.get(), 10)
        sniffer.transport.sendto(question, at)
        while owner.stats.lease_datagrams_replayed == 0:
            await asyncio.sleep(0.01)
        assert len(asked) == 1 and home.got.empty() and sniffer.got.empty()

        # asked longer ago than the replay window (a copy kept for later): not answered either
        late = _side("owner", learned, asked, clock=lambda: time.time() + REPLAY_WINDOW_S + 5)
        at_late = await _bind(late)
        question, _ = encode_lease_datagram(keys, SCOPE, "asker", "owner", "key-2", time.time())
        sniffer.transport.sendto(question, at_late)
        while late.stats.lease_datagrams_replayed == 0:
            await asyncio.sleep(0.01)
        assert len(asked) == 1 and sniffer.got.empty() and spy

    asyncio.run(main())


def test_a_full_seen_id_table_takes_no_new_question_and_forgets_no_live_id(monkeypatch: Any) -> None:
    """Review 25, 4: evicting an id still inside the replay window would make its copy answerable again;
    a full table refuses new questions instead (their askers take the lease line)."""
    monkeypatch.setattr(datagrams, "SEEN_MAX", 2)

    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        owner, at, asker = await _owner_and_asker(asked)
        sniffer = Sniffer()  # keeps a copy of the first question
        spy = await _bind(sniffer)
        assert await asker.ask(SCOPE, "key-1", "owner", spy, timeout=SHORT) is None
        first, _ = await asyncio.wait_for(sniffer.got.get(), 10)
        sniffer.transport.sendto(first, at)  # answered (to the asker, which gave up on it already)
        while not asked:
            await asyncio.sleep(0.01)
        assert await asker.ask(SCOPE, "key-2", "owner", at) == "w"
        assert await asker.ask(SCOPE, "key-3", "owner", at, timeout=SHORT) is None  # full: no answer
        sniffer.transport.sendto(first, at)  # the copy is still a replay
        while owner.stats.lease_datagrams_replayed == 0:
            await asyncio.sleep(0.01)
        assert [k for k, *_ in asked] == ["key-1", "key-2"] and owner.stats.rejected == 1

    asyncio.run(main())


def test_the_scope_is_sealed_and_bound_to_the_answer() -> None:
    """Review 25, 3: the scope id (a hash of the credential) is inside the sealed part, under the fleet's
    one lease key, and the answer is sealed for it: a stranger's datagram cannot pick a scope to make the
    owner derive a key, and an answer for another scope does not count."""
    keys = FleetKeys(SECRET, FLEET)
    question, _qid = encode_lease_datagram(keys, SCOPE, "asker", "owner", "key-1", 1000.0)
    assert SCOPE.encode() not in question and b"key-1" not in question
    asker, owner, sealed = decode_lease_datagram(question)
    assert (asker, owner) == ("asker", "owner")
    assert open_lease_datagram(keys, asker, owner, sealed) == (1000.0, SCOPE, "key-1")
    with pytest.raises(SealError):
        open_lease_datagram(keys, "intruder", owner, sealed)
    bad_scope = keys.seal("fleetci-lease", b"1000 not/a/scope key", b"lease-datagram\x00asker\x00owner")
    with pytest.raises(SealError):  # opens, but the scope is not one scope_of makes
        open_lease_datagram(keys, "asker", "owner", bad_scope)


def test_an_answer_counts_only_when_the_owner_sealed_it_for_that_question() -> None:
    async def main() -> None:
        keys = FleetKeys(SECRET, FLEET)
        asker = _side("asker", {})
        sniffer = Sniffer()  # plays the owner
        spy = await _bind(sniffer)
        await _bind(asker)
        pending = asyncio.ensure_future(asker.ask(SCOPE, "key-1", "owner", spy, timeout=30))
        question, addr = await asyncio.wait_for(sniffer.got.get(), 10)
        who, owner, sealed = decode_lease_datagram(question)
        assert (who, owner) == ("asker", "owner")
        assert open_lease_datagram(keys, who, owner, sealed)[1:] == (SCOPE, "key-1")
        qid = sealed[:QUESTION_ID]
        n = question_number(qid)
        stranger = FleetKeys("not the fleet secret", FLEET)
        forged = [
            seal_lease_answer(stranger, SCOPE, "asker", "owner", n, "key-1", b"w"),
            seal_lease_answer(keys, SCOPE, "asker", "owner", n, "key-2", b"w"),  # other key
            seal_lease_answer(keys, "f" * 32, "asker", "owner", n, "key-1", b"w"),  # other scope
            seal_lease_answer(keys, SCOPE, "asker", "intruder", n, "key-1", b"w"),
            seal_lease_answer(keys, SCOPE, "asker", "owner", n, "key-1", b"g"),  # says g
        ]
        for proof in forged:
            sniffer.transport.sendto(encode_lease_reply(qid, b"w", proof), addr)
        sniffer.transport.sendto(b"a" + b"\x00" * 40, addr)  # no such question: ignored
        while asker.stats.lease_answers_rejected < len(forged):
            await asyncio.sleep(0.01)
        assert not pending.done()
        good = seal_lease_answer(keys, SCOPE, "asker", "owner", n, "key-1", b"w")
        sniffer.transport.sendto(encode_lease_reply(qid, b"w", good), addr)
        assert await pending == "w"

    asyncio.run(main())


def test_an_owner_that_never_answers_datagrams_is_asked_on_its_line_less_and_less_often() -> None:
    """A firewall that drops UDP: after DOWN_AFTER unanswered questions in a row the owner is not asked
    by datagram for DOWN_S; then ONE question probes it (review 25, 1: not three, each waiting for the
    timeout), and each unanswered probe doubles the time, up to DOWN_MAX_S; one answer resets it all."""

    async def main() -> None:
        now = [0.0]
        asker = _side("asker", {}, monotonic=lambda: now[0])
        sniffer = Sniffer()  # receives and never answers
        spy = await _bind(sniffer)
        await _bind(asker)
        for _ in range(DOWN_AFTER):
            assert asker.usable("owner")
            assert await asker.ask(SCOPE, "key", "owner", spy, timeout=0.05) is None
        assert not asker.usable("owner") and asker.usable("another-owner")
        assert asker.stats.lease_datagram_timeouts == DOWN_AFTER
        waits = []
        for _ in range(8):
            until = asker._down["owner"]
            waits.append(until - now[0])
            now[0] = until - 0.001
            assert not asker.usable("owner")
            now[0] = until
            assert asker.usable("owner")  # the probe
            assert not asker.usable("owner")  # and nobody else meanwhile
            assert await asker.ask(SCOPE, "key", "owner", spy, timeout=0.05) is None
            assert not asker.usable("owner")  # down again after ONE unanswered probe
        assert waits == [min(DOWN_S * 2**i, DOWN_MAX_S) for i in range(8)] and waits[-1] == DOWN_MAX_S
        assert asker.stats.lease_datagram_timeouts == DOWN_AFTER + 8

        # the owner answers again: the next probe resets the count and the time
        learned: dict[str, tuple[str, int]] = {}
        owner = _side("owner", learned, [])
        at = await _bind(owner)
        learned["asker"] = asker.transport.get_extra_info("sockname")[:2]
        now[0] = asker._down["owner"]
        assert asker.usable("owner")
        assert await asker.ask(SCOPE, "key", "owner", at) == "g"
        assert asker.usable("owner") and asker.usable("owner")
        for _ in range(DOWN_AFTER):
            assert await asker.ask(SCOPE, "key", "owner", spy, timeout=0.05) is None
        assert asker._down["owner"] - now[0] == DOWN_S

    asyncio.run(main())


def test_datagrams_refuse_what_is_not_a_lease_message() -> None:
    keys = FleetKeys(SECRET, FLEET)
    bad_questions = [
        b"",
        b"q",
        b"qasker owner",  # no sealed part
        b"qasker\n" + b"x" * 40,  # one name
        b"qscope asker owner\n" + b"x" * 40,  # three names (the scope is never in the header)
        b"q owner\n" + b"x" * 40,  # an empty name
        b"q\xffasker owner\n" + b"x" * 40,  # not ASCII
        b"qask/er owner\n" + b"x" * 40,  # not a peer ID's characters
        b"q" + b"a" * 200 + b" owner\n" + b"x" * 40,  # too long for a peer ID
        b"qasker owner\nshort",
        b"a" + b"x" * 40,
    ]
    for data in bad_questions:
        with pytest.raises(MessageError):
            decode_lease_datagram(data)
    for data in (b"", b"a", b"q" + b"x" * 40, b"a" + b"x" * 12 + b"z" + b"proof"):
        with pytest.raises(MessageError):
            decode_lease_reply(data)
    assert parse_udp_addr("/ip4/127.0.0.1/udp/4001/p2p/peer", "peer", "127.0.0.1") == ("127.0.0.1", 4001)
    assert parse_udp_addr("/ip4/10.1.2.3/udp/4001/p2p/peer", "peer", "10.1.2.3") == ("10.1.2.3", 4001)
    for addr, conn_ip in (
        ("/ip4/127.0.0.1/udp/4001/p2p/other", "127.0.0.1"),  # another peer's
        ("/ip4/127.0.0.1/tcp/4001/p2p/peer", "127.0.0.1"),
        ("/ip4/999.0.0.1/udp/4001/p2p/peer", "127.0.0.1"),
        ("/ip4/127.0.0.1/udp/0/p2p/peer", "127.0.0.1"),
        ("/ip4/127.0.0.1/udp/70000/p2p/peer", "127.0.0.1"),
        ("/ip6/::1/udp/4001/p2p/peer", "::1"),
        # review 25, 8: nowhere, everyone, or not where the peer's connection comes from
        ("/ip4/0.0.0.0/udp/4001/p2p/peer", "0.0.0.0"),
        ("/ip4/224.0.0.1/udp/4001/p2p/peer", "224.0.0.1"),
        ("/ip4/255.255.255.255/udp/4001/p2p/peer", "255.255.255.255"),
        ("/ip4/10.9.9.9/udp/4001/p2p/peer", "10.1.2.3"),  # a third party the peer would have us answer
        ("/ip4/127.0.0.1/udp/4001/p2p/peer", None),  # the connection's IP is unknown
    ):
        assert parse_udp_addr(addr, "peer", conn_ip) is None, addr

    async def main() -> None:  # garbage and oversize datagrams are counted and dropped, never answered
        learned: dict[str, tuple[str, int]] = {}
        owner = _side("owner", learned, [])
        sniffer = Sniffer()
        at = await _bind(owner)
        learned["asker"] = await _bind(sniffer)
        for data in (b"x", b"q" + b"y" * 2000, b"qasker owner\n" + keys.seal("fleetci-lease", b"k", b"aad")):
            sniffer.transport.sendto(data, at)
        while owner.stats.rejected < 3:
            await asyncio.sleep(0.01)
        assert sniffer.got.empty() and owner.stats.lease_datagrams_served == 0

    asyncio.run(main())


def _node(tmp_path: Path, asked: list[tuple[str, str, str]]) -> Any:
    from fleetci.p2p.node import P2PConfig, P2PNode

    def on_lease(key: str, asker: str, scope: str) -> str:
        asked.append((key, asker, scope))
        return "g"

    return P2PNode(
        P2PConfig("127.0.0.1", 0, tmp_path / "id.key"),
        FleetKeys(SECRET, FLEET),
        on_announcements=lambda anns: None,
        lookup=lambda key: None,
        on_lease=on_lease,
    )


def test_a_node_answers_the_datagrams_of_peers_it_learned_by_peer_exchange(tmp_path: Path) -> None:
    """P2PNode on the event loop: a peer's sealed peer exchange names its datagram address (only its own,
    on the IP its connection comes from; UDP addresses are never dialled), and from then on its questions
    are answered, before the connection shows in the node's connected peers (its first miss must not
    wait 0.25 s for the line); a fleet member the node knows nothing of gets no answer. A departed peer's
    address is forgotten (review 25, 6)."""
    from fleetci.p2p import node as node_mod
    from fleetci.p2p.node import _udp_socket

    asked: list[tuple[str, str, str]] = []
    node = _node(tmp_path, asked)
    node._udp_sock = _udp_socket("127.0.0.1", 0)
    assert node._udp_sock is not None
    at = ("127.0.0.1", node._udp_sock.getsockname()[1])
    node._udp_addr = f"/ip4/127.0.0.1/udp/{at[1]}/p2p/{node.peer_id}"

    async def main() -> None:
        assert node._own_addrs() == []  # not served yet: not advertised
        node.serve_datagrams(asyncio.get_running_loop())
        assert node._datagram_task is not None
        assert node._own_addrs() == []  # review 25, 7: only once the endpoint exists
        await node._datagram_task
        assert node._own_addrs() == [node._udp_addr]
        asker = _side("asker", {node.peer_id: at})
        mine = await _bind(asker)
        assert await asker.ask(SCOPE, "k", node.peer_id, at, timeout=SHORT) is None
        learned = node._dialable(
            [
                "/ip4/127.0.0.1/tcp/4001/p2p/asker",
                f"/ip4/127.0.0.1/udp/{mine[1]}/p2p/asker",
                "/ip4/127.0.0.1/udp/4003/p2p/someone-else",  # a third party's: not the sender's to say
            ],
            "asker",
            "127.0.0.1",
        )
        assert learned == ["/ip4/127.0.0.1/tcp/4001/p2p/asker"]
        assert node._udp_peers == {"asker": mine} and "asker" not in node.connected_peers()
        assert await asker.ask(SCOPE, "k", node.peer_id, at) == "g"
        assert asked == [("k", "asker", SCOPE)] and node.stats.lease_datagrams_served == 1

        node._forget_udp_peers({"asker"})  # connected: kept
        node._forget_udp_peers(set())  # left a moment ago: kept for UDP_FORGET_S
        assert node._udp_peers == {"asker": mine}
        node._udp_heard["asker"] -= node_mod.UDP_FORGET_S + 1
        node._forget_udp_peers(set())
        assert node._udp_peers == {} and node._udp_heard == {}
        assert await asker.ask(SCOPE, "k2", node.peer_id, at, timeout=SHORT) is None
        node.stop()

    asyncio.run(main())


def test_a_node_closes_its_datagram_socket_whenever_it_stops_and_advertises_only_a_served_one(
    tmp_path: Path,
) -> None:
    """Review 25, 7: stop() before the event loop made the endpoint still closes the socket; an endpoint
    that could not be made is not advertised (every question takes the line)."""
    from fleetci.p2p.node import _udp_socket

    node = _node(tmp_path / "a", [])
    sock = node._udp_sock = _udp_socket("127.0.0.1", 0)
    assert sock is not None

    async def stop_early() -> None:
        node.serve_datagrams(asyncio.get_running_loop())
        node.stop()  # the endpoint is not made yet
        assert node._datagram_task is not None
        await node._datagram_task
        await asyncio.sleep(0)  # the transport closes on the next turn of the loop
        await asyncio.sleep(0)

    asyncio.run(stop_early())
    assert sock.fileno() == -1

    broken = _node(tmp_path / "b", [])
    bad = broken._udp_sock = _udp_socket("127.0.0.1", 0)
    assert bad is not None
    broken._udp_addr = f"/ip4/127.0.0.1/udp/{bad.getsockname()[1]}/p2p/{broken.peer_id}"
    bad.close()  # the loop cannot use it

    async def fail() -> None:
        broken.serve_datagrams(asyncio.get_running_loop())
        assert broken._datagram_task is not None
        with pytest.raises(OSError):
            await broken._datagram_task
        assert broken._own_addrs() == []
        broken.stop()

    asyncio.run(fail())


def test_a_node_that_fails_to_start_closes_its_datagram_socket(tmp_path: Path) -> None:
    """Review 25, 7: start() binds the UDP socket before the libp2p thread; when that thread fails, the
    socket must not outlive the node."""
    from fleetci.p2p.node import P2PError

    node = _node(tmp_path, [])
    sockets: list[Any] = []

    async def broken_main() -> None:
        sockets.append(node._udp_sock)
        raise RuntimeError("libp2p could not start")

    node._main = broken_main
    with pytest.raises(P2PError, match="libp2p could not start"):
        node.start(timeout=30)
    assert sockets and sockets[0] is not None and sockets[0].fileno() == -1
    assert node._udp_sock is None
    node.stop()
