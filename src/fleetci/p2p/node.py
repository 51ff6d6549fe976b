"""A libp2p node on its own trio thread, bridged to the asyncio proxy.

py-libp2p runs on trio; the proxy runs on asyncio. The node owns one thread running ``trio.run``; the proxy
talks to it only through ``TrioToken.run_sync_soon`` (thread-safe, never blocks the asyncio loop) and
concurrent futures, and the node hands received entries back through a callback the engine makes
thread-safe. py-libp2p's defaults drop bursts silently (32-deep outbound and subscription queues, 10
messages/s per peer and topic, 120 s heartbeat), so announcements are batched per scope every
``batch_window`` and the limits are raised (see ``_gossipsub``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetci.cache.peering import Announcement, Claim
from fleetci.cache.store import Entry, cid_of
from fleetci.errors import FleetciError
from fleetci.http import check_port_free, primary_ip
from fleetci.p2p.crypto import FleetKeys, SealError
from fleetci.p2p.datagrams import LeaseDatagrams, parse_udp_addr
from fleetci.p2p.discovery import PeerRegistry
from fleetci.p2p.identity import P2PError as P2PError
from fleetci.p2p.identity import load_identity as load_identity
from fleetci.p2p.identity import parse_multiaddr as parse_multiaddr
from fleetci.p2p.identity import peer_id_for as peer_id_for
from fleetci.p2p.messages import (
    FETCH_PROTOCOL,
    LEASE_PROTOCOL,
    PX,
    SYNC,
    Invalidation,
    MessageError,
    decode_fetch_request,
    decode_lease_answer,
    decode_lease_line,
    decode_lease_request,
    decode_message,
    encode_batch,
    encode_claims,
    encode_fetch_request,
    encode_invalidation,
    encode_lease_answer,
    encode_lease_request,
    encode_sync_request,
    frame,
    open_body,
    open_lease_answer,
    seal_body,
    seal_lease_answer,
    unframe,
)
from fleetci.retry import Backoff

log = logging.getLogger("fleetci.p2p")

GOSSIP_PROTOCOLS = ("/meshsub/1.1.0", "/meshsub/1.0.0")
LEASE_TIMEOUT_S = 2.0
# An owner that let a written question time out (hung process, blackholed route) or sent an answer that
# does not open is left out of key ownership this long, so its keys stop costing LEASE_TIMEOUT_S a miss.
LEASE_BACKOFF_S = 30.0
MAX_LEASE_ANSWER = 128  # "<number> <g|w|0> <sealed answer>" is ~60 bytes
MAX_REQUEST = 64 * 1024
PX_SCOPE = "fleetci-px"
RECEIPTS_KEPT = 5000  # arrival times of recent announcements (propagation measurements)
UDP_FORGET_S = 60.0  # a departed peer's datagram address is forgotten this long after it left
PX_TARGET = 8  # connections a node tries to keep through peer exchange
# Back-pressure: while the typical peer still has this many RPCs queued from us, hold our own messages
# back (at most the given seconds) so what piles up meanwhile leaves as one message instead of hundreds.
BACKLOG_RPCS = 16
HOLD_ANNOUNCEMENTS_S = 2.0
HOLD_CLAIMS_S = 0.25
HOLD_BUSY_S = 0.1
MAX_BODY = 32 * 1024 * 1024
# Lost or unreachable peers are dialled again after 1, 2, 4 … 60 s (the discovery loop keeps one
# schedule per address; the policy is the shared one, without jitter).
REDIAL = Backoff(retries=None, initial=1.0, most=60.0, jitter=0.0)
# Seed 001: these only when the operator opts in; dialled in the background, never blocking start-up.
PUBLIC_BOOTSTRAP = (
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmQCU2EcMqAqQPR2i9bChDtGNJchTbq5TbXJJ16u19uLTa",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmbLHAnMoJPWSCR5Zhtx6BHJX9KiKNN6tpvbUcqanj75Nb",
    "/dnsaddr/bootstrap.libp2p.io/p2p/QmcZf59bWwK5XFi76CZX8cbJ4BhTzzA3gU1ZjYZcYW3dwt",
)


@dataclass(frozen=True)
class P2PConfig:
    listen_host: str
    listen_port: int
    identity_path: Path
    bootstrap: tuple[str, ...] = ()
    registry: Path | None = None
    announce_host: str | None = None
    fetch_timeout: float = 0.5
    batch_window: float = 0.02
    discover_every: float = 10.0
    sync_limit: int = 5000


@dataclass
class _LeaseLine:
    """A long-lived stream to one key owner (issue 16). Opening a libp2p stream negotiates its protocol
    first (~20 ms under load, five times the question itself), so a node keeps one line per owner,
    numbers its questions and matches the answers; the line's reader runs in ``reader``."""

    stream: Any
    write_lock: Any  # trio.Lock: whole lines, one writer at a time
    reader: Any  # trio.CancelScope of the answer reader (cancel it to drop the line)
    waiting: dict[int, list[Any]] = field(default_factory=dict)  # number -> [trio.Event, answer, scope, key]
    closed: bool = False  # the reader has finished: a question asked now would never be answered


