"""Issue 19 against the real Debian ``docker-registry``: compressed layers, re-push/retag with 0 blob
bytes, zstd, multi-arch OCI index, and a compressed push killed mid-chunk that resumes.

``skopeo`` is the independent reader: ``inspect --raw`` shows the manifests and the index as the
registry holds them, ``copy`` to a ``dir:`` fetches the compressed blobs, which are decompressed here with
the standard library and checked against the image config's diff IDs.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import signal
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fleetci.bench.registry import kill_mid_chunk
from fleetci.registry.settings import registry_settings
from fleetci.registry.sync import prepare
from fleetci.testing.docker_registry import RegistryProcess, no_auth_registry
from fleetci.testing.images import write_docker_archive
from fleetci.testing.registry_front import RegistryFront, held_bytes
from fleetci.wait import wait_until
from support import clean_env, fleetci_cmd, one_line_error, run_fleetci
from support.registry import GL_TAG, PROJECT, TAG, needs_registry, push_argv

pytestmark = [pytest.mark.integration, needs_registry]

MIB = 1024 * 1024
ARM_TAG = TAG.replace("-linux-amd64", "-linux-arm64")
KILL_TAG = "presto-111111111111-velox-222222222222-linux-amd64"  # a tag of its own in the shared registry
FAIL_TAG = "presto-333333333333-velox-444444444444-linux-amd64"
CHANGED_TAG = "presto-555555555555-velox-666666666666-linux-amd64"
OTHER_TAG = "presto-777777777777-velox-888888888888-linux-amd64"
RACE_TAG = "presto-dddddddddddd-velox-eeeeeeeeeeee-linux-amd64"
SIGNAL_TAGS = {  # a tag each: the shared registry would hold the other run's image
    signal.SIGINT: "presto-999999999999-velox-aaaaaaaaaaaa-linux-amd64",
    signal.SIGTERM: "presto-bbbbbbbbbbbb-velox-cccccccccccc-linux-amd64",
}
STDLIB = str(Path(json.__file__).parent.parent)  # real files (Python's stdlib): text and binaries


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    reg = no_auth_registry(tmp_path_factory.mktemp("registry")).start()
    try:
        yield reg
    finally:
        reg.stop()


def prepared(
    downloads: Path, tag: str, layers: list[int], *, arch: str = "amd64", **kw: Any
) -> dict[str, Any]:
    """``download``'s result for ``tag`` (zip of a docker save tarball + metadata.json), then ``prepare``."""
    art = downloads / tag / "artifacts"
    art.mkdir(parents=True)
    built = write_docker_archive(
        downloads.parent / f"img-{arch}" / "presto-coordinator.tar",
        f"presto-coordinator:{tag}",
        layers,
        architecture=arch,
        **kw,
    )
    with zipfile.ZipFile(art / "presto-images.zip", "w") as zf:
        zf.write(built.path, built.path.name)
    (downloads / tag / "metadata.json").write_text(json.dumps({"image_tag": tag, "run": {"run_id": 1}}))
    plan = prepare(registry_settings({"downloads_dir": str(downloads)}, {}, {}), tag, log=lambda _m: None)
    return plan.images[0].to_json()


def sent(stdout: str) -> int:
    [line] = [ln for ln in stdout.splitlines() if "blob bytes sent" in ln and "index" not in ln]
    return int(line.rsplit("(", 1)[1].split()[0])


