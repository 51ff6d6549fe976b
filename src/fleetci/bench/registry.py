"""``fleetci bench registry``: our daemonless push vs ``skopeo copy`` of the same archive, same registry.

Each push runs in a child process so its peak RSS (``wait4`` rusage) is the pusher's own. The figures:
first-push throughput of both tools, blob bytes a re-push and a retag send (both should be 0), the
peak RSS while pushing a 2 GiB image (bounded memory: layers are streamed, never held), and the bytes a
push killed (SIGKILL) mid-layer sends again when it is resumed: the kill lands with a chunk in flight
(the registry holds more than the pusher saved), once against the registry as it is and once behind
:class:`~fleetci.testing.registry_front.RegistryFront` (GitLab's status-GET rule on the same registry).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fleetci.errors import FleetciError
from fleetci.registry.compress import LEVELS
from fleetci.wait import WaitTimeout, wait_until

LAYER_MB = 64


def _layers(size_mb: int) -> list[int]:
    total = size_mb * 1024 * 1024
    sizes = [LAYER_MB * 1024 * 1024] * (total // (LAYER_MB * 1024 * 1024))
    if total % (LAYER_MB * 1024 * 1024):
        sizes.append(total % (LAYER_MB * 1024 * 1024))
    return sizes


CPU_SECONDS: dict[str, float] = {}  # user + system CPU of the last child per program (wait4)


def _run_child(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of a child process, measured with wait4 (CPU in CPU_SECONDS)."""
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out_parts: list[str] = []
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    out_parts.append(out)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    CPU_SECONDS[Path(argv[0]).name] = usage.ru_utime + usage.ru_stime
    if proc.returncode != 0:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        raise FleetciError(f"{Path(argv[0]).name} failed during the benchmark: {tail}")
    return seconds, usage.ru_maxrss / 1024.0, "".join(out_parts)


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetci.bench.registry", *args]


def child_push(
    plan_path: str,
    registry: str,
    repo: str,
    tag: str,
    chunk_mb: str,
    state_path: str = "",
    layers_path: str = "",
    compression: str = "gzip",
    parallel: str = "5",
    level: str = "0",
) -> dict[str, Any]:
    """Push one prepared image (plan entry) the way ``fleetci registry push`` does; counters as JSON.

    With ``state_path`` upload sessions are saved there (``push-state.json``) and resumed from it;
    ``layers_path`` is the remembered compressed digests (``layer-digests.json``).
    """
    from fleetci.registry.archive import Blob
    from fleetci.registry.engine_oci import final_manifest, push_blobs
    from fleetci.registry.oci import RegistryClient
    from fleetci.registry.state import LayerDigests, PushState

    plan = json.loads(Path(plan_path).read_text())
    state = PushState(Path(state_path)) if state_path else None
    layers = LayerDigests(Path(layers_path) if layers_path else None)
    with RegistryClient(registry, chunk_size=int(chunk_mb) * 1024 * 1024) as client:
        blobs = [Blob.from_json(b) for b in plan["blobs"]]
        pushed = push_blobs(
            client,
            repo,
            blobs,
            Path(plan["tarball"]),
            state=state,
            layers=layers,
            compression=compression,
            parallel=int(parallel),
            log=lambda _m: None,
            level=int(level),
        )
        manifest, media_type = final_manifest(
            plan["manifest"].encode(), plan["media_type"], pushed.compressed
        )
        client.put_manifest(repo, tag, manifest, media_type)
        c = client.counters
        doc = json.loads(manifest)
        return {
            "blob_bytes_sent": c.blob_bytes_sent,
            "pushed_bytes": sum(int(d["size"]) for d in [doc["config"], *doc["layers"]]),
            "sessions_resumed": c.chunks_resumed,
            "sessions_refused": c.sessions_refused,
        }


