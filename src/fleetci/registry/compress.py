"""Layer compression for pushes: the archive's uncompressed layer tar -> gzip (or zstd), streamed.

A :class:`CompressedStream` reads the layer's window of the ``docker save`` tar in 1 MiB blocks on a
producer thread, hashes them (the diff-ID check) and has them compressed on a small pool of threads
(``libdeflate`` through PyPI ``deflate`` for gzip: one gzip member per block, compressed in parallel and
emitted in order; ``zstandard``'s own multi-threaded writer for zstd). The compressed pieces go to the
uploader through a small bounded queue and are hashed as they leave: the digest of the compressed blob is
known when the stream ends, which is when the upload's final PUT needs it. Nothing is spooled: a layer is
never whole in memory, nor on disk a second time. Memory is bounded for the whole process, not per stream:
each gzip stream may always have one block in flight, and every further block takes one of
``2 x pool size`` slots shared by all streams (:class:`_BlockBudget`). Five streams on 32 cores thus hold
at most 69 one-MiB blocks (with their outputs), not 5 x 33; a stream left alone still gets every core.

The output is deterministic for a given :attr:`Codec.identity` (binding version, level, block size; every
block is compressed on its own, so the thread count does not change the bytes, and zstd's multi-threaded
frames do not depend on the worker count either). That is what makes a compressed upload resumable
without a spool file: the resume compresses the layer again and skips (while hashing) the bytes the
registry already holds. If a different library version ever produced other bytes, the final PUT's digest
check fails and the layer starts again from 0, once.

A gzip blob of several members is one valid gzip file (RFC 1952, 2.2): Go's ``compress/gzip`` (docker,
containerd, skopeo), pigz and Python's ``gzip`` read it whole; each member costs 18 bytes per MiB.

The uncompressed bytes are hashed too, on the producer thread: the manifest keeps the config's diff IDs,
so a layer window whose bytes no longer hash to its diff ID (the archive rewritten at the same size after
``prepare``) ends the stream with :class:`LayerChanged` before the upload's final PUT.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.registry.archive import READ_CHUNK, read_window

CODECS = ("gzip", "zstd", "none")
# libdeflate level 3 on the benchmark's rootfs content (577.5 MB of /usr files, one core): 0.996 x
# skopeo's gzip bytes for 2.8 CPU-s, where zlib-ng level 3 took 3.4 s for 1.022 x; level 2 saves no CPU,
# level 1 nears the 1.05 x bound. isal's igzip is 1.7x faster but writes 1.067 x at its best level (3):
# on a link those bytes cost more than the CPU saved, and every later pull pays them again
# (docs/registry.md has the table). --compression-level trades either way (5: 0.962 x for 3.4 s).
GZIP_LEVEL = 3
ZSTD_LEVEL = 3
BLOCK = READ_CHUNK  # the unit the compressors see; part of the identity (it shapes the output)
QUEUE_PIECES = 4  # compressed pieces waiting for the uploader, per stream (bounded memory)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
UNCOMPRESSED_LAYERS = (OCI_LAYER, DOCKER_LAYER)


def parse_compression(text: str) -> str:
    low = text.strip().lower()
    if low not in CODECS:
        raise ValueError(f"expected gzip, zstd or none, got {text!r}")
    return low


def cpu_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Codec:
    name: str  # gzip | zstd
    level: int

    @property
    def identity(self) -> str:
        """What fixes the output bytes: remembered with each compressed digest and upload session."""
        if self.name == "gzip":
            import deflate

            # the binding's version pins the libdeflate it bundles (that shapes the bytes); one member
            # per block
            return f"gzip/libdeflate-py{deflate.__version__}/l{self.level}/b{BLOCK}/members"
        import zstandard

        c_lib = ".".join(str(n) for n in zstandard.ZSTD_VERSION)
        return f"zstd/zstandard-{zstandard.__version__}/c{c_lib}/l{self.level}/b{BLOCK}/mt"

    def media_type(self, uncompressed: str) -> str:
        """The compressed layer's media type, as docker (docker manifests) and skopeo write them."""
        if uncompressed == DOCKER_LAYER and self.name == "gzip":
            return DOCKER_LAYER + ".gzip"
        return f"{OCI_LAYER}+{self.name}"


