"""Fast logic: policy, keys, rate-limit tracker, store, configuration precedence, and the command line
in this process (its failures: one line, the right exit code)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetci.cache.policy import TTLPolicy, cache_key, normalize_target, scope_of, wants_revalidation
from fleetci.cache.ratelimit import RateLimitTracker
from fleetci.cache.settings import TTLRule, cache_settings, parse_ttl_rules
from fleetci.cache.store import CacheStore, Entry, cid_of
from fleetci.config import Resolver
from fleetci.errors import FleetciError, UsageError
from support import RunCli, clean_env, one_line_error


def test_ttl_classes_follow_seed_defaults() -> None:
    p = TTLPolicy.build((), 300)
    assert p.classify("/orgs/octo-org/repos?per_page=100") == ("repo-list", 600)
    assert p.classify("/user/repos") == ("repo-list", 600)
    assert p.classify("/repos/o/r/actions/runs?per_page=5&status=queued") == ("queue", 60)
    assert p.classify("/repos/o/r/actions/runs") == ("workflow-runs", 120)
    assert p.classify("/repos/o/r/actions/runs/12/jobs") == ("jobs", 60)
    assert p.classify("/orgs/o/actions/runners") == ("runners", 300)
    assert p.classify("/repos/o/r") == ("default", 300)
    assert p.classify("/rate_limit") == ("rate-limit", 0)


def test_config_rules_override_defaults() -> None:
    rules = parse_ttl_rules([{"pattern": r"/actions/runners", "seconds": 5, "name": "fast-runners"}])
    assert TTLPolicy.build(rules, 300).classify("/orgs/o/actions/runners") == ("fast-runners", 5)
    with pytest.raises(UsageError):
        parse_ttl_rules([{"pattern": "x"}])
    with pytest.raises(UsageError):
        parse_ttl_rules([{"pattern": "(", "seconds": 1}])


def test_scope_never_contains_token_and_separates_tokens() -> None:
    a, b = scope_of("token ghp_secretA"), scope_of("token ghp_secretB")
    assert a != b and "secretA" not in a
    assert scope_of(None) == scope_of("") == "anonymous"
    k1 = cache_key(a, "/repos/o/r", {})
    assert k1 != cache_key(b, "/repos/o/r", {})
    assert k1 != cache_key(a, "/repos/o/r", {"accept": "application/vnd.github.raw"})


def test_normalize_sorts_query_and_strips_ghes_prefix() -> None:
    assert normalize_target("/repos/o/r/actions/runs?status=queued&per_page=5") == normalize_target(
        "/repos/o/r/actions/runs?per_page=5&status=queued"
    )
    assert normalize_target("/api/v3/repos/o/r/", "/api/v3") == "/repos/o/r"


def test_no_cache_detection() -> None:
    assert wants_revalidation({"cache-control": "no-cache"})
    assert wants_revalidation({"cache-control": "max-age=0"})
    assert not wants_revalidation({"cache-control": "max-age=60"})


def test_primary_limit_blocks_until_reset() -> None:
    t = RateLimitTracker()
    now = 1000.0
    limited = t.observe("s", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1300"}, b"{}", now)
    assert limited
    assert t.blocked_for("s", now) == pytest.approx(300)
    assert t.blocked_for("other", now) == 0


def test_exhausted_budget_blocks_before_refusal() -> None:
    t = RateLimitTracker()
    assert not t.observe("s", 200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1060"}, b"", 1000.0)
    assert t.blocked_for("s", 1000.0) == pytest.approx(60)


def test_secondary_limit_retry_after_then_fallback_and_exponential_backoff() -> None:
    t = RateLimitTracker()
    assert t.observe("s", 403, {"retry-after": "30"}, b"secondary rate limit", 0.0)
    assert t.blocked_for("s", 0.0) == pytest.approx(30)
    body = b'{"message": "You have exceeded a secondary rate limit."}'
    assert t.observe("s", 403, {}, body, 100.0)
    assert t.blocked_for("s", 100.0) == pytest.approx(60)
    assert t.observe("s", 429, {}, body, 200.0)
    assert t.blocked_for("s", 200.0) == pytest.approx(120)
    t.observe("s", 200, {}, b"", 400.0)  # success resets the backoff
    assert t.observe("s", 403, {}, body, 500.0)
    assert t.blocked_for("s", 500.0) == pytest.approx(60)


def test_plain_forbidden_is_not_a_rate_limit() -> None:
    t = RateLimitTracker()
    assert not t.observe(
        "s", 403, {"x-ratelimit-remaining": "4000"}, b'{"message":"Must have admin rights"}', 0
    )
    assert t.blocked_for("s", 0) == 0


def _entry(key: str, body: bytes = b"{}", ttl: float = 60) -> Entry:
    return Entry.create(key, "scope", f"/t/{key}", 200, (("ETag", f'"{key}"'),), body, ttl)


def test_store_roundtrip_restart_and_lru_bound(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    s = CacheStore(db, max_entries=3)
    for k in "abcd":
        s.put(_entry(k))
    assert len(s) == 3 and s.get("a") is None  # a was least recently used
    s.get("b")
    s.put(_entry("e"))
    s.close()
    s2 = CacheStore(db, max_entries=3)
    assert {k for k in "abcde" if s2.get(k) is not None} == {"b", "d", "e"}
    assert s2.get("b") is not None and s2.get("b").etag == '"b"'  # type: ignore[union-attr]


def test_store_byte_budget(tmp_path: Path) -> None:
    s = CacheStore(tmp_path / "c.db", max_entries=100, max_bytes=5000)
    for i in range(10):
        s.put(_entry(str(i), b"x" * 1000))
    assert s.total_bytes <= 5000
    assert s.get("9") is not None and s.get("0") is None


def test_store_memory_tier_has_its_own_budget(tmp_path: Path) -> None:
    s = CacheStore(tmp_path / "c.db", max_entries=100, max_bytes=100_000, memory_bytes=8000)
    for i in range(10):
        s.put(_entry(str(i), b"x" * 1000))
    assert s.memory_tier_bytes <= 8000  # RAM holds the hot few (~3 KB each, objects included) ...
    assert s.total_bytes >= 10_000 and len(s) == 10  # ... disk keeps every entry
    assert all(s.get(str(i)) is not None for i in range(10))  # cold ones come back from disk
    assert s.memory_tier_bytes <= 8000
    big = CacheStore(tmp_path / "d.db", memory_bytes=10)  # the newest entry stays until it is on disk
    big.remember(_entry("n", b"y" * 100))
    assert big.get("n") is not None


def test_in_memory_store_is_the_same_store_without_files(tmp_path: Path) -> None:
    """``memory=True`` (the fleet benchmark's hundreds of engines): same LRU bound, refresh and
    invalidation, nothing written; and an engine given an empty store uses it (an empty store is falsy)."""
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.settings import CacheSettings

    settings = CacheSettings(cache_dir=tmp_path / "never")
    s = CacheStore.for_settings(settings, memory=True)
    assert CacheEngine(settings, s).store is s
    s.max_entries = 3
    for k in "abcd":
        s.put(_entry(k), hot=False)
    assert len(s) == 3 and s.get("a") is None and s.get("d") is not None
    later = time.time() + 5
    refreshed = s.refresh("d", 10**10, verified_at=later)  # a 304 confirmed it: as if stored then
    assert refreshed is not None and refreshed.stored_at == later
    assert s.refresh("d", 10**10, verified_at=1.0).stored_at == later  # type: ignore[union-attr]
    assert s.invalidate([_entry("d").target]) >= 1
    assert not s.get("d").is_fresh(time.time() + 1)  # type: ignore[union-attr]
    s.close()
    assert not (tmp_path / "never").exists()


def test_cold_put_stays_out_of_memory_until_read(tmp_path: Path) -> None:
    """Entries peers push (``hot=False``) take no RAM until a client here reads one."""
    s = CacheStore(tmp_path / "c.db")
    s.put(_entry("hot", b"h" * 1000))
    s.put(_entry("cold", b"c" * 5000), hot=False)
    assert s.memory_tier_bytes == _entry("hot", b"h" * 1000).memory_size
    got = s.get("cold")
    assert got is not None and got.body == b"c" * 5000
    assert s.memory_tier_bytes == _entry("hot", b"h" * 1000).memory_size + got.memory_size  # now hot
    s.put(_entry("hot", b"H" * 10), hot=False)  # a cold overwrite drops the stale hot copy
    assert s.get("hot") is not None and s.get("hot").body == b"H" * 10  # type: ignore[union-attr]
    reopened = CacheStore(tmp_path / "c.db")  # both were persisted
    assert reopened.get("cold") is not None and reopened.get("hot") is not None


def test_memory_budget_setting_follows_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_settings({}, {}).memory_bytes == 4 * 1024 * 1024
    monkeypatch.setenv("CACHE_MEMORY_BYTES", "4096")
    assert cache_settings({}, {"memory_bytes": 1}).memory_bytes == 4096
    assert cache_settings({"memory_bytes": "8192"}, {}).memory_bytes == 8192
    assert CacheStore.for_settings(cache_settings({}, {"cache_dir": str(tmp_path)})).memory_bytes == 4096


def test_store_drops_damaged_row(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    s = CacheStore(db)
    s.put(_entry("k", b'{"a": 1}'))
    s.close()
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE entries SET body = ? WHERE key = 'k'", (b'{"a": 2}',))
    assert CacheStore(db).get("k") is None


def test_store_sees_other_process_changes(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    a, b = CacheStore(db), CacheStore(db)
    a.put(_entry("k"))
    assert b.get("k") is not None
    a.clear()
    assert b.get("k") is None and len(b) == 0


def test_corrupt_database_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    db.write_bytes(b"this is not a database" * 100)
    s = CacheStore(db)
    assert s.corrupt_moved_to is not None
    assert s.corrupt_moved_to.read_bytes().startswith(b"this is not a database")
    s.put(_entry("k"))
    assert s.get("k") is not None


def test_entry_freshness_and_cid() -> None:
    e = _entry("k", b"hello", ttl=10)
    assert e.is_fresh(time.time()) and not e.is_fresh(time.time() + 11)
    assert e.cid().startswith("bafkrei")  # CIDv1, raw codec, sha2-256, base32


@pytest.mark.parametrize("body", [b"", b"hello", bytes(range(256)) * 300, os.urandom(4097)])
def test_cid_matches_multiformats(body: bytes) -> None:
    """The fast path must print exactly what multiformats prints, and decode back to the body's hash."""
    from multiformats import CID, multihash

    expected = str(CID("base32", 1, "raw", multihash.digest(body, "sha2-256")))
    assert cid_of(body) == expected
    decoded = CID.decode(cid_of(body))
    assert decoded.codec.name == "raw" and decoded.version == 1
    assert multihash.unwrap(decoded.digest) == hashlib.sha256(body).digest()


def test_precedence_flag_env_file_default() -> None:
    file = {"cache": {"proxy_port": 7000, "default_ttl": 42}}
    env = {"CACHE_PROXY_PORT": "8000"}
    assert cache_settings({"proxy_port": "9000"}, file, env).proxy_port == 9000
    assert cache_settings({}, file, env).proxy_port == 8000
    assert cache_settings({}, file, {}).proxy_port == 7000
    assert cache_settings({}, {}, {}).proxy_port == 9101
    assert cache_settings({}, file, {}).default_ttl == 42
    assert cache_settings({}, {}, {"CACHE_ENABLE_P2P": "true"}).enable_p2p is True
    assert cache_settings(
        {}, {}, {"CACHE_BOOTSTRAP_PEERS": "/ip4/1/tcp/1, /ip4/2/tcp/2"}
    ).bootstrap_peers == (
        "/ip4/1/tcp/1",
        "/ip4/2/tcp/2",
    )


def test_bad_values_are_usage_errors() -> None:
    with pytest.raises(UsageError, match=r"\$CACHE_PROXY_PORT"):
        cache_settings({}, {}, {"CACHE_PROXY_PORT": "abc"})
    with pytest.raises(UsageError, match="upstream"):
        cache_settings({"upstream": "ftp://x"}, {}, {})
    with pytest.raises(UsageError):
        Resolver({}, {}, {"X": "maybe"}).get("x", False, lambda s: s == "true" or int(s) > 0, env=("X",))


def test_ttl_rule_dataclass_is_frozen() -> None:
    r = TTLRule("x", 1)
    with pytest.raises(AttributeError):
        r.seconds = 2  # type: ignore[misc]


def test_equivalent_accept_headers_share_a_key_but_media_types_do_not() -> None:
    s = scope_of("token x")
    plain = cache_key(s, "/repos/o/r", {})
    assert plain == cache_key(s, "/repos/o/r", {"accept": "application/vnd.github+json"})
    assert plain == cache_key(s, "/repos/o/r", {"accept": "*/*", "x-github-api-version": "2022-11-28"})
    assert plain != cache_key(s, "/repos/o/r", {"accept": "application/vnd.github.raw+json"})
    assert plain != cache_key(s, "/repos/o/r", {"x-github-api-version": "2026-03-10"})


def test_repeated_representation_headers_key_on_every_value() -> None:
    """Two Accept lines reach GitHub as one list: the key must not come from the last line alone."""
    from fleetci.cache.engine import _lower

    s = scope_of("token x")
    json_only = cache_key(s, "/repos/o/r/readme", _lower([("Accept", "application/json")]))
    raw_then_json = _lower([("Accept", "application/vnd.github.raw+json"), ("accept", "application/json")])
    assert raw_then_json["accept"] == "application/vnd.github.raw+json, application/json"
    assert cache_key(s, "/repos/o/r/readme", raw_then_json) != json_only
    versions = _lower([("X-GitHub-Api-Version", "2026-03-10"), ("X-GitHub-Api-Version", "2022-11-28")])
    assert cache_key(s, "/repos/o/r", versions) != cache_key(s, "/repos/o/r", {})


def test_rewrite_for_client_points_urls_back_at_the_proxy() -> None:
    from fleetci.cache.server import rewrite_for_client

    up, me = "https://ghe.example.com/api/v3", "http://127.0.0.1:9101"
    body = (
        b'{"url": "https://ghe.example.com/api/v3/repos/o/r", "html_url": "https://ghe.example.com/o/r",'
        b' "other": "https://ghe.example.com/api/v3x"}'
    )
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        (
            "Link",
            '<https://ghe.example.com/api/v3/orgs/o/repos?page=2>; rel="next", <https://x.io/a>; rel="x"',
        ),
        ("Location", "https://ghe.example.com/api/v3/repositories/1"),
    ]
    out, new_body = rewrite_for_client(headers, body, up, me)
    assert b'"url": "http://127.0.0.1:9101/repos/o/r"' in new_body
    assert b'"html_url": "https://ghe.example.com/o/r"' in new_body  # web URLs are not API URLs
    assert b"https://ghe.example.com/api/v3x" in new_body  # only whole prefixes
    d = dict(out)
    assert d["Link"].startswith('<http://127.0.0.1:9101/orgs/o/repos?page=2>; rel="next"')
    assert "<https://x.io/a>" in d["Link"]
    assert d["Location"] == "http://127.0.0.1:9101/repositories/1"
    assert rewrite_for_client(headers, body, up, up) == (headers, body)
    binary = [("Content-Type", "application/zip")]
    assert rewrite_for_client(binary, body, up, me)[1] == body


