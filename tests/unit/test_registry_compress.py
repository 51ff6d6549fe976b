"""Issue 19 without a registry: streamed layer compression, manifest rewriting, index names, the link relay.

The compressors are the real libraries (libdeflate via ``deflate``, zstandard); the decompression checks
use the standard library's gzip and zstandard's own decoder, independent of the streaming code under test.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import random
import socket
import threading
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetci.bench.relay import LinkRelay
from fleetci.errors import FleetciError, UsageError
from fleetci.registry import compress
from fleetci.registry.archive import DOCKER_MANIFEST, OCI_MANIFEST
from fleetci.registry.compress import CompressedStream, LayerChanged, codec
from fleetci.registry.engine_oci import final_manifest
from fleetci.registry.index import index_refs
from fleetci.registry.plan import PlannedImage, UploadPlan
from fleetci.registry.settings import registry_settings
from fleetci.registry.state import LayerDigests
from fleetci.wait import wait_until
from support import RunCli, one_line_error
from support.registry import TAG


def layer_file(tmp_path: Path, size: int = 3_000_000) -> Path:
    """Text-like, compressible bytes with a prefix and suffix that are not part of the layer window."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(500)]
    body = b" ".join(rng.choice(words) for _ in range(size // 5))[:size]
    path = tmp_path / "archive.tar"
    path.write_bytes(b"H" * 4096 + body + b"T" * 100)
    return path


def compress_all(path: Path, name: str, threads: int) -> tuple[bytes, str, int]:
    size = path.stat().st_size - 4196
    c = codec(name)
    assert c is not None
    with CompressedStream(path, 4096, size, c, threads) as stream:
        data = b"".join(stream.take(1 << 40))
        assert stream.at_end()
        return data, stream.digest, stream.compressor_threads


@pytest.mark.parametrize(("name", "few", "many"), [("gzip", 1, 3), ("zstd", 1, 4)])
def test_compressed_stream_is_the_layer_deterministically(
    tmp_path: Path, name: str, few: int, many: int
) -> None:
    path = layer_file(tmp_path)
    original = path.read_bytes()[4096:-100]
    one, digest_one, used_few = compress_all(path, name, few)
    three, digest_three, used_many = compress_all(path, name, many)
    assert (used_few, used_many) == (few, many)  # the compressor really ran with each count
    assert one == three and digest_one == digest_three  # the thread count does not change the bytes
    assert digest_one == "sha256:" + hashlib.sha256(one).hexdigest()
    assert len(one) < len(original) // 2
    plain = (
        gzip.decompress(one)
        if name == "gzip"
        else zstandard.ZstdDecompressor().decompressobj().decompress(one)
    )
    assert plain == original
    if name == "gzip":  # one member per 1 MiB block: a multi-member gzip file, read whole by gzip
        assert one.count(b"\x1f\x8b\x08") >= -(-len(original) // (1 << 20))


def test_gzip_blocks_in_flight_are_bounded_for_the_whole_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review t2 #7: several gzip streams on a many-core runner share one budget of blocks in flight.

    16 cores (patched) and uploaders that do not read yet: a stream alone still has every core's block
    plus one in flight, while four streams together hold at most 2 x 16 shared slots plus their own first
    block each (the old per-stream bound let them hold 4 x 17). Blocks read but not yet written out
    are counted from outside the compressor: the archive reader and the stream's sink.
    """
    cores = 16
    monkeypatch.setattr(compress, "cpu_threads", lambda: cores)
    monkeypatch.setattr(compress, "_POOL", None)
    monkeypatch.setattr(compress, "_BUDGET", None, raising=False)
    lock = threading.Lock()
    count = {"held": 0, "peak": 0, "writing": 0}
    real_window, real_write = compress.read_window, compress._Sink.write

    def counted_window(*args: object, **kwargs: object) -> object:
        for data in real_window(*args, **kwargs):  # type: ignore[arg-type]
            with lock:
                count["held"] += 1
                count["peak"] = max(count["peak"], count["held"])
            yield data

    def counted_write(sink: object, data: object) -> int:
        with lock:
            count["writing"] += 1
        try:
            return real_write(sink, data)  # type: ignore[arg-type]
        finally:
            with lock:
                count["writing"] -= 1
                count["held"] -= 1

    monkeypatch.setattr(compress, "read_window", counted_window)
    monkeypatch.setattr(compress._Sink, "write", counted_write)
    blocks = cores + compress.QUEUE_PIECES + 6  # enough to fill a stalled stream's every slot
    path = tmp_path / "zeros.tar"
    with path.open("wb") as fh:
        fh.truncate(blocks * compress.BLOCK)
    c = codec("gzip")
    assert c is not None

    def stalled(n: int) -> list[CompressedStream]:
        streams = [CompressedStream(path, 0, blocks * compress.BLOCK, c) for _ in range(n)]
        wait_until(  # every producer blocked on its full queue: nothing more can be read
            lambda: count["writing"] == n and all(s._queue.full() for s in streams),
            timeout=60,
            what=f"{n} stalled gzip streams",
            interval=0.01,
            last=lambda: count,
        )
        return streams

    def drained(streams: list[CompressedStream]) -> set[str]:
        digests = set()
        for stream in streams:
            with stream:
                data = b"".join(stream.take(1 << 40))
                assert gzip.decompress(data) == bytes(blocks * compress.BLOCK)
                digests.add(stream.digest)
        return digests

    try:
        alone = stalled(1)
        assert count["peak"] == cores + 1  # a stream alone: a block for every core, and the next one
        one = drained(alone)
        count["peak"] = 0
        four = drained(stalled(4))
        assert count["peak"] <= 2 * cores + 4, count
        assert one == four and len(one) == 1  # the same bytes whatever the sharing
        assert count["held"] == 0
    finally:
        pool = compress._POOL
        if pool is not None:
            pool.shutdown(wait=False)


def test_an_empty_layer_is_still_one_gzip_member(tmp_path: Path) -> None:
    path = tmp_path / "empty.tar"
    path.write_bytes(b"H" * 10)
    c = codec("gzip")
    assert c is not None
    with CompressedStream(path, 10, 0, c, 2, "sha256:" + hashlib.sha256(b"").hexdigest()) as stream:
        data = b"".join(stream.take(1 << 40))
        assert stream.at_end()
    assert data[:2] == b"\x1f\x8b" and gzip.decompress(data) == b""


@pytest.mark.parametrize("name", ["gzip", "zstd"])
def test_a_layer_that_no_longer_hashes_to_its_diff_id_ends_the_stream_with_an_error(
    tmp_path: Path, name: str
) -> None:
    path = layer_file(tmp_path)
    size = path.stat().st_size - 4196
    diff_id = "sha256:" + hashlib.sha256(path.read_bytes()[4096:-100]).hexdigest()
    c = codec(name)
    assert c is not None
    with CompressedStream(path, 4096, size, c, 2, diff_id) as stream:
        b"".join(stream.take(1 << 40))
        assert stream.at_end()
    data = bytearray(path.read_bytes())
    data[4096 + size // 2] ^= 0xFF  # rewritten at the same size after prepare
    path.write_bytes(bytes(data))
    with CompressedStream(path, 4096, size, c, 2, diff_id) as stream, pytest.raises(LayerChanged) as err:
        b"".join(stream.take(1 << 40))
        stream.at_end()
    assert "changed since prepare" in str(err.value) and "\n" not in str(err.value)


def test_the_codec_identity_names_the_c_library_that_shapes_the_bytes() -> None:
    import deflate

    gz, zs = codec("gzip"), codec("zstd")
    assert gz is not None and zs is not None
    assert f"/libdeflate-py{deflate.__version__}/" in gz.identity and "/members" in gz.identity
    assert "/c" + ".".join(map(str, zstandard.ZSTD_VERSION)) + "/" in zs.identity


def test_a_resumed_stream_skips_what_the_registry_holds_and_keeps_the_digest(tmp_path: Path) -> None:
    path = layer_file(tmp_path)
    whole, digest, _ = compress_all(path, "gzip", 2)
    c = codec("gzip")
    assert c is not None
    with CompressedStream(path, 4096, path.stat().st_size - 4196, c, 2) as stream:
        assert stream.skip(123_457) == 123_457
        rest = b"".join(stream.take(1 << 40))
        assert rest == whole[123_457:] and stream.digest == digest
    with CompressedStream(path, 4096, path.stat().st_size - 4196, c, 2) as stream:
        pieces = [b"".join(stream.take(100_000)) for _ in range(3)]
        assert [len(p) for p in pieces] == [100_000] * 3 and b"".join(pieces) == whole[:300_000]


def test_a_truncated_archive_is_one_error_and_an_abandoned_stream_stops(tmp_path: Path) -> None:
    path = layer_file(tmp_path)
    c = codec("gzip")
    assert c is not None
    with CompressedStream(path, 4096, path.stat().st_size, c, 2) as stream, pytest.raises(FleetciError):
        b"".join(stream.take(1 << 40))  # the window runs 4096 bytes past the end of the file
    stream = CompressedStream(path, 4096, path.stat().st_size - 4196, c, 2)
    next(stream.take(10))
    stream.close()
    assert not any(t.name == "fleetci-compress" and t.is_alive() for t in threading.enumerate())


def manifest(media_type: str, layer_type: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": "sha256:c",
                "size": 9,
            },
            "layers": [
                {"mediaType": layer_type, "digest": "sha256:a", "size": 100},
                {"mediaType": layer_type + ".gzip", "digest": "sha256:b", "size": 50},
            ],
        }
    ).encode()


def test_docker_manifests_keep_docker_types_for_gzip_and_become_oci_for_zstd() -> None:
    docker_tar = "application/vnd.docker.image.rootfs.diff.tar"
    gz = codec("gzip")
    zs = codec("zstd")
    assert gz is not None and zs is not None
    data, media_type = final_manifest(
        manifest(DOCKER_MANIFEST, docker_tar),
        DOCKER_MANIFEST,
        {"sha256:a": (gz.media_type(docker_tar), "sha256:A", 40)},
    )
    doc = json.loads(data)
    assert media_type == DOCKER_MANIFEST
    assert doc["layers"][0] == {"mediaType": docker_tar + ".gzip", "digest": "sha256:A", "size": 40}
    assert doc["layers"][1]["digest"] == "sha256:b" and doc["config"]["digest"] == "sha256:c"
    data, media_type = final_manifest(
        manifest(DOCKER_MANIFEST, docker_tar),
        DOCKER_MANIFEST,
        {"sha256:a": (zs.media_type(docker_tar), "sha256:Z", 30)},
    )
    doc = json.loads(data)
    assert media_type == OCI_MANIFEST == doc["mediaType"]
    assert doc["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert [d["mediaType"] for d in doc["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.v1.tar+gzip",
    ]
    oci_tar = "application/vnd.oci.image.layer.v1.tar"
    assert gz.media_type(oci_tar) == oci_tar + "+gzip"
    unchanged = manifest(OCI_MANIFEST, oci_tar)
    assert final_manifest(unchanged, OCI_MANIFEST, {}) == (unchanged, OCI_MANIFEST)


def plan_of(*repositories: str) -> UploadPlan:
    images = tuple(
        PlannedImage(
            "a.tar", None, "x:y", r, "presto-1-velox-2", "{}", OCI_MANIFEST, "sha256:m", "sha256:c", (), 0
        )
        for r in repositories
    )
    return UploadPlan(TAG, "presto-1-velox-2", "x86", None, images)


def test_index_names_fill_in_image_and_tag() -> None:
    plan = plan_of("x86/presto-coordinator", "x86/presto-worker")
    refs = index_refs(plan, "multi/{image}:{tag}")
    assert [str(r) for r in refs] == [
        "multi/presto-coordinator:presto-1-velox-2",
        "multi/presto-worker:presto-1-velox-2",
    ]
    with pytest.raises(UsageError, match=r"\{image\}"):
        index_refs(plan, "multi:{tag}")  # two images cannot share one index name
    assert (
        str(index_refs(plan_of("x86/presto-coordinator"), "presto:latest-multi")[0]) == "presto:latest-multi"
    )
    with pytest.raises(UsageError):
        index_refs(plan_of("x86/presto-coordinator"), "Upper/{image}:{tag}")


@pytest.mark.parametrize(
    ("value", "needle"),
    [("{image}", "NAME:TAG"), ("a:{arch}", "{arch}"), ("a:b/c", "NAME:TAG"), (":t", "NAME:TAG")],
)
def test_bad_index_templates_are_refused_when_read(value: str, needle: str) -> None:
    with pytest.raises(UsageError) as exc:
        registry_settings({"index": value}, {}, {})
    assert needle in str(exc.value)


def test_compression_parallel_and_index_follow_the_precedence_rule() -> None:
    env = {"REGISTRY_COMPRESSION": "zstd", "REGISTRY_PARALLEL": "2", "REGISTRY_INDEX": "{image}:{tag}"}
    config = {"registry": {"compression": "none", "parallel": 3, "index": "c/{image}:{tag}"}}
    assert registry_settings({}, {}, {}).compression == "gzip"
    assert registry_settings({}, {}, {}).parallel == 5 and registry_settings({}, {}, {}).index == ""
    s = registry_settings({}, config, {})
    assert (s.compression, s.parallel, s.index) == ("none", 3, "c/{image}:{tag}")
    s = registry_settings({}, config, env)
    assert (s.compression, s.parallel, s.index) == ("zstd", 2, "{image}:{tag}")
    s = registry_settings({"compression": "gzip", "parallel": "1", "index": "f:{tag}"}, config, env)
    assert (s.compression, s.parallel, s.index) == ("gzip", 1, "f:{tag}")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["registry", "push", TAG, "--compression", "lz4", "--yes"], "--compression"),
        (["registry", "push", TAG, "--parallel", "0", "--yes"], "--parallel"),
        (["registry", "push", TAG, "--compression-level", "13", "--yes"], "gzip levels run 1-12"),
        (["registry", "push", TAG, "--compression-level", "-1", "--yes"], "--compression-level"),
        (["registry", "push", TAG, "--parallel", "65", "--yes"], "--parallel"),
        (["registry", "daemon", "--once", "--index", "x:{who}"], "--index"),
        (["registry", "push", TAG, "--index"], "--index"),
        (["bench", "registry", "--link-mbps", "-1"], "--link-mbps"),
        (["bench", "registry", "--compression", "xz"], "--compression"),
    ],
)
def test_new_flags_reject_bad_values_in_one_line(fleetci: RunCli, args: list[str], needle: str) -> None:
    proc = fleetci(*args)
    assert proc.returncode == 2, proc.stderr
    assert needle in one_line_error(proc)


def test_the_level_is_part_of_the_codec_identity(tmp_path: Path) -> None:
    """Another level gives other bytes: remembered digests and resumable sessions must not mix them."""
    default, fast = codec("gzip"), codec("gzip", 1)
    assert default is not None and fast is not None
    assert default.identity != fast.identity and default.level == 3 and fast.level == 1
    assert (
        registry_settings({"compression": "zstd", "compression_level": "19"}, {}, {}).compression_level == 19
    )
    with pytest.raises(UsageError, match="gzip levels run 1-12"):
        registry_settings({}, {"registry": {"compression_level": 13}}, {})
    path = layer_file(tmp_path, 400_000)
    outs = set()
    for c in (default, fast):
        with CompressedStream(path, 4096, path.stat().st_size - 4196, c, 2) as stream:
            outs.add(b"".join(stream.take(1 << 40)))
    assert len(outs) == 2


def test_layer_digests_survive_a_corrupt_file_and_are_private(tmp_path: Path) -> None:
    path = tmp_path / "dl" / "layer-digests.json"
    store = LayerDigests(path)
    store.put("sha256:d", "gzip/x", "sha256:g", 12)
    assert LayerDigests(path).get("sha256:d", "gzip/x") == ("sha256:g", 12)
    assert LayerDigests(path).get("sha256:d", "zstd/x") is None
    assert path.stat().st_mode & 0o777 == 0o600
    path.write_text("{not json")
    assert LayerDigests(path).get("sha256:d", "gzip/x") is None  # a cache: starts afresh
    assert [p.name for p in path.parent.iterdir() if p.name.startswith("layer-digests.json.corrupt")]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=70_000), min_size=1, max_size=6))
def test_takes_of_any_sizes_concatenate_to_the_stream(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int]
) -> None:
    path = layer_file(tmp_path_factory.mktemp("h"), 200_000)
    whole, _, _ = compress_all(path, "gzip", 2)
    c = codec("gzip")
    assert c is not None
    with CompressedStream(path, 4096, path.stat().st_size - 4196, c, 1) as stream:
        got = b"".join(b"".join(stream.take(n)) for n in sizes)
    assert got == whole[: sum(sizes)]


def test_the_relay_carries_both_ways_and_counts_bytes() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data[::-1])
            await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(echo, "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    port = server.sockets[0].getsockname()[1]
    try:
        with LinkRelay("127.0.0.1", port, 800) as relay:
            payload = random.Random(3).randbytes(300_000)
            with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as conn:
                conn.sendall(payload)
                conn.shutdown(socket.SHUT_WR)  # half-close: the answer still comes back
                back = b""
                while chunk := conn.recv(65536):
                    back += chunk
            assert len(back) == len(payload)
            counts = relay.reset()
            assert counts.up == len(payload) and counts.down == len(payload)
            # the upstream bytes' busy window: first and last byte stamped
            assert (
                0 < counts.first_up < counts.last_up and counts.busy_s() == counts.last_up - counts.first_up
            )
            idle = relay.reset()
            assert idle.up == 0 and idle.busy_s() == 0.0
        with pytest.raises(ValueError):
            LinkRelay("127.0.0.1", port, 0)
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
