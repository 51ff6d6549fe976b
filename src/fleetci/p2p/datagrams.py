"""Lease questions and answers as single sealed UDP datagrams, on the proxy's own event loop (issue 16).

A question on the libp2p lease line crosses the asker's asyncio -> trio thread hop, py-libp2p's yamux and
noise layers (each read also writes a window update) and the owner's trio thread, and back: ~3.5 ms of a
miss on an idle machine, 6-15 ms under load, against ~0.3 ms for the bytes themselves. Here the asker's
event loop sends one datagram to the owner's, which answers from its event loop (``on_lease`` is
thread-safe and never blocks) with one datagram: no thread hop, no stream, no muxer.

What libp2p's noise channel gave the lease line is kept by sealing: a question is the scope, the key
and the time it was asked, sealed with the fleet's lease key (one key for all scopes: the scope id is never
on the wire, and a stranger cannot make the owner derive keys) and bound to the asker and the owner. The
owner answers only a question from a peer whose datagram address it learned from that peer's sealed peer
exchange, coming from that address's IP (checked before any crypto), that opens, was asked within
``REPLAY_WINDOW_S`` and was not seen before (a copied question replayed later is dropped); and it sends
the answer to the learned address, never to the datagram's source (which UDP does not authenticate): a
forged source address gets nothing back, and a copy sent first from elsewhere is answered to the real
asker. The answer is sealed to the scope, asker, owner, the question's random id and the key
(``seal_lease_answer``), so only the owner asked can answer it. Where to send is learned from the peer's
sealed peer-exchange addresses (``/ip4/H/udp/P/p2p/ID``, only a peer's own, on the IP its connection comes
from, over a noise channel authenticated as that peer).

What is not kept: after an owner restarts it has forgotten the ids it saw, so a copy of a question less
than ``REPLAY_WINDOW_S`` old sent again is answered once more, to the real asker (who drops it); the owner
records that asker's lease again, which makes others wait at most ``claim_wait``.

A datagram can be lost or blocked: an unanswered question falls back to the lease line
(``LEASE_DATAGRAM_TIMEOUT_S`` later), and an owner that left ``DOWN_AFTER`` questions in a row unanswered
is asked on the line only, for ``DOWN_S``; then one question probes it, and while those go unanswered the
time doubles each time (up to ``DOWN_MAX_S``); one answer resets it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, cast

from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.messages import (
    LEASE_DATAGRAM_MAX,
    QUESTION_ID,
    MessageError,
    decode_lease_datagram,
    decode_lease_reply,
    encode_lease_datagram,
    encode_lease_reply,
    open_lease_answer,
    open_lease_datagram,
    question_number,
    seal_lease_answer,
)
from fleetci.wait import within

log = logging.getLogger("fleetci.p2p")

LEASE_DATAGRAM_TIMEOUT_S = 0.25  # then the lease line; a loaded owner answers in a few ms
REPLAY_WINDOW_S = 30.0  # a question asked longer ago (or later, clocks apart) is not answered
SEEN_MAX = 100_000  # question ids remembered for REPLAY_WINDOW_S; when full, new ones take the line
DOWN_AFTER = 3  # unanswered datagram questions in a row before an owner is asked on its line only
DOWN_S = 30.0  # the first time; doubled each time the probe after it goes unanswered
DOWN_MAX_S = 600.0


def parse_udp_addr(addr: str, peer: str, conn_ip: str | None) -> tuple[str, int] | None:
    """(host, port) of ``/ip4/H/udp/P/p2p/<peer>`` when H is ``conn_ip``, the IP the peer's authenticated
    connection comes from (a member cannot point our answers at a third party); None for any other
    address, for an unspecified, multicast or broadcast host, and when the connection's IP is unknown."""
    parts = addr.split("/")
    if len(parts) != 7 or parts[0] or parts[1] != "ip4" or parts[3] != "udp" or parts[5] != "p2p":
        return None
    if parts[6] != peer or not parts[4].isdigit() or conn_ip is None:
        return None
    try:
        ip = ipaddress.IPv4Address(parts[2])
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return None
    if str(ip) != conn_ip:
        return None
    port = int(parts[4])
    return (str(ip), port) if 0 < port < 65536 else None


