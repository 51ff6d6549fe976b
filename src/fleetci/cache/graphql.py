"""GraphQL query caching for ``POST /graphql`` (issue 20): queries only, never mutations.

GitHub's GraphQL API has its own budget (5,000 points an hour per credential, ``X-RateLimit-Resource:
graphql``) and no ETags, so a fleet running gh spends it once per runner. A body is parsed with graphql-core
(GraphQL.js's port, a core dependency: the proxy needs it on every request to /graphql), and only a
document whose operations are all queries is cached. Everything else goes upstream untouched, as before:
mutations and subscriptions, anything graphql-core cannot parse (or fails on in any way), batched (JSON
array) bodies, variables that are not a JSON object, JSON naming a key twice, bodies over
:data:`MAX_QUERY_BYTES` (never parsed), documents whose top-level fragments nest deeper than
:data:`MAX_FRAGMENT_DEPTH` or hold more than :data:`MAX_SELECTIONS` top-level selections, and anything
sent to the GraphQL path that is not a POST or carries a query string.

The work per body is bounded, since it runs on the proxy's event loop: at most 16 KiB is analysed (gh's
bodies are about 1 KiB), the walk is iterative, and every verdict, "pass through" included, is
remembered by the body's hash (:data:`PLAN_ENTRIES`), so a hostile body costs its analysis once.

The key is the same credential partition as REST (``policy.request_credential`` -> ``scope_of``, or the
declared shared scope) + the normalised document (graphql-core ``print_ast``, so whitespace, commas and
comments do not matter) + operation name + variables as canonical JSON + the headers that change the
answer (``Accept`` previews, ``GraphQL-Features``). Fresh windows come from the top-level fields of the
operation (:data:`DEFAULT_RULES`, before them ``cache.graphql_ttl``): the shortest window among them wins,
and a query asking for ``rateLimit`` is never cached. Entries are ordinary :class:`~fleetci.cache.store.Entry`
rows, so they ride the store, peer-to-peer sharing and sealing exactly like REST entries. Only complete
answers are stored: status 200 with ``data`` and no ``errors`` (GitHub reports NOT_FOUND, RATE_LIMITED and
partial failures inside a 200).

The budget is tracked per credential under its own rate-limit scope (``<scope>/graphql``), so an exhausted
GraphQL budget serves stale GraphQL entries and blocks GraphQL calls, never REST ones (and the reverse).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from fleetci.cache.engine import CacheEngine, Outcome, Prepared, ProxyResponse, UpstreamCall
from fleetci.cache.policy import (
    ANONYMOUS_SCOPE,
    canonical_accept,
    scope_of,
    shared_scope_of,
    wants_revalidation,
)
from fleetci.cache.settings import TTLRule
from fleetci.http import JSONTooDeep, StreamedBody, loads_strict

GRAPHQL_PATH = "/graphql"
# Larger bodies stream upstream untouched, never parsed (up to cache.max_body_bytes): gh's are ~1 KiB,
# and analysing a large document would hold the event loop (every client of a shared proxy) for it.
MAX_QUERY_BYTES = 16 * 1024
MAX_TOKENS = 5_000  # graphql-core stops parsing past this many tokens (gh's: ~300): it passes through
MAX_VARIABLE_DEPTH = 32
INLINE_ANALYSIS = 2 * 1024  # larger documents are analysed in a worker thread (gh's: about 1 KiB)
MAX_FRAGMENT_DEPTH = 32  # fragments (spread or inline) nested above the top-level fields
MAX_SELECTIONS = 2_000  # top-level selections visited, through all fragments
# Memos, bounded in bytes as well as entries (twenty proxies may share a box): parsed documents by query
# text (<= 16 KiB each, 256 of them), and verdicts by the hash of the body and the key headers (2048 of
# them, "pass through" included), so a repeated body costs a hash and a dict lookup.
MEMO_ENTRIES = 256
PLAN_ENTRIES = 2048
LIMIT_SUFFIX = "/graphql"  # the rate-limit scope of a credential's GraphQL budget

# Top-level fields (regular expressions, matched whole) -> fresh window. Short: GraphQL answers carry no
# validators, so an entry cannot be revalidated for free the way a REST one can.
DEFAULT_RULES: tuple[TTLRule, ...] = (
    TTLRule(r"rateLimit", 0, "rate-limit"),
    TTLRule(r"viewer", 300, "viewer"),
    TTLRule(r"(user|organization)", 300, "account"),
    TTLRule(r"search", 30, "search"),
    TTLRule(r"repository", 60, "repository"),
)
# Request headers that change a GraphQL answer, besides the credential (part of the key).
KEY_HEADERS = ("graphql-features", "x-github-next-global-id")


_UNKNOWN = object()


@dataclass(frozen=True)
class Operation:
    """What the cache needs of a parsed query document."""

    document: str  # print_ast of the whole document
    fields: tuple[str, ...]  # top-level fields of the operation that runs


@dataclass(frozen=True)
class FieldPolicy:
    """Ordered rules on top-level field names: user rules first, then :data:`DEFAULT_RULES`."""

    rules: tuple[tuple[re.Pattern[str], float, str], ...]
    default_ttl: float

    @classmethod
    def build(cls, user_rules: Sequence[TTLRule], default_ttl: float) -> FieldPolicy:
        compiled = tuple((re.compile(r.pattern), r.seconds, r.name) for r in (*user_rules, *DEFAULT_RULES))
        return cls(compiled, default_ttl)

    def classify(self, fields: Sequence[str]) -> tuple[str, float]:
        """The shortest window over the fields (introspection ``__…`` fields take the default)."""
        best: tuple[str, float] | None = None
        for name in fields or ("",):
            found = ("default", self.default_ttl)
            for pattern, seconds, rule in self.rules:
                if pattern.fullmatch(name):
                    found = (rule, seconds)
                    break
            if best is None or found[1] < best[1]:
                best = found
        assert best is not None
        return best


def analyse(query: str, operation_name: str | None) -> Operation | None:
    """The operation a query document runs, or None when it must pass through (not parsable, holds a
    mutation or subscription, ambiguous operation, too many tokens or too deeply nested)."""
    try:
        return _analyse(query, operation_name)
    except Exception:  # graphql-core parses untrusted text: whatever it raises, the body passes through
        return None


def _analyse(query: str, operation_name: str | None) -> Operation | None:
    from graphql import GraphQLError, parse, print_ast
    from graphql.language import (
        FieldNode,
        FragmentDefinitionNode,
        FragmentSpreadNode,
        InlineFragmentNode,
        OperationDefinitionNode,
        OperationType,
        SelectionNode,
    )

    try:
        doc = parse(query, no_location=True, max_tokens=MAX_TOKENS)
    except (GraphQLError, RecursionError):
        return None
    ops: list[OperationDefinitionNode] = []
    fragments: dict[str, FragmentDefinitionNode] = {}
    for d in doc.definitions:
        if isinstance(d, OperationDefinitionNode):
            if d.operation != OperationType.QUERY:
                return None  # a document holding a mutation is never cached, whichever operation runs
            ops.append(d)
        elif isinstance(d, FragmentDefinitionNode):
            fragments[d.name.value] = d
        else:
            return None  # type-system definitions: GitHub refuses them, let it say so
    named = [o for o in ops if o.name is not None and o.name.value == operation_name]
    if operation_name:
        if len(named) != 1:
            return None
        op = named[0]
    elif len(ops) == 1:
        op = ops[0]
    else:
        return None
    # The top-level fields, depth first, without recursion: a chain of fragments spreading the next one
    # is as deep as the document is long (review A1), so depth and visits are bounded.
    fields: list[str] = []
    seen: set[str] = set()
    stack: list[Iterator[SelectionNode]] = [iter(op.selection_set.selections)]
    visited = 0
    while stack:
        s = next(stack[-1], None)
        if s is None:
            stack.pop()
            continue
        visited += 1
        if visited > MAX_SELECTIONS:
            return None
        if isinstance(s, FieldNode):
            fields.append(s.name.value)
        elif isinstance(s, InlineFragmentNode):
            stack.append(iter(s.selection_set.selections))
        elif isinstance(s, FragmentSpreadNode) and s.name.value not in seen:
            seen.add(s.name.value)
            frag = fragments.get(s.name.value)
            if frag is not None:
                stack.append(iter(frag.selection_set.selections))
        if len(stack) > MAX_FRAGMENT_DEPTH:
            return None
    return Operation(print_ast(doc), tuple(dict.fromkeys(fields)))


@dataclass
class GraphQLCounters:
    requests: int = 0
    hits: int = 0
    peer_hits: int = 0
    shared_hits: int = 0
    misses: int = 0
    coalesced: int = 0
    stale_served: int = 0
    bypassed: int = 0
    upstream_requests: int = 0

    def count(self, outcome: str) -> None:
        name = {
            Outcome.HIT: "hits",
            Outcome.PEER: "peer_hits",
            Outcome.SHARED: "shared_hits",
            Outcome.MISS: "misses",
            Outcome.COALESCED: "coalesced",
            Outcome.STALE: "stale_served",
            Outcome.BYPASS: "bypassed",
            Outcome.REVALIDATED: "misses",  # never happens: GraphQL answers have no validators
            Outcome.REFUSED: "bypassed",
        }[outcome]
        setattr(self, name, getattr(self, name) + 1)


def _plan_key(raw: bytes, lower: dict[str, str]) -> bytes:
    """The body and the request headers that go into an entry's key, hashed (the verdict memo's key)."""
    h = hashlib.sha256(raw)
    for name in ("authorization", "accept", *KEY_HEADERS):
        value = lower.get(name)
        h.update(b"\x01" if value is None else b"\x00" + value.encode("utf-8", "surrogatepass"))
    return h.digest()


def _read_body(raw: bytes) -> tuple[str, dict[str, object] | None, str | None] | None:
    """(query, variables, operationName) of a body we may cache, or None: pass it through."""
    try:
        # Duplicate keys: we would read the last "query", GitHub perhaps the first (review A3).
        payload = loads_strict(raw, max_depth=MAX_VARIABLE_DEPTH, unique_keys=True)
    except (ValueError, UnicodeDecodeError, JSONTooDeep):
        return None
    if not isinstance(payload, dict) or set(payload) - {"query", "variables", "operationName"}:
        return None  # batched, or keys we do not know (persisted queries, extensions): untouched
    query, variables, name = payload.get("query"), payload.get("variables"), payload.get("operationName")
    if not isinstance(query, str) or not (variables is None or isinstance(variables, dict)):
        return None
    if not (name is None or isinstance(name, str)):
        return None
    return query, variables, name


def _stored_answer(status: int, headers: Mapping[str, str], body: bytes) -> bool:
    """A complete answer: 200, JSON, ``data`` and no ``errors`` (GitHub reports most failures in a 200)."""
    if status != 200 or "no-store" in headers.get("cache-control", "").lower():
        return False
    try:
        parsed = loads_strict(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and parsed.get("data") is not None and not parsed.get("errors")


class GraphQLCache:
    """The engine's GraphQL hook (:class:`fleetci.cache.engine.GraphQLHook`)."""

    def __init__(self, engine: CacheEngine) -> None:
        self.engine = engine
        settings = engine.settings
        self.policy = FieldPolicy.build(settings.graphql_ttl_rules, settings.graphql_default_ttl)
        self.stats = GraphQLCounters()
        self._memo: OrderedDict[tuple[str, str | None], Operation | None] = OrderedDict()
        self._plans: OrderedDict[bytes, Prepared | None] = OrderedDict()
        base = engine.upstream.base_path
        # github.com: /graphql; GHES: the REST base is /api/v3 and GraphQL lives at /api/graphql.
        self._paths = {GRAPHQL_PATH, base + GRAPHQL_PATH}
        # Where GraphQL is upstream: relative to the base URL, or on GHES /api/graphql from the origin.
        self._upstream_path, self._from_origin = GRAPHQL_PATH, False
        if base.endswith("/v3"):
            self._upstream_path, self._from_origin = base[: -len("/v3")] + GRAPHQL_PATH, True
            self._paths.add(self._upstream_path)

    def is_endpoint(self, target: str) -> bool:
        path = urlsplit(target).path
        return (path.rstrip("/") or "/") in self._paths

    def counters(self) -> dict[str, int]:
        s = self.stats
        return {f"graphql_{k}": getattr(s, k) for k in s.__dataclass_fields__}

    def _operation(self, query: str, operation_name: str | None) -> Operation | None:
        key = (query, operation_name)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        op = analyse(query, operation_name)  # bodies are at most MAX_QUERY_BYTES: so is the query
        self._memo[key] = op
        while len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)
        return op

    def plan(self, raw: bytes, lower: dict[str, str]) -> Prepared | None:
        """Where a body's answer lives in the cache and for how long; None: pass it through.

        Remembered by a hash of the body and the headers in the key, "pass through" too, so a repeated
        body costs a hash and a dict lookup instead of a JSON parse and a document analysis (fleets
        repeat the same bodies, and a hostile body is analysed once, not once per request)."""
        if len(raw) > MAX_QUERY_BYTES:
            return None  # never parsed (handle() streams these upstream before getting here)
        memo_key = _plan_key(raw, lower)
        hit = self._plans.get(memo_key, _UNKNOWN)
        if hit is not _UNKNOWN:
            self._plans.move_to_end(memo_key)
            return hit  # type: ignore[return-value]
        plan = self._plan(raw, lower)
        self._plans[memo_key] = plan
        while len(self._plans) > PLAN_ENTRIES:
            self._plans.popitem(last=False)
        return plan

    async def plan_off_loop(self, raw: bytes, lower: dict[str, str]) -> Prepared | None:
        """:meth:`plan`, with a document over :data:`INLINE_ANALYSIS` bytes not yet seen analysed in a
        worker thread, so the event loop keeps serving the proxy's other clients meanwhile."""
        large = len(raw) > INLINE_ANALYSIS and _plan_key(raw, lower) not in self._plans
        read = _read_body(raw) if large else None
        if read is not None:
            query, _, name = read
            key = (query, name or None)
            if len(query) > INLINE_ANALYSIS and key not in self._memo:
                op = await asyncio.to_thread(analyse, query, name or None)
                self._memo[key] = op
                while len(self._memo) > MEMO_ENTRIES:
                    self._memo.popitem(last=False)
        return self.plan(raw, lower)

    def _plan(self, raw: bytes, lower: dict[str, str]) -> Prepared | None:
        read = _read_body(raw)
        if read is None:
            return None
        query, variables, name = read
        op = self._operation(query, name or None)
        if op is None:
            return None
        ttl_class, ttl = self.policy.classify(op.fields)
        credential = lower.get("authorization")
        token_scope = scope_of(credential)
        scope = token_scope
        if self.engine.settings.shared_scope and token_scope != ANONYMOUS_SCOPE:
            scope = shared_scope_of(self.engine.settings.shared_scope)
        h = hashlib.sha256()
        for part in (
            scope,
            "graphql",
            op.document,
            name or "",
            json.dumps(variables or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
            canonical_accept(lower.get("accept", "")),
            *(lower.get(k, "").strip().lower() for k in KEY_HEADERS),
        ):
            h.update(part.encode("utf-8", "surrogatepass") + b"\x00")
        key = h.hexdigest()
        # The entry's target names the operation, never the variables (it is shown by `cache stats`).
        target = f"{GRAPHQL_PATH}#{name or 'query'}:{','.join(op.fields)[:200]}:{key[:12]}"
        limit_scope = token_scope + LIMIT_SUFFIX
        return Prepared(scope, target, key, f"graphql-{ttl_class}", ttl, limit_scope, credential)

    async def handle(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        lower: dict[str, str],
        body: bytes | StreamedBody | None,
    ) -> ProxyResponse:
        """A request to the GraphQL path: a POSTed query is cached, anything else goes upstream as is."""
        engine = self.engine
        self.stats.requests += 1
        limit = scope_of(lower.get("authorization")) + LIMIT_SUFFIX
        query_string = urlsplit(target).query
        if method != "POST" or query_string:
            # GET /graphql, or ?query=/?variables= beside the body: GitHub may read what the key would
            # not hold, and a GET must not land in the REST cache (review A2).
            path = self._upstream_path + (f"?{query_string}" if query_string else "")
            return await self._passthrough(method, path, headers, lower, body, limit)
        raw, rest = await _buffer(body, MAX_QUERY_BYTES)
        prep = await self.plan_off_loop(raw, lower) if rest is None else None
        if prep is None or prep.ttl <= 0:
            forward: bytes | StreamedBody | None = raw if rest is None else rest
            return await self._passthrough("POST", self._upstream_path, headers, lower, forward, limit)
        call = UpstreamCall(
            "POST",
            self._upstream_path,
            raw,  # the client's body as it came (its credential replaced by the one keyed on)
            _stored_answer,
            from_origin=self._from_origin,
            charged_as=GRAPHQL_PATH,
            sent=self._sent,
        )
        resp = await engine._serve(prep, headers, wants_revalidation(lower), call)
        self.stats.count(resp.outcome)
        return resp

    def _sent(self) -> None:
        self.stats.upstream_requests += 1

    async def _passthrough(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]],
        lower: dict[str, str],
        body: bytes | StreamedBody | None,
        limit_scope: str,
    ) -> ProxyResponse:
        resp = await self.engine._passthrough(
            method, path, headers, lower, body, limit_scope, self._from_origin
        )
        if not any(k == "X-Fleetci-Blocked" for k, _ in resp.headers):  # else GitHub was not called
            self.stats.upstream_requests += 1
        self.stats.count(Outcome.BYPASS)
        return resp


