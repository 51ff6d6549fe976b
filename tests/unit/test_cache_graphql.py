"""Issue 20: what the proxy caches of GraphQL and under which key; the emulator's point costs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetci.cache import graphql as graphql_module
from fleetci.cache.engine import CacheEngine
from fleetci.cache.graphql import MAX_QUERY_BYTES, GraphQLCache, analyse, install
from fleetci.cache.settings import TTLRule, cache_settings
from fleetci.errors import UsageError
from fleetci.testing import TOKENS
from fleetci.testing.github_graphql import GitHubError, SchemaNotFound, find_schema, query_cost
from support import RunCli

REPO_QUERY = 'query R($o: String!) { repository(owner: $o, name: "api") { name } }'


def fragment_chain(n: int) -> str:
    """Review A1: each fragment spreads the next, so the top level is as deep as the document is long."""
    chain = " ".join(f"fragment F{i} on Query{{...F{i + 1}}}" for i in range(n))
    return f"query{{...F0}} {chain} fragment F{n} on Query{{viewer{{login}}}}"


@pytest.fixture(scope="module")
def gql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphQLCache]:
    s = cache_settings(
        {"upstream": "http://127.0.0.1:9", "cache_dir": str(tmp_path_factory.mktemp("c"))}, {}, {}
    )
    engine = CacheEngine(s)
    yield install(engine)
    engine.store.close()


def body(query: str, variables: object = None, name: str | None = None) -> bytes:
    d: dict[str, object] = {"query": query}
    if variables is not None:
        d["variables"] = variables
    if name is not None:
        d["operationName"] = name
    return json.dumps(d).encode()


def auth(token: str | None) -> dict[str, str]:
    return {"authorization": f"token {token}"} if token else {}


@pytest.mark.parametrize(
    "query",
    [
        'mutation { addStar(input: {starrableId: "x"}) { clientMutationId } }',
        "subscription { viewer { login } }",
        "query A { viewer { login } } mutation B { removeStar(input: {}) { clientMutationId } }",
        "type Query { a: Int }",
        "{ viewer { ",
        "query A { viewer { login } } query B { viewer { name } }",  # which one runs? (no operationName)
        "{ a " * 5000 + "}" * 5000,  # deeper than the parser recurses
        "{ " + "a " * 30_000 + "}",  # more tokens than we parse
        fragment_chain(2000),  # 65 KB: recursed 2000 deep (RecursionError)
        fragment_chain(400),  # 12.6 KB: deeper than MAX_FRAGMENT_DEPTH
        "{ " + " ".join(f"a{i}: viewer" for i in range(2500)) + " }",  # more than MAX_SELECTIONS
    ],
)
def test_what_is_never_cached(query: str) -> None:
    assert analyse(query, None) is None


def test_queries_are_normalised_and_their_top_level_fields_found() -> None:
    a = analyse('# c\nquery Q($o:String!){repository(owner:$o,name:"x"){name},viewer{login}}', None)
    b = analyse(
        'query Q($o: String!) {\n  repository(owner: $o, name: "x") { name }\n  viewer { login }\n}', "Q"
    )
    assert a is not None and b is not None and a.document == b.document
    assert a.fields == ("repository", "viewer")
    frag = analyse(
        "fragment F on Query { viewer { login } } query { ...F ... on Query { rateLimit { cost } } }", None
    )
    assert frag is not None and frag.fields == ("viewer", "rateLimit")
    assert analyse(
        'query A { viewer { login } } query B { search(query: "x", type: ISSUE, first: 1) { issueCount } }',
        "B",
    ).fields == ("search",)  # type: ignore[union-attr]
    assert analyse("query A { viewer { login } }", "Nope") is None


def test_fresh_windows_by_top_level_field(gql: GraphQLCache) -> None:
    p = gql.policy
    assert p.classify(["viewer"]) == ("viewer", 300)
    assert p.classify(["repository", "viewer"]) == ("repository", 60)  # the shortest window wins
    assert p.classify(["viewer", "rateLimit"])[1] == 0  # never cached
    assert p.classify(["somethingElse"]) == ("default", 60.0)
    assert gql.plan(body("{ viewer { login } rateLimit { remaining } }"), auth("t")).ttl == 0  # type: ignore[union-attr]


def test_graphql_ttl_rules_come_from_the_config_file(tmp_path: Path) -> None:
    config = {
        "cache": {
            "cache_dir": str(tmp_path),
            "graphql_ttl": [{"pattern": "viewer", "seconds": 2, "name": "me"}],
        }
    }
    s = cache_settings({}, config, {"CACHE_GRAPHQL_DEFAULT_TTL": "5"})
    assert s.graphql_ttl_rules == (TTLRule("viewer", 2.0, "me"),) and s.graphql_default_ttl == 5.0
    engine = CacheEngine(s)
    try:
        g = install(engine)
        assert g.policy.classify(["viewer"]) == ("me", 2.0) and g.policy.classify(["x"]) == ("default", 5.0)
    finally:
        engine.store.close()
    with pytest.raises(UsageError, match=r"cache\.graphql_ttl\[0\]"):
        cache_settings({}, {"cache": {"graphql_ttl": [{"pattern": "(", "seconds": 1}]}}, {})
    with pytest.raises(UsageError, match=r"cache\.graphql_ttl"):
        cache_settings({}, {"cache": {"graphql_ttl": "viewer=1"}}, {})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"query": ',
        b"[]",
        json.dumps([{"query": "{ viewer { login } }"}]).encode(),
        json.dumps({"query": "{ viewer { login } }", "variables": [1]}).encode(),
        json.dumps({"query": "{ viewer { login } }", "variables": "{}"}).encode(),
        json.dumps({"query": 1}).encode(),
        json.dumps({"query": "{ viewer { login } }", "operationName": 3}).encode(),
        json.dumps({"query": "{ viewer { login } }", "extensions": {"persistedQuery": {}}}).encode(),
        b'{"query": "{ viewer { login } }", "variables": ' + b'{"a":' * 100 + b"1" + b"}" * 101,
        b'{"query": "{ viewer { login } }", "n": NaN}',
        b'{"query": "\xff"}',
        # duplicate keys: Python keeps the last, GitHub may read the first (review A3)
        b'{"query": "mutation { addStar(input: {}) { clientMutationId } }", "query": "{ viewer { login } }"}',
        b'{"query": "{ viewer { login } }", "operationName": "A", "operationName": null}',
        b'{"query": "query($a: Int) { viewer { login } }", "variables": {"a": 1, "a": 2}}',
        # valid and cacheable but over MAX_QUERY_BYTES: never parsed (review A1)
        json.dumps({"query": "{ viewer { login } }" + " " * MAX_QUERY_BYTES}).encode(),
    ],
)
def test_bodies_that_pass_through(gql: GraphQLCache, raw: bytes) -> None:
    assert gql.plan(raw, auth("t")) is None


def test_pass_through_verdicts_are_remembered_by_body_hash(gql: GraphQLCache) -> None:
    """A hostile body is analysed once, not once per request (review A1); nothing else is stored."""
    raw = body(fragment_chain(400))
    assert 8 * 1024 < len(raw) <= MAX_QUERY_BYTES
    key = graphql_module._plan_key(raw, auth("t"))
    assert gql.plan(raw, auth("t")) is None and key in gql._plans and gql._plans[key] is None
    assert graphql_module._plan_key(raw, auth("u")) != key  # the credential is part of the verdict's key


def test_large_documents_are_analysed_off_the_event_loop(
    gql: GraphQLCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review A1: a document over INLINE_ANALYSIS bytes is analysed in a worker thread, so the proxy's
    event loop keeps serving other clients; gh-sized ones stay inline (a thread hop costs more)."""
    import asyncio
    import threading

    threads: list[int] = []
    real = graphql_module.analyse

    def recording(query: str, name: str | None) -> object:
        threads.append(threading.get_ident())
        return real(query, name)

    monkeypatch.setattr(graphql_module, "analyse", recording)
    large = body("{ " + " ".join(f"a{i}: viewer {{ login }}" for i in range(150)) + " }")
    small = body("{ t1: viewer { login } }")
    assert len(large) > graphql_module.INLINE_ANALYSIS >= len(small)

    async def both() -> tuple[object, object, int]:
        return (
            await gql.plan_off_loop(large, auth("off")),
            await gql.plan_off_loop(small, auth("off")),
            threading.get_ident(),
        )

    big, little, loop_thread = asyncio.run(both())
    assert big is not None and little is not None  # both cacheable, and each analysed once
    assert len(threads) == 2 and threads[0] != loop_thread and threads[1] == loop_thread


