"""py-libp2p settings and small patches that keep gossip fast under bursts.

Profiling five nodes that each publish 50 claims/s showed latency climbing to seconds while the CPU went
to per-message overhead, not to our payloads:

* every pubsub RPC carries the sender's signed peer record, and the receiver verifies it (ed25519) again
  for every RPC, although the record only changes when the sender's addresses do. Verified records are
  remembered for a minute, keyed by their exact bytes and sender;
* yamux answers every read with a WINDOW_UPDATE frame (``PY_YAMUX_RELEASE_ON_READ``, one extra write per
  message); go-yamux's half-window hysteresis is enough;
* the outbound and subscription queues (32 deep) drop silently; they are deepened;
* gossipsub's equivocation check kept whole messages (bodies included) by the thousand: it keeps a
  fingerprint instead (:func:`fingerprint`, used by the node's router), bounded by :func:`bound`.

Everything here is idempotent and only touches py-libp2p module attributes that exist in 0.8.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

RECORD_TTL_S = 60.0
RECORDS_KEPT = 4096
QUEUE_DEPTH = 4096
EQUIVOCATION_KEPT = 4096  # message IDs whose fingerprint is kept (upstream: 500-1000 whole messages)

_applied = False


def _remembering(consume: Callable[[Any, Any, Any], bool]) -> Callable[[Any, Any, Any], bool]:
    verified: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()

    @functools.wraps(consume)
    def maybe_consume(msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (bytes(msg.senderRecord), peer_id.to_bytes())
        now = time.monotonic()
        seen = verified.get(key)
        if seen is not None and now - seen < RECORD_TTL_S:
            return True
        ok = consume(msg, host, peer_id)
        if ok:
            verified[key] = now
            verified.move_to_end(key)
            while len(verified) > RECORDS_KEPT:
                verified.popitem(last=False)
        return ok

    return maybe_consume


def fingerprint(msg: Any) -> bytes:
    """What equivocation compares (data and topics), in 32 bytes."""
    h = hashlib.sha256(msg.data)
    for topic in msg.topicIDs:
        h.update(b"\0" + topic.encode())
    return h.digest()


def bound(seen: dict[bytes, Any], kept: int = EQUIVOCATION_KEPT) -> None:
    """Drop the oldest message IDs (dicts keep insertion order) once more than ``kept`` are held."""
    excess = len(seen) - kept
    if excess > 0:
        for key in list(itertools.islice(seen, excess)):
            del seen[key]


def apply() -> None:
    """Tune py-libp2p once per process, before the host starts."""
    global _applied
    if _applied:
        return
    from libp2p.pubsub import gossipsub, pubsub, rpc_queue, utils

    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    consume = _remembering(utils.maybe_consume_signed_record)
    for module in (pubsub, gossipsub):
        if getattr(module, "maybe_consume_signed_record", None) is utils.maybe_consume_signed_record:
            setattr(module, "maybe_consume_signed_record", consume)  # noqa: B010 - patched by name
    pubsub.SUBSCRIPTION_CHANNEL_SIZE = QUEUE_DEPTH
    if getattr(pubsub, "RpcQueue", None) is rpc_queue.RpcQueue:
        setattr(pubsub, "RpcQueue", functools.partial(rpc_queue.RpcQueue, max_size=QUEUE_DEPTH))  # noqa: B010
    _applied = True
