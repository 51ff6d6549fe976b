"""Wire format of announcements (gossip) and fetches (request/response).

Gossip message = ``header-json \\n sealed(batch-json)`` with the header as AAD. The header carries the
protocol version, the announcing peer and the scope id (a salted hash), so a receiver can pick the
scope key; everything else, including the URL, headers and any inline body, is sealed. A header with
``"m": "claim"`` carries claims instead: "I am fetching these keys from GitHub now" (or, released, "I
did not get them"), which lets the rest of the fleet wait for one upstream call instead of making their
own. A header with ``"m": "inv"`` carries invalidations: a proxy received a GitHub webhook, and the
targets it names (prefixes and exact targets, in every scope) must revalidate everywhere; it is sealed
under a fleet-wide pseudo-scope, since it concerns every scope and holds no response data.

:class:`Announcement` and :class:`Claim` are the cache's records (``fleetci.cache.peering``); this module
only puts them on the wire and takes them off it.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

from fleetci.cache.peering import INLINE_MAX as INLINE_MAX
from fleetci.cache.peering import LEASE_FRESH, LEASE_GRANTED, LEASE_WAIT
from fleetci.cache.peering import Announcement as Announcement
from fleetci.cache.peering import Claim as Claim
from fleetci.p2p.crypto import FleetKeys, SealError

VERSION = 1
FETCH_PROTOCOL = "/fleetci/cache/1.0.0"


class MessageError(Exception):
    """A message that is not ours, or not well formed."""


def announcement_json(ann: Announcement) -> dict[str, Any]:
    """One announcement on the wire (short keys: a batch carries hundreds)."""
    d: dict[str, Any] = {
        "k": ann.key,
        "t": ann.target,
        "c": ann.cid,
        "e": ann.etag,
        "l": ann.last_modified,
        "s": ann.status,
        "h": ann.headers,
        "a": ann.stored_at,
        "x": ann.fresh_until,
        "n": ann.size,
    }
    if ann.body is not None:
        d["b"] = base64.b64encode(ann.body).decode()
    return d


def announcement_from_json(d: dict[str, Any], scope: str, peer: str) -> Announcement:
    try:
        body = base64.b64decode(d["b"]) if "b" in d else None
        return Announcement(
            key=str(d["k"]),
            scope=scope,
            target=str(d["t"]),
            cid=str(d["c"]),
            etag=d.get("e"),
            last_modified=d.get("l"),
            status=int(d["s"]),
            headers=tuple((str(k), str(v)) for k, v in d["h"]),
            stored_at=float(d["a"]),
            fresh_until=float(d["x"]),
            size=int(d["n"]),
            peer=peer,
            body=body,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise MessageError(f"malformed announcement: {exc}") from exc


ANNOUNCE = "ann"
CLAIM = "claim"
INVALIDATE = "inv"
INVALIDATION_SCOPE = "fleet-invalidation"  # not a token scope: every node with the secret opens it
MAX_INVALIDATION_TARGETS = 64  # per list; a webhook names a handful
MAX_TARGET_CHARS = 512
Invalidation = tuple[tuple[str, ...], tuple[str, ...]]  # (prefixes, exact targets)


@dataclass(frozen=True)
class Gossip:
    """One opened gossip message: announcements or claims, from ``peer``."""

    peer: str
    scope: str
    announcements: list[Announcement]
    claims: list[Claim]
    invalidations: list[Invalidation] = field(default_factory=list)


def _seal_message(keys: FleetKeys, peer: str, scope: str, kind: str, items: list[Any]) -> bytes:
    h: dict[str, Any] = {"v": VERSION, "p": peer, "s": scope}
    if kind != ANNOUNCE:
        h["m"] = kind
    header = json.dumps(h, separators=(",", ":")).encode()
    payload = json.dumps(items, separators=(",", ":")).encode()
    return header + b"\n" + keys.seal(scope, payload, header)


def encode_batch(keys: FleetKeys, peer: str, scope: str, anns: list[Announcement]) -> bytes:
    return _seal_message(keys, peer, scope, ANNOUNCE, [announcement_json(a) for a in anns])


def encode_claims(keys: FleetKeys, peer: str, scope: str, claims: list[tuple[str, bool]]) -> bytes:
    """``claims``: (key, release) pairs of one scope."""
    now = round(time.time(), 4)
    return _seal_message(keys, peer, scope, CLAIM, [[k, 1 if r else 0, now] for k, r in claims])


def encode_invalidation(
    keys: FleetKeys, peer: str, prefixes: tuple[str, ...], exact: tuple[str, ...]
) -> bytes:
    now = round(time.time(), 4)
    return _seal_message(keys, peer, INVALIDATION_SCOPE, INVALIDATE, [[list(prefixes), list(exact), now]])


def _targets(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_INVALIDATION_TARGETS
        or not all(isinstance(t, str) and t.startswith("/") and len(t) <= MAX_TARGET_CHARS for t in value)
    ):
        raise MessageError("malformed invalidation targets")
    return tuple(value)


def decode_message(keys: FleetKeys, data: bytes) -> Gossip:
    """Open one gossip message; raises SealError / MessageError for anything not sealed by the fleet."""
    header, sep, sealed = data.partition(b"\n")
    if not sep:
        raise MessageError("no header")
    try:
        h = json.loads(header)
        if h.get("v") != VERSION:
            raise MessageError(f"unsupported version {h.get('v')!r}")
        peer, scope, kind = str(h["p"]), str(h["s"]), str(h.get("m", ANNOUNCE))
    except (ValueError, KeyError, AttributeError) as exc:
        raise MessageError(f"bad header: {exc}") from exc
    items = json.loads(keys.open(scope, sealed, header))
    if not isinstance(items, list):
        raise MessageError("message is not a list")
    if kind == ANNOUNCE:
        return Gossip(peer, scope, [announcement_from_json(d, scope, peer) for d in items], [])
    if kind == CLAIM:
        try:
            claims = [Claim(str(k), scope, peer, bool(r), float(t)) for k, r, t in items]
        except (TypeError, ValueError) as exc:
            raise MessageError(f"malformed claim: {exc}") from exc
        return Gossip(peer, scope, [], claims)
    if kind == INVALIDATE and scope == INVALIDATION_SCOPE:
        try:
            invs = [(_targets(p), _targets(e)) for p, e, _t in items]
        except (TypeError, ValueError) as exc:
            raise MessageError(f"malformed invalidation: {exc}") from exc
        return Gossip(peer, scope, [], [], invs)
    raise MessageError(f"unknown message kind {kind!r}")


SYNC = "sync"  # op: peer exchange + what you hold that is still fresh (a peer that (re)joins catches up)
PX = "px"  # op: peer exchange only


def encode_fetch_request(key: str, scope: str) -> bytes:
    return json.dumps({"v": VERSION, "k": key, "s": scope}, separators=(",", ":")).encode() + b"\n"


def encode_sync_request(op: str, sealed_addrs: bytes) -> bytes:
    """``op`` is SYNC or PX; ``sealed_addrs`` are the caller's own listen addresses, sealed for the fleet."""
    me = base64.b64encode(sealed_addrs).decode()
    return json.dumps({"v": VERSION, "op": op, "me": me}, separators=(",", ":")).encode() + b"\n"