class LeaseDatagrams(asyncio.DatagramProtocol):
    """Both sides of datagram leases on one UDP socket; every method runs on the proxy's event loop."""

    def __init__(
        self,
        keys: FleetKeys,
        peer_id: str,
        stats: Any,  # fleetci.p2p.node.P2PStats: lease_datagrams*, rejected, lease_answers_rejected
        on_lease: Callable[[str, str, str], str] | None,
        peer_addr: Callable[[str], tuple[str, int] | None],
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keys = keys
        self.peer_id = peer_id
        self.stats = stats
        self.on_lease = on_lease  # (key, asker, scope) -> "g" / "w" / "h" (messages.LEASE_ANSWERS)
        # a fleet peer's datagram address, learned from its sealed peer exchange: only their questions
        # are answered, only when they come from that IP, and always to that address
        self.peer_addr = peer_addr
        self.clock = clock  # wall time: what a question says when it was asked
        self.monotonic = monotonic  # how long an owner is down
        self.transport: asyncio.DatagramTransport | None = None
        # question id -> (future answer, scope, key, owner)
        self._waiting: dict[bytes, tuple[asyncio.Future[str | None], str, str, str]] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # question id -> until when it is answerable
        self._unanswered: dict[str, int] = {}  # owner -> datagram questions in a row it left unanswered
        self._down: dict[str, float] = {}  # owner -> monotonic time it is asked by datagram again
        self._down_for: dict[str, float] = {}  # owner -> how long it was down last (reset by an answer)
        self._probing: set[str] = set()  # owners asked one question after their down time: no more

    # -- asyncio.DatagramProtocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # asyncio's own is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for fut, *_ in self._waiting.values():
            if not fut.done():
                fut.set_result(None)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable: the timeout decides
        log.debug("lease datagram error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) > LEASE_DATAGRAM_MAX:
            self.stats.rejected += 1
            return
        kind = data[:1]
        if kind == b"a":
            self._answer_arrived(data)
        elif kind == b"q":
            self._question_arrived(data, addr)
        else:
            self.stats.rejected += 1

    # -- asker ---------------------------------------------------------------------------------------
    def usable(self, owner: str) -> bool:
        """Datagrams may be tried for ``owner`` (a socket is up and the owner is not marked down). When a
        down time ends, the one caller told True asks the probe; others take the line until it is answered
        or not (the caller must :meth:`ask` right away)."""
        if self.transport is None or owner in self._probing:
            return False
        until = self._down.get(owner)
        if until is None:
            return True
        if self.monotonic() < until:
            return False
        del self._down[owner]
        self._probing.add(owner)
        return True

    async def ask(
        self,
        scope: str,
        key: str,
        owner: str,
        addr: tuple[str, int],
        timeout: float = LEASE_DATAGRAM_TIMEOUT_S,
    ) -> str | None:
        """The owner's answer ("g", "w" or "h") to one datagram question; None: none within ``timeout``."""
        try:
            return await self._ask(scope, key, owner, addr, timeout)
        finally:
            self._probing.discard(owner)

    async def _ask(
        self, scope: str, key: str, owner: str, addr: tuple[str, int], timeout: float
    ) -> str | None:
        transport = self.transport
        if transport is None:
            return None
        datagram, qid = encode_lease_datagram(self.keys, scope, self.peer_id, owner, key, self.clock())
        fut: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiting[qid] = (fut, scope, key, owner)
        try:
            transport.sendto(datagram, addr)
            answer = await within(fut, timeout)
        except (asyncio.TimeoutError, OSError):
            answer = None
        finally:
            self._waiting.pop(qid, None)
        if answer is None:
            self.stats.lease_datagram_timeouts += 1
            missed = self._unanswered[owner] = self._unanswered.get(owner, 0) + 1
            if missed >= DOWN_AFTER:
                last = self._down_for.get(owner)
                period = DOWN_S if last is None else min(last * 2, DOWN_MAX_S)
                log.debug(
                    "lease owner %s left %d datagram questions unanswered: its line only for %gs",
                    owner,
                    missed,
                    period,
                )
                self._down[owner] = self.monotonic() + period
                self._down_for[owner] = period
                self._unanswered[owner] = DOWN_AFTER - 1  # after the down time: one probe, not three
            return None
        self._unanswered.pop(owner, None)
        self._down_for.pop(owner, None)
        self.stats.lease_datagrams += 1
        return answer

    def _answer_arrived(self, data: bytes) -> None:
        try:
            qid, answer, sealed = decode_lease_reply(data)
        except MessageError:
            self.stats.rejected += 1
            return
        waiting = self._waiting.get(qid)
        if waiting is None:  # late (already fell back) or not ours: an id is 12 random bytes
            return
        fut, scope, key, owner = waiting
        try:
            got = open_lease_answer(
                self.keys, scope, self.peer_id, owner, question_number(qid), key, answer, sealed
            )
        except SealError:  # not the owner's answer to this question: keep waiting for the real one
            self.stats.lease_answers_rejected += 1
            return
        if not fut.done():
            fut.set_result(got)

    # -- owner ---------------------------------------------------------------------------------------
    def _question_arrived(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            asker, owner, sealed = decode_lease_datagram(data)
            learned = self.peer_addr(asker) if owner == self.peer_id and asker != self.peer_id else None
            if learned is None or learned[0] != addr[0]:  # UDP's source is not authenticated: no crypto
                raise MessageError("not a question for this node from where a known peer said it is")
            qid = sealed[:QUESTION_ID]
            if not self._room(qid):
                raise MessageError("seen-id table full: the asker takes the lease line")
            asked_at, scope, key = open_lease_datagram(self.keys, asker, owner, sealed)
        except (MessageError, SealError, ValueError):
            self.stats.rejected += 1
            return
        now = self.clock()
        if abs(now - asked_at) > REPLAY_WINDOW_S or qid in self._seen:
            self.stats.lease_datagrams_replayed += 1
            return
        self._seen[qid] = asked_at + REPLAY_WINDOW_S
        if self.on_lease is None or self.transport is None:
            return
        answer = self.on_lease(key, asker, scope).encode()
        self.stats.lease_datagrams_served += 1
        proof = seal_lease_answer(self.keys, scope, asker, self.peer_id, question_number(qid), key, answer)
        try:  # to where the peer said it takes datagrams, never to the (forgeable) source address
            self.transport.sendto(encode_lease_reply(qid, answer, proof), learned)
        except OSError as exc:
            log.debug("could not answer a lease datagram: %s", exc)

    def _room(self, qid: bytes) -> bool:
        """Ids past the replay window are forgotten; a full table of live ones takes no new question (an
        evicted live id could be replayed), only the ones it holds (answered as replays)."""
        seen, now = self._seen, self.clock()
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
        return len(seen) < SEEN_MAX or qid in seen