LEVELS = {"gzip": (GZIP_LEVEL, 12), "zstd": (ZSTD_LEVEL, 19)}  # (default, highest)


def codec(name: str, level: int = 0) -> Codec | None:
    """The codec of ``--compression NAME`` at ``level`` (0: its default); None for ``none``."""
    if name == "none":
        return None
    default, highest = LEVELS[name]
    if not 0 <= level <= highest:
        raise ValueError(f"{name} levels run 1-{highest} (0: the default, {default}), got {level}")
    return Codec(name, level or default)


class _BlockBudget:
    """Process-wide slots for gzip blocks in flight beyond each stream's first (input and output held).

    Taking a slot never blocks: a stream that finds none writes out its oldest block first (which frees
    one), so a stream whose uploader is slow can hold slots but never keeps another stream from moving
    (each always has its own first block). ``peak`` is what the budget test reads.
    """

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self.held = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.held >= self.slots:
                return False
            self.held += 1
            self.peak = max(self.peak, self.held)
            return True

    def give_back(self) -> None:
        with self._lock:
            self.held -= 1


_POOL: ThreadPoolExecutor | None = None
_BUDGET: _BlockBudget | None = None
_POOL_LOCK = threading.Lock()


def _gzip_pool() -> tuple[ThreadPoolExecutor, _BlockBudget]:
    """The block compressors: one thread per core for the whole process (libdeflate frees the GIL),
    and the shared budget of blocks in flight (two per pool thread: one compressing, one waiting)."""
    global _POOL, _BUDGET
    with _POOL_LOCK:
        if _POOL is None or _BUDGET is None:
            threads = cpu_threads()
            _POOL = ThreadPoolExecutor(threads, thread_name_prefix="fleetci-gzip")
            _BUDGET = _BlockBudget(2 * threads)
        return _POOL, _BUDGET


def _hashed(blocks: Iterator[bytes], into: Any, cancelled: threading.Event) -> Iterator[bytes]:
    """``blocks``, each hashed into ``into`` on the way (the diff-ID check); stops once cancelled."""
    for data in blocks:
        if cancelled.is_set():
            return
        into.update(data)
        yield data


class LayerChanged(FleetciError):
    """The layer's bytes in the archive do not hash to the diff ID ``prepare`` verified."""