def saved_session(state_file: Path) -> tuple[str, int] | None:
    """The one upload session a push state file holds (location, offset); None before there is one."""
    try:
        uploads = json.loads(state_file.read_text())["uploads"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not written yet (it is replaced atomically: never half a file)
    if not isinstance(uploads, dict) or len(uploads) != 1:
        return None
    entry = next(iter(uploads.values()))
    return str(entry["location"]), int(entry["offset"])


def settled(size: Callable[[], int], polls: int = 10, interval: float = 0.02, limit: int = 1000) -> int:
    """``size()`` once it stopped changing for ``polls`` polls in a row (socket buffers drained)."""
    last, same = size(), 0
    for _ in range(limit):
        time.sleep(interval)
        now = size()
        same = same + 1 if now == last else 0
        last = now
        if same >= polls:
            break
    return last


def kill_mid_chunk(
    proc: subprocess.Popen[Any],
    state_file: Path,
    held: Callable[[str], int],
    min_offset: int,
    attempts: int = 50,
    timeout: float = 300.0,
) -> tuple[str, int, int]:
    """SIGKILL a chunked push while a chunk is in flight: (saved location, saved offset, registry bytes).

    Waits until the pusher saved an offset of at least ``min_offset`` and the registry holds more than
    that (the next chunk is landing), freezes the pusher (SIGSTOP), lets the registry take in what was
    already on the wire, and kills it when the registry still holds more than the saved offset: part of
    a chunk landed and its answer (the session's new state) never will, the case a kill at a random
    moment mid-layer almost always hits. If the pusher got to save that chunk first, it goes on
    (SIGCONT). Raises when the push ends first or no such moment comes in ``attempts`` tries.
    """

    def chunk_in_flight() -> bool:
        if (s := saved_session(state_file)) is not None and s[1] >= min_offset and held(s[0]) > s[1]:
            return True
        if proc.poll() is not None:
            raise FleetciError(f"the push ended (exit {proc.returncode}) before it could be killed")
        return False

    started = time.monotonic()
    for _ in range(attempts):
        left = max(0.0, timeout - (time.monotonic() - started))  # one budget for every attempt
        try:
            wait_until(chunk_in_flight, timeout=left, interval=0.002, what="a chunk in flight")
        except WaitTimeout:
            raise FleetciError(f"the push sent no chunk past offset {min_offset} in {timeout:g}s") from None
        proc.send_signal(signal.SIGSTOP)
        session = saved_session(state_file)  # re-read: it may have moved on before the stop
        assert session is not None
        location, saved = session
        if settled(functools.partial(held, location)) > saved:
            proc.kill()
            proc.wait()
            # the registry writes what it buffered when it sees the connection go: count it too
            return location, saved, settled(functools.partial(held, location))
        proc.send_signal(signal.SIGCONT)
    proc.kill()
    proc.wait()
    raise FleetciError(f"never caught the push with a chunk in flight in {attempts} tries")


def resume_resent(
    registry: Any,
    push_url: str,
    plan: Path,
    repo: str,
    chunk_mb: int,
    state_file: Path,
    compression: str = "gzip",
) -> dict[str, Any]:
    """Kill a real push mid-layer (:func:`kill_mid_chunk`), resume it, count the bytes sent twice.

    Re-sent = what the registry already held + what the resume sent - the pushed image's size (its
    compressed size when compressing; the killed push committed no blob: its single layer is the first
    one it sends).
    """
    from fleetci.testing.registry_front import held_bytes

    chunk = chunk_mb * 1024 * 1024
    argv = _child_argv(
        "push", str(plan), push_url, repo, "v1", str(chunk_mb), str(state_file), "", compression, "1"
    )
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, saved, held = kill_mid_chunk(
            proc, state_file, lambda loc: held_bytes(registry.storage, loc), min_offset=chunk
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, _, out = _run_child(argv)
    resumed = json.loads(out)
    return {
        "resent_bytes": held + int(resumed["blob_bytes_sent"]) - int(resumed["pushed_bytes"]),
        "image_bytes": int(resumed["pushed_bytes"]),
        "saved_offset": saved,
        "registry_bytes": held,
        "resume_blob_bytes": int(resumed["blob_bytes_sent"]),
        "sessions_refused": int(resumed["sessions_refused"]),
    }


def child_retag(registry: str, repo: str, src: str, dst: str) -> dict[str, Any]:
    from fleetci.registry.oci import RegistryClient

    with RegistryClient(registry) as client:
        got = client.get_manifest(repo, src)
        if got is None:
            raise FleetciError(f"{repo}:{src} is missing")
        client.put_manifest(repo, dst, got[0], got[1])
        return {"blob_bytes_sent": client.counters.blob_bytes_sent}


def _prepare(path: Path, out: Path) -> tuple[int, float]:
    from fleetci.registry.archive import DockerArchive, verify_image

    started = time.monotonic()
    archive = DockerArchive(path)
    image = verify_image(archive, archive.images()[0])
    out.write_text(
        json.dumps(
            {
                "tarball": str(path),
                "blobs": [b.to_json() for b in image.blobs],
                "manifest": image.manifest.decode(),
                "media_type": image.media_type,
            }
        )
    )
    return image.size, time.monotonic() - started


def _layer_bytes(registry_url: str, repo: str, tag: str) -> int:
    """Sum of the config and layer sizes in the manifest ``repo:tag`` (what a pull downloads)."""
    from fleetci.registry.oci import RegistryClient

    with RegistryClient(registry_url) as client:
        got = client.get_manifest(repo, tag)
        if got is None:
            raise FleetciError(f"{repo}:{tag} is missing after the push")
        doc = json.loads(got[0])
        return sum(int(d["size"]) for d in [doc["config"], *doc["layers"]])


def bench_registry(
    size_mb: int = 512,
    rss_size_mb: int = 2048,
    chunk_mb: int = 128,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    resume_layer_mb: int = 300,
    link_mbps: float = 400.0,
    compression: str = "gzip",
    parallel: int = 5,
    compression_level: int = 0,
) -> dict[str, Any]:
    """Both pushers through the same :class:`LinkRelay` (``link_mbps`` > 0) or straight on loopback.

    skopeo copies the ``docker save`` archive with ``--dest-compress-format gzip`` (it compresses the
    uncompressed layers for a registry anyway); fleetci pushes with ``compression``, ``parallel`` blobs
    at once. The images are real files (this machine's ``/usr``), which compress as a Debian rootfs does.
    """
    from fleetci.bench.relay import LinkRelay
    from fleetci.testing.docker_registry import no_auth_registry
    from fleetci.testing.images import write_docker_archive
    from fleetci.testing.registry_front import RegistryFront

    say = progress or (lambda _m: None)
    if shutil.which("skopeo") is None:
        raise FleetciError("the benchmark needs skopeo (apt-get install skopeo)")
    root = Path(tempfile.mkdtemp(prefix="fleetci-bench-registry-", dir=workdir))
    reg = no_auth_registry(root / "registry")
    relay: LinkRelay | None = None
    layers_file = str(root / "layer-digests.json")
    chunk, par, lvl = str(chunk_mb), str(parallel), str(compression_level)
    try:
        say(
            f"building a {size_mb} MiB image of /usr files (legacy docker save layout, {LAYER_MB} MiB layers)"
        )
        img = write_docker_archive(
            root / "image.tar", "bench/presto:bench-linux-amd64", _layers(size_mb), content="rootfs"
        )
        size, prepare_s = _prepare(img.path, root / "plan.json")
        reg.start()
        url, host = reg.url, reg.host
        if link_mbps > 0:
            host_name, _, port = reg.host.rpartition(":")
            relay = LinkRelay(host_name, int(port), link_mbps).start()
            url, host = relay.url, relay.host
        where = f"a {link_mbps:g} Mbit/s link" if relay else "loopback"
        say(f"skopeo copy docker-archive -> registry over {where} (baseline, gzip)")
        skopeo_s, skopeo_rss, _ = _run_child(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--dest-tls-verify=false",
                *(["--dest-compress-format", "gzip"] if compression != "none" else []),
                f"docker-archive:{img.path}",
                f"docker://{host}/bench/skopeo:v1",
            ]
        )
        skopeo_link = relay.reset().up if relay else 0
        skopeo_cpu = CPU_SECONDS["skopeo"]
        say(f"skopeo: {skopeo_s:.1f}s; fleetci push ({compression}, {parallel} in parallel)")
        plan = str(root / "plan.json")
        push_started = time.monotonic()
        push_s, push_rss, out = _run_child(
            _child_argv(
                "push", plan, url, "bench/fleetci", "v1", chunk, "", layers_file, compression, par, lvl
            )
        )
        first = json.loads(out)
        push_cpu = CPU_SECONDS[Path(sys.executable).name]
        fleetci_counts = relay.reset() if relay else None
        fleetci_link = fleetci_counts.up if fleetci_counts else 0
        say(f"fleetci: {push_s:.1f}s; re-push and retag")
        _, _, out = _run_child(
            _child_argv(
                "push", plan, url, "bench/fleetci", "v1", chunk, "", layers_file, compression, par, lvl
            )
        )
        repush = json.loads(out)
        _, _, out = _run_child(_child_argv("retag", url, "bench/fleetci", "v1", "latest"))
        retag = json.loads(out)
        skopeo_blobs = _layer_bytes(reg.url, "bench/skopeo", "v1")
        fleetci_blobs = _layer_bytes(reg.url, "bench/fleetci", "v1")
        img.path.unlink()
        say(f"building a {rss_size_mb} MiB image for the memory measurement (pushed on loopback)")
        big = write_docker_archive(
            root / "big.tar", "bench/big:bench-linux-amd64", _layers(rss_size_mb), seed=2, content="rootfs"
        )
        big_size, _ = _prepare(big.path, root / "big-plan.json")
        say("fleetci push of the big image (peak RSS)")
        big_s, big_rss, _ = _run_child(
            _child_argv(
                "push",
                str(root / "big-plan.json"),
                reg.url,
                "bench/big",
                "v1",
                chunk,
                "",
                "",
                compression,
                par,
            )
        )
        big.path.unlink()
        say(f"building a {resume_layer_mb} MiB single-layer image for the kill-and-resume measurement")
        one = write_docker_archive(
            root / "one.tar",
            "bench/one:bench-linux-amd64",
            [resume_layer_mb * 1024 * 1024],
            seed=3,  # random bytes: compressed, the layer still spans more than one chunk
        )
        _prepare(one.path, root / "one-plan.json")
        say("push killed (SIGKILL) mid-layer, then resumed: the registry as it is")
        plain = resume_resent(
            reg, reg.url, root / "one-plan.json", "bench/one", chunk_mb, root / "state-a.json", compression
        )
        say("push killed mid-layer, then resumed: behind GitLab's status-GET rule")
        with RegistryFront(reg) as front:
            gitlab = resume_resent(
                reg,
                front.url,
                root / "one-plan.json",
                "bench/two",
                chunk_mb,
                root / "state-b.json",
                compression,
            )
        return {
            "size_mb": size_mb,
            "image_bytes": size,
            "content": "rootfs (/usr files)",
            "link_mbps": link_mbps,
            "compression": compression,
            "parallel": parallel,
            "cpus": os.cpu_count(),
            "push_s": round(push_s, 2),
            "skopeo_s": round(skopeo_s, 2),
            "push_mb_s": round(size / 1e6 / push_s, 1),
            "skopeo_mb_s": round(size / 1e6 / skopeo_s, 1),
            "ratio": round(skopeo_s / push_s, 2),
            "compression_level": compression_level or LEVELS.get(compression, (0, 0))[0],
            "skopeo_cpu_s": round(skopeo_cpu, 2),
            "push_cpu_s": round(push_cpu, 2),
            "cpu_ratio": round(skopeo_cpu / push_cpu, 2),
            "fleetci_link_bytes": fleetci_link,
            "skopeo_link_bytes": skopeo_link,
            "bytes_on_link_ratio": round(fleetci_link / skopeo_link, 3) if skopeo_link else None,
            # where fleetci's wall time went on the link: start-up before its first byte, the link's
            # busy span, and how full the link was over the whole push (1.0: every second at the rate)
            "push_first_byte_s": (
                round(fleetci_counts.first_up - push_started, 2) if fleetci_counts else None
            ),
            "push_link_busy_s": round(fleetci_counts.busy_s(), 2) if fleetci_counts else None,
            "push_link_use": (
                round(fleetci_link / (link_mbps * 1e6 / 8) / push_s, 3) if fleetci_counts else None
            ),
            "fleetci_blob_bytes": fleetci_blobs,
            "skopeo_blob_bytes": skopeo_blobs,
            "blob_bytes_ratio": round(fleetci_blobs / skopeo_blobs, 3),
            "first_push_blob_bytes": first["blob_bytes_sent"],
            "repush_blob_bytes": repush["blob_bytes_sent"],
            "retag_blob_bytes": retag["blob_bytes_sent"],
            "peak_rss_mb": round(big_rss, 1),
            "peak_rss_image_mb": round(big_size / 1024 / 1024),
            "big_push_mb_s": round(big_size / 1e6 / big_s, 1),
            "push_rss_mb": round(push_rss, 1),
            "skopeo_rss_mb": round(skopeo_rss, 1),
            "prepare_verify_s": round(prepare_s, 2),
            "chunk_mb": chunk_mb,
            "resume_image_bytes": plain["image_bytes"],
            "resume_resent_bytes": plain["resent_bytes"],
            "resume_saved_offset": plain["saved_offset"],
            "resume_registry_bytes": plain["registry_bytes"],
            "resume_sessions_refused": plain["sessions_refused"],
            "resume_gitlab_resent_bytes": gitlab["resent_bytes"],
            "resume_gitlab_saved_offset": gitlab["saved_offset"],
            "resume_gitlab_registry_bytes": gitlab["registry_bytes"],
            "resume_gitlab_sessions_refused": gitlab["sessions_refused"],
            "targets": {
                "ratio": ">= 1.5 (--link-mbps 400)",
                "bytes_on_link_ratio": "<= 1.05",
                "repush_blob_bytes": 0,
                "retag_blob_bytes": 0,
                "peak_rss_mb": "<= 200",
                "resume_resent_bytes": f"<= {chunk_mb * 1024 * 1024} (one chunk)",
            },
        }
    finally:
        if relay is not None:
            relay.stop()
        reg.stop()
        shutil.rmtree(root, ignore_errors=True)


def _main(argv: list[str]) -> int:
    verb, *rest = argv
    result = child_push(*rest) if verb == "push" else child_retag(*rest)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
