"""The shared store on Redis or Valkey (``CACHE_BACKEND=redis://HOST:PORT/DB``, extra ``[redis]``).

Keys (``fleetci:<fleet id>:…``, the fleet id derived from the secret or ``CACHE_FLEET``):
``e:<entry key>`` a sealed entry, expiring ``max_stale`` after its fresh window (a stale copy still
lets another proxy revalidate for free); ``l:<entry key>`` the miss lock (``SET NX PX`` with a token of
its own, a lease of ``claim_wait`` renewed while the holder fetches, released only by its holder: a slow
upstream keeps it, a holder that died loses it after one lease); ``r:<hash>`` a sealed rate-limit block
of one credential, expiring when the block ends.
The channel ``i`` carries webhook invalidations (issue 17): sealed ``[prefixes, exact]`` lists that every
proxy of the fleet applies to its own tiers (``CacheEngine.invalidate``). The channel ``e`` pushes small
entries (sealed value at most ``CACHE_SHARED_PUSH_BYTES``) to every proxy as they are written, in the
same pipeline: a proxy keeps those of scopes its clients used lately on disk (``CacheEngine.accept_shared``;
the scope is checked before the seal is opened), so its first read of what another proxy fetched is a
local read instead of a Redis round trip (issue 16: two process wake-ups and the client's command path
cost more than the 2 ms a shared hit may take). Each channel has its own subscription (connection): a
flood of pushes that makes Redis drop a slow subscriber never costs an invalidation. A proxy whose
subscription is down just looks them up in Redis.
Values are read by a small script that answers a value's length instead of the value when it exceeds
:data:`MAX_SHARED_VALUE`, so a hostile giant value never crosses the wire. Every call has a short
timeout and no client-side retries: a Redis that is down turns the store ``degraded`` (one log line),
calls are skipped, and a background task reconnects with ``fleetci.retry`` backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import valkey.asyncio as aiovalkey
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import AuthenticationError, ResponseError, ValkeyError

from fleetci.cache.shared import (
    MAX_SHARED_VALUE,
    Sealer,
    SharedLookup,
    Unsealed,
    open_entry,
    open_limit,
    open_push,
    push_message,
    push_scope,
    seal_entry,
    seal_limit,
    split_push,
)
from fleetci.cache.store import Entry
from fleetci.errors import FleetciError
from fleetci.http import describe, redact_url
from fleetci.retry import Backoff, call_async
from fleetci.wait import WaitTimeout, wait_until_async, within

log = logging.getLogger("fleetci.cache")

T = TypeVar("T")
CALL_TIMEOUT = 0.5  # seconds: a slow or stopped Redis must not hold a client's request
RECONNECT = Backoff(retries=None, initial=0.1, most=2.0, jitter=0.1)
POOL_SIZE = 16  # connections per proxy
MONITOR_EVERY = 1.0  # seconds between PINGs while the store is healthy
WAIT_POLL = 0.005  # seconds between looks for a lock holder's entry
MAX_LIMIT_VALUE = 4096
DOWN = (ValkeyError, OSError, asyncio.TimeoutError)
INVALIDATION_SCOPE = "fleet-invalidation"  # sealing scope of invalidations: they concern every scope
MAX_INVALIDATION_BYTES = 64 * 1024
MAX_INVALIDATION_TARGETS = 64
LISTEN_IDLE = 10.0  # seconds without a message before the subscription checks its connection
PUSH_RATE = 200.0  # pushed entries a proxy opens per second (a burst of as many); the rest wait for Redis


def _targets(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_INVALIDATION_TARGETS:
        raise ValueError("not a list of targets")
    if not all(isinstance(t, str) and t.startswith("/") and len(t) <= 512 for t in value):
        raise ValueError("not a list of targets")
    return tuple(value)


# GET, unless the value is longer than ARGV[1]: then its length (an integer), never the bytes. In a
# pipeline sent with EVAL (Redis caches the compiled script): valkey-py's EVALSHA in a pipeline (as
# redis-py's) costs a SCRIPT EXISTS round trip on every execution. Outside pipelines the scripts go by EVALSHA
# (``register_script``: the 40-byte digest instead of the text, and no hashing of it on the server;
# valkey-py loads the script again once on NOSCRIPT, after a SCRIPT FLUSH or a restarted Redis).
CAPPED_GET = """
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return n end
return redis.call('GET', KEYS[1])
"""
# A local miss reads the entry KEYS[1] (at most ARGV[1] bytes) and the rate-limit block KEYS[2] (at most
# ARGV[2]) in one command: each value, or its length when longer, or -1 when it is not a string (a hostile
# key of another type rejects that value only).
CAPPED_GET_BOTH = """
local out = {}
for i, key in ipairs(KEYS) do
  local n = redis.pcall('STRLEN', key)
  if type(n) ~= 'number' then out[i] = -1
  elseif n > tonumber(ARGV[i]) then out[i] = n
  else out[i] = redis.call('GET', key) end
