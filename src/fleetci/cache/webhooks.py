"""GitHub webhooks into the cache: push for freshness, with a pull path behind it.

A cache trades freshness for calls; a webhook says *when* something changed, so the entries it touches
can end their fresh window at once and the next read revalidates (a free 304 when nothing changed for
that reader). :class:`WebhookReceiver` serves ``POST /_fleetci/webhook``:

- ``X-Hub-Signature-256`` is checked against ``CACHE_WEBHOOK_SECRET`` in constant time; without a secret
  the endpoint refuses everything (403): an unsigned delivery is never acted on.
- The whole body is read however it is split into TCP segments, at most ``MAX_BODIES_IN_FLIGHT`` at once
  and each within ``BODY_TIMEOUT_S`` (an internet-facing ``--webhook-port`` must not let unsigned bodies
  pin memory).
- Deliveries are de-duplicated by ``X-GitHub-Delivery`` *and* by the SHA-256 of the signed body (bounded
  memory: the newest ``DEDUP_MAX`` of each): the id header is not signed, so a replay under a fresh id is
  caught by its body. ``X-GitHub-Event`` is not signed either: a body whose subject key (``workflow_job``,
  ``workflow_run``, ``check_run``…) disagrees with it is refused (:func:`event_mismatch`).
- :func:`affected_prefixes` maps an event to the targets it can change (runs, jobs, queued lists, runner
  and repository lists of that repository/organization); the engine marks them stale in every credential
  partition through an index on the target (``CacheStore.invalidate``), never a table scan.
- Unknown events are accepted (200) and counted, never errors: GitHub adds events all the time.

Webhooks get lost; a lost one costs freshness up to the entry's TTL, never correctness, because entries
still expire. :func:`reconcile_once` is the optional safety net GitHub recommends: list a hook's recent
deliveries and redeliver the failed ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from aiohttp import web

from fleetci.errors import UsageError
from fleetci.http import AsyncUpstream, UpstreamError, error_response, loads_strict, parse_id

if TYPE_CHECKING:
    from fleetci.cache.engine import CacheEngine

log = logging.getLogger("fleetci.cache")

WEBHOOK_PATH = "/_fleetci/webhook"
DEDUP_MAX = 10_000  # delivery ids remembered (GitHub redelivers within days; replays within minutes)
WEBHOOK_MAX_BODY = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB (and so do we, or lower)
MAX_EVENT_NAMES = 64  # distinct event names counted one by one; the rest count as "other"
MAX_BODIES_IN_FLIGHT = 4  # bodies read at once: memory an unsigned sender can pin is 4 x the body cap
BODY_TIMEOUT_S = 10.0  # a slot and the whole body within this (GitHub's own delivery timeout)
MAX_REDELIVERIES = 3  # per delivery guid: a receiver that keeps failing must not loop forever
_EVENT = re.compile(r"[a-z][a-z0-9_]{0,63}")
_DELIVERY = re.compile(r"[A-Za-z0-9._:-]{1,100}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")

# Events about GitHub Actions in one repository: its runs, jobs and check runs, and the runners whose busy
# flag a job flips (GitHub sends no event for runners themselves; a job picked up or finished is one).
ACTIONS_EVENTS = frozenset(
    {"workflow_job", "workflow_run", "check_run", "check_suite", "workflow_dispatch", "deployment_status"}
)
# Events that change a repository or what its lists show (pushed_at, size, visibility, names).
REPOSITORY_EVENTS = frozenset({"repository", "push", "create", "delete", "public", "fork", "star"})
# Events that change who sees what in an organization (members, teams, the installation's repositories).
ORGANIZATION_EVENTS = frozenset(
    {
        "member",
        "membership",
        "organization",
        "team",
        "team_add",
        "installation",
        "installation_repositories",
        "installation_target",
    }
)
KNOWN_EVENTS = ACTIONS_EVENTS | REPOSITORY_EVENTS | ORGANIZATION_EVENTS | {"ping", "meta"}


class WebhookStats(TypedDict):
    """``webhooks`` in ``GET /_fleetci/stats``."""

    received: int  # signed, new deliveries acted on
    duplicates: int  # deliveries whose id was seen before (redeliveries, replays)
    bad_signature: int  # refused 401: missing or wrong signature
    unknown_events: int  # accepted and counted, nothing invalidated
    invalidated: int  # cache entries whose fresh window a delivery ended
    redelivered: int  # failed deliveries the reconciliation asked GitHub to send again
    mismatched_events: int  # refused 400: X-GitHub-Event (unsigned) disagrees with the signed body
    busy: int  # refused 503: every body slot taken, or a body slower than BODY_TIMEOUT_S
    bodies_in_flight_max: int  # most bodies read at once so far (never over MAX_BODIES_IN_FLIGHT)
    events: dict[str, int]


@dataclass(frozen=True)
class Invalidation:
    """What a delivery makes stale: targets starting with one of ``prefixes`` or equal to one of ``exact``."""

    prefixes: tuple[str, ...] = ()
    exact: tuple[str, ...] = ()


def _login(obj: Any) -> str:
    value = obj.get("login") if isinstance(obj, Mapping) else None
    return value if isinstance(value, str) and _NAME.fullmatch(value) else ""


def _repo_parts(payload: Mapping[str, Any]) -> tuple[str, str]:
    """(owner, name) of the payload's repository, or ("", "") when it has none we can trust as a path."""
    repo = payload.get("repository")
    if not isinstance(repo, Mapping):
        return "", ""
    full = repo.get("full_name")
    if isinstance(full, str) and full.count("/") == 1:
        owner, name = full.split("/")
    else:
        owner, raw = _login(repo.get("owner")), repo.get("name")
        name = raw if isinstance(raw, str) else ""
    if not _NAME.fullmatch(owner) or not _NAME.fullmatch(name):
        return "", ""
    return owner, name


