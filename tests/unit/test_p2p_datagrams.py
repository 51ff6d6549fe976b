"""Lease questions as sealed UDP datagrams between event loops (issue 16, fleetci.p2p.datagrams), on real
sockets on 127.0.0.1: answered only for fleet members that are connected, once, within the replay window;
answers bound to their question; an owner that never answers is asked on its lease line instead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from fleetci.p2p.crypto import FleetKeys
from fleetci.p2p.datagrams import DOWN_AFTER, REPLAY_WINDOW_S, LeaseDatagrams, parse_udp_addr
from fleetci.p2p.messages import (
    QUESTION_ID,
    MessageError,
    decode_lease_datagram,
    decode_lease_reply,
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


async def _bind(proto: asyncio.DatagramProtocol) -> tuple[str, int]:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: proto, local_addr=("127.0.0.1", 0))
    addr: tuple[str, int] = transport.get_extra_info("sockname")[:2]
    return addr


def _side(name: str, members: set[str], answers: list[tuple[str, str, str]] | None = None, **kw: Any) -> Any:
    keys = kw.pop("keys", FleetKeys(SECRET, FLEET))

    def on_lease(key: str, asker: str, scope: str) -> str:
        assert answers is not None
        answers.append((key, asker, scope))
        return "g" if len(answers) == 1 else "w"

    return LeaseDatagrams(
        keys, name, P2PStats(), on_lease if answers is not None else None, members.__contains__, **kw
    )


def test_a_question_is_answered_once_by_its_owner_for_connected_fleet_members_only() -> None:
    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        owner = _side("owner", {"asker"}, asked)
        asker = _side("asker", {"owner"})
        at = await _bind(owner)
        await _bind(asker)
        assert await asker.ask("scope", "key-1", "owner", at) == "g"
        assert await asker.ask("scope", "key-2", "owner", at) == "w"  # whatever the owner's engine says
        assert asked == [("key-1", "asker", "scope"), ("key-2", "asker", "scope")]
        assert (asker.stats.lease_datagrams, owner.stats.lease_datagrams_served) == (2, 2)

        # the wrong fleet secret: the owner cannot open the question and says nothing (no reflection)
        rogue = _side("asker", {"owner"}, keys=FleetKeys("not the fleet secret", FLEET))
        await _bind(rogue)
        assert await rogue.ask("scope", "key-3", "owner", at, timeout=SHORT) is None
        # a fleet member that is not connected to the owner (or a question for another owner): no answer
        outsider = _side("outsider", {"owner"})
        await _bind(outsider)
        assert await outsider.ask("scope", "key-3", "owner", at, timeout=SHORT) is None
        assert await asker.ask("scope", "key-3", "someone-else", at, timeout=SHORT) is None
        assert len(asked) == 2 and owner.stats.rejected == 3
        assert rogue.stats.lease_datagram_timeouts == 1 and asker.stats.lease_datagram_timeouts == 1

    asyncio.run(main())


def test_a_copied_question_is_not_answered_again_nor_when_asked_too_long_ago() -> None:
    """An attacker on the path who copies a question cannot make the owner grant it again later (the
    libp2p line's noise channel prevented that; a datagram carries its own time and id)."""

    async def main() -> None:
        asked: list[tuple[str, str, str]] = []
        owner = _side("owner", {"asker"}, asked)
        asker = _side("asker", {"owner"})
        sniffer = Sniffer()
        at, spy = await _bind(owner), await _bind(sniffer)
        await _bind(asker)
        # the asker's question goes to the sniffer, which passes it on to the owner, twice
        assert await asker.ask("scope", "key-1", "owner", spy, timeout=SHORT) is None
        question, _ = await asyncio.wait_for(sniffer.got.get(), 10)
        sniffer.transport.sendto(question, at)
        reply, _ = await asyncio.wait_for(sniffer.got.get(), 10)
        qid, answer, _sealed = decode_lease_reply(reply)
        assert answer == b"g" and qid == question.partition(b"\n")[2][:QUESTION_ID]
        sniffer.transport.sendto(question, at)
        while owner.stats.lease_datagrams_replayed == 0:
            await asyncio.sleep(0.01)
        assert len(asked) == 1 and sniffer.got.empty()

        # asked longer ago than the replay window (a copy kept for later): not answered either
        late = _side("owner", {"asker"}, asked, clock=lambda: time.time() + REPLAY_WINDOW_S + 5)
        at_late = await _bind(late)
        assert await asker.ask("scope", "key-2", "owner", spy, timeout=SHORT) is None
        question, _ = await asyncio.wait_for(sniffer.got.get(), 10)
        sniffer.transport.sendto(question, at_late)
        while late.stats.lease_datagrams_replayed == 0:
            await asyncio.sleep(0.01)
        assert len(asked) == 1

    asyncio.run(main())


def test_an_answer_counts_only_when_the_owner_sealed_it_for_that_question() -> None:
    async def main() -> None:
        keys = FleetKeys(SECRET, FLEET)
        asker = _side("asker", {"owner"})
        sniffer = Sniffer()  # plays the owner
        spy = await _bind(sniffer)
        await _bind(asker)
        pending = asyncio.ensure_future(asker.ask("scope", "key-1", "owner", spy, timeout=30))
        question, addr = await asyncio.wait_for(sniffer.got.get(), 10)
        scope, who, owner, sealed = decode_lease_datagram(question)
        assert (scope, who, owner) == ("scope", "asker", "owner")
        assert open_lease_datagram(keys, scope, who, owner, sealed)[1] == "key-1"
        qid = sealed[:QUESTION_ID]
        stranger = FleetKeys("not the fleet secret", FLEET)
        forged = [
            seal_lease_answer(stranger, "scope", "asker", "owner", question_number(qid), "key-1", b"w"),
            seal_lease_answer(
                keys, "scope", "asker", "owner", question_number(qid), "key-2", b"w"
            ),  # other key
            seal_lease_answer(keys, "scope", "asker", "intruder", question_number(qid), "key-1", b"w"),
            seal_lease_answer(keys, "scope", "asker", "owner", question_number(qid), "key-1", b"g"),  # says g
        ]
        for proof in forged:
            sniffer.transport.sendto(encode_lease_reply(qid, b"w", proof), addr)
        sniffer.transport.sendto(b"a" + b"\x00" * 40, addr)  # no such question: ignored
        while asker.stats.lease_answers_rejected < len(forged):
            await asyncio.sleep(0.01)
        assert not pending.done()
        good = seal_lease_answer(keys, "scope", "asker", "owner", question_number(qid), "key-1", b"w")
        sniffer.transport.sendto(encode_lease_reply(qid, b"w", good), addr)
        assert await pending == "w"

    asyncio.run(main())


def test_an_owner_that_never_answers_datagrams_is_asked_on_its_line() -> None:
    """A firewall that drops UDP: after DOWN_AFTER unanswered questions in a row the owner is not asked
    by datagram for a while (each question would otherwise wait for the datagram timeout first)."""

    async def main() -> None:
        asker = _side("asker", {"owner"})
        sniffer = Sniffer()  # receives and never answers
        spy = await _bind(sniffer)
        await _bind(asker)
        for _ in range(DOWN_AFTER):
            assert asker.usable("owner")
            assert await asker.ask("scope", "key", "owner", spy, timeout=0.05) is None
        assert not asker.usable("owner") and asker.usable("another-owner")
        assert asker.stats.lease_datagram_timeouts == DOWN_AFTER

    asyncio.run(main())


def test_datagrams_refuse_what_is_not_a_lease_message() -> None:
    keys = FleetKeys(SECRET, FLEET)
    bad_questions = [
        b"",
        b"q",
        b"qscope asker owner",  # no sealed part
        b"qscope asker\n" + b"x" * 40,  # two names
        b"qscope  owner\n" + b"x" * 40,  # an empty name
        b"q\xff asker owner\n" + b"x" * 40,  # not ASCII
        b"qscope asker owner\nshort",
        b"a" + b"x" * 40,
    ]
    for data in bad_questions:
        with pytest.raises(MessageError):
            decode_lease_datagram(data)
    for data in (b"", b"a", b"q" + b"x" * 40, b"a" + b"x" * 12 + b"z" + b"proof"):
        with pytest.raises(MessageError):
            decode_lease_reply(data)
    assert parse_udp_addr("/ip4/127.0.0.1/udp/4001/p2p/peer", "peer") == ("127.0.0.1", 4001)
    for addr in (
        "/ip4/127.0.0.1/udp/4001/p2p/other",  # another peer's
        "/ip4/127.0.0.1/tcp/4001/p2p/peer",
        "/ip4/999.0.0.1/udp/4001/p2p/peer",
        "/ip4/127.0.0.1/udp/0/p2p/peer",
        "/ip4/127.0.0.1/udp/70000/p2p/peer",
        "/ip6/::1/udp/4001/p2p/peer",
    ):
        assert parse_udp_addr(addr, "peer") is None

    async def main() -> None:  # garbage and oversize datagrams are counted and dropped, never answered
        owner = _side("owner", {"asker"}, [])
        sniffer = Sniffer()
        at = await _bind(owner)
        await _bind(sniffer)
        for data in (b"x", b"q" + b"y" * 2000, b"qscope asker owner\n" + keys.seal("scope", b"k", b"aad")):
            sniffer.transport.sendto(data, at)
        while owner.stats.rejected < 3:
            await asyncio.sleep(0.01)
        assert sniffer.got.empty() and owner.stats.lease_datagrams_served == 0

    asyncio.run(main())


def test_a_node_answers_the_datagrams_of_peers_it_learned_by_peer_exchange(tmp_path: Path) -> None:
    """P2PNode on the event loop: a peer's sealed peer exchange names its datagram address (only its own
    counts; UDP addresses are never dialled), and from then on its questions are answered, before the
    connection shows in the node's connected peers (its first miss must not wait 0.25 s for the line);
    a fleet member the node knows nothing of gets no answer."""
    from fleetci.p2p.node import P2PConfig, P2PNode, _udp_socket

    asked: list[tuple[str, str, str]] = []

    def on_lease(key: str, asker: str, scope: str) -> str:
        asked.append((key, asker, scope))
        return "g"

    node = P2PNode(
        P2PConfig("127.0.0.1", 0, tmp_path / "id.key"),
        FleetKeys(SECRET, FLEET),
        on_announcements=lambda anns: None,
        lookup=lambda key: None,
        on_lease=on_lease,
    )
    node._udp_sock = _udp_socket("127.0.0.1", 0)
    assert node._udp_sock is not None
    at = ("127.0.0.1", node._udp_sock.getsockname()[1])

    async def main() -> None:
        node.serve_datagrams(asyncio.get_running_loop())
        assert node._datagram_task is not None
        await node._datagram_task
        asker = _side("asker", {node.peer_id})
        await _bind(asker)
        assert await asker.ask("scope", "k", node.peer_id, at, timeout=SHORT) is None
        learned = node._dialable(
            [
                "/ip4/127.0.0.1/tcp/4001/p2p/asker",
                "/ip4/127.0.0.1/udp/4002/p2p/asker",
                "/ip4/127.0.0.1/udp/4003/p2p/someone-else",  # a third party's: not the sender's to say
            ],
            "asker",
        )
        assert learned == ["/ip4/127.0.0.1/tcp/4001/p2p/asker"]
        assert node._udp_peers == {"asker": ("127.0.0.1", 4002)} and "asker" not in node.connected_peers()
        assert await asker.ask("scope", "k", node.peer_id, at) == "g"
        assert asked == [("k", "asker", "scope")] and node.stats.lease_datagrams_served == 1
        node.stop()

    asyncio.run(main())