def skopeo(*args: str) -> str:
    out = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def raw(ref: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{ref}"))
    return doc


def push(downloads: Path, url: str, *extra: str, tag: str = TAG, compression: str = "gzip") -> str:
    argv = push_argv(downloads, url, "--verbose", *extra, compression=compression)
    argv[2] = tag
    proc = run_fleetci(*argv, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr


def test_layers_go_gzip_compressed_and_a_repush_or_retag_sends_no_blob_bytes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    img = prepared(downloads, TAG, [1_500_000, 1_000_000], content="rootfs", tree=STDLIB)
    total = sum(b["size"] for b in img["blobs"])
    repo = f"{registry.host}/{PROJECT}/x86/presto-coordinator"

    out = push(downloads, registry.url)
    assert 0 < sent(out) < total * 0.7, out  # real files shrink on the wire
    doc = raw(f"{repo}:{GL_TAG}")
    assert [layer["mediaType"] for layer in doc["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2
    assert doc["config"]["digest"] == img["config_digest"]  # the config (and its diff IDs) as built
    pulled = tmp_path / "pulled"
    skopeo("copy", "--src-tls-verify=false", f"docker://{repo}:{GL_TAG}", f"dir:{pulled}")
    config = json.loads((pulled / img["config_digest"].split(":")[1]).read_bytes())
    for layer, diff_id in zip(doc["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = (pulled / layer["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"] and len(blob) == layer["size"]
        assert "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest() == diff_id
    # Go's gzip reader (skopeo's, as docker's and containerd's) decompresses the multi-member blobs to
    # the layers the config names: a docker-archive holds them uncompressed
    skopeo("copy", "--src-tls-verify=false", f"docker://{repo}:{GL_TAG}", f"docker-archive:{tmp_path}/go.tar")
    with tarfile.open(tmp_path / "go.tar") as tar:
        saved = json.load(tar.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        tars = [tar.extractfile(name).read() for name in saved["Layers"]]  # type: ignore[union-attr]
    assert ["sha256:" + hashlib.sha256(t).hexdigest() for t in tars] == config["rootfs"]["diff_ids"]
    assert max(b["size"] for b in img["blobs"]) > 1024 * 1024  # a layer of several gzip members
    remembered = json.loads((downloads / "layer-digests.json").read_text())
    assert {e["digest"] for v in remembered.values() for e in v.values()} == {
        d["digest"] for d in doc["layers"]
    }

    again = push(downloads, registry.url, "--force")  # existence checked by the remembered digests
    assert sent(again) == 0 and "gzip uploaded" not in again, again
    assert raw(f"{repo}:{GL_TAG}") == doc

    retag = run_fleetci(
        "registry", "retag", f"x86/presto-coordinator:{GL_TAG}", "x86/presto-mirror:v1",
        "--registry", registry.url, "--registry-project", PROJECT, "--skip-login", "--json",
    )  # fmt: skip
    assert retag.returncode == 0 and json.loads(retag.stdout)["blob_bytes_sent"] == 0, retag.stderr

    zstd = push(downloads, registry.url, "--force", compression="zstd")
    assert 0 < sent(zstd) < total * 0.7
    doc = raw(f"{repo}:{GL_TAG}")
    assert doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert [layer["mediaType"] for layer in doc["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ] * 2


def test_index_combines_the_arches_of_one_build_and_keeps_the_per_arch_tags(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    prepared(downloads, TAG, [300_000], arch="amd64", seed=11)
    prepared(downloads, ARM_TAG, [300_000], arch="arm64", seed=12)
    project = f"{registry.host}/{PROJECT}"
    index_ref = f"{project}/multi/presto-coordinator:{GL_TAG}"

    # --force: the first test of the module pushed another image to TAG (a skipped tag is not indexed)
    out = push(downloads, registry.url, "--index", "multi/{image}:{tag}", "--parallel", "2", "--force")
    assert "index" in out
    index = raw(index_ref)
    assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
    assert [m["platform"] for m in index["manifests"]] == [{"architecture": "amd64", "os": "linux"}]

    push(downloads, registry.url, "--index", "multi/{image}:{tag}", "--force", tag=ARM_TAG)
    index = raw(index_ref)
    platforms = {m["platform"]["architecture"]: m["digest"] for m in index["manifests"]}
    assert sorted(platforms) == ["amd64", "arm64"]
    for arch, arch_dir in (("amd64", "x86"), ("arm64", "arm")):
        per_arch = f"{project}/{arch_dir}/presto-coordinator:{GL_TAG}"  # the seed's tags, as they were
        own = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{per_arch}"))
        assert platforms[arch] == own["Digest"] and own["Architecture"] == arch
        chosen = skopeo("inspect", "--tls-verify=false", "--override-arch", arch, f"docker://{index_ref}")
        info = json.loads(chosen)  # what a pull on that platform resolves the index to
        assert info["Architecture"] == arch and info["Layers"] == own["Layers"]
        assert raw(f"{index_ref.rsplit(':', 1)[0]}@{platforms[arch]}") == raw(per_arch)


def test_a_compressed_push_killed_mid_chunk_resumes_by_compressing_again(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    prepared(downloads, KILL_TAG, [24 * MIB], seed=5)  # random bytes: compressed, still 24 chunks of 1 MiB
    with RegistryFront(registry) as front:
        argv = push_argv(downloads, front.url, compression="gzip")
        argv[2] = KILL_TAG
        proc = subprocess.Popen(
            fleetci_cmd(*argv),
            env=clean_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _, saved, held = kill_mid_chunk(
                proc,
                downloads / KILL_TAG / "push-state.json",
                lambda loc: held_bytes(registry.storage, loc),
                min_offset=MIB,
            )
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        assert 0 < saved < held

        rerun = run_fleetci(*argv, "--verbose", timeout=120)
        assert rerun.returncode == 0, rerun.stderr
        assert "compressing again" in rerun.stderr and f"registry holds {held} bytes" in rerun.stderr
        assert "refused" not in rerun.stderr
        doc = raw(
            f"{front.host_port}/{PROJECT}/x86/presto-coordinator:{KILL_TAG.removesuffix('-linux-amd64')}"
        )
        pushed = sum(d["size"] for d in [doc["config"], *doc["layers"]])
        # at most one chunk went twice (the config may have landed before the kill: uploads run in parallel)
        assert -doc["config"]["size"] <= held + sent(rerun.stdout) - pushed <= MIB
        assert doc["layers"][0]["mediaType"].endswith("+gzip")


def run_push(downloads: Path, url: str, tag: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = push_argv(downloads, url, "--verbose", *extra, compression="gzip")
    argv[2] = tag
    return run_fleetci(*argv, timeout=120)


def test_a_layer_changed_after_prepare_at_the_same_size_is_never_pushed_nor_remembered(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    img = prepared(downloads, CHANGED_TAG, [2 * MIB], seed=31)
    [layer] = [b for b in img["blobs"] if b["digest"] != img["config_digest"]]
    tarball = downloads / CHANGED_TAG / img["tarball"]
    with tarball.open("r+b") as fh:  # one byte of the layer flipped: same size, same plan
        fh.seek(layer["offset"] + layer["size"] // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))

    proc = run_push(downloads, registry.url, CHANGED_TAG)
    error = one_line_error(proc)
    assert "changed since prepare" in error and layer["digest"][:19] in error, error
    assert (
        not (downloads / "layer-digests.json").exists()
        or layer["digest"] not in (downloads / "layer-digests.json").read_text()
    )  # the wrong compressed digest is never reused for this diff ID
    state = json.loads((downloads / CHANGED_TAG / "push-state.json").read_text())
    assert state["uploads"] == {} and state["verified"] == {}
    gone = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry.host}/{PROJECT}/x86/presto-coordinator:{CHANGED_TAG.removesuffix('-linux-amd64')}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode != 0  # no manifest naming a blob that contradicts its diff ID


def test_a_refused_blob_stops_the_parallel_uploads_in_flight_and_the_rerun_resumes(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    img = prepared(downloads, FAIL_TAG, [24 * MIB, 200_000], seed=41)  # random: 24 chunks compressed
    big = img["blobs"][0]
    with RegistryFront(registry) as front:
        front.refuse_digest = img["config_digest"]  # refused while the big layer is sending chunks
        proc = run_push(downloads, front.url, FAIL_TAG, "--parallel", "2")
        error = one_line_error(proc)
        assert "denied" in error.lower() and "stopped at" not in error, error
        state = json.loads((downloads / FAIL_TAG / "push-state.json").read_text())
        [(key, session)] = [(k, v) for k, v in state["uploads"].items() if big["digest"] in k]
        assert 0 < session["offset"] < 12 * MIB, (key, session)  # stopped, not run to its end
        assert f"stopped at {session['offset']} bytes" in proc.stderr
        assert "index" not in proc.stdout and state["verified"] == {}

        front.refuse_digest = ""
        rerun = run_push(downloads, front.url, FAIL_TAG, "--parallel", "2")
        assert rerun.returncode == 0, rerun.stderr
        assert f"resume layer {big['digest'][:19]}" in rerun.stderr, rerun.stderr
        assert sent(rerun.stdout) <= 24 * MIB + 300_000 - session["offset"] + MIB  # the held part not again


def test_an_index_is_not_built_when_the_arch_tag_holds_another_image(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    first = prepared(tmp_path / "first", OTHER_TAG, [200_000], seed=51)
    proc = run_push(tmp_path / "first", registry.url, OTHER_TAG)
    assert proc.returncode == 0, proc.stderr
    other = prepared(tmp_path / "other", OTHER_TAG, [200_000], seed=52)  # another build at the same tag
    assert other["config_digest"] != first["config_digest"]

    proc = run_push(tmp_path / "other", registry.url, OTHER_TAG, "--index", "multi-other/{image}:{tag}")
    assert proc.returncode == 0, proc.stderr
    assert "exists with a different image; skipped" in proc.stderr
    assert "index skipped" in proc.stdout and "not indexed" in proc.stderr, proc.stdout + proc.stderr
    gone = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false",
         f"docker://{registry.host}/{PROJECT}/multi-other/presto-coordinator:{OTHER_TAG.removesuffix('-linux-amd64')}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert gone.returncode != 0  # no index over an image this push did not push


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_uploads_in_flight_and_the_rerun_resumes(
    registry: RegistryProcess, tmp_path: Path, signum: signal.Signals
) -> None:
    downloads = tmp_path / "downloads"
    tag = SIGNAL_TAGS[signum]
    img = prepared(downloads, tag, [16 * MIB, 16 * MIB], seed=61 + signum)
    state_file = downloads / tag / "push-state.json"
    front = RegistryFront(registry).start()
    front.patch_delay = 0.1  # each layer takes 16 x 0.1 s or more: the signal lands mid-layer
    argv = push_argv(downloads, front.url, "--verbose", compression="gzip", parallel=2)
    argv[2] = tag
    proc = subprocess.Popen(
        fleetci_cmd(*argv), env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:

        def a_chunk_landed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the push ended (exit {proc.returncode}) before the signal")
            try:
                uploads = json.loads(state_file.read_text())["uploads"]
            except (OSError, ValueError, KeyError):
                return False
            return any(u["offset"] >= MIB for u in uploads.values())

        wait_until(a_chunk_landed, timeout=120, interval=0.005, what="a saved chunk")
        os.kill(proc.pid, signal.SIGSTOP)  # mid-layer for sure: frozen while the signal arrives
        os.kill(proc.pid, signum)
        os.kill(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        front.stop()
        raise
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "fleetci: interrupted", err
    uploads = json.loads(state_file.read_text())["uploads"]
    stopped = {k: u["offset"] for k, u in uploads.items()}
    assert stopped, err
    assert stopped and all(0 <= off < 16 * MIB for off in stopped.values()), stopped  # not run to the end
    for key, offset in stopped.items():
        assert f"stopped at {offset} bytes" in err, (key, err)

    front.patch_delay = 0.0
    try:  # through the same front: the saved sessions point at it
        rerun = run_push(downloads, front.url, tag, "--parallel", "2")
    finally:
        front.stop()
    assert rerun.returncode == 0, rerun.stderr
    assert "resume layer" in rerun.stderr
    assert sent(rerun.stdout) <= sum(b["size"] for b in img["blobs"]) + 300_000 - max(stopped.values())


def test_two_arches_indexing_at_once_end_with_an_index_of_both(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    arm_tag = RACE_TAG.replace("-linux-amd64", "-linux-arm64")
    prepared(downloads, RACE_TAG, [200_000], arch="amd64", seed=71)
    prepared(downloads, arm_tag, [200_000], arch="arm64", seed=72)
    index_ref = f"{registry.host}/{PROJECT}/race/presto-coordinator:{RACE_TAG.removesuffix('-linux-amd64')}"
    with RegistryFront(registry) as front:
        front.hold_first_index = True  # amd64's index (read before arm64 existed) lands after arm64's
        argv = push_argv(downloads, front.url, "--verbose", "--index", "race/{image}:{tag}")
        argv[2] = RACE_TAG
        amd = subprocess.Popen(
            fleetci_cmd(*argv), env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: front.index_puts >= 1 or amd.poll() is not None, timeout=120, what="index PUT")
            assert amd.poll() is None
            arm = run_push(downloads, front.url, arm_tag, "--index", "race/{image}:{tag}")
            assert arm.returncode == 0, arm.stderr
            _, err = amd.communicate(timeout=120)
        finally:
            if amd.poll() is None:
                amd.kill()
                amd.wait()
        assert amd.returncode == 0, err
        assert front.index_puts >= 3  # amd64's push wrote the index again after its late PUT
    index = raw(index_ref)
    assert sorted(m["platform"]["architecture"] for m in index["manifests"]) == ["amd64", "arm64"]