def test_graphql_module_leaves_the_miss_path_to_the_engine() -> None:
    """Review A4: no copy of CacheEngine._fetch_upstream; graphql.py reaches into the engine only through
    _serve (with an UpstreamCall) and _passthrough."""
    import ast

    tree = ast.parse(Path(graphql_module.__file__).read_text())
    private = {
        n.attr
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
        and isinstance(n.value, ast.Name | ast.Attribute)
        and (n.value.id if isinstance(n.value, ast.Name) else n.value.attr) == "engine"
    }
    assert private <= {"_serve", "_passthrough"}, private


def test_graphql_and_ghes_paths(gql: GraphQLCache) -> None:
    assert (
        gql.is_endpoint("/graphql") and gql.is_endpoint("/graphql?x=1") and not gql.is_endpoint("/graphqlx")
    )
    s = cache_settings({"upstream": "https://ghe.example/api/v3", "cache_dir": "/tmp/unused-fleetci"}, {}, {})
    engine = CacheEngine(s, store=gql.engine.store)
    assert GraphQLCache(engine).is_endpoint("/api/graphql")


CREDENTIALS = [None, *sorted(TOKENS), "ghp_" + "x" * 36, "Bearer ghs_abc"]
QUERIES = [
    ("{ viewer { login } }", None),
    ("query { viewer { login } }", None),  # the same document, spelled otherwise
    ("{ viewer { login name } }", None),
    (REPO_QUERY, {"o": "octo-org"}),
    (REPO_QUERY.replace("{ name }", "{ name, }"), {"o": "octo-org"}),  # the same again
    (REPO_QUERY, {"o": "other"}),
]
CANONICAL = [0, 0, 2, 3, 3, 5]  # which queries are one entry