class _Sink:
    """The compressor's output file: pieces go to the bounded queue (dropped once the reader gave up)."""

    def __init__(self, out: queue.Queue[bytes | BaseException | None], cancelled: threading.Event) -> None:
        self.out = out
        self.cancelled = cancelled

    def write(self, data: Any) -> int:
        piece = bytes(data)
        while piece and not self.cancelled.is_set():
            try:
                self.out.put(piece, timeout=0.1)
                break
            except queue.Full:
                continue
        return len(piece)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    @property
    def closed(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


class CompressedStream:
    """The compressed bytes of one layer window, produced on a thread; iterate with :meth:`take`."""

    def __init__(
        self, path: Path, offset: int, size: int, codec: Codec, threads: int = 0, expected: str = ""
    ) -> None:
        self.codec = codec
        self.threads = threads or cpu_threads()
        self.expected = expected  # the layer's diff ID ("": not checked)
        self._hash = hashlib.sha256()
        self.produced = 0  # compressed bytes handed out so far
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(QUEUE_PIECES)
        self._cancelled = threading.Event()
        self._pending = b""
        self._ended = False
        self._thread = threading.Thread(
            target=self._produce, args=(path, offset, size), name="fleetci-compress", daemon=True
        )
        self._thread.start()

    def _produce(self, path: Path, offset: int, size: int) -> None:
        sink = _Sink(self._queue, self._cancelled)
        try:
            plain = hashlib.sha256()
            with path.open("rb") as fh:
                blocks = _hashed(read_window(fh, offset, size, BLOCK), plain, self._cancelled)
                if self.codec.name == "gzip":
                    self._gzip_members(blocks, sink)
                else:
                    self._zstd(blocks, sink)
            if self._cancelled.is_set():
                return
            got = "sha256:" + plain.hexdigest()
            if self.expected and got != self.expected:
                raise LayerChanged(
                    f"{path.name}: layer {self.expected[:19]} changed since prepare (its bytes hash "
                    f"to {got[:19]}); run prepare again"
                )
        except BaseException as exc:  # handed to the reader, who raises it
            self._put(exc if isinstance(exc, FleetciError) else FleetciError(f"compressing: {exc}"))
            return
        self._put(None)

    def _put(self, item: BaseException | None) -> None:
        while not self._cancelled.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _gzip_members(self, blocks: Iterator[bytes], sink: _Sink) -> None:
        """One gzip member per block, compressed on the process-wide pool (one worker per core, shared
        by every stream of a push), written in order.

        At most ``compressor_threads + 1`` blocks of this stream are in flight, and all but its first
        hold a slot of the shared :class:`_BlockBudget`: bounded memory for the whole process, while
        reading, hashing, compressing and sending overlap. A slot is taken *before* the next block is
        read. A stream left alone at the end of a push gets every core (the budget is twice the pool),
        while five streams share the cores and the slots block by block.
        """
        import deflate

        level = self.codec.level
        pool, budget = _gzip_pool()
        ahead: deque[tuple[Future[bytearray], bool]] = deque()  # (compressed block, holds a slot)
        wrote = False

        def write_oldest() -> None:
            future, slot = ahead.popleft()
            try:
                sink.write(future.result())
            finally:
                if slot:
                    budget.give_back()

        try:
            while not self._cancelled.is_set():
                if len(ahead) > self.compressor_threads:
                    write_oldest()
                    wrote = True
                    continue
                slot = any(not s for _, s in ahead)  # this stream's own first block is in flight
                if slot and not budget.try_take():
                    write_oldest()  # frees a slot or this stream's own block
                    wrote = True
                    continue
                data = next(blocks, None)
                if data is None:
                    if slot:
                        budget.give_back()
                    break
                ahead.append((pool.submit(deflate.gzip_compress, data, level), slot))
            if not ahead and not wrote and not self._cancelled.is_set():
                ahead.append((pool.submit(deflate.gzip_compress, b"", level), False))  # one member
            while ahead and not self._cancelled.is_set():
                write_oldest()
        finally:
            for future, slot in ahead:
                future.cancel()
                if slot:
                    budget.give_back()

    def _zstd(self, blocks: Iterator[bytes], sink: _Sink) -> None:
        import zstandard

        cctx = zstandard.ZstdCompressor(level=self.codec.level, threads=self.compressor_threads)
        writer = cctx.stream_writer(sink, closefd=False)  # type: ignore[arg-type]
        try:
            for data in blocks:
                writer.write(data)
        finally:
            writer.close()  # type: ignore[no-untyped-call]

    @property
    def compressor_threads(self) -> int:
        """Blocks of this stream compressing at once (gzip: on the shared pool; zstd: its workers);
        the bytes do not depend on it."""
        return max(1, self.threads)

    def _next_piece(self) -> bytes:
        if self._pending:
            piece, self._pending = self._pending, b""
            return piece
        if self._ended:
            return b""
        item = self._queue.get()
        if item is None:
            self._ended = True
            return b""
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        return item

    def at_end(self) -> bool:
        """True once every compressed byte was handed out (waits for the compressor to say so)."""
        if self._pending:
            return False
        piece = self._next_piece()
        self._pending = piece
        return not piece

    def take(self, limit: int) -> Iterator[bytes]:
        """Up to ``limit`` compressed bytes, as pieces (an HTTP body): each is hashed as it goes."""
        left = limit
        while left > 0:
            piece = self._next_piece()
            if not piece:
                return
            if len(piece) > left:
                piece, self._pending = piece[:left], piece[left:]
            left -= len(piece)
            self._hash.update(piece)
            self.produced += len(piece)
            yield piece

    def skip(self, count: int) -> int:
        """Hash and drop the first ``count`` bytes (what the registry already holds); returns how many."""
        return sum(len(p) for p in self.take(count))

    @property
    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def close(self) -> None:
        """Stop the producer (an upload that failed or finished); safe to call twice."""
        self._cancelled.set()
        self._thread.join(timeout=30)

    def __enter__(self) -> CompressedStream:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