def test_ghes_base_path_is_not_doubled_for_passthrough(tmp_path: Path) -> None:

    from fleetci.cache.engine import CacheEngine
    from fleetci.http import AsyncUpstream, UpstreamResponse

    seen: list[str] = []

    class Recorder(AsyncUpstream):
        async def request(self, method, target, headers, body=None):  # type: ignore[no-untyped-def]
            seen.append(f"{method} {self.base_url}{target}")
            return UpstreamResponse(201, (("Content-Type", "application/json"),), b"{}")

    settings = cache_settings(
        {"upstream": "https://ghe.example.com/api/v3", "cache_dir": str(tmp_path)}, {}, {}
    )
    engine = CacheEngine(settings, upstream=Recorder(settings.upstream))
    resp = asyncio.run(
        engine.handle("POST", "/api/v3/repos/o/r/issues", [("Authorization", "token x")], b"{}")
    )
    assert resp.status == 201 and resp.outcome == "BYPASS"
    assert seen == ["POST https://ghe.example.com/api/v3/repos/o/r/issues"]


def test_entries_peers_push_are_served_but_not_held_in_ram(tmp_path: Path) -> None:
    """A peer's inline body lands on disk; it costs this runner RAM only once a client asks for it."""
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.peering import Announcement

    settings = cache_settings({"cache_dir": str(tmp_path)}, {}, {})
    engine = CacheEngine(settings)
    pushed = Entry.create("p" * 64, "scope", "/repos/o/r", 200, (("ETag", '"e"'),), b"b" * 4000, 60)
    before = engine.store.memory_tier_bytes
    engine.accept_announcements([Announcement.of(pushed, "12D3KooWpeer")])
    assert engine.store.memory_tier_bytes == before
    got = engine.store.get(pushed.key)
    assert got is not None and got.body == pushed.body and got.etag == '"e"'
    assert engine.store.memory_tier_bytes == before + got.memory_size