async def _buffer(body: bytes | StreamedBody | None, limit: int) -> tuple[bytes, StreamedBody | None]:
    """The whole body when it fits in ``limit`` bytes; else (b"", a stream that replays what was read
    and goes on with the rest, under the body's own cap), so a large body goes upstream untouched."""
    if body is None:
        return b"", None
    if isinstance(body, bytes):
        if len(body) <= limit:
            return body, None
        return b"", StreamedBody(_chain([body], _empty()), len(body), len(body))
    if body.length is not None and body.length > limit:
        return b"", body
    limit = min(limit, body.limit)
    parts: list[bytes] = []
    size = 0
    raw = body.chunks.__aiter__()  # counted and capped by whichever StreamedBody forwards it
    async for chunk in raw:
        parts.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"", StreamedBody(_chain(parts, raw), body.limit, body.length)
    return b"".join(parts), None


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


async def _chain(head: list[bytes], tail: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in head:
        yield chunk
    async for chunk in tail:
        yield chunk


def install(engine: CacheEngine) -> GraphQLCache:
    """Give a proxy's engine GraphQL query caching (``fleetci cache serve`` does, in ``make_app``)."""
    if isinstance(engine.graphql, GraphQLCache):
        return engine.graphql
    cache = GraphQLCache(engine)
    engine.graphql = cache
    return cache
