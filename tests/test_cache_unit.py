"""Fast logic: policy, keys, rate-limit tracker, store, configuration precedence."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from pathlib import Path

import pytest

from fleetci.cache.policy import TTLPolicy, cache_key, normalize_target, scope_of, wants_revalidation
from fleetci.cache.ratelimit import RateLimitTracker
from fleetci.cache.store import CacheStore, Entry, cid_of
from fleetci.config import Resolver, TTLRule, cache_settings, parse_ttl_rules
from fleetci.errors import UsageError


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
    s = CacheStore(tmp_path / "c.db", max_entries=100, max_bytes=100_000, memory_bytes=3000)
    for i in range(10):
        s.put(_entry(str(i), b"x" * 1000))
    assert s.memory_tier_bytes <= 3000  # RAM holds the hot few ...
    assert s.total_bytes >= 10_000 and len(s) == 10  # ... disk keeps every entry
    assert all(s.get(str(i)) is not None for i in range(10))  # cold ones come back from disk
    assert s.memory_tier_bytes <= 3000
    big = CacheStore(tmp_path / "d.db", memory_bytes=10)  # the newest entry stays until it is on disk
    big.remember(_entry("n", b"y" * 100))
    assert big.get("n") is not None


def test_cold_put_stays_out_of_memory_until_read(tmp_path: Path) -> None:
    """Entries peers push (``hot=False``) take no RAM until a client here reads one."""
    s = CacheStore(tmp_path / "c.db")
    s.put(_entry("hot", b"h" * 1000))
    s.put(_entry("cold", b"c" * 5000), hot=False)
    assert s.memory_tier_bytes == _entry("hot", b"h" * 1000).size
    got = s.get("cold")
    assert got is not None and got.body == b"c" * 5000
    assert s.memory_tier_bytes == _entry("hot", b"h" * 1000).size + got.size  # read: now it is hot
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
    from fleetci.p2p.messages import Announcement

    settings = cache_settings({"cache_dir": str(tmp_path)}, {}, {})
    engine = CacheEngine(settings)
    pushed = Entry.create("p" * 64, "scope", "/repos/o/r", 200, (("ETag", '"e"'),), b"b" * 4000, 60)
    before = engine.store.memory_tier_bytes
    engine.accept_announcements([Announcement.of(pushed, "12D3KooWpeer")])
    assert engine.store.memory_tier_bytes == before
    got = engine.store.get(pushed.key)
    assert got is not None and got.body == pushed.body and got.etag == '"e"'
    assert engine.store.memory_tier_bytes == before + got.size


def test_first_answer_of_a_pushed_entry_says_peer_and_the_marks_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetci.cache import engine as engine_module
    from fleetci.cache.engine import CacheEngine
    from fleetci.p2p.messages import Announcement

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