def test_first_answer_of_a_pushed_entry_says_peer_and_the_marks_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetci.cache import engine as engine_module
    from fleetci.cache.engine import CacheEngine
    from fleetci.cache.peering import Announcement

    monkeypatch.setattr(engine_module, "PEER_INDEX_MAX", 3)
    engine = CacheEngine(cache_settings({"cache_dir": str(tmp_path)}, {}, {}))
    scope = scope_of("token t")
    key = cache_key(scope, normalize_target("/repos/o/r"), {})
    first = Entry.create(key, scope, "/repos/o/r", 200, (), b"{}", 60)
    others = [Entry.create(f"{i}" * 64, scope, f"/x/{i}", 200, (), b"{}", 60) for i in range(1, 4)]
    engine.accept_announcements([Announcement.of(first, "12D3KooWpeer")])

    async def get() -> str:
        return (await engine.handle("GET", "/repos/o/r", [("Authorization", "token t")], None)).outcome

    assert asyncio.run(get()) == "PEER"
    assert asyncio.run(get()) == "HIT"  # only the first answer came from the peer
    engine.accept_announcements([Announcement.of(first, "12D3KooWpeer")])  # unchanged: no new mark
    engine.accept_announcements([Announcement.of(e, "12D3KooWpeer") for e in others])
    assert len(engine._peer_origin) == 3


