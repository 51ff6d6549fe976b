"""The shared store's settings and sealing (no Redis needed; tests/integration/test_cache_redis.py has it)."""

from __future__ import annotations

import dataclasses

import pytest

from fleetci.cache.settings import cache_settings, parse_backend
from fleetci.cache.shared import Unsealed, open_entry, open_limit, seal_entry, seal_limit
from fleetci.cache.store import Entry
from fleetci.errors import UsageError
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
