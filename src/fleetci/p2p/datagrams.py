"""Lease questions and answers as single sealed UDP datagrams, on the proxy's own event loop (issue 16).

A question on the libp2p lease line crosses the asker's asyncio -> trio thread hop, py-libp2p's yamux and
noise layers (each read also writes a window update) and the owner's trio thread, and back: ~3.5 ms of a
miss on an idle machine, 6-15 ms under load, against ~0.3 ms for the bytes themselves. Here the asker's
event loop sends one datagram to the owner's, which answers from its event loop (``on_lease`` is
thread-safe and never blocks) with one datagram: no thread hop, no stream, no muxer.

What libp2p's noise channel gave the lease line is kept by sealing: a question is the key sealed with the
fleet secret for its scope, bound to the asker and the owner, and carries the time it was asked; the owner
answers only a question that opens, from a peer it knows (``is_peer``), asked within ``REPLAY_WINDOW_S``
and not seen before (a copied question replayed later is dropped), and nothing to anyone else (no
reflection). The
answer is sealed to asker, owner, the question's random id and the key (``seal_lease_answer``), so only
the owner asked can answer it. Where to send is learned from the peer's sealed peer-exchange addresses
(``/ip4/H/udp/P/p2p/ID``, only a peer's own, over a noise channel authenticated as that peer).

A datagram can be lost or blocked: an unanswered question falls back to the lease line
(``LEASE_DATAGRAM_TIMEOUT_S`` later), and an owner that left ``DOWN_AFTER`` questions in a row unanswered
is asked on the line only, for ``DOWN_S``.
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
SEEN_MAX = 100_000  # question ids remembered for REPLAY_WINDOW_S (bounded: ~3,000 questions a second)
DOWN_AFTER = 3  # unanswered datagram questions in a row before an owner is asked on its line only
DOWN_S = 30.0


def parse_udp_addr(addr: str, peer: str) -> tuple[str, int] | None:
    """(host, port) of ``/ip4/H/udp/P/p2p/<peer>``; None for any other address."""
    parts = addr.split("/")
    if len(parts) != 7 or parts[0] or parts[1] != "ip4" or parts[3] != "udp" or parts[5] != "p2p":
        return None
    if parts[6] != peer or not parts[4].isdigit():
        return None
    try:
        host = str(ipaddress.IPv4Address(parts[2]))
    except ValueError:
        return None
    port = int(parts[4])
    return (host, port) if 0 < port < 65536 else None


class LeaseDatagrams(asyncio.DatagramProtocol):
    """Both sides of datagram leases on one UDP socket; every method runs on the proxy's event loop."""

    def __init__(
        self,
        keys: FleetKeys,
        peer_id: str,
        stats: Any,  # fleetci.p2p.node.P2PStats: lease_datagrams*, rejected, lease_answers_rejected
        on_lease: Callable[[str, str, str], str] | None,
        is_peer: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.peer_id = peer_id
        self.stats = stats
        self.on_lease = on_lease  # (key, asker, scope) -> "g" / "w" / "h" (messages.LEASE_ANSWERS)
        self.is_peer = is_peer  # a connected (or known) fleet peer: only their questions are answered
        self.clock = clock
        self.transport: asyncio.DatagramTransport | None = None
        # question id -> (future answer, scope, key, owner)
        self._waiting: dict[bytes, tuple[asyncio.Future[str | None], str, str, str]] = {}
        self._seen: OrderedDict[bytes, float] = OrderedDict()  # question id -> when it was asked
        self._unanswered: dict[str, int] = {}  # owner -> datagram questions in a row it left unanswered
        self._down: dict[str, float] = {}  # owner -> monotonic time it is asked by datagram again

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
        """Datagrams may be tried for ``owner`` (a socket is up and the owner is not marked down)."""
        if self.transport is None:
            return False
        until = self._down.get(owner)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        del self._down[owner]
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
                log.debug(
                    "lease owner %s left %d datagram questions unanswered: its line only", owner, missed
                )
                self._down[owner] = time.monotonic() + DOWN_S
                del self._unanswered[owner]
            return None
        self._unanswered.pop(owner, None)
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
            scope, asker, owner, sealed = decode_lease_datagram(data)
            if owner != self.peer_id or asker == self.peer_id or not self.is_peer(asker):
                raise MessageError("not a question for this node from a connected peer")
            asked_at, key = open_lease_datagram(self.keys, scope, asker, owner, sealed)
        except (MessageError, SealError, ValueError):
            self.stats.rejected += 1
            return
        now = self.clock()
        qid = sealed[:QUESTION_ID]
        if abs(now - asked_at) > REPLAY_WINDOW_S or qid in self._seen:
            self.stats.lease_datagrams_replayed += 1
            return
        self._remember(qid, asked_at, now)
        if self.on_lease is None or self.transport is None:
            return
        answer = self.on_lease(key, asker, scope).encode()
        self.stats.lease_datagrams_served += 1
        proof = seal_lease_answer(self.keys, scope, asker, self.peer_id, question_number(qid), key, answer)
        try:
            self.transport.sendto(encode_lease_reply(qid, answer, proof), addr)
        except OSError as exc:
            log.debug("could not answer a lease datagram: %s", exc)

    def _remember(self, qid: bytes, asked_at: float, now: float) -> None:
        seen = self._seen
        seen[qid] = asked_at
        while seen:
            oldest = next(iter(seen.values()))
            if len(seen) <= SEEN_MAX and now - oldest <= REPLAY_WINDOW_S:
                break
            seen.popitem(last=False)
