"""Embedded cache store: SQLite (WAL) on disk with an in-memory tier in front.

Why this shape:
- SQLite commits are atomic, so ``kill -9`` in the middle of a write never leaves half an entry; each body
  also carries its sha256 so a damaged row is detected on read and dropped.
- A corrupt database file is moved aside with a warning and rebuilt: a cache must never stop CI.
- It holds private API responses: the directory is 0700 and ``cache.db``, ``-wal`` and ``-shm`` are 0600
  (the database file is created 0600 before SQLite opens it, since SQLite gives -wal/-shm its mode).
- The memory tier keeps hits in the tens of microseconds. It has its own, small byte budget
  (``CACHE_MEMORY_BYTES``, 4 MiB): the hot set of an API cache is small, and twenty runners' proxies on
  one box must not each hold the whole disk tier in RAM; colder entries are a SQLite read away, and so
  are entries peers pushed until a client here asks for one. ``PRAGMA data_version`` tells when another
  process (``fleetci cache clear``, a second proxy) changed the file, and the tier is dropped then.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fleetci.cache.settings import MEMORY_BYTES
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, move_aside, move_into_place, tighten, touch_private

if TYPE_CHECKING:
    from fleetci.cache.settings import CacheSettings

log = logging.getLogger("fleetci.cache")

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    target TEXT NOT NULL,
    status INTEGER NOT NULL,
    headers TEXT NOT NULL,
    body BLOB NOT NULL,
    etag TEXT,
    last_modified TEXT,
    stored_at REAL NOT NULL,
    fresh_until REAL NOT NULL,
    last_access REAL NOT NULL,
    size INTEGER NOT NULL,
    digest TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS entries_last_access ON entries(last_access);
-- webhook invalidation (cache/webhooks.py) finds a repository's or an organization's entries by prefix
CREATE INDEX IF NOT EXISTS entries_target_ci ON entries(lower(target));
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

Headers = tuple[tuple[str, str], ...]
# Measured with tracemalloc (tests/unit/test_cache.py): a header's 2-tuple and two str objects beyond their
# text; the Entry, its key/scope/target/digest strings and the tier's OrderedDict slot beyond ``size``.
HEADER_OVERHEAD = 235
ENTRY_OVERHEAD = 1600
STALE_PENDING_MAX = 10_000
COLD_AGE = 1e9  # seconds a pushed entry's last_access is set back: evicted before anything read here
BEHIND_MAX = 256  # queued write-behind entries (and bytes) before a write_behind commits them itself
BEHIND_BYTES = 8 * 1024 * 1024
ENTRY_COLUMNS = (
    "key, scope, target, status, headers, body, etag, last_modified, stored_at, fresh_until, digest"
)


@dataclass(frozen=True)
class Entry:
    """One cached upstream response, body decoded (no content-encoding)."""

    key: str
    scope: str
    target: str
    status: int
    headers: Headers
    body: bytes
    etag: str | None
    last_modified: str | None
    stored_at: float
    fresh_until: float
    digest: str

    @classmethod
    def create(
        cls,
        key: str,
        scope: str,
        target: str,
        status: int,
        headers: Headers,
        body: bytes,
        ttl: float,
        now: float | None = None,
    ) -> Entry:
        now = time.time() if now is None else now
        lower = {k.lower(): v for k, v in headers}
        return cls(
            key=key,
            scope=scope,
            target=target,
            status=status,
            headers=headers,
            body=body,
            etag=lower.get("etag"),
            last_modified=lower.get("last-modified"),
            stored_at=now,
            fresh_until=now + ttl,
            digest=hashlib.sha256(body).hexdigest(),
        )

    @functools.cached_property
    def size(self) -> int:  # cached: the memory tier asks on every insert and eviction
        return len(self.body) + sum(len(k) + len(v) for k, v in self.headers) + 256

    @property
    def memory_size(self) -> int:
        """What the entry really costs the memory tier (issue 16): ``size`` counts the text only, but each
        header is a tuple of two ``str`` objects and the entry an object with its own strings: for a
        500-byte API answer with twenty headers ``size`` said 1.9 KB where Python holds 8.3 KB, so a
        "4 MiB" tier of such answers held ~9 MB."""
        return self.size + HEADER_OVERHEAD * len(self.headers) + ENTRY_OVERHEAD

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def cid(self) -> str:
        """CIDv1 (raw codec, sha2-256) of the body: the content address peers announce and verify."""
        return cid_of(self.body)


_CID_LOCK = threading.Lock()
_cid_prefix: bytes | None = None


def _prefix() -> bytes:
    """CIDv1 + raw codec + sha2-256 multihash header, as multiformats builds it (computed once: the
    library registers its encodings lazily and not thread-safely)."""
    global _cid_prefix
    with _CID_LOCK:
        if _cid_prefix is None:
            from multiformats import CID, multihash

            sample = bytes(CID("base32", 1, "raw", multihash.wrap(bytes(32), "sha2-256")))
            _cid_prefix = sample[:-32]
        return _cid_prefix


def cid_of(body: bytes) -> str:
    """CIDv1 (raw, sha2-256) in multibase base32, the form ``str(multiformats.CID)`` prints. The header
    comes from multiformats; the per-body part is hashlib + base64, because multiformats spends ~0.6 ms
    in pure Python per CID and every received announcement is checked (tests compare both)."""
    prefix = _cid_prefix if _cid_prefix is not None else _prefix()
    encoded = base64.b32encode(prefix + hashlib.sha256(body).digest()).decode("ascii")
    return "b" + encoded.lower().rstrip("=")


class CacheStore:
    """Bounded LRU store (entries and bytes) that survives restarts. Thread-safe."""

    def __init__(
        self,
        path: Path,
        max_entries: int = 10_000,
        max_bytes: int = 256 * 1024 * 1024,
        memory_bytes: int = MEMORY_BYTES,
        repair: bool = True,
        *,
        memory: bool = False,
    ) -> None:
        self.path = path
        self.memory = memory  # a private in-memory database (simulated fleets): nothing on disk
        self.repair = repair  # False (inspection commands): a corrupt file is reported, never moved
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.memory_bytes = min(memory_bytes, max_bytes)
        self._lock = threading.RLock()
        self._mem: OrderedDict[str, Entry] = OrderedDict()
        self._mem_bytes = 0
        self._touched: dict[str, float] = {}
        self._stale_pending: dict[str, float] = {}  # key -> when an invalidation hit it before its write
        self._behind: OrderedDict[str, Entry] = OrderedDict()  # write_behind: not committed yet
        self._cold: set[str] = set()  # queued keys written cold (hot=False): see ``_cold_access``
        self._behind_bytes = 0
        self._last_flush = time.monotonic()
        self._count = 0
        self._bytes = 0
        self.corrupt_moved_to: Path | None = None
        self._db = self._open()
        self._data_version = self._read_data_version()
        self._recount()

    @classmethod
    def for_settings(cls, settings: CacheSettings, repair: bool = True, memory: bool = False) -> CacheStore:
        """The store ``settings`` describe; ``memory``: the same store in a private in-memory database
        (``fleetci bench fleet`` runs hundreds of engines in one process; a proxy never does)."""
        return cls(
            settings.db_path,
            settings.max_entries,
            settings.max_bytes,
            settings.memory_bytes,
            repair,
            memory=memory,
        )

    # -- opening, corruption -------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if self.memory:
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
            return db
        try:
            ensure_private_dir(self.path.parent)
        except OSError as exc:
            raise FleetciError(f"cache dir {self.path.parent} is not usable: {exc.strerror or exc}") from exc
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "unable to open" in str(exc):
                raise FleetciError(f"cache dir {self.path.parent} is not writable: {exc}") from exc
            if not self.repair:
                raise FleetciError(
                    f"cache database {self.path} is corrupt ({exc}); left in place: the proxy moves it "
                    "aside and starts empty when it next starts"
                ) from exc
            moved = self._move_aside()
            log.warning(
                "cache database %s was corrupt (%s); moved it to %s and started empty", self.path, exc, moved
            )
            try:
                return self._connect()
            except sqlite3.DatabaseError as exc2:
                raise FleetciError(f"cannot create cache database {self.path}: {exc2}") from exc2

    def _connect(self) -> sqlite3.Connection:
        try:
            touch_private(self.path)
        except OSError as exc:
            raise FleetciError(
                f"cache dir {self.path.parent} is not writable: {exc.strerror or exc}"
            ) from exc
        tighten(f"{self.path}-wal", f"{self.path}-shm")
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            # SQLite's page cache (2 MB by default) would duplicate the memory tier; the OS caches the file.
            db.execute("PRAGMA cache_size=-512")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {row[0] if row else 'no answer'}")
            db.executescript(SCHEMA)
            # A writable probe: a read-only directory or file shows here, not at the first cache miss.
            db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES('opened_at', ?)", (str(time.time()),))
        except sqlite3.OperationalError as exc:
            db.close()
            if "readonly" in str(exc) or "unable to open" in str(exc) or "disk I/O" in str(exc):
                raise FleetciError(f"cache dir {self.path.parent} is not writable: {exc}") from exc
            raise
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self) -> Path | None:
        """``cache.db.corrupt-<UTC time>`` (files.move_aside); SQLite's -wal and -shm follow it."""
        moved = move_aside(self.path)
        if moved is not None:
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    move_into_place(f"{self.path}{suffix}", f"{moved}{suffix}")
        self.corrupt_moved_to = moved
        return moved

    def _read_data_version(self) -> int:
        row = self._db.execute("PRAGMA data_version").fetchone()
        return int(row[0]) if row else 0

    def _recount(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM entries").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    def _sync_with_disk(self) -> None:
        """Drop the memory tier when another connection committed (cheap: one pragma)."""
        version = self._read_data_version()
        if version != self._data_version:
            self._data_version = version
            self._mem.clear()
            self._mem_bytes = 0
            self._recount()

    # -- reads -------------------------------------------------------------------------------------
    def peek(self, key: str) -> Entry | None:
        """The entry without counting it as read (prewarming looks every tick: a look must not keep an
        entry nobody reads from being evicted)."""
        with self._lock:
            self._sync_with_disk()
            entry = self._mem.get(key) or self._behind.get(key)
            return entry if entry is not None else self._load(key)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            self._sync_with_disk()
            entry = self._mem.get(key)
            if entry is not None:
                self._mem.move_to_end(key)
                self._touched[key] = time.time()
                return entry
            entry = self._behind.get(key) or self._load(key)
            if entry is not None:
                self._remember(entry)
                self._touched[key] = time.time()
            return entry

    def _load(self, key: str) -> Entry | None:
        row = self._db.execute(
            f"SELECT {ENTRY_COLUMNS} FROM entries WHERE key = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        entry = self._row_to_entry(row)
        if entry is None:
            log.warning("dropping damaged cache entry %s", key[:12])
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            self._recount()
        return entry

    @staticmethod
    def _row_to_entry(row: tuple[Any, ...]) -> Entry | None:
        body = bytes(row[5])
        if hashlib.sha256(body).hexdigest() != row[10]:
            return None
        try:
            headers = tuple((str(k), str(v)) for k, v in json.loads(row[4]))
        except (ValueError, TypeError):
            return None
        return Entry(
            key=row[0],
            scope=row[1],
            target=row[2],
            status=int(row[3]),
            headers=headers,
            body=body,
            etag=row[6],
            last_modified=row[7],
            stored_at=float(row[8]),
            fresh_until=float(row[9]),
            digest=row[10],
        )

    def remember(self, entry: Entry) -> None:
        """Make an entry visible in memory now; ``put`` persists it (write-behind for the miss path)."""
        with self._lock:
            self._remember(entry)

    def _remember(self, entry: Entry) -> None:
        self._forget(entry.key)
        self._mem[entry.key] = entry
        self._mem_bytes += entry.memory_size
        # The newest entry always stays (it may not be on disk yet: ``put`` follows ``remember``).
        while len(self._mem) > 1 and (
            len(self._mem) > self.max_entries or self._mem_bytes > self.memory_bytes
        ):
            _, dropped = self._mem.popitem(last=False)
            self._mem_bytes -= dropped.memory_size

    def _forget(self, key: str) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_bytes -= old.memory_size

    # -- writes ------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def put(self, entry: Entry, hot: bool = True) -> None:
        """Persist ``entry``; ``hot=False`` (entries peers pushed that no client asked for yet) keeps it
        out of the memory tier until a client reads it."""
        if entry.size > self.max_bytes:
            return
        with self._lock:
            self._flush_behind()
            self._sync_with_disk()
            with self._transaction() as db:
                entry = self._insert(db, entry, time.time() if hot else self._cold_access(entry))
                self._flush_touched(db)
                self._evict(db)
            self._touched.pop(entry.key, None)
            if hot:
                self._remember(entry)
            else:
                self._forget(entry.key)

    @staticmethod
    def _cold_access(entry: Entry) -> float:
        """The last_access of an entry nobody here read yet (pushed by another proxy): older than any
        real access, so eviction takes these first (oldest pushed first) and never this proxy's own
        working set; a read promotes it (``_touched``)."""
        return entry.stored_at - COLD_AGE

    def _insert(self, db: sqlite3.Connection, entry: Entry, now: float) -> Entry:
        """One row, inside the caller's transaction; the entry as written."""
        stale_at = self._stale_pending.pop(entry.key, None)
        if stale_at is not None and entry.stored_at <= stale_at < entry.fresh_until:
            entry = replace(entry, fresh_until=stale_at)  # invalidated while it was written behind
        old = db.execute("SELECT size FROM entries WHERE key = ?", (entry.key,)).fetchone()
        db.execute(
            "INSERT OR REPLACE INTO entries(key, scope, target, status, headers, body, etag,"
            " last_modified, stored_at, fresh_until, last_access, size, digest)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                entry.key,
                entry.scope,
                entry.target,
                entry.status,
                json.dumps(entry.headers),
                entry.body,
                entry.etag,
                entry.last_modified,
                entry.stored_at,
                entry.fresh_until,
                now,
                entry.size,
                entry.digest,
            ),
        )
        if old is None:
            self._count += 1
        else:
            self._bytes -= int(old[0])
        self._bytes += entry.size
        return entry

    # -- write-behind (the proxy's answers: the commit runs after the answer is on its way) ----------
    def write_behind(self, entry: Entry, hot: bool = True) -> bool:
        """Visible at once (memory tier, and the queue until it lands), written by the next
        :meth:`flush_behind` in one transaction with the others queued; True when the caller should
        schedule that flush (the queue was empty). A full queue is written now (bounded RAM).
        ``hot=False`` (entries pushed by other proxies that no client asked for yet): not in the memory
        tier, as :meth:`put` with ``hot=False``; a read finds it in the queue or on disk."""
        with self._lock:
            if hot:
                self._remember(entry)
                self._cold.discard(entry.key)
            else:
                self._forget(entry.key)
            if entry.size > self.max_bytes:
                return False
            if not hot:
                self._cold.add(entry.key)
            first = not self._behind
            replaced = self._behind.pop(entry.key, None)  # a re-queued key counts once
            if replaced is not None:
                self._behind_bytes -= replaced.size
            self._behind[entry.key] = entry
            self._behind_bytes += entry.size
            if len(self._behind) >= BEHIND_MAX or self._behind_bytes >= BEHIND_BYTES:
                self._flush_behind()
                return False
            return first

    def flush_behind(self) -> int:
        """Commit what :meth:`write_behind` queued (one transaction); the number of entries written. A
        failure (disk full, read-only) is logged and the entries stay in memory only, as a cache may."""
        with self._lock:
            return self._flush_behind()

    def _flush_behind(self) -> int:
        if not self._behind:
            return 0
        batch = list(self._behind.values())
        cold, self._cold = self._cold, set()
        self._behind.clear()
        self._behind_bytes = 0
        try:
            self._sync_with_disk()
            now = time.time()
            with self._transaction() as db:
                for entry in batch:
                    self._insert(db, entry, self._cold_access(entry) if entry.key in cold else now)
                self._flush_touched(db)
                self._evict(db)
        except (OSError, sqlite3.Error) as exc:
            self._recount()
            log.warning("could not persist %d cache entries (%s); they stay in memory only", len(batch), exc)
            return 0
        return len(batch)

    def refresh(
        self,
        key: str,
        fresh_until: float,
        headers: Headers | None = None,
        verified_at: float | None = None,
        digest: str | None = None,
    ) -> Entry | None:
        """Extend an entry's fresh window after a 304 (and take the 304's newer headers); ``verified_at``:
        when upstream confirmed the body current, which becomes its ``stored_at`` (a copy confirmed after a
        webhook's invalidation is as good as one fetched after it). ``digest``: the body the 304 was for;
        None (nothing refreshed) when the store holds another body by now (a peer's copy arrived while
        the request was out): its body under the 304's ETag would be served as current for ever."""
        with self._lock:
            self._flush_behind()
            entry = self.get(key)
            if entry is None or (digest is not None and entry.digest != digest):
                return None
            stored_at = entry.stored_at if verified_at is None else max(entry.stored_at, verified_at)
            updated = replace(
                entry, fresh_until=fresh_until, headers=headers or entry.headers, stored_at=stored_at
            )
            self._db.execute(
                "UPDATE entries SET fresh_until = ?, headers = ?, last_access = ?, stored_at = ?"
                " WHERE key = ?",
                (fresh_until, json.dumps(updated.headers), time.time(), stored_at, key),
            )
            self._remember(updated)
            return updated

    def invalidate(self, prefixes: Sequence[str], exact: Sequence[str] = (), now: float | None = None) -> int:
        """End the fresh window of every entry whose target starts with one of ``prefixes`` or equals one
        of ``exact`` (compared case-insensitively, as GitHub compares owner and repository names), in
        every scope; the next read revalidates. Index range scans on ``lower(target)``, never a table scan;
        the number of entries found."""
        now = time.time() if now is None else now
        keys: list[str] = []
        lowered = tuple(dict.fromkeys(p.lower() for p in prefixes if p))
        whole = tuple(dict.fromkeys(e.lower() for e in exact if e))
        update = "UPDATE entries SET fresh_until = ? WHERE fresh_until > ? AND "
        with self._lock:
            self._flush_behind()
            self._sync_with_disk()
            with self._transaction() as db:
                for prefix in lowered:
                    rows = db.execute(
                        update + "lower(target) >= ? AND lower(target) < ? RETURNING key",
                        (now, now, prefix, prefix + "\U0010ffff"),
                    ).fetchall()
                    keys += [r[0] for r in rows]
                for target in whole:
                    rows = db.execute(
                        update + "lower(target) = ? RETURNING key", (now, now, target)
                    ).fetchall()
                    keys += [r[0] for r in rows]
            # The memory tier (small, bounded by bytes): what the UPDATE found, plus entries written
            # behind and not on disk yet.
            found = set(keys)
            for key, entry in list(self._mem.items()):
                low = entry.target.lower()
                if entry.fresh_until > now and (key in found or low.startswith(lowered) or low in whole):
                    self._mem[key] = replace(entry, fresh_until=now)
                    if key not in found:  # not on disk yet: ``put`` applies it when the write lands
                        self._stale_pending[key] = now
                        while len(self._stale_pending) > STALE_PENDING_MAX:
                            del self._stale_pending[next(iter(self._stale_pending))]
                    found.add(key)
        return len(found)

    def _flush_touched(self, db: sqlite3.Connection) -> None:
        if self._touched:
            db.executemany(
                "UPDATE entries SET last_access = ? WHERE key = ?", [(t, k) for k, t in self._touched.items()]
            )
            self._touched.clear()
        self._last_flush = time.monotonic()

    def _evict(self, db: sqlite3.Connection) -> None:
        while self._count > self.max_entries or self._bytes > self.max_bytes:
            excess = max(self._count - self.max_entries, 1)
            rows = db.execute(
                "SELECT key, size FROM entries ORDER BY last_access ASC LIMIT ?", (min(excess, 500),)
            ).fetchall()
            if not rows:
                break
            db.executemany("DELETE FROM entries WHERE key = ?", [(r[0],) for r in rows])
            for k, size in rows:
                self._count -= 1
                self._bytes -= int(size)
                dropped = self._mem.pop(k, None)
                if dropped is not None:
                    self._mem_bytes -= dropped.memory_size

    def flush(self) -> None:
        """Persist queued entries and LRU access times (batched so hits never write to disk)."""
        with self._lock:
            self._flush_behind()
            if self._touched:
                with self._transaction() as db:
                    self._flush_touched(db)

    def delete(self, key: str) -> None:
        with self._lock:
            self._flush_behind()
            self._db.execute("DELETE FROM entries WHERE key = ?", (key,))
            dropped = self._mem.pop(key, None)
            if dropped is not None:
                self._mem_bytes -= dropped.memory_size
            self._recount()

    def clear(self, stale_only: bool = False, older_than: float | None = None) -> int:
        """Remove all entries, or only those past their fresh window (``older_than`` defaults to now)."""
        with self._lock:
            self._flush_behind()
            if stale_only:
                cutoff = time.time() if older_than is None else older_than
                cur = self._db.execute("DELETE FROM entries WHERE fresh_until <= ?", (cutoff,))
            else:
                cur = self._db.execute("DELETE FROM entries")
            self._mem.clear()
            self._mem_bytes = 0
            self._touched.clear()
            self._recount()
            return int(cur.rowcount)

    # -- bookkeeping -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Entries on disk plus those still queued for it, without committing the queue (stats and the
        dashboard ask often, and a commit of up to 8 MiB under the store lock would hold up every hit)."""
        with self._lock:
            self._sync_with_disk()
            return self._count + len(self._queued_only())

    def _queued_only(self) -> list[str]:
        """Queued keys not on disk yet (one indexed lookup; the queue holds at most BEHIND_MAX keys)."""
        if not self._behind:
            return []
        keys = list(self._behind)
        marks = ",".join("?" * len(keys))
        found = {r[0] for r in self._db.execute(f"SELECT key FROM entries WHERE key IN ({marks})", keys)}
        return [k for k in keys if k not in found]

    @property
    def memory_tier_bytes(self) -> int:
        """Bytes of the entries held in RAM (bounded by ``memory_bytes``; the rest is on disk)."""
        with self._lock:
            return self._mem_bytes

    @property
    def total_bytes(self) -> int:
        with self._lock:
            self._flush_behind()
            self._sync_with_disk()
            return self._bytes

    def fresh_entries(self, limit: int = 5000, now: float | None = None) -> list[Entry]:
        """Entries still inside their fresh window, newest first (what a rejoining peer catches up on)."""
        now = time.time() if now is None else now
        with self._lock:
            # the queue is read, not committed: this runs on the p2p thread (a peer's catch-up), where a
            # commit of up to 8 MiB under the store lock would stall every hit meanwhile
            queued = [e for e in self._behind.values() if e.fresh_until > now]
            rows = self._db.execute(
                f"SELECT {ENTRY_COLUMNS} FROM entries WHERE fresh_until > ? ORDER BY stored_at DESC LIMIT ?",
                (now, limit),
            ).fetchall()
        newer = {e.key for e in queued}
        stored = (self._row_to_entry(r) for r in rows if r[0] not in newer)  # a queued copy replaces it
        entries = queued + [e for e in stored if e is not None]
        entries.sort(key=lambda e: e.stored_at, reverse=True)
        return entries[:limit]

    def keys(self) -> list[str]:
        with self._lock:
            self._flush_behind()
            return [r[0] for r in self._db.execute("SELECT key FROM entries")]

    def save_meta(self, name: str, value: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO meta(name, value) VALUES(?, ?)",
                (name, json.dumps(value, sort_keys=True)),
            )

    def load_meta(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def integrity_ok(self) -> bool:
        with self._lock:
            row = self._db.execute("PRAGMA integrity_check").fetchone()
            return bool(row and row[0] == "ok")

    def close(self) -> None:
        with self._lock:
            try:
                self.flush()
            finally:
                self._db.close()