def _whole_repo(owner: str, name: str) -> tuple[list[str], list[str]]:
    base = f"/repos/{owner}/{name}"
    return [base + "/", base + "?"], [base]


def _repo_lists(owner: str) -> tuple[list[str], list[str]]:
    """Repository lists that may show a changed repository of ``owner`` (and every token's own list)."""
    return [f"/orgs/{owner}/repos", f"/users/{owner}/repos", "/user/repos"], []


def affected_prefixes(event: str, payload: Mapping[str, Any]) -> Invalidation:
    """The cached targets an event can change. Over-inclusive on purpose: a stale entry whose data did
    not change costs one free 304; a fresh entry whose data did change is a wrong answer for its TTL."""
    owner, name = _repo_parts(payload)
    org = _login(payload.get("organization")) or owner
    prefixes: list[str] = []
    exact: list[str] = []
    if event in ACTIONS_EVENTS and owner:
        base = f"/repos/{owner}/{name}"
        prefixes += [f"{base}/actions/", f"{base}/check-runs", f"{base}/check-suites", f"{base}/commits/"]
        if org:
            prefixes.append(f"/orgs/{org}/actions/runners")
    elif event in REPOSITORY_EVENTS and owner:
        p, e = _whole_repo(owner, name)
        prefixes += p
        exact += e
        p, e = _repo_lists(owner)
        prefixes += p
        exact += e
        changes = payload.get("changes")
        old = changes.get("repository", {}).get("name", {}).get("from") if isinstance(changes, dict) else None
        if isinstance(old, str) and _NAME.fullmatch(old):  # renamed: the old name's entries go too
            p, e = _whole_repo(owner, old)
            prefixes += p
            exact += e
    elif event in ORGANIZATION_EVENTS and org:
        prefixes += [f"/orgs/{org}/", f"/orgs/{org}?", "/user/repos", "/user/orgs", f"/users/{org}/repos"]
        exact.append(f"/orgs/{org}")
        if owner:
            p, e = _whole_repo(owner, name)
            prefixes += p
            exact += e
    elif "runner" in event and org:  # should GitHub add runner events: the runner lists
        prefixes.append(f"/orgs/{org}/actions/runners")
        if owner:
            prefixes.append(f"/repos/{owner}/{name}/actions/runners")
    return Invalidation(tuple(dict.fromkeys(prefixes)), tuple(dict.fromkeys(exact)))


# Top-level keys that name an event's subject: a body with one of them was signed as that event (or one of
# the events listed), so an unsigned X-GitHub-Event saying otherwise is a relabelled replay.
SUBJECT_KEYS: Mapping[str, frozenset[str]] = {
    "workflow_job": frozenset({"workflow_job"}),
    "workflow_run": frozenset({"workflow_run", "deployment_status"}),
    "check_run": frozenset({"check_run"}),
    "check_suite": frozenset({"check_suite"}),
    "deployment_status": frozenset({"deployment_status"}),
}


def event_mismatch(event: str, payload: Mapping[str, Any]) -> str:
    """Why ``event`` cannot be the event of ``payload`` ("" when it can). ``X-GitHub-Event`` is not
    signed; the body is: an event with a subject key must carry it, and a subject key fixes the event."""
    if event in SUBJECT_KEYS and event not in payload:
        return f"a {event} delivery without a {event!r} object: X-GitHub-Event does not match the body"
    for key, events in SUBJECT_KEYS.items():
        if key in payload and event not in events:
            return f"a body with a {key!r} object delivered as {event}: X-GitHub-Event does not match it"
    return ""


