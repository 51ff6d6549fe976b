"""Issue 20: GraphQL queries cached by the proxy (a real process) in front of the emulator's GraphQL
endpoint (GitHub's published schema, graphql-core), driven by the real gh CLI and by raw HTTP.

One emulator and one proxy for the whole module (tests that change the emulator's budget put it back)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.testing.github_graphql import SchemaNotFound, find_schema
from support import Proxy, clean_env, start_proxy, wait_until
from support.emulator import quiet_emulator

REPO_ROOT = Path(__file__).resolve().parents[2]
ORG_REPO = "octo-org/api"
PRIVATE = "octo-org/infra"  # alice is a member of octo-org, bob is not


def token(login: str) -> str:
    from fleetci.testing import TOKENS

    return next(t for t, who in TOKENS.items() if who == login)


@pytest.fixture(scope="module")
def schema_path() -> Path:
    """GitHub's schema is a required input: missing, the module fails (CI installs it in scripts/test.sh)."""
    try:
        return find_schema(REPO_ROOT)
    except SchemaNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def emu(schema_path: Path) -> Iterator[Any]:
    with quiet_emulator() as server:
        yield server


@pytest.fixture(scope="module")
def gql_proxy(emu: Any, schema_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    env = clean_env(FLEETCI_GRAPHQL_SCHEMA=str(schema_path))
    with start_proxy(emu.url, tmp_path_factory.mktemp("gql") / "cache", env=env) as p:
        yield p


def points(emu: Any, login: str) -> int:
    return int(emu.emulator.graphql_points(token(login)))


def post(proxy: Proxy, login: str | None, body: Any, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"token {token(login)}"} if login else {}
    if isinstance(body, bytes):
        return httpx.post(f"{proxy.url}/graphql", content=body, headers=headers, timeout=30, **kw)
    return httpx.post(f"{proxy.url}/graphql", json=body, headers=headers, timeout=30, **kw)


def gh_env(proxy: Proxy, tmp_path: Path, login: str) -> dict[str, str]:
    cfg = tmp_path / f"gh-{login}"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.yml").write_text(f"http_unix_socket: {proxy.socket}\n")
    return clean_env(
        GH_CONFIG_DIR=str(cfg),
        GH_TOKEN=token(login),
        GH_NO_UPDATE_NOTIFIER="1",
        GH_PROMPT_DISABLED="1",
        NO_COLOR="1",
    )


def gh(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("gh")
    assert exe, "the gh CLI (Debian package gh) is required"
    out = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, (args, out.stderr)
    return out


def test_gh_graphql_commands_are_hits_the_second_time(gql_proxy: Proxy, emu: Any, tmp_path: Path) -> None:
    env = gh_env(gql_proxy, tmp_path, "alice")
    commands = [
        ("repo", "view", ORG_REPO),
        ("pr", "list", "-R", ORG_REPO, "--state", "all"),
        ("issue", "list", "-R", ORG_REPO),
        ("api", "graphql", "-f", "query={ viewer { login name } }"),
    ]
    first = [gh(env, *c).stdout for c in commands]
    assert "api" in first[0] and "Public REST API" in first[0]
    assert "#" in first[1] or "\t" in first[1]  # a table of pull requests
    assert json.loads(first[3])["data"]["viewer"]["login"] == "alice"
    spent = points(emu, "alice")
    before = gql_proxy.stats()
    second = [gh(env, *c).stdout for c in commands]
    after = gql_proxy.stats()
    assert second == first
    assert points(emu, "alice") == spent  # nothing charged: every GraphQL call was answered by the cache
    asked = after["graphql_requests"] - before["graphql_requests"]
    assert asked >= len(commands) and after["graphql_hits"] - before["graphql_hits"] == asked
    headers = gh(env, "api", "-i", "graphql", "-f", "query={ viewer { login name } }").stdout
    assert "X-Fleetci-Cache: HIT" in headers and "X-Ratelimit-Resource: graphql" in headers


def test_mutation_is_never_cached(gql_proxy: Proxy, emu: Any) -> None:
    repo_id = post(
        gql_proxy, "alice", {"query": '{ repository(owner:"octo-org", name:"api") { id } }'}
    ).json()
    star = {
        "query": "mutation($id: ID!) { addStar(input: {starrableId: $id}) { starrable { stargazerCount } } }",
        "variables": {"id": repo_id["data"]["repository"]["id"]},
    }
    spent = points(emu, "alice")
    answers = [post(gql_proxy, "alice", star) for _ in range(2)]
    assert [r.headers["X-Fleetci-Cache"] for r in answers] == ["BYPASS", "BYPASS"]
    counts = [r.json()["data"]["addStar"]["starrable"]["stargazerCount"] for r in answers]
    assert counts[1] == counts[0] + 1  # both reached GitHub
    assert points(emu, "alice") == spent + 2
    # a document that holds a mutation passes through even when the operation picked is a query
    mixed = {
        "query": "query Q { viewer { login } } "
        'mutation M { removeStar(input: {starrableId: "x"}) { clientMutationId } }',
        "operationName": "Q",
    }
    assert [post(gql_proxy, "alice", mixed).headers["X-Fleetci-Cache"] for _ in range(2)] == ["BYPASS"] * 2


def test_another_credential_never_sees_the_first_ones_answer(gql_proxy: Proxy, emu: Any) -> None:
    q = {"query": "query($o: String!, $n: String!) { repository(owner: $o, name: $n) { name isPrivate } }"}
    q["variables"] = {"o": "octo-org", "n": "infra"}
    alice = [post(gql_proxy, "alice", q) for _ in range(2)]
    assert [r.headers["X-Fleetci-Cache"] for r in alice] == ["MISS", "HIT"]
    assert alice[1].json() == {"data": {"repository": {"name": "infra", "isPrivate": True}}}
    bob = [post(gql_proxy, "bob", q) for _ in range(2)]
    for r in bob:
        assert r.headers["X-Fleetci-Cache"] in ("MISS", "BYPASS"), r.headers
        assert r.json()["data"] == {"repository": None}
        assert r.json()["errors"][0]["type"] == "NOT_FOUND"
    # the same document spelled differently (whitespace, commas, a comment) is the same entry
    spelled = {"query": "# again\nquery($o:String!,$n:String!){repository(owner:$o,name:$n){name,isPrivate}}"}
    spelled["variables"] = {"n": "infra", "o": "octo-org"}
    assert post(gql_proxy, "alice", spelled).headers["X-Fleetci-Cache"] == "HIT"


def fragment_chain(n: int) -> str:
    chain = " ".join(f"fragment F{i} on Query{{...F{i + 1}}}" for i in range(n))
    return f"query{{...F0}} {chain} fragment F{n} on Query{{viewer{{login}}}}"


HOSTILE: dict[str, bytes] = {
    "invalid-json": b'{"query": ',
    "batched": json.dumps([{"query": "{ viewer { login } }"}] * 2).encode(),
    "variables-not-an-object": json.dumps({"query": "{ viewer { login } }", "variables": [1, 2]}).encode(),
    "query-not-a-string": json.dumps({"query": {"viewer": "login"}}).encode(),
    "deeply-nested-document": json.dumps({"query": "{ viewer " + "{ login " * 3000 + "}" * 3001}).encode(),
    "deeply-nested-variables": b'{"query": "{ viewer { login } }", "variables": '
    + b'{"a":' * 5000
    + b"1"
    + b"}" * 5001,
    "unparsable": json.dumps({"query": "{ viewer { "}).encode(),
    "oversize-query": json.dumps({"query": "{ viewer { login } }" + " " * (300 * 1024)}).encode(),
    # review A1: a chain of fragments each spreading the next (65 KB, 2000 of them, valid); a shorter one
    # under the 16 KiB analysis cap; a large valid document (200 aliases and comments, 25 KB, old caps)
    "fragment-chain": json.dumps({"query": fragment_chain(2000)}).encode(),
    "fragment-chain-under-16k": json.dumps({"query": fragment_chain(400)}).encode(),
    "huge-valid-document": json.dumps(
        {"query": "{ " + " ".join(f"a{i}: viewer {{ login }} # {'c' * 100}\n" for i in range(200)) + " }"}
    ).encode(),
    # review A3: Python reads the last "query", GitHub may run the first
    "duplicate-query-key": b'{"query": "{ viewer { login } }", "query": "{ viewer { name } }"}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_bodies_pass_through_without_a_traceback(gql_proxy: Proxy, name: str) -> None:
    answers = [post(gql_proxy, "alice", HOSTILE[name]) for _ in range(2)]
    for r in answers:
        assert r.headers["X-Fleetci-Cache"] == "BYPASS", (name, r.status_code, r.text[:200])
        assert r.status_code < 500, (name, r.text[:200])
        assert len(r.text.strip().splitlines()) == 1
    assert "Traceback" not in gql_proxy.log.read_text()


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_graphql_path_not_posted_passes_through_never_into_the_rest_cache(
    gql_proxy: Proxy, method: str
) -> None:
    """Review A2: GET/HEAD /graphql went to the REST cache (REST window, REST budget)."""
    h = {"Authorization": f"token {token('alice')}"}
    answers = [
        httpx.request(method, f"{gql_proxy.url}/graphql", params={"query": "{ viewer { login } }"}, headers=h)
        for _ in range(2)
    ]
    assert [r.headers["X-Fleetci-Cache"] for r in answers] == ["BYPASS", "BYPASS"]
    assert all(r.status_code < 500 for r in answers)


def test_post_with_a_query_string_passes_through(gql_proxy: Proxy, emu: Any) -> None:
    """Review A2: ?query=/?operationName= were left out of the key but forwarded upstream."""
    q = {"query": "query QS { viewer { login } }"}
    spent = points(emu, "alice")
    answers = [post(gql_proxy, "alice", q, params={"operationName": "QS"}) for _ in range(2)]
    assert [r.headers["X-Fleetci-Cache"] for r in answers] == ["BYPASS", "BYPASS"]
    assert answers[1].json()["data"]["viewer"]["login"] == "alice"
    assert points(emu, "alice") == spent + 2  # both reached GitHub
    assert post(gql_proxy, "alice", q).headers["X-Fleetci-Cache"] in ("MISS", "HIT")  # without: cached


def test_body_over_the_proxy_cap_is_413(gql_proxy: Proxy) -> None:
    big = b'{"query": "{ viewer { login } }", "x": "' + b"a" * (17 * 1024 * 1024) + b'"}'
    r = post(gql_proxy, "alice", big)
    assert r.status_code == 413
    assert "Traceback" not in gql_proxy.log.read_text()


def test_graphql_budget_is_tracked_and_respected_apart_from_rest(gql_proxy: Proxy, emu: Any) -> None:
    emu.emulator.reset_counters()
    emu.emulator.configure(graphql_limit=3)
    try:
        cached = {"query": "{ viewer { login } }"}
        assert post(gql_proxy, "bob", cached).headers["X-Fleetci-Cache"] in ("MISS", "HIT")
        for n in range(2):
            r = post(gql_proxy, "bob", {"query": f"{{ v{n}: viewer {{ login }} }}"})
            assert r.status_code == 200 and "errors" not in r.json()
        assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["X-RateLimit-Resource"] == "graphql"
        requests = emu.emulator.stats()["requests"]
        blocked = post(gql_proxy, "bob", {"query": "{ v9: viewer { login } }"})
        assert blocked.status_code == 429 and "Retry-After" in blocked.headers
        assert emu.emulator.stats()["requests"] == requests  # GitHub was not called
        assert post(gql_proxy, "bob", cached).headers["X-Fleetci-Cache"] == "HIT"  # cached answers still flow
        rest = httpx.get(
            f"{gql_proxy.url}/user", headers={"Authorization": f"token {token('bob')}"}, timeout=30
        )
        assert rest.status_code == 200  # the REST budget is another one
        stats = gql_proxy.stats()
        assert stats["graphql_rate_limit_remaining"] == 0 and stats["rate_limit_remaining"] > 0
        limits = httpx.get(f"{emu.url}/rate_limit", headers={"Authorization": f"token {token('bob')}"}).json()
        assert (
            limits["resources"]["graphql"]["remaining"] == 0 and limits["resources"]["graphql"]["used"] == 3
        )
        assert limits["resources"]["core"]["remaining"] > 0
    finally:
        emu.emulator.configure(graphql_limit=5000)


def test_stats_and_metrics_count_graphql_separately(gql_proxy: Proxy) -> None:
    q = {"query": "query Stats { viewer { login } }", "operationName": "Stats"}
    before = gql_proxy.stats()
    post(gql_proxy, "alice", q)
    post(gql_proxy, "alice", q)
    after = gql_proxy.stats()
    assert after["graphql_requests"] - before["graphql_requests"] == 2
    assert after["graphql_hits"] - before["graphql_hits"] >= 1
    assert after["local_hits"] - before["local_hits"] >= 1  # GraphQL is part of the totals too
    metrics = httpx.get(f"{gql_proxy.url}/metrics", timeout=10).text
    assert "fleetci_cache_graphql_hits_total" in metrics and "fleetci_graphql_rate_limit_remaining" in metrics


def test_bench_without_the_schema_is_one_line(tmp_path: Path) -> None:
    from support import run_fleetci

    env = clean_env(FLEETCI_GRAPHQL_SCHEMA=str(tmp_path / "missing.graphql"))
    proc = run_fleetci(
        "bench", "cache", "--graphql", "--runners", "1", "--calls", "1", "--samples", "10", env=env
    )
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("fleetci: error:")]
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert "FLEETCI_GRAPHQL_SCHEMA" in lines[0] and "Traceback" not in proc.stderr


def test_graphql_entries_ride_p2p_like_rest_entries(emu: Any, schema_path: Path, tmp_path: Path) -> None:
    """Two proxies in a fleet (real libp2p on 127.0.0.1): one charged fetch, the other node answers PEER
    from the sealed announcement; another credential on that node still goes to GitHub."""
    from support import wait_until
    from support.p2p import FLEET, SECRET

    env = clean_env(FLEETCI_CACHE_SECRET=SECRET, CACHE_FLEET=FLEET)
    p2p = ("--enable-p2p", "--p2p-host", "127.0.0.1", "--listen-port", "0")
    first = start_proxy(emu.url, tmp_path / "n0", *p2p, env=env)
    nodes = [first]
    try:
        boot = httpx.get(f"{first.url}/_fleetci/peers", timeout=10).json()["addrs"][0]
        nodes.append(start_proxy(emu.url, tmp_path / "n1", *p2p, "--bootstrap-peers", boot, env=env))
        other = httpx.get(f"{nodes[1].url}/_fleetci/peers", timeout=10).json()["peer_id"]

        def mesh() -> bool:
            r = httpx.post(f"{first.url}/_fleetci/p2p/probe", timeout=30).json()
            return other in r.get("shared_with", [])

        assert wait_until(mesh, timeout=30, interval=0.5), "the two proxies did not form a mesh"

        def receipts() -> int:
            r = httpx.get(f"{nodes[1].url}/_fleetci/peers", params={"receipts": "1"}, timeout=10)
            return len(r.json().get("receipts", {}))

        q = {"query": 'query P2P { repository(owner: "octo-org", name: "web") { name description } }'}
        spent, seen = points(emu, "alice"), receipts()
        assert post(first, "alice", q).headers["X-Fleetci-Cache"] == "MISS"
        assert wait_until(lambda: receipts() > seen, timeout=10, interval=0.1), "no announcement arrived"
        assert post(nodes[1], "alice", q).headers["X-Fleetci-Cache"] == "PEER"
        assert points(emu, "alice") == spent + 1  # one charged fetch for the fleet
        assert nodes[1].stats()["graphql_peer_hits"] == 1
        assert post(nodes[1], "bob", q).headers["X-Fleetci-Cache"] == "MISS"  # scopes stay apart
    finally:
        for n in nodes:
            n.stop(signal.SIGKILL)


def test_graphql_entries_ride_the_shared_store(emu: Any, tmp_path: Path) -> None:
    """Two proxies on one real redis-server (CACHE_BACKEND): one charged fetch, SHARED on the other,
    sealed under the credential's scope like REST entries; a mutation still passes through both."""
    from support.redis import PASSWORD, RedisServer

    store = RedisServer(tmp_path / "redis").start()
    env = clean_env(CACHE_BACKEND=store.url, CACHE_REDIS_PASSWORD=PASSWORD, FLEETCI_CACHE_SECRET="gql-secret")
    proxies: list[Proxy] = []
    try:
        proxies = [start_proxy(emu.url, tmp_path / name / "cache", env=env) for name in "ab"]
        q = {"query": 'query Shared { repository(owner: "octo-org", name: "docs") { name } }'}
        spent = points(emu, "alice")
        assert post(proxies[0], "alice", q).headers["X-Fleetci-Cache"] == "MISS"
        keys = lambda: list(store.client().scan_iter(match="fleetci:*:e:*"))  # noqa: E731
        assert wait_until(lambda: len(keys()) >= 1, timeout=10), "the entry never reached the shared store"
        assert all(b"octo-org" not in store.client().get(k) for k in keys())  # sealed, not plain JSON
        assert post(proxies[1], "alice", q).headers["X-Fleetci-Cache"] == "SHARED"
        assert points(emu, "alice") == spent + 1
        assert proxies[1].stats()["graphql_shared_hits"] == 1
        assert post(proxies[1], "bob", q).headers["X-Fleetci-Cache"] == "MISS"  # another credential
    finally:
        for p in proxies:
            p.stop()
        store.kill()


def test_ghes_graphql_lives_beside_the_rest_base(emu: Any, tmp_path: Path) -> None:
    """Upstream https://HOST/api/v3 (GitHub Enterprise Server): gh posts GraphQL to /api/graphql, and the
    proxy must send it to HOST/api/graphql, not under the REST base."""
    ghes = start_proxy(f"{emu.url}/api/v3", tmp_path / "ghes" / "cache")
    try:
        q = {"query": 'query Ghes { repository(owner: "octo-org", name: "fleet-tools") { name } }'}
        h = {"Authorization": f"token {token('alice')}"}
        spent = points(emu, "alice")
        answers = [httpx.post(f"{ghes.url}/api/graphql", json=q, headers=h, timeout=30) for _ in range(2)]
        assert [r.status_code for r in answers] == [200, 200], answers[0].text
        assert [r.headers["X-Fleetci-Cache"] for r in answers] == ["MISS", "HIT"]
        assert answers[1].json() == {"data": {"repository": {"name": "fleet-tools"}}}
        assert points(emu, "alice") == spent + 1
        star = {"query": 'mutation { addStar(input: {starrableId: "nope"}) { clientMutationId } }'}
        r = httpx.post(f"{ghes.url}/api/graphql", json=star, headers=h, timeout=30)
        assert r.headers["X-Fleetci-Cache"] == "BYPASS" and r.json()["errors"][0]["type"] == "NOT_FOUND"
    finally:
        ghes.stop()