end
return out
"""
# Renew (ARGV[2] ms) or drop (no ARGV[2]) the lock KEYS[1] only while it still holds our token ARGV[1]: a
# holder whose lease ran out must not extend or delete the next holder's lock.
IF_OURS = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""


def without_password(url: str) -> str:
    """``url`` without the password of its userinfo (the user name stays, for Redis ACLs): valkey-py lets a
    password in the URL beat the ``password`` argument, and ``CACHE_REDIS_PASSWORD`` must win."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, host = parts.netloc.rpartition("@")[0].partition(":")[0], parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}@{host}" if user else host).geturl()


@dataclass(frozen=True)
class _Seen:
    """A finished wait: the holder's entry, or None when it released the lock without one."""

    entry: Entry | None


class RedisStore:
    """:class:`fleetci.cache.shared.SharedStore` on one Redis/Valkey database."""

    def __init__(
        self,
        url: str,
        password: str,
        sealer: Sealer,
        max_stale: float,
        lock_ms: int = 2000,
        push_bytes: int = 0,
    ) -> None:
        self.url = url
        self.shown = redact_url(url)
        self.sealer = sealer
        self.max_stale = max_stale
        self.lock_ms = max(300, lock_ms)  # the lease; renewed every third of it while fetching
        self.prefix = f"fleetci:{sealer.fleet_id}:"
        # A bounded pool that waits for a free connection: a burst of misses (twenty runners) must not
        # open a connection per request, nor fail with "Too many connections".
        # TLS (rediss://, valkeys://) checks the server's name: valkey-py's SSLConnection does not by
        # default (redis-py 8 did), and a plain Connection refuses ssl_* arguments.
        tls: dict[str, Any] = {}
        if urlsplit(url).scheme in ("rediss", "valkeys"):
            tls["ssl_check_hostname"] = True
        pool = aiovalkey.BlockingConnectionPool.from_url(
            without_password(url) if password else url,
            max_connections=POOL_SIZE,
            timeout=CALL_TIMEOUT,
            password=password or None,
            socket_timeout=CALL_TIMEOUT,
            socket_connect_timeout=CALL_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            health_check_interval=0,
            decode_responses=False,
            **tls,
        )
        self.client: aiovalkey.Valkey = aiovalkey.Valkey(connection_pool=pool)
        self._get_both = self.client.register_script(CAPPED_GET_BOTH)  # every shared lookup
        self._if_ours = self.client.register_script(IF_OURS)  # lease renewals and unlocks
        self.password = bool(password or urlsplit(url).password)
        self._degraded = False
        self._monitor: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._held: dict[str, tuple[bytes, asyncio.Task[None]]] = {}  # key -> (lock token, lease renewal)
        self.token = os.urandom(8).hex().encode()
        self.stats = {
            "shared_rejected": 0,
            "shared_errors": 0,
            "shared_reconnects": 0,
            "shared_lookups": 0,  # round trips of local misses (a pushed copy spares one)
            "shared_push_dropped": 0,  # pushed entries over PUSH_RATE: their readers ask Redis
            "shared_push_ignored": 0,  # pushed entries of scopes this proxy's clients did not use lately
            "shared_listen_reconnects": 0,  # subscriptions lost (invalidations or pushes) and made again
        }
        self._listeners: list[asyncio.Task[None]] = []
        self.listen_idle = LISTEN_IDLE  # seconds idle before a subscription PINGs (tests shorten it)
        self.push_bytes = push_bytes  # 0: entries are neither pushed nor taken from the channel
        self._push_budget, self._push_at = PUSH_RATE, time.monotonic()

    # -- state ---------------------------------------------------------------------------------------
    @property
    def state(self) -> str:
        return "degraded" if self._degraded else "ok"

    def counters(self) -> dict[str, int]:
        return dict(self.stats)

    async def start(self) -> None:
        """Check the store once: refused credentials are a configuration error (one line, the proxy does
        not start); an unreachable store only makes it start degraded, since that may pass."""
        try:
            await asyncio.wait_for(self.client.ping(), CALL_TIMEOUT * 2)
        except AuthenticationError as exc:
            await self.client.aclose()
            if not self.password:
                raise FleetciError(
                    f"shared store {self.shown} needs a password (CACHE_REDIS_PASSWORD): {describe(exc)}"
                ) from None
            raise FleetciError(
                f"shared store {self.shown} refused the credentials: {describe(exc)}"
            ) from None
        except ResponseError as exc:
            await self.client.aclose()
            raise FleetciError(f"shared store {self.shown} refused PING: {describe(exc)}") from None
        except DOWN as exc:
            self._down(exc)
        self._monitor = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        """A PING every second while healthy, so ``degraded`` shows in health even without misses."""
        while True:
            await asyncio.sleep(MONITOR_EVERY)
            if not self._degraded:
                await self._call(self.client.ping, True)

    def _down(self, exc: BaseException) -> None:
        self.stats["shared_errors"] += 1
        if self._degraded:
            return
        self._degraded = True
        log.warning(
            "shared store %s unreachable (%s); serving from this proxy and upstream, reconnecting",
            self.shown,
            describe(exc) if str(exc) else type(exc).__name__,
        )
        if self._reconnect is None or self._reconnect.done():
            self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        async def ping(_: int) -> None:
            await asyncio.wait_for(self.client.ping(), CALL_TIMEOUT)

        await call_async(ping, RECONNECT, retry_on=DOWN)
        self._degraded = False
        self.stats["shared_reconnects"] += 1
        log.warning("shared store %s reachable again", self.shown)

    async def _call(self, action: Callable[[], Awaitable[T]], default: T) -> T:
        if self._degraded:
            return default
        try:
            return await within(action(), CALL_TIMEOUT)
        except DOWN as exc:
            if isinstance(exc, ResponseError):  # an answer, not an outage (WRONGTYPE on a hostile key)
                self.stats["shared_rejected"] += 1
                return default
            self._down(exc)
            return default

    def _spawn(self, action: Callable[[], Awaitable[Any]]) -> None:
        async def run() -> None:
            await self._call(action, None)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- keys ----------------------------------------------------------------------------------------
    def _entry_key(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}l:{key}"

    def _limit_key(self, limit_scope: str) -> str:
        label = hashlib.sha256(self.prefix.encode() + b"\x00" + limit_scope.encode()).hexdigest()[:32]
        return f"{self.prefix}r:{label}"

    def _open(self, scope: str, key: str, raw: Any) -> Entry | None:
        if raw is None or raw == b"":
            return None
        if not isinstance(raw, bytes) or len(raw) > MAX_SHARED_VALUE:  # a length: oversize; an error
            self.stats["shared_rejected"] += 1
            return None
        try:
            return open_entry(self.sealer, self._entry_key(key), key, scope, raw)
        except Unsealed as exc:
            self.stats["shared_rejected"] += 1
            log.warning("rejected a shared entry that does not open under the fleet secret (%s)", exc)
            return None

    # -- engine calls --------------------------------------------------------------------------------
    async def lookup(self, scope: str, key: str, limit_scope: str) -> SharedLookup:
        limit_key = self._limit_key(limit_scope)
        self.stats["shared_lookups"] += 1

        async def both() -> Any:  # one command, not a pipeline: fewer client-side steps on every hit
            return await self._get_both(
                keys=[self._entry_key(key), limit_key], args=[MAX_SHARED_VALUE, MAX_LIMIT_VALUE]
            )

        got = await self._call(both, [None, None])
        raw, limit = got if isinstance(got, list) and len(got) == 2 else (None, None)
        entry = self._open(scope, key, raw)
        blocked_until, reason = 0.0, ""
        if isinstance(limit, bytes) and limit:
            try:
                blocked_until, reason = open_limit(self.sealer, limit_key, limit_scope, limit)
            except Unsealed:
                self.stats["shared_rejected"] += 1
        return SharedLookup(entry, blocked_until, reason)

    async def lock(self, key: str) -> bool:
        """True: we fetch (the lock is ours, renewed until ``publish``/``unlock``; or the store is down)."""
        mine = os.urandom(12).hex().encode()

        async def take() -> bool | None:
            return bool(await self.client.set(self._lock_key(key), mine, nx=True, px=self.lock_ms))

        got = await self._call(take, None)
        if got is None:  # the store is down: fetch without a lock
            return True
        if got:
            self._release(key)  # an earlier lease of ours on the key (cannot be: the engine coalesces)
            renewal = asyncio.get_running_loop().create_task(self._renew(key, mine))
            self._held[key] = (mine, renewal)
        return got

    async def _renew(self, key: str, mine: bytes) -> None:
        """Extend the lease every third of it while the holder fetches (an upstream slower than
        ``claim_wait`` keeps the lock); stops when the lock is no longer ours."""
        lock_key = self._lock_key(key)
        while True:
            await asyncio.sleep(self.lock_ms / 3000)
            renewed = await self._call(lambda: self._if_ours(keys=[lock_key], args=[mine, self.lock_ms]), 0)
            if not renewed:
                return

    def _release(self, key: str) -> bytes | None:
        """Stop renewing our lock on ``key``; its token, for the compare-and-delete, or None."""
        held = self._held.pop(key, None)
        if held is None:
            return None
        held[1].cancel()
        return held[0]

    async def wait_for(self, scope: str, key: str, timeout: float) -> Entry | None:
        """The lock holder's entry once it is there, waiting as long as the lock exists (at most
        ``timeout``); None when the lock went away without an entry, on timeout, or when the store went
        down (the caller then tries the lock again or fetches itself)."""

        async def look() -> _Seen | None:
            async def both() -> list[Any]:
                async with self.client.pipeline(transaction=False) as p:
                    p.eval(CAPPED_GET, 1, self._entry_key(key), str(MAX_SHARED_VALUE))
                    p.exists(self._lock_key(key))
                    return list(await p.execute(raise_on_error=False))

            if self._degraded:
                return _Seen(None)
            raw, locked = await self._call(both, [None, 0])
            if self._degraded:
                return _Seen(None)
            entry = self._open(scope, key, raw)
            if entry is not None and entry.is_fresh(time.time()):
                return _Seen(entry)
            return None if locked else _Seen(None)

        try:
            seen = await wait_until_async(look, timeout=timeout, what="the shared entry", interval=WAIT_POLL)
        except WaitTimeout:
            return None
        return seen.entry

    def publish(self, entry: Entry) -> None:
        """Write ``entry`` (and drop our lock on it) in the background; a failure only degrades."""
        mine = self._release(entry.key)
        if self._degraded:
            return
        ekey = self._entry_key(entry.key)
        value = seal_entry(self.sealer, ekey, entry)
        ttl_ms = int(max(1.0, entry.fresh_until - time.time() + self.max_stale) * 1000)

        pushed = push_message(self.token, entry.key, value) if len(value) <= self.push_bytes else None

        async def write() -> None:
            async with self.client.pipeline(transaction=False) as p:
                p.set(ekey, value, px=ttl_ms)
                if pushed is not None:  # after the SET: a proxy that gets it finds the same value in Redis
                    p.publish(self._entries_channel, pushed)
                if mine is not None:
                    p.eval(IF_OURS, 1, self._lock_key(entry.key), mine.decode())  # hex: the same bytes
                await p.execute()

        self._spawn(write)

    def unlock(self, key: str) -> None:
        """Release a lock we hold without an entry (error, uncacheable answer): waiters stop waiting."""
        mine = self._release(key)
        if mine is not None:
            self._spawn(lambda: self._if_ours(keys=[self._lock_key(key)], args=[mine]))

    def share_limit(self, limit_scope: str, blocked_until: float, reason: str) -> None:
        ms = int((blocked_until - time.time()) * 1000)
        if ms <= 0 or self._degraded:
            return
        rkey = self._limit_key(limit_scope)
        value = seal_limit(self.sealer, rkey, limit_scope, blocked_until, reason)
        self._spawn(lambda: self.client.set(rkey, value, px=ms))

    # -- webhook invalidations (issue 17): Redis pub/sub on ``<prefix>i`` ---------------------------------
    @property
    def _channel(self) -> str:
        return f"{self.prefix}i"

    @property
    def _entries_channel(self) -> str:
        return f"{self.prefix}e"

    def invalidate(self, prefixes: tuple[str, ...], exact: tuple[str, ...]) -> None:
        """Tell every proxy of the fleet (``listen``) that these targets changed upstream."""
        if self._degraded:
            return
        payload = json.dumps([list(prefixes), list(exact)], separators=(",", ":")).encode()
        sealed = self.sealer.seal(INVALIDATION_SCOPE, payload, self._channel.encode())
        self._spawn(lambda: self.client.publish(self._channel, self.token + b"\n" + sealed))

    def listen(
        self,
        apply: Callable[[tuple[str, ...], tuple[str, ...]], object],
        accept: Callable[[Entry], object] | None = None,
        wanted: Callable[[str], bool] | None = None,
    ) -> None:
        """Apply the fleet's invalidations as they arrive, and hand entries other proxies push to
        ``accept`` (with a push cap; only scopes ``wanted`` says yes to, None: all). Two subscriptions,
        each on its own connection, which reconnect: a burst of pushes that makes Redis drop a slow
        subscriber (its pubsub output-buffer limit) never costs an invalidation."""
        loop = asyncio.get_running_loop()
        self._listeners.append(
            loop.create_task(self._listen(self._channel, lambda data: self._received(data, apply)))
        )
        if accept is not None and self.push_bytes > 0:
            self._listeners.append(
                loop.create_task(
                    self._listen(self._entries_channel, lambda data: self._pushed(data, accept, wanted))
                )
            )

    async def _listen(self, channel: str, handle: Callable[[Any], None]) -> None:
        while True:
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(channel)
                pinged = False
                while True:
                    # Not ``listen()``: its reads carry the pool's socket timeout (CALL_TIMEOUT), so an
                    # idle subscription dropped every half second and was gone for RECONNECT.most.
                    message = await pubsub.get_message(timeout=self.listen_idle)
                    if message is None:  # idle: a PING (answered as a message) checks the connection
                        if pinged:
                            raise ConnectionError("the subscription did not answer a PING")
                        pinged = True
                        await within(pubsub.ping(), CALL_TIMEOUT)
                        continue
                    pinged = False
                    if message.get("type") == "message":
                        handle(message.get("data"))
            except DOWN:
                self.stats["shared_listen_reconnects"] += 1
                await asyncio.sleep(RECONNECT.most)  # the store's own reconnect reports the outage
            finally:
                with contextlib.suppress(*DOWN):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    def _received(self, data: Any, apply: Callable[[tuple[str, ...], tuple[str, ...]], object]) -> None:
        if not isinstance(data, bytes) or len(data) > MAX_INVALIDATION_BYTES:
            self.stats["shared_rejected"] += 1
            return
        origin, _, sealed = data.partition(b"\n")
        if origin == self.token:
            return  # our own: applied when it was sent
        try:
            prefixes, exact = json.loads(self.sealer.open(INVALIDATION_SCOPE, sealed, self._channel.encode()))
            lists = [_targets(prefixes), _targets(exact)]
        except Exception:  # not sealed by this fleet, or not two lists of targets
            self.stats["shared_rejected"] += 1
            return
        self._hand_over("apply a fleet invalidation", apply, lists[0], lists[1])

    def _pushed(
        self, data: Any, accept: Callable[[Entry], object], wanted: Callable[[str], bool] | None = None
    ) -> None:
        """An entry another proxy pushed: size first, then whose it is, its (plaintext) scope, the rate
        cap, then the seal: a push of a scope this proxy's clients do not use costs no AES."""
        try:
            origin, key, value = split_push(data, self.push_bytes)
            scope = push_scope(value)
        except Unsealed:
            self.stats["shared_rejected"] += 1
            return
        if origin == self.token:
            return  # our own
        if wanted is not None and not wanted(scope):
            self.stats["shared_push_ignored"] += 1
            return
        now = time.monotonic()
        self._push_budget = min(PUSH_RATE, self._push_budget + (now - self._push_at) * PUSH_RATE)
        self._push_at = now
        if self._push_budget < 1:
            self.stats["shared_push_dropped"] += 1
            return
        self._push_budget -= 1
        try:
            entry = open_push(self.sealer, self._entry_key(key), key, value)
        except Unsealed:
            self.stats["shared_rejected"] += 1
            return
        self._hand_over("keep an entry another proxy pushed", accept, entry)

    def _hand_over(self, what: str, engine_call: Callable[..., object], *args: Any) -> None:
        """Give the engine what a subscription brought; when its store fails (SQLite busy, disk full) the
        failure is counted and logged in one line, and the subscription goes on."""
        try:
            engine_call(*args)
        except Exception as exc:
            self.stats["shared_errors"] += 1
            log.warning("could not %s (%s)", what, type(exc).__name__)
            log.debug("could not %s", what, exc_info=True)

    async def close(self) -> None:
        for listener in self._listeners:
            listener.cancel()
        for key in list(self._held):
            self._release(key)
        for task in (self._reconnect, self._monitor):
            if task is not None:
                task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=CALL_TIMEOUT)
        with contextlib.suppress(*DOWN):
            await self.client.aclose()