@settings(max_examples=200, deadline=None)
@given(
    a=st.tuples(st.sampled_from(CREDENTIALS), st.integers(0, len(QUERIES) - 1)),
    b=st.tuples(st.sampled_from(CREDENTIALS), st.integers(0, len(QUERIES) - 1)),
)
def test_keys_over_credentials_and_queries(
    gql: GraphQLCache, a: tuple[str | None, int], b: tuple[str | None, int]
) -> None:
    """Two requests share an entry exactly when they carry the same credential and the same query."""
    plans = []
    for cred, qi in (a, b):
        q, v = QUERIES[qi]
        headers = {"authorization": cred if cred and " " in cred else f"token {cred}"} if cred else {}
        plan = gql.plan(body(q, v), headers)
        assert plan is not None and plan.ttl > 0
        if cred:
            assert cred not in plan.target and cred not in plan.scope and cred not in plan.key
        plans.append(plan)
    same = a[0] == b[0] and CANONICAL[a[1]] == CANONICAL[b[1]]
    assert (plans[0].key == plans[1].key) == same
    assert plans[0].limit_scope.endswith("/graphql")  # GraphQL's own budget
    mutation = body('mutation { addStar(input: {starrableId: "x"}) { clientMutationId } }')
    assert gql.plan(mutation, auth(a[0])) is None