@dataclass
class P2PStats:
    announced: int = 0
    batches_sent: int = 0
    received: int = 0
    rejected: int = 0
    cid_mismatch: int = 0
    fetches: int = 0
    fetch_failures: int = 0
    served: int = 0
    claims_sent: int = 0
    claims_received: int = 0
    leases_asked: int = 0  # "may I fetch this key?" asked of its owner (issue 16)
    leases_served: int = 0  # such questions this node answered as a key's owner
    lease_lines: int = 0  # lease lines opened to owners (one per owner while connected)
    lease_timeouts: int = 0  # written questions an owner left unanswered (its line dropped, owner backed off)
    lease_answers_rejected: int = 0  # answers that did not open with the fleet secret for their question
    # The same questions as single UDP datagrams between the event loops (fleetci.p2p.datagrams):
    lease_datagrams: int = 0  # asked and answered that way (the rest: on the lease line)
    lease_datagram_timeouts: int = 0  # unanswered in time: asked again on the lease line
    lease_datagrams_served: int = 0  # questions this node answered that way as a key's owner
    lease_datagrams_replayed: int = 0  # questions refused as seen before or asked too long ago
    held: int = 0  # 10 ms waits for back-pressure (see _hold_while_backlogged)
    invalidations_sent: int = 0  # webhook invalidations passed on to the fleet
    invalidations_received: int = 0