FREED_BODIES = """
import sys
from fleetci.process import fix_malloc_thresholds

def anon_kb():
    with open("/proc/self/smaps_rollup") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("Anonymous:"))

if sys.argv[1] == "fixed":
    assert fix_malloc_thresholds()
if sys.argv[1] == "serve":  # the proxy pins them itself: run it (in this process) and stop it
    import asyncio
    from fleetci.cache.server import serve
    from fleetci.cache.settings import cache_settings
    from fleetci.http import free_port

    async def once():
        flags = {"upstream": "http://127.0.0.1:9", "cache_dir": sys.argv[2], "proxy_port": free_port()}
        ready = asyncio.Event()
        task = asyncio.create_task(serve(cache_settings(flags, {}, {}), probe=False, ready=ready))
        while not ready.is_set() and not task.done():
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(once())
big = bytearray(8 << 20)
del big  # a freed 8 MiB mapping: glibc's sliding threshold moves up to it
before = anon_kb()
bodies = [bytearray(256 * 1024) for _ in range(100)]  # 25 MiB of response bodies
pin = bytearray(2048)  # a later small allocation: the top of the heap cannot shrink past it
del bodies
print(anon_kb() - before)
"""


@pytest.mark.parametrize("mode", ["fixed", "default", "serve"])
def test_fixed_malloc_thresholds_give_freed_bodies_back(mode: str, tmp_path: Path) -> None:
    """Pinned thresholds: freed 256 KiB bodies leave the process; glibc's default (the sliding threshold
    after one big free) keeps them resident in the heap until a trim. The default case shows what the
    fix is for (and that the measurement can tell); ``serve``: the proxy pins them when it starts."""
    out = subprocess.run(
        [sys.executable, "-c", FREED_BODIES, mode, str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kept_kb = int(out.split()[-1])
    if mode in ("fixed", "serve"):
        assert kept_kb < 2 * 1024
    else:
        assert kept_kb > 4 * 1024


def test_release_free_memory_trims_the_heap() -> None:
    """glibc here: freed pages in the middle of the heap go back to the OS."""
    from fleetci.process import release_free_memory

    def anon_kb() -> int:
        with open("/proc/self/smaps_rollup") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("Anonymous:"))

    blocks = [bytearray(64 * 1024) for _ in range(800)]  # 50 MiB below glibc's mmap threshold: heap
    keep = blocks[-1]
    del blocks[:-1]
    high = anon_kb()
    assert release_free_memory()
    assert anon_kb() < high - 20 * 1024
    del keep


A_TOKEN, B_TOKEN = "ghp_" + "a" * 36, "ghp_" + "b" * 36


@pytest.mark.parametrize(
    "headers",
    [
        [("Authorization", f"token {A_TOKEN}"), ("Authorization", f"token {B_TOKEN}")],
        [("authorization", f"token {A_TOKEN}"), ("Authorization", f"token {B_TOKEN}")],
        [("Authorization", f"token {A_TOKEN}"), ("AUTHORIZATION", f"token {A_TOKEN}")],  # even the same
        [("Authorization", f"token {A_TOKEN}, token {B_TOKEN}")],
        [("Authorization", f"Bearer {A_TOKEN} {B_TOKEN}")],
        [("Authorization", "Bearer a b")],
        [("Authorization", "token tök\u00e9n")],
        [("Authorization", "token a\x1fb")],
    ],
)
def test_an_ambiguous_credential_is_refused(headers: list[tuple[str, str]]) -> None:
    from fleetci.cache.policy import CredentialError, request_credential

    with pytest.raises(CredentialError) as err:
        request_credential(headers, "/user")
    assert "\n" not in str(err.value) and A_TOKEN not in str(err.value)


@pytest.mark.parametrize(
    "target",
    [
        "/user?access_token=x",
        "/user?per_page=5&client_secret=x",
        "/user?client_id=x",
        "/user?ACCESS_TOKEN=x",
        "/user?access%5Ftoken=x",
        "/user?a=1;access_token=x",
        "/user?client_id[]=x",
    ],
)
def test_credentials_in_the_query_are_refused(target: str) -> None:
    from fleetci.cache.policy import CredentialError, request_credential

    with pytest.raises(CredentialError, match="query string"):
        request_credential([("Authorization", f"token {A_TOKEN}")], target)


def test_one_credential_is_used_exactly_as_sent_and_is_the_only_one_forwarded() -> None:
    from fleetci.cache.policy import request_credential, upstream_headers

    assert request_credential([], "/user?client_ip=1&token=restore") is None  # real GitHub parameters
    assert request_credential([("Authorization", "")], "/user") is None
    for value in (f"token {A_TOKEN}", f"Bearer {A_TOKEN}", f"token  {A_TOKEN}", f"token\t{A_TOKEN}", "x"):
        assert request_credential([("authorization", value)], "/user") == value
    sent = [
        ("Accept", "application/vnd.github+json"),
        ("authorization", f"token {A_TOKEN}"),
        ("Cookie", f"user_session={B_TOKEN}"),
        ("X-GitHub-Token", B_TOKEN),
        ("Proxy-Authorization", "Basic eDp5"),
        ("X-Api-Key", B_TOKEN),
        ("X-GitHub-Api-Version", "2022-11-28"),
    ]
    out = upstream_headers(sent, f"token {A_TOKEN}")
    assert out == [
        ("Accept", "application/vnd.github+json"),
        ("X-GitHub-Api-Version", "2022-11-28"),
        ("Authorization", f"token {A_TOKEN}"),
    ]
    assert upstream_headers(sent, None)[-1] == ("X-GitHub-Api-Version", "2022-11-28")


def test_the_engine_answers_an_ambiguous_request_400_without_an_upstream_call(tmp_path: Path) -> None:
    """The upstream is unreachable: any attempt to call it would raise instead of answering 400."""
    import json

    from fleetci.cache.engine import CacheEngine
    from fleetci.http import free_port

    settings = cache_settings({"upstream": f"http://127.0.0.1:{free_port()}", "cache_dir": str(tmp_path)})
    engine = CacheEngine(settings)
    twice = [("Authorization", f"token {A_TOKEN}"), ("Authorization", f"token {B_TOKEN}")]

    async def both() -> list[int]:
        r1 = await engine.handle("GET", "/user", twice)
        r2 = await engine.handle("POST", "/user/repos?access_token=x", [], b"{}")
        for r in (r1, r2):
            assert (
                "\n" not in json.loads(r.body)["message"] and dict(r.headers)["X-Fleetci-Cache"] == "REFUSED"
            )
        assert engine.stats()["refused"] == 2 and engine.stats()["upstream_requests"] == 0
        await engine.close()
        return [r1.status, r2.status]

    assert asyncio.run(both()) == [400, 400]


def test_rewrite_memo_is_bounded_by_bytes_whatever_hosts_clients_send() -> None:
    """The memo is keyed by the client's Host: 600 made-up hosts must not keep 600 rewritten bodies."""
    import tracemalloc

    from fleetci.cache import server

    up = "https://api.github.com"
    body = b'{"url": "https://api.github.com/repos/o/r", "pad": "' + b"x" * 200_000 + b'"}'
    headers = [("Content-Type", "application/json")]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(600):
            server.rewrite_for_client(headers, body, up, f"http://host{i}.example:9101")
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert retained < 2 * server.REWRITE_MEMO_BYTES, retained
    again = server.rewrite_for_client(headers, body, up, "http://host599.example:9101")[1]
    assert again is server.rewrite_for_client(headers, body, up, "http://host599.example:9101")[1]


def test_rate_limit_scopes_are_bounded_but_blocked_ones_are_kept() -> None:
    t = RateLimitTracker(max_scopes=50)
    t.observe("blocked", 403, {"retry-after": "600"}, b"", 0.0)
    for i in range(500):
        t.semaphore(f"s{i}")
        t.observe(f"s{i}", 401, {}, b"Bad credentials", 1.0)
    assert len(t.scopes) <= 51
    assert t.blocked_for("blocked", 1.0) > 0  # a blocked token is never forgotten early


def _mode(p: Path) -> int:
    return p.stat().st_mode & 0o777


def test_cache_files_are_private_and_old_ones_are_tightened(tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    s = CacheStore(d / "cache.db")
    s.put(_entry("k"))
    assert _mode(d) == 0o700
    files = [d / "cache.db", d / "cache.db-wal", d / "cache.db-shm"]
    assert all(f.exists() for f in files)
    assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    s.close()
    old = tmp_path / "old"  # what an older version left: 0755 directory, 0644 files
    s2 = CacheStore(old / "cache.db")
    s2.put(_entry("k"))
    s2.close()
    old.chmod(0o755)
    for f in old.iterdir():
        f.chmod(0o644)
    reopened = CacheStore(old / "cache.db")
    assert reopened.get("k") is not None
    assert _mode(old) == 0o700
    assert {f.name: _mode(f) for f in old.iterdir()} == {f.name: 0o600 for f in old.iterdir()}


def test_a_corrupt_database_is_left_in_place_when_not_repairing(tmp_path: Path) -> None:
    db = tmp_path / "c.db"
    garbage = b"this is not a database" * 100
    db.write_bytes(garbage)
    with pytest.raises(FleetciError, match="corrupt") as err:
        CacheStore(db, repair=False)
    assert "\n" not in str(err.value)
    assert db.read_bytes() == garbage and [p.name for p in tmp_path.iterdir()] == ["c.db"]


def test_max_body_bytes_setting() -> None:
    from fleetci.http import DEFAULT_MAX_BODY_BYTES

    assert cache_settings({}, {}, {}).max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert cache_settings({}, {}, {"CACHE_MAX_BODY_BYTES": "1024"}).max_body_bytes == 1024
    with pytest.raises(UsageError, match="CACHE_MAX_BODY_BYTES"):
        cache_settings({}, {}, {"CACHE_MAX_BODY_BYTES": "-1"})


def test_upstream_userinfo_is_in_no_printable_attribute() -> None:
    from fleetci.http import AsyncUpstream

    up = AsyncUpstream("https://x-access-token:s3cret@ghe.example.com/api/v3/")
    assert up.base_url == "https://ghe.example.com/api/v3"
    assert up.origin == "https://ghe.example.com" and up.base_path == "/api/v3"
    credentials = ("_userinfo", "default_authorization")
    assert "s3cret" not in repr({k: v for k, v in vars(up).items() if k not in credentials})
    assert up.default_authorization == "Basic eC1hY2Nlc3MtdG9rZW46czNjcmV0"  # x-access-token:s3cret
    assert AsyncUpstream("https://ghe.example.com").default_authorization is None


def no_proxy(tmp_path: Path, name: str = "none") -> tuple[str, ...]:
    """Settings flags naming a cache directory and a socket where nothing runs."""
    return ("--cache-dir", str(tmp_path / name), "--socket", str(tmp_path / f"{name}.sock"))


def test_unknown_flag(fleetci: RunCli) -> None:
    out = fleetci("cache", "serve", "--bogus")
    assert out.returncode == 2
    assert "--bogus" in one_line_error(out)
    assert "invalid choice" in one_line_error(fleetci("cache", "frobnicate"))


def test_bad_env_value(fleetci: RunCli, tmp_path: Path) -> None:
    out = fleetci("cache", "serve", "--cache-dir", str(tmp_path), env=clean_env(CACHE_PROXY_PORT="ninety"))
    assert "$CACHE_PROXY_PORT" in one_line_error(out)


def test_corrupt_config_file(fleetci: RunCli, tmp_path: Path) -> None:
    cfg = tmp_path / "config.yml"
    cfg.write_text("cache: [unclosed\n")
    assert "not valid YAML" in one_line_error(fleetci("--config", str(cfg), "cache", "stats"))
    cfg.write_text("cache:\n  ttl: [{pattern: '(', seconds: 5}]\n")
    assert "ttl" in one_line_error(fleetci("--config", str(cfg), "cache", "stats"))
    assert "does not exist" in one_line_error(
        fleetci("--config", str(tmp_path / "nope.yml"), "cache", "stats")
    )


def test_stats_and_clear_without_cache(fleetci: RunCli, tmp_path: Path) -> None:
    args = no_proxy(tmp_path)
    assert "no proxy running" in one_line_error(fleetci("cache", "stats", *args))
    assert "no cache" in one_line_error(fleetci("cache", "clear", *args))
    from fleetci.http import free_port

    assert "cannot read stats" in one_line_error(
        fleetci("cache", "stats", "--url", f"http://127.0.0.1:{free_port()}")
    )
    assert "no running proxy" in one_line_error(fleetci("cache", "stop", *args))


def test_corrupt_cache_db_is_one_line_and_left_in_place(fleetci: RunCli, tmp_path: Path) -> None:
    cache_dir = tmp_path / "corrupt"
    cache_dir.mkdir()
    garbage = b"SQLite format 3\x00" + os.urandom(8192)
    (cache_dir / "cache.db").write_bytes(garbage)
    args = ("--cache-dir", str(cache_dir), "--socket", str(tmp_path / "none.sock"))
    for verb in (("stats",), ("stats", "--json"), ("clear",), ("clear", "--stale")):
        out = fleetci("cache", *verb, *args)
        assert out.returncode == 1 and "corrupt" in one_line_error(out), (verb, out.stdout)
        assert out.stdout == ""
    assert [p.name for p in cache_dir.iterdir()] == ["cache.db"]
    assert (cache_dir / "cache.db").read_bytes() == garbage  # nothing lost, nothing moved


def test_saved_stats_print_as_a_table_and_as_json(fleetci: RunCli, tmp_path: Path) -> None:
    store = CacheStore(tmp_path / "c" / "cache.db")
    store.save_meta("stats", {"local_hits": 3, "misses": 1, "hit_rate": 0.75, "saved_at": 1.0})
    store.put(_entry("k"))
    store.close()
    table = fleetci("cache", "stats", *no_proxy(tmp_path, "c"))
    assert table.returncode == 0, table.stderr
    assert "local_hits            3" in table.stdout and "hit_rate              75.0%" in table.stdout
    assert "rate_limit_remaining  -" in table.stdout
    data = json.loads(fleetci("cache", "stats", "--json", *no_proxy(tmp_path, "c")).stdout)
    assert data["source"] == "saved" and data["cache_size"] == 1 and "saved_at" not in data


def test_an_empty_variable_leaves_the_config_files_value() -> None:
    """The setup-p2p-cache action exports every setting input, empty when not given: the file wins."""
    config = {"cache": {"default_ttl": 42, "enable_p2p": True, "listen_port": 7000, "max_entries": 5}}
    env = {"CACHE_DEFAULT_TTL": "", "CACHE_ENABLE_P2P": "", "CACHE_LISTEN_PORT": "", "CACHE_MAX_ENTRIES": ""}
    s = cache_settings({}, config, env)
    assert (s.default_ttl, s.enable_p2p, s.listen_port, s.max_entries) == (42, True, 7000, 5)


def test_every_verb_takes_the_setting_flags_and_start_hands_them_to_serve() -> None:
    from fleetci.cache.daemon import serve_argv
    from fleetci.cache.settings import CacheOptions
    from fleetci.cli import build_parser

    parser = build_parser()
    flagged = [s for s in CacheOptions.settings if s.flag]
    for verb in ("serve", "start", "stop", "stats", "peers", "verify", "clear"):
        args = parser.parse_args(["cache", verb])
        assert all(getattr(args, s.name) is None for s in flagged), verb
    args = parser.parse_args(
        ["cache", "start", "--port", "0", "--p2p", "--bootstrap-peers", "/ip4/a", "--no-probe"]
    )
    argv = serve_argv(CacheOptions.flag_values(args), "cfg.yml", probe=not args.no_probe)
    assert argv[3:] == [
        "--config",
        "cfg.yml",
        "cache",
        "serve",
        "--port",
        "0",
        "--enable-p2p",
        "--bootstrap-peers",
        "/ip4/a",
        "--no-probe",
    ]


def _rows(path: Path) -> dict[str, float]:
    """key -> fresh_until as another connection sees the file (what a restarted proxy would find)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {k: f for k, f in db.execute("SELECT key, fresh_until FROM entries")}


def test_write_behind_is_read_at_once_and_committed_in_one_transaction(tmp_path: Path) -> None:
    """Issue 16: an answer's entry is visible at once, its SQLite commit waits for ``flush_behind`` (after
    the answer) and takes every queued entry in one transaction; whatever changes the file (invalidate,
    put, refresh) sees the queue committed first, and len counts it without committing it."""
    path = tmp_path / "c.db"
    store = CacheStore(path, memory_bytes=6000)  # the memory tier holds one of these entries at a time
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    now = time.time()
    entries = [
        Entry.create(f"k{i}", "s", f"/repos/o/r{i}", 200, (("ETag", f'"{i}"'),), b"b" * 4000, 60, now)
        for i in range(5)
    ]
    for e in entries:
        store.write_behind(e)
    assert all(store.get(e.key) == e for e in entries)  # also those the memory tier let go
    assert commits == [] and _rows(path) == {}
    assert store.flush_behind() == 5
    assert commits == ["COMMIT"] and set(_rows(path)) == {e.key for e in entries}
    assert store.flush_behind() == 0 and commits == ["COMMIT"]

    late = Entry.create("k9", "s", "/repos/o/late", 200, (), b"x", 60, now)
    store.write_behind(late)
    assert store.invalidate(["/repos/o/late"]) == 1  # a webhook while the write is queued: it lands stale
    assert _rows(path)["k9"] <= time.time() and not store.get("k9").is_fresh(time.time())  # type: ignore[union-attr]
    older = Entry.create("k0", "s", "/repos/o/r0", 200, (), b"old", 60, now - 10)
    store.write_behind(older)
    store.put(entries[0])  # a newer copy written through: the queued older one never overwrites it
    store.flush_behind()
    assert store.get("k0") == entries[0] and CacheStore(path).get("k0") == entries[0]
    store.write_behind(Entry.create("k10", "s", "/t", 200, (), b"y", 60, now))
    assert len(store) == 7 and "k10" not in _rows(path)  # counted while still queued
    store.flush_behind()
    store.write_behind(Entry.create("k11", "s", "/t2", 200, (), b"z", 60, now))
    store.close()  # commits what is queued
    assert "k11" in _rows(path)


def test_write_behind_queue_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fleetci.cache import store as store_module

    monkeypatch.setattr(store_module, "BEHIND_MAX", 3)
    store = CacheStore(tmp_path / "c.db")
    flags = [store.write_behind(Entry.create(f"k{i}", "s", f"/t{i}", 200, (), b"b", 60)) for i in range(7)]
    assert flags == [True, False, False, True, False, False, True]  # the third write commits the queue
    assert len(_rows(tmp_path / "c.db")) == 6


def test_a_requeued_key_counts_once_toward_the_queue_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review t2 #9: the same key written behind again replaces its queued copy, in the byte count too
    (counting both made the queue commit early)."""
    from fleetci.cache import store as store_module

    store = CacheStore(tmp_path / "c.db")
    size = Entry.create("k", "s", "/t", 200, (), b"b" * 1000, 60).size  # body and row overhead
    monkeypatch.setattr(store_module, "BEHIND_BYTES", 2 * size + size // 2)
    flags = [
        store.write_behind(Entry.create("k", "s", "/t", 200, (), b"%d" % i * 1000, 60)) for i in range(5)
    ]
    assert flags == [True, False, False, False, False] and _rows(tmp_path / "c.db") == {}
    assert store.write_behind(Entry.create("k2", "s", "/t2", 200, (), b"b" * 1000, 60)) is False
    assert store.write_behind(Entry.create("k3", "s", "/t3", 200, (), b"c" * 1000, 60)) is False
    assert set(_rows(tmp_path / "c.db")) == {"k", "k2", "k3"}  # three entries' bytes: committed
    assert store.get("k").body == b"4" * 1000  # type: ignore[union-attr]


def test_peer_catch_up_and_len_read_the_queue_without_committing_it(tmp_path: Path) -> None:
    """Review t2 #9: ``fresh_entries`` runs on the p2p thread and ``len`` for stats: both include queued
    entries (a queued newer copy replaces the row on disk, newest first, stale ones left out) and
    neither runs a commit under the store lock."""
    path = tmp_path / "c.db"
    store = CacheStore(path)
    now = time.time()
    on_disk = Entry.create("a", "s", "/a", 200, (), b"old", 60, now - 30)
    store.put(on_disk)
    store.put(Entry.create("b", "s", "/b", 200, (), b"b", 60, now - 20))
    commits: list[str] = []
    store._db.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    newer = Entry.create("a", "s", "/a", 200, (), b"new", 60, now - 5)
    queued = Entry.create("c", "s", "/c", 200, (), b"c", 60, now - 10)
    stale = Entry.create("d", "s", "/d", 200, (), b"d", 1, now - 100)
    for e in (newer, queued, stale):
        store.write_behind(e)
    got = store.fresh_entries(now=now)
    assert [(e.key, e.body) for e in got] == [("a", b"new"), ("c", b"c"), ("b", b"b")]
    assert [e.key for e in store.fresh_entries(2, now=now)] == ["a", "c"]
    assert len(store) == 4  # a, b on disk; c, d queued (a's queued copy is no second entry)
    assert commits == [] and set(_rows(path)) == {"a", "b"}
    assert store.flush_behind() == 3 and len(store) == 4


WRITER = """
import sys, time
from pathlib import Path
from fleetci.cache.store import CacheStore, Entry
store = CacheStore(Path(sys.argv[1]))
print("ready", flush=True)
i = 0
while True:
    for _ in range(20):
        body = (b"%d:" % i) * (50 + i % 400)
        headers = (("ETag", f'"{i}"'),)
        store.write_behind(Entry.create(f"k{i}", "s", f"/repos/o/r{i % 97}", 200, headers, body, 60))
        i += 1
    store.flush_behind()
"""


def test_write_behind_commits_survive_kill_9_whole(tmp_path: Path) -> None:
    """Crash safety of the deferred commits: a writer killed (SIGKILL) at arbitrary moments of its batches
    leaves a file that passes integrity_check, where every row is one whole entry (its digest and its
    body as written) and a restart opens it with nothing moved aside."""
    import random
    import subprocess
    import sys

    path = tmp_path / "c.db"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(random.uniform(0.1, 0.5))
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
        with contextlib.closing(sqlite3.connect(path)) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            rows = db.execute("SELECT key, body, digest FROM entries").fetchall()
        assert rows
        for key, body, digest in rows:
            i = int(key[1:])
            assert bytes(body) == (b"%d:" % i) * (50 + i % 400)
            assert hashlib.sha256(body).hexdigest() == digest
        reopened = CacheStore(path)
        assert reopened.corrupt_moved_to is None and len(reopened) == len(rows)
        reopened.close()


@pytest.mark.parametrize("body_size", [500, 6000])
def test_memory_tier_budget_counts_what_python_holds(tmp_path: Path, body_size: int) -> None:
    """Issue 16: a full tier costs its budget, not 1.3-3x it. Small API answers are mostly headers and
    Python objects (tuples, str, the Entry): counting their text alone let a 4 MiB tier hold ~9 MB."""
    import tracemalloc

    store = CacheStore(tmp_path / "c.db", memory_bytes=512 * 1024)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(1000):  # fresh objects per entry, as parsed from an upstream answer or Redis
            headers = tuple((f"X-Header-{j}-{i}", f"value {j} of answer {i} " + "v" * 20) for j in range(20))
            body = os.urandom(body_size // 2).hex().encode()
            key = hashlib.sha256(b"%d" % i).hexdigest()
            store.remember(Entry.create(key, "s" * 32, f"/repos/o/r/issues?page={i}", 200, headers, body, 60))
        held = sum(d.size_diff for d in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert store.memory_tier_bytes <= 512 * 1024
    assert 0.8 * store.memory_tier_bytes <= held <= 1.15 * store.memory_tier_bytes, (
        held,
        store.memory_tier_bytes,
    )


def _fresh_python(probe: str) -> str:
    """The output of ``probe`` in a new interpreter whose environment lacks the frozenlist switch (an
    in-process ``main(["cache", ...])`` of another test may have set it in this one)."""
    env = {k: v for k, v in os.environ.items() if k != "FROZENLIST_NO_EXTENSIONS"}
    return subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout


def test_the_cache_verb_loads_no_cxx_runtime() -> None:
    """``fleetci cache`` runs frozenlist's pure-Python twin: its C++ extension alone loads libstdc++
    (~0.9 MB of a proxy's RSS, issue 16)."""
    probe = (
        "import sys\n"
        "from fleetci.cli import build_parser, prepare_process\n"
        "prepare_process('cache')\n"  # as fleetci.cli.main does, before build_parser
        "build_parser('cache')\n"
        "import fleetci.cache.server\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('frozenlist._frozenlist' in sys.modules, 'libstdc++' in maps)\n"
    )
    out = _fresh_python(probe)
    assert out.split() == ["False", "False"]


def test_only_the_fleetci_process_switches_frozenlist_to_pure_python() -> None:
    """Building the parser (a library caller, a test) leaves the environment alone; ``main`` running the
    cache verb sets the switch before anything imports frozenlist."""
    probe = (
        "import os\n"
        "from fleetci.cli import build_parser, main\n"
        "build_parser('cache')\n"
        "print(os.environ.get('FROZENLIST_NO_EXTENSIONS', '-'))\n"
        "try:\n"
        "    main(['cache', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(os.environ.get('FROZENLIST_NO_EXTENSIONS', '-'))\n"
    )
    out = _fresh_python(probe)
    assert out.split()[0] == "-" and out.split()[-1] == "1"