def test_shared_scope_shares_graphql_entries_like_rest(tmp_path: Path) -> None:
    s = cache_settings(
        {"upstream": "http://127.0.0.1:9", "cache_dir": str(tmp_path), "shared_scope": "fleet"}, {}, {}
    )
    engine = CacheEngine(s)
    try:
        g = install(engine)
        one, two = (g.plan(body("{ viewer { login } }"), auth(t)) for t in ("a", "b"))
        anon = g.plan(body("{ viewer { login } }"), {})
        assert one is not None and two is not None and anon is not None
        assert one.key == two.key != anon.key
        assert one.limit_scope != two.limit_scope  # budgets stay per real token
    finally:
        engine.store.close()


# -- the emulator's point costs (GitHub's documented examples) -------------------------------------------


def cost(query: str, variables: dict[str, object] | None = None) -> tuple[int, int]:
    from graphql import get_operation_ast, parse

    doc = parse(query)
    op = get_operation_ast(doc)
    assert op is not None
    return query_cost(doc, op, variables or {})


def test_point_cost_follows_githubs_documented_example() -> None:
    docs_example = """query {
      viewer { login repositories(first: 100) { edges { node { id
        issues(first: 50) { edges { node { id labels(first: 60) { edges { node { name } } } } } }
      } } } }
    }"""
    # 1 + 100 + 5,000 requests -> 51 points; 100 + 5,000 + 300,000 nodes
    assert cost(docs_example) == (51, 305_100)
    assert cost("{ viewer { login } }") == (1, 0)  # at least one point
    assert cost("query($n: Int = 30) { viewer { repositories(first: $n) { nodes { name } } } }") == (1, 30)
    with pytest.raises(GitHubError, match="first") as e:
        cost("query($n: Int) { viewer { repositories(first: $n) { nodes { name } } } }")
    assert e.value.kind == "MISSING_PAGINATION_BOUNDARIES"
    with pytest.raises(GitHubError) as e:
        cost("{ viewer { repositories(first: 101) { nodes { name } } } }")
    assert e.value.kind == "EXCESSIVE_PAGINATION"
    deep = (
        "{ viewer { a: repositories(first: 100) { nodes { issues(first: 100) { nodes {"
        " labels(first: 100) { totalCount } } } } } } }"
    )
    with pytest.raises(GitHubError) as e:
        cost(deep)
    assert e.value.kind == "MAX_NODE_LIMIT_EXCEEDED"


def test_missing_schema_is_one_line_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLEETCI_GRAPHQL_SCHEMA", raising=False)
    with pytest.raises(SchemaNotFound, match="npm install") as e:
        find_schema(tmp_path)
    assert "\n" not in str(e.value)
    monkeypatch.setenv("FLEETCI_GRAPHQL_SCHEMA", str(tmp_path / "nope.graphql"))
    with pytest.raises(SchemaNotFound, match="FLEETCI_GRAPHQL_SCHEMA"):
        find_schema()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"type Query {", "is not a readable GraphQL schema"),
        (b"\xff\xfe\x00", "is not a readable GraphQL schema"),
        (b"type Query { a: Int }", "is not GitHub's GraphQL schema"),
    ],
)
def test_corrupt_schema_is_one_line(tmp_path: Path, text: bytes, expected: str) -> None:
    from fleetci.testing.github_graphql import load_schema

    path = tmp_path / "schema.graphql"
    path.write_bytes(text)
    with pytest.raises(SchemaNotFound, match=expected) as e:
        load_schema(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["bench", "cache", "--graphql", "--p2p"], "cannot be combined with --p2p"),
        (["bench", "cache", "--graphql", "--backend", "redis"], "cannot be combined"),
        (["bench", "cache", "--graphql", "--samples", "5"], "--samples must be at least 10"),
        (["bench", "cache", "--graphql=yes"], "--graphql"),
        (["bench", "cache", "--graphql", "--runners", "0"], "--runners"),
    ],
)
def test_bench_graphql_flag_errors_are_one_line_usage_errors(
    fleetci: RunCli, argv: list[str], expected: str
) -> None:
    proc = fleetci(*argv)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("fleetci: error: "), proc.stderr
    assert expected in lines[0] and "Traceback" not in proc.stderr