class P2PNode:
    """Thread-safe facade; every public method may be called from the asyncio thread."""

    def __init__(
        self,
        config: P2PConfig,
        keys: FleetKeys,
        on_announcements: Callable[[list[Announcement]], None],
        lookup: Callable[[str], Entry | None],
        fresh_entries: Callable[[int], list[Entry]] | None = None,
        on_claims: Callable[[list[Claim]], None] | None = None,
        on_invalidation: Callable[[tuple[str, ...], tuple[str, ...]], None] | None = None,
        on_lease: Callable[[str, str, str], str] | None = None,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.busy = busy  # the proxy is answering a miss now: announcements wait (see _publish_loop)
        self.on_invalidation = on_invalidation
        self._inv_send: Any = None
        self.fresh_entries = fresh_entries
        # (key, asking peer, scope) -> "g" / "w" / "h" (messages.LEASE_ANSWERS); runs on the trio thread,
        # must not block
        self.on_lease = on_lease
        self.on_claims = on_claims
        self.config = config
        self.keys = keys
        self.on_announcements = on_announcements
        self.lookup = lookup
        self.stats = P2PStats()
        self.seed = load_identity(config.identity_path)
        self.peer_id = peer_id_for(self.seed)
        self.addrs: list[str] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: Any = None
        self._cancel: Any = None
        self._send: Any = None
        self._claim_send: Any = None
        self._nursery: Any = None
        self._host: Any = None
        self._pending: dict[str, list[Announcement]] = defaultdict(list)
        self._peers: set[str] = set()
        self.receipts: OrderedDict[str, float] = OrderedDict()  # key -> when its announcement arrived
        self._px: set[str] = set()  # addresses learned by peer exchange
        self._px_book: dict[str, list[str]] = {}  # peer -> the listen addresses it told us
        self._lease_lines: dict[str, _LeaseLine] = {}  # owner -> open line (trio thread only)
        self._lease_opening: dict[str, Any] = {}  # owner -> trio.Event set once its line is open (or not)
        self._lease_rid = 0
        # Peers that proved the fleet secret (we opened a sealed message of theirs): the only candidates
        # for key ownership. Both replaced, never mutated: the asyncio thread reads them.
        self._proven: frozenset[str] = frozenset()
        self._backoff: dict[str, float] = {}  # owner -> monotonic time it may own keys again
        # Datagram leases: the socket (bound in start, served by the proxy's event loop once
        # serve_datagrams is called), our own address for it, and the peers' (learned by peer exchange;
        # replaced, never mutated: the trio thread writes, the event loop reads).
        self._udp_sock: socket.socket | None = None
        self._udp_addr: str | None = None
        self._datagrams: LeaseDatagrams | None = None
        self._datagram_task: asyncio.Task[Any] | None = None
        self._udp_peers: dict[str, tuple[str, int]] = {}
        self._udp_heard: dict[str, float] = {}  # peer -> monotonic time it was last connected or learned
        self._stopping = False

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        logging.getLogger("libp2p").setLevel(logging.ERROR)  # its warnings are per message: too chatty
        try:  # libp2p only logs a failed listen and runs on without an address
            check_port_free(self.config.listen_host, self.config.listen_port)
        except FleetciError as exc:
            raise P2PError(f"cannot listen for peers: {str(exc).removeprefix('cannot listen on ')}") from None
        self._udp_sock = _udp_socket(self.config.listen_host, self.config.listen_port)
        self._thread = threading.Thread(target=self._run, name="fleetci-p2p", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self._close_udp()
            raise P2PError(f"peer-to-peer node did not start within {timeout:g}s")
        if self._error is not None:
            err = self._error
            self._thread.join(timeout=5)
            self._close_udp()
            if isinstance(err, P2PError):
                raise err
            raise P2PError(f"peer-to-peer node failed: {err}") from err

    def _close_udp(self) -> None:
        """The datagram socket of a node that did not start (nobody serves it)."""
        sock, self._udp_sock = self._udp_sock, None
        if sock is not None and self._datagram_task is None:
            sock.close()

    def serve_datagrams(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer and ask lease questions as datagrams on ``loop`` (the proxy's; call it on that loop's
        thread). Until then, and without a socket, every question takes the lease line."""
        if self._udp_sock is None or self._datagrams is not None or self._stopping:
            return
        proto = self._datagrams = LeaseDatagrams(
            self.keys, self.peer_id, self.stats, self.on_lease, self._udp_peers_get
        )
        sock = self._udp_sock
        task = self._datagram_task = loop.create_task(loop.create_datagram_endpoint(lambda: proto, sock=sock))
        task.add_done_callback(lambda t: self._endpoint_made(t, sock))

    def _endpoint_made(self, task: asyncio.Task[Any], sock: socket.socket) -> None:
        """On the event loop: an endpoint that could not be made leaves its socket to us (closed: every
        question takes the line); one made after stop() is closed at once."""
        if task.cancelled() or task.exception() is not None:
            if not task.cancelled():
                log.warning("lease datagrams off, UDP endpoint failed: %s", task.exception())
            sock.close()
        elif self._stopping:
            task.result()[0].close()

    def _udp_peers_get(self, peer: str) -> tuple[str, int] | None:
        """Where a peer takes lease datagrams (learned from its sealed peer exchange, which reaches us
        before the connection shows in ``_peers``: its first question must not wait for our next look at
        the connections); only those peers' questions are answered, only from and to that address."""
        return self._udp_peers.get(peer)

    def stop(self) -> None:
        self._stopping = True
        if self._datagram_task is not None:  # the event loop's socket now: closed on that loop's thread
            transport = self._datagrams.transport if self._datagrams is not None else None
            if transport is not None:
                with contextlib.suppress(RuntimeError):  # the loop is closed already: so is the socket
                    self._datagram_task.get_loop().call_soon_threadsafe(transport.close)
            # else: not made yet (_endpoint_made closes it) or failed (closed already)
        elif self._udp_sock is not None:
            self._udp_sock.close()
        if self._token is not None and self._cancel is not None:
            with contextlib.suppress(Exception):
                self._token.run_sync_soon(self._cancel.cancel)
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.config.registry is not None:
            PeerRegistry(self.config.registry).remove(self.peer_id)

    def _run(self) -> None:
        import trio

        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to start()
            if not self._ready.is_set():
                self._error = exc
                self._ready.set()
            else:
                log.warning("peer-to-peer node stopped: %s", exc)

    # -- calls from the asyncio side -----------------------------------------------------------------
    def announce(self, entry: Entry) -> None:
        self.publish_announcement(Announcement.of(entry, self.peer_id))

    def publish_announcement(self, ann: Announcement) -> None:
        """Queue an announcement for the next batch (thread-safe, non-blocking)."""
        if self._token is not None:
            with contextlib.suppress(Exception):  # trio already closed: nothing to announce to
                self._token.run_sync_soon(self._queue_announcement, ann)

    def _queue_announcement(self, ann: Announcement) -> None:
        self._pending[ann.scope].append(ann)

    def claim(self, scope: str, key: str, release: bool = False) -> None:
        """Tell the fleet we are fetching ``key`` upstream now (or gave up); sent at once, unbatched."""
        if self._token is not None and self._claim_send is not None:
            with contextlib.suppress(Exception):
                self._token.run_sync_soon(self._claim_send.send_nowait, (scope, key, release))

    def invalidate(self, prefixes: tuple[str, ...], exact: tuple[str, ...]) -> None:
        """Pass a webhook's invalidation on to the fleet (the engine's optional ``PeerLink.invalidate``)."""
        if self._token is not None and self._inv_send is not None:
            with contextlib.suppress(Exception):
                self._token.run_sync_soon(self._inv_send.send_nowait, (prefixes, exact))

    def fetch(self, ann: Announcement) -> concurrent.futures.Future[bytes | None]:
        fut: concurrent.futures.Future[bytes | None] = concurrent.futures.Future()
        if self._token is None or self._send is None:
            fut.set_result(None)
            return fut
        try:
            self._token.run_sync_soon(self._send.send_nowait, (ann, fut))
        except Exception:
            fut.set_result(None)
        return fut

    def lease(self, scope: str, key: str, owner: str) -> concurrent.futures.Future[str | None]:
        """Ask ``owner`` (the key's rendezvous owner) whether we may fetch ``key`` upstream now: "g" (go:
        nobody else is), "w" (wait: another node is fetching it), "h" (go, but a fresh copy was announced
        lately: look in the fleet first) or None (no answer in time)."""
        fut: concurrent.futures.Future[str | None] = concurrent.futures.Future()
        if self._token is None or self._nursery is None:
            fut.set_result(None)
            return fut
        try:
            self._token.run_sync_soon(self._nursery.start_soon, self._lease_one, scope, key, owner, fut)
        except Exception:
            fut.set_result(None)
        return fut

    async def ask_lease(self, scope: str, key: str, owner: str) -> str | None:
        """:meth:`lease`, awaited on the proxy's event loop: as one datagram when the owner told us where
        (its answer arrives on this loop, no thread hop), on the lease line when not or unanswered."""
        fast, addr = self._datagrams, self._udp_peers.get(owner)
        if fast is not None and addr is not None and fast.usable(owner):
            answer = await fast.ask(scope, key, owner, addr)
            if answer is not None:
                return answer
        return await asyncio.wrap_future(self.lease(scope, key, owner))

    def connected_peers(self) -> list[str]:
        return sorted(self._peers)

    def lease_candidates(self) -> tuple[list[str], frozenset[str]]:
        """(connected peers that may own keys, peers that must not): a peer is a candidate once it proved
        the fleet secret and while it is not backed off; the backed-off ones must not be chosen even when
        the engine heard from them. A stranger connected over libp2p never owns keys."""
        now = time.monotonic()
        backoff = frozenset(p for p, until in self._backoff.copy().items() if until > now)
        proven = self._proven
        return sorted(p for p in self._peers if p in proven and p not in backoff), backoff

    def _prove(self, peer: str) -> None:
        if peer not in self._proven:
            self._proven = self._proven | {peer}

    def _back_off(self, owner: str) -> None:
        now = time.monotonic()
        self._backoff = {p: t for p, t in self._backoff.items() if t > now} | {owner: now + LEASE_BACKOFF_S}

    # -- trio side -----------------------------------------------------------------------------------
    def _gossipsub(self) -> Any:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        from libp2p.pubsub.gossipsub import GossipSub

        from fleetci.p2p import tuning

        class FloodPublishGossipSub(GossipSub):
            """Gossipsub v1.1's flood publishing (go-libp2p's default; py-libp2p lacks it): a node's own
            messages go to every peer on the topic, not only its mesh. Claims must beat the other
            runners' misses, and a mesh still forming, or a peer the scorer has throttled, would
            otherwise leave them to heartbeat gossip (up to a second later)."""

            def _get_peers_to_send(
                self, topic_ids: Any, msg_forwarder: Any, origin: Any, msg_id: bytes | None = None
            ) -> Any:
                peers = set(super()._get_peers_to_send(topic_ids, msg_forwarder, origin, msg_id))
                if self.pubsub is not None and origin == msg_forwarder == self.pubsub.my_id:
                    for topic in topic_ids:
                        peers.update(self.pubsub.peer_topics.get(topic, ()))
                    peers.discard(origin)
                yield from peers

            def _check_equivocation(self, msg: Any) -> bool:
                """py-libp2p's check, keeping a fingerprint instead of the whole message.

                Upstream keeps every message it saw (up to 1,000 between clean-ups, far more in a burst)
                in ``equivocation_detection`` only to compare data and topics later; with inline bodies
                that was megabytes per node. A sha256 of the same fields keeps the check intact.
                """
                key = msg.from_id + msg.seqno
                seen: dict[bytes, Any] = self.equivocation_detection  # fingerprints, not messages
                mark = tuning.fingerprint(msg)
                first = seen.setdefault(key, mark)
                if first != mark:
                    log.warning("equivocation: peer %s sent two messages with one sequence number", key[:8])
                    if self.scorer is not None:
                        self.scorer.penalize_equivocation(ID(msg.from_id), 100.0)
                    return False
                tuning.bound(seen)
                return True

        return FloodPublishGossipSub(
            protocols=[TProtocol(p) for p in GOSSIP_PROTOCOLS],
            # A sparse mesh: our own messages are flood-published to every connected peer anyway, so
            # the mesh only carries them on to peers we are not connected to. D=6 made every node
            # forward each message to five others, 5x duplicates that cost py-libp2p real CPU.
            degree=3,
            degree_low=2,
            degree_high=6,
            heartbeat_interval=1,  # default 120 s: meshes would take minutes to form
            heartbeat_initial_delay=0.1,
            time_to_live=30,
            # Messages (inline bodies included) are kept for IWANT during gossip_history heartbeats;
            # flood publishing and catch-up make older ones unneeded (defaults 3 and 5).
            gossip_window=2,
            gossip_history=3,
            max_messages_per_topic_per_second=1000.0,  # default 10/s per peer drops bursts silently
            spam_protection_enabled=False,  # the fleet secret already rejects strangers' payloads
            eclipse_protection_enabled=False,  # every runner of a self-hosted box shares one IP
            max_pending_messages_per_peer=10_000,
        )

    async def _main(self) -> None:
        import multiaddr
        import trio
        from libp2p import new_host
        from libp2p.crypto.ed25519 import create_new_key_pair
        from libp2p.custom_types import TProtocol
        from libp2p.pubsub import pubsub as pubsub_module
        from libp2p.tools.anyio_service import background_trio_service

        from fleetci.p2p import tuning

        tuning.apply()
        listen = multiaddr.Multiaddr(f"/ip4/{self.config.listen_host}/tcp/{self.config.listen_port}")
        host = new_host(key_pair=create_new_key_pair(self.seed), listen_addrs=[listen])
        self._host = host
        router = self._gossipsub()
        ps = pubsub_module.Pubsub(host, router)
        host.set_stream_handler(TProtocol(FETCH_PROTOCOL), self._serve_fetch)
        host.set_stream_handler(TProtocol(LEASE_PROTOCOL), self._serve_leases)
        try:
            async with host.run([listen]), background_trio_service(ps), background_trio_service(router):
                await ps.wait_until_ready()
                sub = await ps.subscribe(self.keys.topic)
                announce_host = self.config.announce_host or self.config.listen_host
                if announce_host in ("0.0.0.0", ""):
                    announce_host = primary_ip()
                self.addrs = [
                    f"/ip4/{announce_host}/tcp/{a.value_for_protocol('tcp')}/p2p/{self.peer_id}"
                    for a in host.get_addrs()
                    if a.value_for_protocol("tcp")
                ][:1]
                udp_sock = self._udp_sock
                with contextlib.suppress(OSError):  # closed by a start() that gave up waiting
                    if udp_sock is not None:
                        udp_port = udp_sock.getsockname()[1]
                        self._udp_addr = f"/ip4/{announce_host}/udp/{udp_port}/p2p/{self.peer_id}"
                self._send, receive = trio.open_memory_channel[tuple[Announcement, Any]](1024)
                self._claim_send, claims = trio.open_memory_channel[tuple[str, str, bool]](4096)
                self._inv_send, invalidations = trio.open_memory_channel[Invalidation](1024)
                with trio.CancelScope() as cancel:
                    self._cancel = cancel
                    self._token = trio.lowlevel.current_trio_token()
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._publish_loop, ps)
                        nursery.start_soon(self._claim_loop, ps, claims)
                        nursery.start_soon(self._invalidation_loop, ps, invalidations)
                        nursery.start_soon(self._receive_loop, sub)
                        nursery.start_soon(self._fetch_loop, receive, nursery)
                        nursery.start_soon(self._discovery_loop)
                        nursery.start_soon(self._peer_watch)
                        self._ready.set()
        except OSError as exc:
            raise P2PError(
                f"cannot listen for peers on {self.config.listen_host}:{self.config.listen_port}: "
                f"{exc.strerror or exc}"
            ) from exc
        finally:
            self._token = None

    async def _hold_while_backlogged(self, ps: Any, limit: float) -> None:
        """Wait (up to ``limit`` s) while the median peer's outbound queue is deep.

        py-libp2p copies every message into each peer's queue, so a node that publishes faster than its
        peers read (20 runners on two cores, or a slow link) piles up copies (memory) and per-message work
        on every peer (CPU), and gossip latency then grows with the pile. Holding back instead lets the
        next batch carry everything that queued up meanwhile.
        """
        import trio

        deadline = trio.current_time() + limit
        while trio.current_time() < deadline:
            depths = sorted(len(q) for q in getattr(ps, "peer_queues", {}).values())
            if not depths or depths[len(depths) // 2] < BACKLOG_RPCS:
                return
            self.stats.held += 1
            await trio.sleep(0.01)

    async def _hold_while_busy(self) -> None:
        """Wait (up to ``HOLD_BUSY_S``) while the proxy is fetching a miss. Publishing is pure-Python work
        on this thread (sealing, signing, encrypting for every peer) that holds the GIL: run during a
        miss, the proxy's own thread waited for it, 5-10 ms a miss (issue 16)."""
        import trio

        if self.busy is None:
            return
        deadline = trio.current_time() + HOLD_BUSY_S
        while self.busy() and trio.current_time() < deadline:
            await trio.sleep(0.002)

    async def _publish_loop(self, ps: Any) -> None:
        import trio

        while True:
            await trio.sleep(self.config.batch_window)
            if not self._pending:
                continue
            await self._hold_while_backlogged(ps, HOLD_ANNOUNCEMENTS_S)
            await self._hold_while_busy()
            pending, self._pending = self._pending, defaultdict(list)
            for scope, anns in pending.items():
                # Keep each gossip message well under the 1 MiB RPC limit.
                batch: list[Announcement] = []
                size = 0
                for ann in anns:
                    cost = (len(ann.body) * 4 // 3 if ann.body else 0) + 512
                    if batch and size + cost > 512 * 1024:
                        await self._publish(ps, scope, batch)
                        batch, size = [], 0
                    batch.append(ann)
                    size += cost
                if batch:
                    await self._publish(ps, scope, batch)

    async def _claim_loop(self, ps: Any, receive: Any) -> None:
        """Claims go out as soon as they are made (whatever else is queued rides along): they only help
        if they reach the fleet before the other runners' own misses."""
        import trio

        async for first in receive:
            await self._hold_while_backlogged(ps, HOLD_CLAIMS_S)
            queued = [first]
            with contextlib.suppress(trio.WouldBlock):
                while len(queued) < 500:
                    queued.append(receive.receive_nowait())
            by_scope: dict[str, list[tuple[str, bool]]] = defaultdict(list)
            for scope, key, release in queued:
                by_scope[scope].append((key, release))
            for scope, items in by_scope.items():
                try:
                    await ps.publish(self.keys.topic, encode_claims(self.keys, self.peer_id, scope, items))
                    self.stats.claims_sent += len(items)
                except Exception as exc:
                    log.debug("could not publish %d claims: %s", len(items), exc)

    async def _invalidation_loop(self, ps: Any, receive: Any) -> None:
        """Invalidations go out at once, one message each: they are rare (one per webhook) and every
        second they wait is a second the fleet may serve what GitHub already changed."""
        async for prefixes, exact in receive:
            try:
                await ps.publish(
                    self.keys.topic, encode_invalidation(self.keys, self.peer_id, prefixes, exact)
                )
                self.stats.invalidations_sent += 1
            except Exception as exc:
                log.warning("could not pass an invalidation on to the fleet: %s", exc)

    async def _publish(self, ps: Any, scope: str, batch: list[Announcement]) -> None:
        try:
            await ps.publish(self.keys.topic, encode_batch(self.keys, self.peer_id, scope, batch))
            self.stats.batches_sent += 1
            self.stats.announced += len(batch)
        except Exception as exc:
            log.warning("could not publish %d announcements: %s", len(batch), exc)

    async def _receive_loop(self, sub: Any) -> None:
        from libp2p.peer.id import ID

        while True:
            msg = await sub.get()
            try:
                sender = ID(msg.from_id).pretty()
            except Exception:
                self.stats.rejected += 1
                continue
            self._deliver(msg.data, sender)

    def _deliver(self, data: bytes, sender: str) -> None:
        """Open, check and hand over one sealed batch; anything not sealed by the fleet is dropped."""
        try:
            msg = decode_message(self.keys, data)
            if msg.peer != sender:
                raise MessageError(f"header names {msg.peer}, message signed by {sender}")
        except (SealError, MessageError, ValueError) as exc:
            self.stats.rejected += 1
            log.debug("rejected a batch from %s: %s", sender, exc)
            return
        if msg.peer == self.peer_id:
            return
        self._prove(sender)
        if msg.invalidations:
            self.stats.invalidations_received += len(msg.invalidations)
            if self.on_invalidation is not None:
                for prefixes, exact in msg.invalidations:
                    self.on_invalidation(prefixes, exact)
            return
        if msg.claims:
            self.stats.claims_received += len(msg.claims)
            if self.on_claims is not None:
                self.on_claims(msg.claims)
            return
        anns = msg.announcements
        accepted = []
        for ann in anns:
            if ann.body is not None and cid_of(ann.body) != ann.cid:
                self.stats.cid_mismatch += 1
                continue
            accepted.append(ann)
        self.stats.received += len(accepted)
        now = time.time()
        for ann in accepted:
            self.receipts[ann.key] = now
        while len(self.receipts) > RECEIPTS_KEPT:
            self.receipts.popitem(last=False)
        if accepted:
            self.on_announcements(accepted)

    async def _fetch_loop(self, receive: Any, nursery: Any) -> None:
        async for ann, fut in receive:
            nursery.start_soon(self._fetch_one, ann, fut)

    async def _fetch_one(self, ann: Announcement, fut: concurrent.futures.Future[bytes | None]) -> None:
        import trio
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        self.stats.fetches += 1
        body: bytes | None = None
        with trio.move_on_after(self.config.fetch_timeout):
            try:
                stream = await self._host.new_stream(ID.from_base58(ann.peer), [TProtocol(FETCH_PROTOCOL)])
                try:
                    await stream.write(encode_fetch_request(ann.key, ann.scope))
                    data = await _read_all(stream, MAX_BODY)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
                if data[:1] == b"1":
                    candidate = open_body(self.keys, ann.scope, ann.key, data[1:])
                    if cid_of(candidate) == ann.cid:
                        body = candidate
                    else:
                        self.stats.cid_mismatch += 1
            except Exception as exc:
                log.debug("fetch of %s from %s failed: %s", ann.key[:12], ann.peer, exc)
        if body is None:
            self.stats.fetch_failures += 1
        if not fut.done():
            fut.set_result(body)

    async def _lease_one(
        self, scope: str, key: str, owner: str, fut: concurrent.futures.Future[str | None]
    ) -> None:
        import trio

        answer: str | None = None
        # Longer than a body fetch: a late answer still means one call fleet-wide, an early give-up two.
        with trio.move_on_after(LEASE_TIMEOUT_S):
            try:
                line = await self._lease_line(owner)
                if line is not None:
                    answer = await self._ask(line, owner, scope, key)
            except Exception as exc:
                log.debug("lease of %s from %s failed: %s", key[:12], owner, exc)
        self.stats.leases_asked += 1
        if not fut.done():
            fut.set_result(answer)

    async def _ask(self, line: _LeaseLine, owner: str, scope: str, key: str) -> str | None:
        """One question on ``line``; a question cut off while being written drops the line (a partial
        line would garble the next one), so the next question opens a new one. A written question cut
        off unanswered (the owner hangs with its connection up) drops the line and backs the owner off
        (``LEASE_BACKOFF_S``), so its keys stop costing every miss the whole timeout."""
        import trio

        if line.closed:
            return None
        self._lease_rid += 1
        rid = self._lease_rid
        waiter: list[Any] = [trio.Event(), None, scope, key]
        line.waiting[rid] = waiter
        written = False
        try:
            sealed = self.keys.seal(scope, key.encode(), b"lease\x00" + self.peer_id.encode())
            async with line.write_lock:
                await line.stream.write(encode_lease_request(scope, sealed, rid))
                written = True
            if line.closed:  # the reader finished (its last sweep may have run before we registered)
                return None
            await waiter[0].wait()
            answer: str | None = waiter[1]
            return answer
        finally:
            line.waiting.pop(rid, None)
            if not written:
                line.reader.cancel()
            elif not waiter[0].is_set() and not line.closed:
                self.stats.lease_timeouts += 1
                log.debug("lease owner %s left a question unanswered: line dropped, owner backed off", owner)
                self._back_off(owner)
                line.reader.cancel()

    async def _lease_line(self, owner: str) -> _LeaseLine | None:
        """The open lease line to ``owner``, opened now if needed (one opener; others wait for it)."""
        import trio
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        line = self._lease_lines.get(owner)
        if line is not None and not line.closed:
            return line
        opening = self._lease_opening.get(owner)
        if opening is not None:
            await opening.wait()
            return self._lease_lines.get(owner)
        opening = self._lease_opening[owner] = trio.Event()
        try:
            stream = await self._host.new_stream(ID.from_base58(owner), [TProtocol(LEASE_PROTOCOL)])
            line = _LeaseLine(stream, trio.Lock(), trio.CancelScope())
            self._lease_lines[owner] = line
            self.stats.lease_lines += 1
            self._nursery.start_soon(self._read_lease_answers, owner, line)
            return line
        except Exception as exc:
            log.debug("could not open a lease line to %s: %s", owner, exc)
            return None
        finally:
            del self._lease_opening[owner]
            opening.set()

    async def _open_lease_line(self, owner: str) -> None:
        """Open the line to a newly connected peer ahead of the first miss it owns."""
        import trio

        with trio.move_on_after(LEASE_TIMEOUT_S * 2):
            await self._lease_line(owner)

    async def _read_lease_answers(self, owner: str, line: _LeaseLine) -> None:
        """Match answers to questions until the line ends; then every open question gets no answer."""
        buf = b""
        with line.reader:
            try:
                while True:
                    chunk = await line.stream.read(4096)
                    if not chunk:
                        break
                    buf += chunk
                    while b"\n" in buf:
                        one, buf = buf.split(b"\n", 1)
                        if len(one) > MAX_LEASE_ANSWER:
                            raise MessageError("lease answer too long")
                        rid, answer, sealed = decode_lease_answer(one)
                        waiter = line.waiting.get(rid)
                        if waiter is None:
                            continue
                        try:
                            waiter[1] = open_lease_answer(
                                self.keys, waiter[2], self.peer_id, owner, rid, waiter[3], answer, sealed
                            )
                        except SealError:  # not the fleet's answer to this question: no answer at all
                            self.stats.lease_answers_rejected += 1
                            self._back_off(owner)
                            raise MessageError("a lease answer did not open") from None
                        waiter[0].set()
                    if len(buf) > MAX_LEASE_ANSWER:
                        raise MessageError("lease answer too long")
            except Exception as exc:  # the peer went away, reset the stream, or sent garbage
                log.debug("lease line to %s ended: %s", owner, exc)
        line.closed = True
        if self._lease_lines.get(owner) is line:
            del self._lease_lines[owner]
        for waiter in line.waiting.values():
            waiter[0].set()
        with contextlib.suppress(Exception):
            await line.stream.reset()

    async def _serve_leases(self, stream: Any) -> None:
        """A lease line from a peer: answer each question in order; a stranger's question (not sealed by
        a fleet member for its own peer ID) gets "0" and the line is closed."""
        buf = b""
        try:
            while True:
                chunk = await stream.read(4096)
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    one, buf = buf.split(b"\n", 1)
                    got = decode_lease_line(one)
                    if got is None:
                        raise MessageError("not a lease request")
                    rid, scope, sealed = got
                    answer, asker, key = self._grant_for(stream, scope, sealed)
                    if answer == b"0":
                        await stream.write(encode_lease_answer(rid, answer))
                        return
                    proof = seal_lease_answer(self.keys, scope, asker, self.peer_id, rid, key, answer)
                    await stream.write(encode_lease_answer(rid, answer, proof))
                if len(buf) > MAX_REQUEST:
                    raise MessageError("lease request too large")
        except Exception as exc:
            log.debug("lease line from a peer ended: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    def _grant(self, stream: Any, scope: str, sealed: bytes) -> bytes:
        return self._grant_for(stream, scope, sealed)[0]

    def _grant_for(self, stream: Any, scope: str, sealed: bytes) -> tuple[bytes, str, str]:
        """(answer, asker, key) for a lease request: only a fleet member (it sealed the key for its own
        peer ID) gets one; it has then proved the secret, so it may own keys too."""
        try:
            remote = stream.muxed_conn.peer_id.pretty()
            key = self.keys.open(scope, sealed, b"lease\x00" + remote.encode()).decode()
        except Exception:
            self.stats.rejected += 1
            return b"0", "", ""
        self._prove(remote)
        self.stats.leases_served += 1
        if self.on_lease is None:
            return b"0", remote, key
        return self.on_lease(key, remote, scope).encode(), remote, key

    async def _serve_fetch(self, stream: Any) -> None:
        try:
            line = await _read_line(stream, MAX_REQUEST)
            lease = decode_lease_request(line)
            if lease is not None:
                await stream.write(self._grant(stream, *lease))
                return
            key, scope = decode_fetch_request(line)
            if key in (SYNC, PX):
                self._learn_addrs(stream, scope)
                await stream.write(self._sync_answer(with_entries=key == SYNC))
                return
            entry = self.lookup(key)
            if entry is None or entry.scope != scope:
                await stream.write(b"0")
            else:
                await stream.write(b"1" + seal_body(self.keys, scope, key, entry.body))
                self.stats.served += 1
        except Exception as exc:
            log.debug("fetch request failed: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    def _seal_addrs(self, addrs: list[str], owner: str) -> bytes:
        return self.keys.seal(PX_SCOPE, json.dumps(addrs).encode(), b"px\x00" + owner.encode())

    def _open_addrs(self, sealed: bytes, owner: str) -> list[str]:
        addrs = json.loads(self.keys.open(PX_SCOPE, sealed, b"px\x00" + owner.encode()))
        return [str(a) for a in addrs if isinstance(a, str)]

    def _learn_addrs(self, stream: Any, sealed_b64: str) -> None:
        """Remember where a fleet member listens, if it proves fleet membership and owns the addresses."""
        import base64

        try:
            remote = stream.muxed_conn.peer_id.pretty()
            addrs = self._open_addrs(base64.b64decode(sealed_b64), remote)
        except Exception:
            self.stats.rejected += 1
            return
        self._prove(remote)
        own = [a for a in self._dialable(addrs, remote, _remote_ip(stream)) if a.endswith("/p2p/" + remote)]
        if own:
            self._px_book[remote] = own

    def _own_addrs(self) -> list[str]:
        """What peer exchange tells the fleet: where we listen, and where we take lease datagrams."""
        served = self._datagrams is not None and self._datagrams.transport is not None
        return [*self.addrs, *([self._udp_addr] if served and self._udp_addr else [])]

    def _dialable(self, addrs: list[str], sender: str, conn_ip: str | None) -> list[str]:
        """``addrs`` without UDP ones; the sender's own lease-datagram address among them is noted (only
        its own, on the IP its connection comes from: the sender's identity was authenticated by the
        stream, a third party's was not)."""
        out = []
        for a in addrs:
            if "/udp/" not in a:
                out.append(a)
                continue
            got = parse_udp_addr(a, sender, conn_ip)
            if got is not None:
                self._udp_heard[sender] = time.monotonic()
                if self._udp_peers.get(sender) != got:
                    self._udp_peers = {**self._udp_peers, sender: got}
        return out

    def _forget_udp_peers(self, connected: set[str]) -> None:
        """Departed peers' datagram addresses go ``UDP_FORGET_S`` after they left (no answers to them)."""
        now = time.monotonic()
        for p in connected:
            self._udp_heard[p] = now
        gone = [p for p, t in self._udp_heard.items() if p not in connected and now - t > UDP_FORGET_S]
        for p in gone:
            del self._udp_heard[p]
        if any(p in self._udp_peers for p in gone):
            self._udp_peers = {p: a for p, a in self._udp_peers.items() if p not in gone}

    def _sync_answer(self, with_entries: bool = True) -> bytes:
        """Peer exchange (sealed: only fleet members can steer our dialling), then fresh entries."""
        known = [a for pid, addrs in self._px_book.items() if pid in self._peers for a in addrs[:1]]
        parts = [self._seal_addrs([*self._own_addrs(), *known], self.peer_id)]
        entries = self.fresh_entries(self.config.sync_limit) if self.fresh_entries and with_entries else []
        by_scope: dict[str, list[Announcement]] = defaultdict(list)
        for e in entries:
            by_scope[e.scope].append(Announcement.of(e, self.peer_id))
        for scope, anns in by_scope.items():
            for i in range(0, len(anns), 200):
                parts.append(encode_batch(self.keys, self.peer_id, scope, anns[i : i + 200]))
        return frame(parts)

    async def _catch_up(self, peer: str, op: str = SYNC) -> None:
        """Exchange peers with a connected peer, and (SYNC) take its fresh entries: a node that was down
        misses no gossip, and a node that joined through one bootstrap peer learns the rest of the fleet."""
        import trio
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        with trio.move_on_after(10):
            try:
                stream = await self._host.new_stream(ID.from_base58(peer), [TProtocol(FETCH_PROTOCOL)])
                conn_ip = _remote_ip(stream)
                try:
                    await stream.write(
                        encode_sync_request(op, self._seal_addrs(self._own_addrs(), self.peer_id))
                    )
                    data = await _read_all(stream, MAX_BODY)
                finally:
                    with contextlib.suppress(Exception):
                        await stream.close()
            except Exception as exc:
                log.debug("catch-up from %s failed: %s", peer, exc)
                return
            parts = unframe(data)
            if parts:
                try:
                    addrs = self._open_addrs(parts[0], peer)
                    self._px.update(
                        a for a in self._dialable(addrs, peer, conn_ip) if not a.endswith(self.peer_id)
                    )
                    self._prove(peer)
                except (SealError, ValueError):
                    self.stats.rejected += 1
                    return
            for part in parts[1:]:
                self._deliver(part, peer)

    async def _connect(self, addr: str) -> bool:
        import trio

        try:
            info = parse_multiaddr(addr)
        except ValueError:
            return False
        if str(info.peer_id.pretty()) == self.peer_id:
            return False
        with trio.move_on_after(5):
            try:
                await self._host.connect(info)
                return True
            except Exception as exc:
                log.debug("could not connect to %s: %s", addr, exc)
        return False

    async def _discovery_loop(self) -> None:
        """Bootstrap peers and the shared registry; lost peers are retried with exponential backoff."""
        import trio

        retry_at: dict[str, float] = {}
        failures: dict[str, int] = {}
        registry = PeerRegistry(self.config.registry) if self.config.registry else None
        last_register = 0.0
        while True:
            now = time.monotonic()
            if registry is not None and now - last_register > 60:
                with contextlib.suppress(OSError):
                    registry.register(self.peer_id, self.addrs)
                last_register = now
            wanted = list(self.config.bootstrap)
            if len(self._peers) < PX_TARGET:  # a denser overlay: gossipsub meshes need more than a star
                wanted += sorted(self._px)
            if registry is not None:
                with contextlib.suppress(OSError):
                    wanted += [a for p in registry.active() if p.peer_id != self.peer_id for a in p.addrs]
            for addr in dict.fromkeys(wanted):
                peer = addr.rsplit("/p2p/", 1)[-1]
                if peer in self._peers or now < retry_at.get(addr, 0.0):
                    continue
                if await self._connect(addr):
                    failures.pop(addr, None)
                else:
                    failures[addr] = failures.get(addr, 0) + 1
                    retry_at[addr] = time.monotonic() + REDIAL.delay(failures[addr])
            await trio.sleep(min(1.0, self.config.discover_every) if len(self._peers) == 0 else 1.0)

    async def _peer_watch(self) -> None:
        import trio

        next_px = 0.0
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    now = {p.pretty() for p in self._host.get_connected_peers()}
                except Exception:  # the network is shutting down
                    now = set()
                for peer in now - self._peers:
                    nursery.start_soon(self._catch_up, peer)
                    nursery.start_soon(self._open_lease_line, peer)
                self._peers = now
                self._forget_udp_peers(now)
                if now and len(now) < PX_TARGET and time.monotonic() >= next_px:
                    nursery.start_soon(self._catch_up, random.choice(sorted(now)), PX)
                    next_px = time.monotonic() + 2.0
                await trio.sleep(0.25)


async def _read_all(stream: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            chunk = await stream.read(65536)
        except Exception:  # StreamEOF / reset after the peer closed: what we have is the answer
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise ValueError("peer sent more than the size limit")
    return b"".join(chunks)


async def _read_line(stream: Any, limit: int) -> bytes:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.read(4096)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError("request too large")
    return buf.split(b"\n", 1)[0]


def _remote_ip(stream: Any) -> str | None:
    """The IP a libp2p stream's connection comes from (None when the transport does not say)."""
    try:
        got = stream.get_remote_address()
    except Exception:
        return None
    return str(got[0]) if got else None


def _udp_socket(host: str, port: int) -> socket.socket | None:
    """The lease-datagram socket: the libp2p listen port's number over UDP when free, else any port
    (peers learn it by peer exchange); None when UDP cannot be bound (every question takes the line)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for p in (port, 0):
        try:
            sock.bind((host, p))
            sock.setblocking(False)
            return sock
        except OSError:
            continue
    sock.close()
    return None