def signature(secret: str, body: bytes) -> str:
    """``X-Hub-Signature-256`` of ``body``: what GitHub sends and what the emulator signs with."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    if not secret or not header:
        return False
    return hmac.compare_digest(
        signature(secret, body).encode("ascii"), header.strip().encode("utf-8", "replace")
    )


@dataclass
class WebhookReceiver:
    """``POST /_fleetci/webhook`` for one engine (on the proxy's port, or on a listener of its own)."""

    engine: CacheEngine
    secret: str
    max_body: int = WEBHOOK_MAX_BODY
    dedup_max: int = DEDUP_MAX
    max_bodies: int = MAX_BODIES_IN_FLIGHT
    body_timeout: float = BODY_TIMEOUT_S
    _seen: OrderedDict[str, None] = field(default_factory=OrderedDict)
    _bodies: OrderedDict[str, None] = field(default_factory=OrderedDict)  # sha256 of accepted bodies
    _slots: asyncio.Semaphore | None = None
    _in_flight: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)

    def stats(self) -> WebhookStats:
        c = self.counts
        return {
            "received": c["received"],
            "duplicates": c["duplicates"],
            "bad_signature": c["bad_signature"],
            "unknown_events": c["unknown_events"],
            "invalidated": c["invalidated"],
            "redelivered": c["redelivered"],
            "mismatched_events": c["mismatched_events"],
            "busy": c["busy"],
            "bodies_in_flight_max": c["bodies_in_flight_max"],
            "events": dict(self.events),
        }

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.secret:
            return error_response(
                403, "fleetci: webhooks are off: set CACHE_WEBHOOK_SECRET to the hook's secret"
            )
        declared = request.content_length
        if declared is not None and declared > self.max_body:
            raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=declared)
        body = await self._body(request)
        if body is None:
            self.counts["busy"] += 1
            return error_response(
                503, "fleetci: too many webhook bodies in flight or one too slow; GitHub may redeliver"
            )
        if not signature_ok(self.secret, body, request.headers.get("X-Hub-Signature-256")):
            self.counts["bad_signature"] += 1
            missing = "X-Hub-Signature-256" not in request.headers
            return error_response(
                401,
                "fleetci: "
                + ("unsigned delivery refused" if missing else "webhook signature does not match"),
            )
        event = request.headers.get("X-GitHub-Event", "")
        delivery = request.headers.get("X-GitHub-Delivery", "")
        if not _EVENT.fullmatch(event) or not _DELIVERY.fullmatch(delivery):
            return error_response(
                400, "fleetci: a delivery needs X-GitHub-Event and X-GitHub-Delivery headers"
            )
        digest = hashlib.sha256(body).hexdigest()
        if delivery in self._seen or digest in self._bodies:
            # The same id (a redelivery) or the same signed body under a fresh id (a replay: the id header
            # is not signed): either way nothing new happened.
            self.counts["duplicates"] += 1
            if delivery in self._seen:
                self._seen.move_to_end(delivery)
            return web.json_response({"delivery": delivery, "duplicate": True, "invalidated": 0})
        try:
            payload = loads_strict(body, max_depth=64) if body else {}
        except ValueError as exc:
            return error_response(400, f"fleetci: the delivery is not JSON: {exc}")
        if not isinstance(payload, dict):
            return error_response(400, "fleetci: the delivery is not a JSON object")
        mismatch = event_mismatch(event, payload)
        if mismatch:
            self.counts["mismatched_events"] += 1
            return error_response(400, f"fleetci: {mismatch}")
        self._remember(delivery, digest)
        self.counts["received"] += 1
        name = event if event in self.events or len(self.events) < MAX_EVENT_NAMES else "other"
        self.events[name] += 1
        if event not in KNOWN_EVENTS and "runner" not in event:
            self.counts["unknown_events"] += 1
        scope = affected_prefixes(event, payload)
        n = self.engine.invalidate(scope.prefixes, scope.exact) if scope.prefixes or scope.exact else 0
        self.counts["invalidated"] += n
        return web.json_response({"delivery": delivery, "duplicate": False, "invalidated": n})

    async def _body(self, request: web.Request) -> bytes | None:
        """The whole body, however many TCP segments it arrives in, up to ``max_body`` (413 past it).

        At most ``max_bodies`` bodies are read at once and each within ``body_timeout`` seconds (GitHub
        itself gives up after 10 s), so unsigned bodies on an internet-facing ``--webhook-port`` pin at
        most ``max_bodies * max_body`` bytes. ``None``: no slot in time, or the body came too slowly."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_bodies)
        try:
            async with asyncio.timeout(self.body_timeout):
                async with self._slots:
                    self._in_flight += 1
                    self.counts["bodies_in_flight_max"] = max(
                        self.counts["bodies_in_flight_max"], self._in_flight
                    )
                    try:
                        return await self._read_capped(request)
                    finally:
                        self._in_flight -= 1
        except TimeoutError:
            return None

    async def _read_capped(self, request: web.Request) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.readany()
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_body:
                raise web.HTTPRequestEntityTooLarge(max_size=self.max_body, actual_size=size)
            chunks.append(chunk)

    def _remember(self, delivery: str, digest: str) -> None:
        for seen, key in ((self._seen, delivery), (self._bodies, digest)):
            seen[key] = None
            while len(seen) > self.dedup_max:
                seen.popitem(last=False)


# -- the safety net: redeliver what GitHub failed to deliver -----------------------------------------------


@dataclass(frozen=True)
class HookRef:
    """A hook whose deliveries the proxy reconciles: ``OWNER/REPO:ID`` or ``ORG:ID``."""

    owner: str
    repo: str  # "" for an organization hook
    hook_id: int

    @property
    def path(self) -> str:
        if self.repo:
            return f"/repos/{self.owner}/{self.repo}/hooks/{self.hook_id}"
        return f"/orgs/{self.owner}/hooks/{self.hook_id}"

    @classmethod
    def parse(cls, text: str) -> HookRef:
        where, sep, number = text.strip().rpartition(":")
        hook_id = parse_id(number) if sep else None
        owner, slash, repo = where.partition("/")
        if (
            hook_id is None
            or not _NAME.fullmatch(owner)
            or (slash and not _NAME.fullmatch(repo))
            or "/" in repo
        ):
            raise UsageError(f"invalid webhook hook {text!r}: expected OWNER/REPO:HOOK_ID or ORG:HOOK_ID")
        return cls(owner, repo, hook_id)


def parse_hooks(items: Iterable[str]) -> tuple[HookRef, ...]:
    return tuple(HookRef.parse(item) for item in items if item.strip())


@dataclass
class Reconciler:
    """Lists each hook's recent deliveries and redelivers those whose every attempt failed.

    A delivery counts as delivered once any attempt with its guid got a 2xx; a failed one is redelivered
    at most ``MAX_REDELIVERIES`` times by this process (the receiver may be down for good)."""

    upstream: AsyncUpstream
    hooks: tuple[HookRef, ...]
    token: str
    attempts: Counter[str] = field(default_factory=Counter)

    def _headers(self) -> list[tuple[str, str]]:
        return [
            ("Accept", "application/vnd.github+json"),
            ("X-GitHub-Api-Version", "2022-11-28"),
            ("Authorization", f"Bearer {self.token}"),
        ]

    async def once(self) -> int:
        """One pass over every hook; the number of redeliveries asked for."""
        asked = 0
        for hook in self.hooks:
            asked += await self._hook(hook)
        return asked

    async def _hook(self, hook: HookRef) -> int:
        try:
            resp = await self.upstream.request("GET", f"{hook.path}/deliveries?per_page=100", self._headers())
        except UpstreamError as exc:
            log.warning("webhook reconciliation: %s", exc)
            return 0
        if resp.status != 200:
            log.warning("webhook reconciliation: GET %s/deliveries answered %s", hook.path, resp.status)
            return 0
        try:
            items = json.loads(resp.body)
        except ValueError:
            return 0
        if not isinstance(items, list):
            return 0
        ok: set[str] = set()
        newest_failed: dict[str, int] = {}
        for item in items:
            if not isinstance(item, dict):
                continue
            guid, ident, code = item.get("guid"), item.get("id"), item.get("status_code")
            if not isinstance(guid, str) or not isinstance(ident, int) or not isinstance(code, int):
                continue
            if 200 <= code < 300:
                ok.add(guid)
            elif ident > newest_failed.get(guid, -1):
                newest_failed[guid] = ident
        asked = 0
        for guid, ident in sorted(newest_failed.items(), key=lambda kv: kv[1]):
            if guid in ok or self.attempts[guid] >= MAX_REDELIVERIES:
                continue
            self.attempts[guid] += 1
            try:
                r = await self.upstream.request(
                    "POST", f"{hook.path}/deliveries/{ident}/attempts", self._headers(), b""
                )
            except UpstreamError as exc:
                log.warning("webhook reconciliation: %s", exc)
                break
            if r.status == 202:
                asked += 1
        if len(self.attempts) > DEDUP_MAX:
            for guid in list(self.attempts)[: len(self.attempts) - DEDUP_MAX]:
                del self.attempts[guid]
        return asked
