"""The shared store's settings and sealing (no Redis needed; tests/integration/test_cache_redis.py has it)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetci.cache.engine import CacheEngine
from fleetci.cache.settings import cache_settings, parse_backend
from fleetci.cache.shared import (
    PUSH_OVERHEAD,
    Unsealed,
    open_entry,
    open_limit,
    open_push,
    push_message,
    seal_entry,
    seal_limit,
    split_push,
)
from fleetci.cache.store import Entry
from fleetci.errors import UsageError
from fleetci.http import UpstreamError
from fleetci.p2p.crypto import FleetKeys
from support import RunCli, clean_env, one_line_error


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://cache.example:6380/3",
        "redis://h",
        "redis://:pw@h:1/2",
        "valkey://127.0.0.1:6379/0",
        "valkeys://cache.example:6380/3",
    ],
)
def test_backend_urls_accepted(url: str) -> None:
    assert parse_backend(url) == url


@pytest.mark.parametrize("value", ["", "local", "  "])
def test_local_backend_is_empty(value: str) -> None:
    assert parse_backend(value) == ""


@pytest.mark.parametrize(
    "url",
    [
        "memcached://:hunter2@h:1/0",
        "redis://:hunter2@h:99999/0",
        "redis://:hunter2@h:1/db0",
        "redis://:hunter2@:1/0",
        "redis://:hunter2@h:1/0?ssl=1",
        "redis://:hunter2@h:0/0",
    ],
)
def test_bad_backend_urls_are_refused_without_the_password(url: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_backend(url)
    assert "hunter2" not in str(exc.value) and "***" in str(exc.value)


def test_backend_follows_precedence_and_password_stays_out_of_repr() -> None:
    env = {"CACHE_BACKEND": "redis://env:1/0", "CACHE_REDIS_PASSWORD": "pw-123"}
    s = cache_settings({"backend": "redis://flag:2/0"}, {"cache": {"backend": "redis://file:3/0"}}, env)
    assert s.backend == "redis://flag:2/0" and s.redis_password == "pw-123"
    assert cache_settings({}, {"cache": {"backend": "redis://file:3/0"}}, env).backend == "redis://env:1/0"
    assert cache_settings({}, {"cache": {"backend": "redis://file:3/0"}}, {}).backend == "redis://file:3/0"
    assert cache_settings({}, {}, {}).backend == ""
    assert "pw-123" not in repr(s) and "flag" not in repr(s)
    with pytest.raises(UsageError, match=r"\$CACHE_BACKEND"):
        cache_settings({}, {}, {"CACHE_BACKEND": "http://x"})


def test_serve_with_a_bad_backend_flag_is_a_usage_error(fleetci: RunCli) -> None:
    proc = fleetci("cache", "serve", "--backend", "ftp://:hunter2@h/0", env=clean_env())
    assert proc.returncode == 2 and "--backend" in one_line_error(proc)
    assert "hunter2" not in proc.stderr + proc.stdout


def test_serve_with_a_backend_but_no_secret_is_a_usage_error(fleetci: RunCli) -> None:
    proc = fleetci("cache", "serve", env=clean_env(CACHE_BACKEND="redis://:hunter2@127.0.0.1:1/0"))
    assert proc.returncode == 2 and "FLEETCI_CACHE_SECRET" in one_line_error(proc)
    assert "hunter2" not in proc.stderr + proc.stdout


ENTRY = Entry.create("k" * 64, "s" * 32, "/repos/o/r", 200, (("ETag", '"x"'),), b'{"private": 1}', 60)


def test_sealed_entry_opens_only_with_its_key_scope_and_secret() -> None:
    keys = FleetKeys("secret-one")
    raw = seal_entry(keys, "fleetci:f:e:k", ENTRY)
    assert b"private" not in raw and b"/repos/o/r" not in raw
    got = open_entry(keys, "fleetci:f:e:k", ENTRY.key, ENTRY.scope, raw)
    assert dataclasses.astuple(got) == dataclasses.astuple(ENTRY)
    with pytest.raises(Unsealed):
        open_entry(FleetKeys("secret-two"), "fleetci:f:e:k", ENTRY.key, ENTRY.scope, raw)
    with pytest.raises(Unsealed):  # copied under another key
        open_entry(keys, "fleetci:f:e:other", ENTRY.key, ENTRY.scope, raw)
    with pytest.raises(Unsealed):  # asked for under another scope
        open_entry(keys, "fleetci:f:e:k", ENTRY.key, "t" * 32, raw)
    for i in range(0, len(raw), max(1, len(raw) // 40)):  # any flipped byte
        bad = bytearray(raw)
        bad[i] ^= 0x40
        with pytest.raises(Unsealed):
            open_entry(keys, "fleetci:f:e:k", ENTRY.key, ENTRY.scope, bytes(bad))
    for junk in (b"", b"\n\n", b"fleetci-entry/1\n" + b"s" * 32 + b"\n", raw[: len(raw) // 2]):
        with pytest.raises(Unsealed):
            open_entry(keys, "fleetci:f:e:k", ENTRY.key, ENTRY.scope, junk)


def test_sealed_rate_limit_record() -> None:
    keys = FleetKeys("secret-one")
    raw = seal_limit(keys, "fleetci:f:r:x", "scope", 1234.5, "primary rate limit")
    assert open_limit(keys, "fleetci:f:r:x", "scope", raw) == (1234.5, "primary rate limit")
    with pytest.raises(Unsealed):
        open_limit(keys, "fleetci:f:r:y", "scope", raw)
    with pytest.raises(Unsealed):
        open_limit(keys, "fleetci:f:r:x", "scope", b"x" * 40)


# -- pushed entries (CACHE_SHARED_PUSH_BYTES): the message codec ------------------------------------------
ORIGIN = b"0123456789abcdef"
REDIS_KEY = "fleetci:f:e:" + ENTRY.key


def pushed(keys: FleetKeys, entry: Entry = ENTRY) -> bytes:
    return push_message(ORIGIN, entry.key, seal_entry(keys, "fleetci:f:e:" + entry.key, entry))


def opened(keys: FleetKeys, data: bytes, cap: int = 4096) -> Entry:
    origin, key, value = split_push(data, cap)
    assert origin == ORIGIN
    return open_push(keys, "fleetci:f:e:" + key, key, value)


def test_pushed_entry_opens_as_stored_and_carries_no_secret() -> None:
    keys = FleetKeys("secret-one")
    data = pushed(keys)
    assert b"private" not in data and b"/repos/o/r" not in data and b"secret-one" not in data
    assert dataclasses.astuple(opened(keys, data)) == dataclasses.astuple(ENTRY)
    with pytest.raises(Unsealed):  # another fleet's secret
        opened(FleetKeys("secret-two"), data)


def test_pushed_entry_for_another_key_or_scope_does_not_open() -> None:
    keys = FleetKeys("secret-one")
    origin, key, value = split_push(pushed(keys), 4096)
    other = dataclasses.replace(ENTRY, key="a" * 64)
    with pytest.raises(Unsealed):  # the value replayed under another key
        opened(keys, push_message(origin, other.key, value))
    fmt, scope, sealed = value.split(b"\n", 2)
    with pytest.raises(Unsealed):  # the same value claiming another scope
        opened(keys, push_message(origin, key, b"\n".join((fmt, b"t" * 32, sealed))))
    bob = dataclasses.replace(ENTRY, scope="b" * 32)  # sealed for another scope under this key
    with pytest.raises(Unsealed):
        opened(
            keys, push_message(origin, key, b"\n".join((fmt, scope, pushed(keys, bob).split(b"\n", 4)[4])))
        )


def test_pushed_message_over_the_cap_is_refused_before_it_is_parsed() -> None:
    keys = FleetKeys("secret-one")
    data = pushed(keys)
    cap = len(data) - PUSH_OVERHEAD
    assert dataclasses.astuple(opened(keys, data, cap)) == dataclasses.astuple(ENTRY)
    with pytest.raises(Unsealed, match="size cap"):
        split_push(data, cap - 1)
    with pytest.raises(Unsealed, match="size cap"):
        split_push(b"\n" * (cap + PUSH_OVERHEAD + 1), cap)


def test_tampered_pushed_message_never_opens() -> None:
    keys = FleetKeys("secret-one")
    data = pushed(keys)
    start = len(ORIGIN) + 1  # the origin is only compared with the receiver's own token
    for i in range(start, len(data), max(1, len(data) // 60)):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(Unsealed):
            opened(keys, bytes(bad))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600) | st.lists(st.binary(max_size=80), max_size=6).map(b"\n".join))
def test_garbage_pushed_messages_are_refused_cleanly(data: bytes) -> None:
    keys = _KEYS
    try:
        _, key, value = split_push(data, 512)
        open_push(keys, "fleetci:f:e:" + key, key, value)
    except Unsealed:
        return
    raise AssertionError(f"garbage opened: {data!r}")


_KEYS = FleetKeys("secret-one")


# -- pushed entries: what the engine keeps (CacheEngine.accept_shared) -------------------------------------
AUTH = [("Authorization", "token ghp_pushTestTokenpushTestTokenpushTest1")]


def _pushed_entry(engine: CacheEngine, target: str, ttl: float = 60, at: float | None = None) -> Entry:
    prep = engine.prepare(target, {"authorization": AUTH[0][1]})
    body = b'{"full_name": "o/r"}'
    return Entry.create(prep.key, prep.scope, prep.target, 200, (("ETag", '"v1"'),), body, ttl, now=at)


def _engine(tmp_path: Path, max_entries: int = 10_000, started: float | None = None) -> CacheEngine:
    """An engine whose clients used AUTH's scope just now (pushes of it are wanted), started an hour
    ago unless ``started`` says otherwise (pushes stored since are not refused as from before start)."""
    settings = {"upstream": "http://127.0.0.1:9", "cache_dir": str(tmp_path), "max_entries": max_entries}
    engine = CacheEngine(cache_settings(settings, {}, {}))
    engine._started = time.time() - 3600 if started is None else started
    engine._served_scope(engine.prepare("/", {"authorization": AUTH[0][1]}).scope, time.time())
    return engine


def test_pushed_entry_is_kept_on_disk_only_and_its_first_read_says_shared(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, bool, int, list[str], int, int]:
        engine = _engine(tmp_path)
        try:
            entry = _pushed_entry(engine, "/repos/o/r")
            kept = engine.accept_shared(entry)
            in_memory = entry.key in engine.store._mem
            engine.store.flush_behind()
            rows = len(engine.store)
            outcomes = [(await engine.handle("GET", "/repos/o/r", AUTH)).outcome for _ in range(2)]
            again = engine.accept_shared(entry)  # our copy is as fresh: nothing to do
            return kept, in_memory, rows, outcomes, engine.stats()["shared_pushed"], int(again)
        finally:
            await engine.close()

    kept, in_memory, rows, outcomes, pushed_count, again = asyncio.run(scenario())
    assert kept and not in_memory and rows == 1
    assert outcomes == ["SHARED", "HIT"] and pushed_count == 1 and again == 0


def test_pushed_entries_that_are_stale_or_predate_a_webhook_invalidation_are_dropped(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        engine = _engine(tmp_path)
        try:
            old = _pushed_entry(engine, "/repos/o/r", at=time.time() - 1)
            engine.invalidate(["/repos/o/"], forward=False)  # a webhook: o/* changed just now
            replayed = engine.accept_shared(old)  # sealed before the change: a replay, or late
            expired = engine.accept_shared(_pushed_entry(engine, "/repos/o/x", ttl=10, at=time.time() - 20))
            other = engine.accept_shared(_pushed_entry(engine, "/repos/p/r"))  # another repository
            return [replayed, expired, other, len(engine.store) == 1]
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == [False, False, True, True]


def test_pushed_entries_of_a_scope_no_client_used_here_are_not_kept(tmp_path: Path) -> None:
    """Another token's entries: this proxy's clients can never read them (and its cache.db must not hold
    a credential's private answers that no job here presented)."""

    async def scenario() -> list[bool]:
        engine = _engine(tmp_path)
        try:
            foreign = {"authorization": "token ghp_" + "b" * 36}
            prep = engine.prepare("/repos/o/r", foreign)
            entry = Entry.create(prep.key, prep.scope, prep.target, 200, (), b"{}", 60)
            before = [engine.wants_shared(prep.scope), engine.accept_shared(entry)]
            with pytest.raises(UpstreamError):  # upstream down; the scope was used all the same
                await engine.handle("GET", "/repos/o/other", list(foreign.items()))
            return [*before, engine.wants_shared(prep.scope), engine.accept_shared(entry)]
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == [False, False, True, True]


def test_pushed_entries_go_in_cold_and_never_evict_what_this_proxy_read(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, bool, int]:
        engine = _engine(tmp_path, max_entries=50)
        try:
            own = [_pushed_entry(engine, f"/repos/o/own{i}") for i in range(40)]
            for entry in own:
                engine._persist_later(entry)
            engine.store.flush_behind()
            pushed = [_pushed_entry(engine, f"/repos/z/q{i}") for i in range(60)]
            assert all(engine.accept_shared(p) for p in pushed[:10])
            engine.store.flush_behind()
            read = (await engine.handle("GET", pushed[0].target, AUTH)).outcome  # promotes it
            for p in pushed[10:]:
                engine.accept_shared(p)
            engine.store.flush_behind()
            left = sum(engine.store.peek(e.key) is not None for e in own)
            return left, read == "SHARED" and engine.store.peek(pushed[0].key) is not None, len(engine.store)
        finally:
            await engine.close()

    left, promoted, rows = asyncio.run(scenario())
    assert left == 40 and promoted and rows == 50  # the read pushed entry outlived 59 unread ones


def test_shared_origin_marks_are_bounded_by_the_store_size(tmp_path: Path) -> None:
    async def scenario() -> int:
        engine = _engine(tmp_path, max_entries=50)
        try:
            for i in range(120):
                assert engine.accept_shared(_pushed_entry(engine, f"/repos/z/q{i}"))
            return len(engine._shared_origin)
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == 50


def test_older_push_with_a_longer_window_does_not_replace_a_newer_copy(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        engine = _engine(tmp_path)
        try:
            now = time.time()
            newer = _pushed_entry(engine, "/repos/o/r", ttl=60, at=now - 10)
            older = _pushed_entry(engine, "/repos/o/r", ttl=600, at=now - 100)
            return [engine.accept_shared(newer), engine.accept_shared(older)]
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == [True, False]


def test_pushes_stored_before_this_process_started_are_refused(tmp_path: Path) -> None:
    """Invalidations are remembered in memory only: a push sealed before a restart may be a replay of a
    copy a webhook made obsolete while this process was not there to hear it."""

    async def scenario() -> list[bool]:
        engine = _engine(tmp_path, started=time.time())
        try:
            before = _pushed_entry(engine, "/repos/o/r", at=engine._started - 5)
            after = _pushed_entry(engine, "/repos/o/s", at=engine._started + 0.001)
            return [engine.accept_shared(before), engine.accept_shared(after)]
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == [False, True]


# -- the Redis store's receiving side (no connection needed: valkey-py connects lazily) ---------------------
@pytest.mark.parametrize("url", ["rediss://cache.example:6380/0", "valkeys://cache.example:6380/0"])
def test_tls_backends_check_the_server_hostname(url: str) -> None:
    """valkey-py's SSLConnection does not check the host name by default (redis-py 8 did): an on-path
    attacker with any publicly trusted certificate would get the AUTH password."""
    import ssl

    from fleetci.cache.redis_store import RedisStore

    store = RedisStore(url, "pw", FleetKeys("secret-one"), 60.0)
    context = store.client.connection_pool.make_connection().ssl_context  # type: ignore[attr-defined]
    assert context.check_hostname is True and context.cert_reqs == ssl.CERT_REQUIRED
    plain = RedisStore("redis://cache.example:6379/0", "pw", FleetKeys("secret-one"), 60.0)
    assert not hasattr(plain.client.connection_pool.make_connection(), "ssl_context")


def _store(push_bytes: int = 4096) -> Any:
    from fleetci.cache.redis_store import RedisStore

    return RedisStore("redis://127.0.0.1:9/0", "", FleetKeys("secret-one"), 60.0, push_bytes=push_bytes)


def test_push_rate_cap_drops_the_excess_and_counts_it() -> None:
    from fleetci.cache.redis_store import PUSH_RATE

    store = _store()
    keys = store.sealer
    kept: list[Entry] = []
    burst = int(PUSH_RATE) + 50
    for i in range(burst):
        entry = dataclasses.replace(ENTRY, key=f"{i:064x}")
        message = push_message(ORIGIN, entry.key, seal_entry(keys, store._entry_key(entry.key), entry))
        store._pushed(message, kept.append, lambda scope: True)
    dropped = store.stats["shared_push_dropped"]
    assert len(kept) + dropped == burst and dropped >= 40 and len(kept) >= PUSH_RATE


def test_pushes_of_an_unwanted_scope_are_ignored_before_they_are_opened() -> None:
    store = _store()
    value = seal_entry(store.sealer, store._entry_key(ENTRY.key), ENTRY)
    fmt, scope, sealed = value.split(b"\n", 2)
    garbage = push_message(ORIGIN, ENTRY.key, b"\n".join((fmt, scope, b"x" * len(sealed))))
    kept: list[Entry] = []
    store._pushed(garbage, kept.append, lambda s: s != scope.decode())  # would not open: never tried
    assert store.stats["shared_push_ignored"] == 1 and store.stats["shared_rejected"] == 0
    store._pushed(push_message(ORIGIN, ENTRY.key, value), kept.append, lambda s: s == scope.decode())
    assert kept == [ENTRY] and store.stats["shared_push_ignored"] == 1


def test_an_invalidation_the_engine_fails_to_apply_does_not_end_the_subscription() -> None:
    import sqlite3

    from fleetci.cache.redis_store import INVALIDATION_SCOPE

    store = _store()
    payload = b'[["/repos/o/"],[]]'
    message = b"f" * 16 + b"\n" + store.sealer.seal(INVALIDATION_SCOPE, payload, store._channel.encode())
    applied: list[tuple[str, ...]] = []

    def apply(prefixes: tuple[str, ...], exact: tuple[str, ...]) -> None:
        applied.append(prefixes)
        if len(applied) == 1:
            raise sqlite3.OperationalError("database is locked")

    store._received(message, apply)  # raised inside the listener task before: the task ended
    store._received(message, apply)
    assert applied == [("/repos/o/",)] * 2 and store.stats["shared_errors"] == 1