LEASE = "lease"  # op: "may I fetch this key upstream now?", asked of the key's owner (issue 16)


LEASE_PROTOCOL = "/fleetci/lease/1.0.0"  # one long-lived stream per owner: questions and answers as lines
# The owner's answers (fleetci.cache.peering: granted / wait / granted, a fresh copy exists); anything
# else: no answer.
LEASE_ANSWERS = {b"g": LEASE_GRANTED, b"w": LEASE_WAIT, b"h": LEASE_FRESH}


def encode_lease_request(scope: str, sealed_key: bytes, rid: int | None = None) -> bytes:
    """``sealed_key``: the key, sealed for ``scope`` with the asker's peer ID as associated data;
    ``rid``: the question's number on a lease line (its answer carries it back)."""
    sealed = base64.b64encode(sealed_key).decode()
    d: dict[str, Any] = {"v": VERSION, "op": LEASE, "s": scope, "me": sealed}
    if rid is not None:
        d["i"] = rid
    return json.dumps(d, separators=(",", ":")).encode() + b"\n"


def decode_lease_request(line: bytes) -> tuple[str, bytes] | None:
    """(scope, sealed key) of a lease request; None for any other request."""
    got = decode_lease_line(line)
    return None if got is None else (got[1], got[2])


def decode_lease_line(line: bytes) -> tuple[int, str, bytes] | None:
    """(number, scope, sealed key) of a lease request (number 0 when it has none); None for another op."""
    try:
        d = json.loads(line)
        if not isinstance(d, dict) or d.get("op") != LEASE:
            return None
        rid = d.get("i", 0)
        if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 2**53:
            raise ValueError(f"request number {rid!r}")
        return rid, str(d["s"]), base64.b64decode(str(d["me"]), validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise MessageError(f"bad lease request: {exc}") from exc


def encode_lease_answer(rid: int, answer: bytes, sealed: bytes = b"") -> bytes:
    """One answer line on a lease line: ``<number> <g|w|h|0> [<sealed>]``; a "g", "w" or "h" carries the
    answer sealed by the owner (``seal_lease_answer``), a "0" (the owner could not open the question)
    nothing."""
    tail = b" " + base64.b64encode(sealed) if sealed else b""
    return b"%d %s%s\n" % (rid, answer, tail)


def decode_lease_answer(line: bytes) -> tuple[int, bytes, bytes]:
    """(number, answer, sealed answer) of an answer line; the caller opens it (``open_lease_answer``)."""
    parts = line.strip().split(b" ")
    if len(parts) not in (2, 3) or not parts[0].isdigit() or len(parts[0]) > 16:
        raise MessageError("bad lease answer")
    try:
        sealed = base64.b64decode(parts[2], validate=True) if len(parts) == 3 else b""
    except ValueError as exc:
        raise MessageError("bad lease answer") from exc
    return int(parts[0]), parts[1], sealed


LEASE_SCOPE = "fleetci-lease"  # the one fleet-wide key lease answers and datagram questions are sealed with


def _lease_answer_aad(scope: str, asker: str, owner: str, rid: int, key: str) -> bytes:
    return b"\x00".join(
        (b"lease-answer", scope.encode(), asker.encode(), owner.encode(), b"%d" % rid, key.encode())
    )


def seal_lease_answer(
    keys: FleetKeys, scope: str, asker: str, owner: str, rid: int, key: str, answer: bytes
) -> bytes:
    """The owner's answer sealed with the fleet's lease key, bound to the scope, who asked, who answered,
    the question's number and the key: only a fleet member can answer, and an answer cannot be replayed
    to another question (finding 1 of review t2). One key for every scope: a datagram's scope is chosen
    by whoever sends it, and a key derivation per scope would be theirs to ask for (review 25, 3)."""
    return keys.seal(LEASE_SCOPE, answer, _lease_answer_aad(scope, asker, owner, rid, key))


def open_lease_answer(
    keys: FleetKeys, scope: str, asker: str, owner: str, rid: int, key: str, answer: bytes, sealed: bytes
) -> str | None:
    """The owner's answer ("g", "w" or "h", ``LEASE_ANSWERS``) from a sealed answer line; None for "0";
    SealError when a "g"/"w"/"h" is not sealed by a fleet member for exactly this question."""
    if answer not in LEASE_ANSWERS:
        return None
    if keys.open(LEASE_SCOPE, sealed, _lease_answer_aad(scope, asker, owner, rid, key)) != answer:
        raise SealError("lease answer does not match its seal")
    return LEASE_ANSWERS[answer]


# Lease questions as single UDP datagrams (issue 16): the same question and sealed answer without
# libp2p's stream stack and the trio thread on either side (fleetci.p2p.datagrams).
LEASE_DATAGRAM_MAX = 1024  # a question is ~200 bytes, an answer ~60
QUESTION_ID = 12  # a question's id: the random nonce its sealed part starts with
_NAME_MAX = 128  # a peer ID (base58) is ~52 characters


def _question_aad(asker: str, owner: str) -> bytes:
    return b"\x00".join((b"lease-datagram", asker.encode(), owner.encode()))


def _scope_shape(raw: bytes) -> bool:
    """What ``scope_of`` / ``shared_scope_of`` make: hex and dashes, at most 64 characters."""
    return 0 < len(raw) <= 64 and raw.replace(b"-", b"").isalnum() and raw.isascii()


def encode_lease_datagram(
    keys: FleetKeys, scope: str, asker: str, owner: str, key: str, now: float
) -> tuple[bytes, bytes]:
    """(datagram, question id): ``q<asker> <owner>\n<sealed>``, the sealed part (the fleet's lease key,
    bound to asker and owner) holding the time it was asked (ms), the scope and the key: the scope id is
    never shown on the wire. The sealed part's random nonce is the question's id."""
    plain = b"%d %s %s" % (int(now * 1000), scope.encode(), key.encode())
    sealed = keys.seal(LEASE_SCOPE, plain, _question_aad(asker, owner))
    return b"q" + asker.encode() + b" " + owner.encode() + b"\n" + sealed, sealed[:QUESTION_ID]


def decode_lease_datagram(data: bytes) -> tuple[str, str, bytes]:
    """(asker, owner, sealed) of a question datagram; MessageError for anything else (no crypto)."""
    head, sep, sealed = data[1:].partition(b"\n")
    parts = head.split(b" ")
    if data[:1] != b"q" or not sep or len(parts) != 2 or len(sealed) <= QUESTION_ID:
        raise MessageError("not a lease question")
    if not all(0 < len(p) <= _NAME_MAX and p.isascii() and p.replace(b"-", b"").isalnum() for p in parts):
        raise MessageError("not a lease question")
    return parts[0].decode("ascii"), parts[1].decode("ascii"), sealed


def open_lease_datagram(keys: FleetKeys, asker: str, owner: str, sealed: bytes) -> tuple[float, str, str]:
    """(when it was asked, scope, key); SealError unless a fleet member sealed it for this asker and
    owner."""
    plain = keys.open(LEASE_SCOPE, sealed, _question_aad(asker, owner))
    when, sep, rest = plain.partition(b" ")
    scope, sep2, key = rest.partition(b" ")
    if not (sep and sep2) or not when.isdigit() or len(when) > 16 or not key or not _scope_shape(scope):
        raise SealError("malformed lease question")
    return int(when) / 1000, scope.decode("ascii"), key.decode("utf-8", "replace")


def question_number(qid: bytes) -> int:
    """A datagram question's id as the number its sealed answer is bound to (``seal_lease_answer``)."""
    return int.from_bytes(qid, "big")


def encode_lease_reply(qid: bytes, answer: bytes, sealed: bytes) -> bytes:
    """``a<question id><g|w|h><sealed answer>`` (``seal_lease_answer`` with ``question_number(qid)``)."""
    return b"a" + qid + answer + sealed


def decode_lease_reply(data: bytes) -> tuple[bytes, bytes, bytes]:
    """(question id, answer, sealed answer) of an answer datagram; MessageError for anything else."""
    if data[:1] != b"a" or len(data) < 2 + QUESTION_ID + 1:
        raise MessageError("not a lease answer")
    qid, answer, sealed = (
        data[1 : 1 + QUESTION_ID],
        data[1 + QUESTION_ID : 2 + QUESTION_ID],
        data[2 + QUESTION_ID :],
    )
    if answer not in LEASE_ANSWERS:
        raise MessageError("not a lease answer")
    return qid, answer, sealed


def decode_fetch_request(line: bytes) -> tuple[str, str]:
    """(key, scope) of a body request, or (SYNC|PX, base64 sealed addresses) for peer exchange."""
    try:
        d = json.loads(line)
        if d.get("op") in (SYNC, PX):
            return str(d["op"]), str(d.get("me", ""))
        return str(d["k"]), str(d["s"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MessageError(f"bad fetch request: {exc}") from exc


def frame(parts: list[bytes]) -> bytes:
    """Length-prefixed concatenation (for several sealed batches in one stream answer)."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def unframe(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i + 4 <= len(data):
        n = int.from_bytes(data[i : i + 4], "big")
        out.append(data[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def seal_body(keys: FleetKeys, scope: str, key: str, body: bytes) -> bytes:
    return keys.seal(scope, body, b"body\x00" + key.encode())


def open_body(keys: FleetKeys, scope: str, key: str, sealed: bytes) -> bytes:
    return keys.open(scope, sealed, b"body\x00" + key.encode())
