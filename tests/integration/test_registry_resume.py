"""fleetci registry: a push killed mid-layer resumes; private state; one-line errors for every verb.

The kill is real (SIGKILL of a real ``fleetci registry push`` process) and lands with a chunk in flight:
:func:`fleetci.bench.registry.kill_mid_chunk` waits until the registry holds more than the pusher saved,
which is what a kill at a random moment mid-layer almost always leaves. The registry is the real Debian
``docker-registry`` (distribution 2.8), on its own and behind :class:`RegistryFront`, which gives it the
one rule of GitLab's container registry that resuming needs: the status GET of an upload session answers
with what the registry holds even when the pusher's saved state is stale (distribution 2.8 refuses it).
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetci.bench.registry import kill_mid_chunk
from fleetci.files import write_json
from fleetci.registry.state import PushState, exclusive_lock
from fleetci.testing.docker_registry import RegistryProcess
from fleetci.testing.registry_front import RegistryFront, held_bytes, upload_data
from support import clean_env, fleetci_cmd, run_fleetci
from support.registry import GL_TAG, PROJECT, TAG, needs_registry, push_again, push_argv
from support.registry_resume import Prepared, prepared

REPO = f"{PROJECT}/x86/presto-coordinator"


MIB = 1024 * 1024


LAYER = 16 * MIB  # sixteen 1 MiB chunks (--chunk-mb 1)


@pytest.fixture
def front(registry: RegistryProcess) -> Iterator[RegistryFront]:
    with RegistryFront(registry) as f:
        yield f


def sent_bytes(stdout: str) -> int:
    [line] = [ln for ln in stdout.splitlines() if "blob bytes sent" in ln]
    return int(line.rsplit("(", 1)[1].split()[0])


def kill_push(p: Prepared, registry: RegistryProcess, url: str) -> tuple[str, int, int]:
    """Start a real push and SIGKILL it with a chunk in flight: (saved location, saved offset, held)."""
    proc = subprocess.Popen(
        fleetci_cmd(*push_argv(p.downloads, url)),
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return kill_mid_chunk(
            proc, p.state_file, lambda loc: held_bytes(registry.storage, loc), min_offset=MIB
        )
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def skopeo_digest(ref: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--no-tags", f"docker://{ref}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return str(json.loads(out.stdout)["Digest"])


@needs_registry
def test_push_killed_mid_chunk_resends_at_most_one_chunk(
    tmp_path: Path, registry: RegistryProcess, front: RegistryFront
) -> None:
    """Saved offset BEHIND the registry's (the chunk in flight landed): go on from the registry's Range."""
    p = prepared(tmp_path, [LAYER])
    _, saved, held = kill_push(p, registry, front.url)
    assert 0 < saved < held < LAYER  # the mechanism: the kill left the registry ahead of the saved state

    rerun = push_again(p.downloads, front.url)
    assert f"registry holds {held} bytes" in rerun.stderr and "ahead of the saved offset" in rerun.stderr
    assert "refused" not in rerun.stderr
    assert front.resigned >= 1  # the status GET carried the stale state and was answered anyway
    resent = held + sent_bytes(rerun.stdout) - p.total
    assert 0 <= resent <= MIB, (held, rerun.stdout)  # at most one chunk goes over the wire twice
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest
    assert json.loads(p.state_file.read_text())["uploads"] == {}


@needs_registry
def test_resume_when_the_saved_offset_is_ahead_of_the_registry(
    tmp_path: Path, registry: RegistryProcess, front: RegistryFront
) -> None:
    """Saved offset AHEAD of the registry's (it lost the tail it acknowledged): resend from its Range."""
    p = prepared(tmp_path, [LAYER])
    location, saved, _ = kill_push(p, registry, front.url)
    assert saved >= MIB
    kept = saved - MIB  # a chunk boundary the registry had acknowledged
    with upload_data(registry.storage, location).open("r+b") as fh:
        fh.truncate(kept)

    rerun = push_again(p.downloads, front.url)
    assert f"registry holds {kept} bytes" in rerun.stderr and "behind the saved offset" in rerun.stderr
    assert sent_bytes(rerun.stdout) == p.total - kept  # exactly what the registry was missing
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest


@needs_registry
def test_expired_session_restarts_from_zero_once(
    tmp_path: Path, registry: RegistryProcess, front: RegistryFront
) -> None:
    """The saved session is gone (purged upload: 404): the blob starts again in a new session, once."""
    p = prepared(tmp_path, [LAYER])
    location, saved, _ = kill_push(p, registry, front.url)
    fresh = httpx.get(location).headers["location"]  # a purge removes the upload; do the same
    assert httpx.delete(fresh).status_code == 204
    assert httpx.get(location).status_code == 404

    rerun = push_again(p.downloads, front.url)
    refused = [ln for ln in rerun.stderr.splitlines() if "refused by the registry" in ln]
    assert len(refused) == 1 and f"offset {saved}" in refused[0] and "from the start" in refused[0]
    assert sent_bytes(rerun.stdout) == p.total
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest
    assert json.loads(p.state_file.read_text())["uploads"] == {}


@needs_registry
def test_distribution_refuses_a_stale_session_so_the_layer_starts_again(
    tmp_path: Path, registry: RegistryProcess
) -> None:
    """Plain distribution 2.8 checks the saved state even on the status GET (404 BLOB_UPLOAD_INVALID):
    after such a kill the session cannot be continued there, so the layer starts again, once, cleanly."""
    p = prepared(tmp_path, [LAYER])
    location, _, held = kill_push(p, registry, registry.url)
    status = httpx.get(location)
    assert status.status_code == 404 and "BLOB_UPLOAD_INVALID" in status.text

    rerun = push_again(p.downloads, registry.url)
    assert sum("from the start" in ln for ln in rerun.stderr.splitlines()) == 1
    assert held + sent_bytes(rerun.stdout) - p.total == held  # all the registry held is sent again
    assert skopeo_digest(f"{registry.host}/{REPO}:{GL_TAG}") == p.manifest_digest


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_registry
def test_sync_state_is_private_and_old_files_are_tightened(tmp_path: Path, registry: RegistryProcess) -> None:
    p = prepared(tmp_path, [300_000])
    tag = p.downloads / TAG
    assert mode(tag) == 0o700 and mode(tag / "extracted") == 0o700
    assert mode(tag / "upload-plan.json") == 0o600
    # state an older version left world-readable is tightened when it is read again
    (tag / "push-state.json").write_text(json.dumps({"uploads": {}, "blobs": {}, "verified": {}}))
    os.chmod(tag / "push-state.json", 0o644)
    os.chmod(tag, 0o755)
    proc = run_fleetci(*push_argv(p.downloads, registry.url))
    assert proc.returncode == 0, proc.stderr
    assert mode(tag / "push-state.json") == 0o600 and mode(tag) == 0o700

    root = tmp_path / "daemon-root"
    with exclusive_lock(root / "daemon.lock"):
        pass
    assert mode(root) == 0o700 and mode(root / "daemon.lock") == 0o600
    write_json(root / "daemon-state.json", {"tags": {}})
    assert mode(root / "daemon-state.json") == 0o600
    state = PushState(root / "x" / "push-state.json")
    state.save_upload("a/b", "sha256:" + "0" * 64, "http://127.0.0.1:1/v2/a/b/blobs/uploads/u?_state=s", 5)
    assert mode(root / "x") == 0o700 and mode(root / "x" / "push-state.json") == 0o600
