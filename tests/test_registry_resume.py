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
import shutil
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from conftest import clean_env, fleetci_cmd, one_line_error, run_fleetci
from fleetci.bench.registry import kill_mid_chunk
from fleetci.files import write_json
from fleetci.http import free_port
from fleetci.registry.plan import UploadPlan
from fleetci.registry.settings import registry_settings
from fleetci.registry.state import PushState, exclusive_lock
from fleetci.registry.sync import prepare
from fleetci.testing.docker_registry import RegistryProcess, registry_binary
from fleetci.testing.images import write_docker_archive
from fleetci.testing.registry_front import RegistryFront, held_bytes, upload_data
from test_registry import (
    GL_TAG,
    PROJECT,
    TAG,
    Fleetci,
    in_process,
    plain_registry,  # noqa: F401 (a fixture this module reuses)
    push_argv,
)

REPO = f"{PROJECT}/x86/presto-coordinator"
MIB = 1024 * 1024
LAYER = 16 * MIB  # sixteen 1 MiB chunks (--chunk-mb 1)

needs_registry = pytest.mark.skipif(
    registry_binary() is None or shutil.which("skopeo") is None,
    reason="docker-registry and skopeo are installed by scripts/test.sh (apt)",
)


@pytest.fixture
def registry(plain_registry: RegistryProcess) -> RegistryProcess:  # noqa: F811 (the imported fixture)
    """The real registry without auth (test_registry's fixture), under the name this module reads best."""
    return plain_registry


@pytest.fixture
def fleetci(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Fleetci:
    """``fleetci ARGS…`` in this process (test_registry's runner)."""
    return in_process(monkeypatch, capsys)


@pytest.fixture
def front(registry: RegistryProcess) -> Iterator[RegistryFront]:
    with RegistryFront(registry) as f:
        yield f


@dataclass
class Prepared:
    downloads: Path
    plan: UploadPlan
    total: int  # blob bytes of the image (layer + config)

    @property
    def state_file(self) -> Path:
        return self.downloads / TAG / "push-state.json"

    @property
    def manifest_digest(self) -> str:
        return self.plan.images[0].manifest_digest


def prepared(tmp_path: Path, layers: list[int]) -> Prepared:
    """A downloaded artifact (zip of a ``docker save`` tarball + metadata.json), prepared for push."""
    downloads = tmp_path / "downloads"
    art = downloads / TAG / "artifacts"
    art.mkdir(parents=True)
    built = write_docker_archive(
        tmp_path / "img" / "presto-coordinator.tar", f"presto-coordinator:{TAG}", layers
    )
    with zipfile.ZipFile(art / "presto-images.zip", "w") as zf:
        zf.write(built.path, built.path.name)
    (downloads / TAG / "metadata.json").write_text(json.dumps({"image_tag": TAG, "run": {"run_id": 1}}))
    plan = prepare(registry_settings({"downloads_dir": str(downloads)}, {}, {}), TAG, log=lambda _m: None)
    return Prepared(downloads, plan, sum(b.size for b in plan.images[0].blobs))


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


# -- resume after SIGKILL ---------------------------------------------------------------------------------


@needs_registry
@pytest.mark.integration
def test_push_killed_mid_chunk_resends_at_most_one_chunk(
    tmp_path: Path, registry: RegistryProcess, front: RegistryFront
) -> None:
    """Saved offset BEHIND the registry's (the chunk in flight landed): go on from the registry's Range."""
    p = prepared(tmp_path, [LAYER])
    _, saved, held = kill_push(p, registry, front.url)
    assert 0 < saved < held < LAYER  # the mechanism: the kill left the registry ahead of the saved state

    rerun = run_fleetci(*push_argv(p.downloads, front.url, "--verbose"))
    assert rerun.returncode == 0, rerun.stderr
    assert f"registry holds {held} bytes" in rerun.stderr and "ahead of the saved offset" in rerun.stderr
    assert "refused" not in rerun.stderr
    assert front.resigned >= 1  # the status GET carried the stale state and was answered anyway
    resent = held + sent_bytes(rerun.stdout) - p.total
    assert 0 <= resent <= MIB, (held, rerun.stdout)  # at most one chunk goes over the wire twice
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest
    assert json.loads(p.state_file.read_text())["uploads"] == {}


@needs_registry
@pytest.mark.integration
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

    rerun = run_fleetci(*push_argv(p.downloads, front.url, "--verbose"))
    assert rerun.returncode == 0, rerun.stderr
    assert f"registry holds {kept} bytes" in rerun.stderr and "behind the saved offset" in rerun.stderr
    assert sent_bytes(rerun.stdout) == p.total - kept  # exactly what the registry was missing
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest


@needs_registry
@pytest.mark.integration
def test_expired_session_restarts_from_zero_once(
    tmp_path: Path, registry: RegistryProcess, front: RegistryFront
) -> None:
    """The saved session is gone (purged upload: 404): the blob starts again in a new session, once."""
    p = prepared(tmp_path, [LAYER])
    location, saved, _ = kill_push(p, registry, front.url)
    fresh = httpx.get(location).headers["location"]  # a purge removes the upload; do the same
    assert httpx.delete(fresh).status_code == 204
    assert httpx.get(location).status_code == 404

    rerun = run_fleetci(*push_argv(p.downloads, front.url, "--verbose"))
    assert rerun.returncode == 0, rerun.stderr
    refused = [ln for ln in rerun.stderr.splitlines() if "refused by the registry" in ln]
    assert len(refused) == 1 and f"offset {saved}" in refused[0] and "from the start" in refused[0]
    assert sent_bytes(rerun.stdout) == p.total
    assert skopeo_digest(f"{front.host_port}/{REPO}:{GL_TAG}") == p.manifest_digest
    assert json.loads(p.state_file.read_text())["uploads"] == {}


@needs_registry
@pytest.mark.integration
def test_distribution_refuses_a_stale_session_so_the_layer_starts_again(
    tmp_path: Path, registry: RegistryProcess
) -> None:
    """Plain distribution 2.8 checks the saved state even on the status GET (404 BLOB_UPLOAD_INVALID):
    after such a kill the session cannot be continued there, so the layer starts again, once, cleanly."""
    p = prepared(tmp_path, [LAYER])
    location, _, held = kill_push(p, registry, registry.url)
    status = httpx.get(location)
    assert status.status_code == 404 and "BLOB_UPLOAD_INVALID" in status.text

    rerun = run_fleetci(*push_argv(p.downloads, registry.url, "--verbose"))
    assert rerun.returncode == 0, rerun.stderr
    assert sum("from the start" in ln for ln in rerun.stderr.splitlines()) == 1
    assert held + sent_bytes(rerun.stdout) - p.total == held  # all the registry held is sent again
    assert skopeo_digest(f"{registry.host}/{REPO}:{GL_TAG}") == p.manifest_digest


# -- private state ----------------------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@needs_registry
@pytest.mark.integration
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


# -- every verb: bad input, missing tokens, unreachable hosts, corrupt state: one line, non-zero ----------

VERBS = ["gh-list", "gitlab-list", "xref", "download", "prepare", "push", "clean", "daemon", "retag"]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_rejects_an_unknown_flag_with_exit_2(fleetci: Fleetci, verb: str) -> None:
    proc = fleetci("registry", verb, "--no-such-flag")
    line = one_line_error(proc)  # verbs with a positional argument report that it is missing first
    assert proc.returncode == 2 and ("unrecognized" in line or "required" in line), line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["download", "not-a-tag", "--gh-token", "x"], "does not end in -linux"),
        (["prepare", "bad tag!-linux-amd64"], "not a valid image tag"),
        (["push", "../etc-linux-amd64", "--yes"], "not a valid image tag"),
        (["clean", "x/y-linux-amd64", "--yes"], "not a valid image tag"),
        (["retag", "X86/Upper:t", "v1", "--registry", "127.0.0.1:1"], "not a valid repository name"),
        (["retag", "x86/a:b", "bad tag!", "--registry", "127.0.0.1:1"], "not a valid tag"),
        (
            ["retag", "x86/a:b", "v1", "--registry-project", "Not/Valid", "--registry", "127.0.0.1:1"],
            "--registry-project",
        ),
        (["push", TAG, "--registry-project", "a//b", "--yes"], "--registry-project"),
        (["push", TAG, "--registry", "ftp://u:hunter2@h", "--yes"], "--registry"),
    ],
)
def test_invalid_tags_and_names_are_usage_errors(
    fleetci: Fleetci,
    args: list[str],
    needle: str,
) -> None:
    """Checked before anything is read, written or sent (no downloads dir, no registry needed)."""
    proc = fleetci("registry", *args)
    line = one_line_error(proc)
    assert proc.returncode == 2, line
    assert needle in line and "hunter2" not in proc.stderr


def test_missing_tokens_are_one_line_errors(fleetci: Fleetci, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for args in (
        ["xref", "--api-url", dead],
        ["download", TAG, "--api-url", dead, "--output-dir", str(tmp_path)],
        ["daemon", "--once", "--api-url", dead, "--downloads-dir", str(tmp_path)],
    ):
        assert "token" in one_line_error(fleetci("registry", *args)), args


def test_unreachable_hosts_are_one_line_errors_without_userinfo(
    fleetci: Fleetci,
    tmp_path: Path,
) -> None:
    port = free_port()
    dead, secret_url = f"http://127.0.0.1:{port}", f"http://oauth2:glpat-s3cret@127.0.0.1:{port}"
    cases = [
        ["xref", "--api-url", dead, "--gh-token", "x", "--gitlab-token", "y", "--gitlab-host", dead],
        ["download", TAG, "--api-url", dead, "--gh-token", "x", "--output-dir", str(tmp_path)],
        [
            "daemon",
            "--once",
            "--api-url",
            dead,
            "--gh-token",
            "x",
            "--gitlab-token",
            "y",
            "--gitlab-host",
            dead,
            "--downloads-dir",
            str(tmp_path / "d"),
        ],
        ["gitlab-list", "--gitlab-host", secret_url, "--gitlab-token", "t"],
        ["retag", "x86/a:b", "c", "--registry", secret_url, "--skip-login"],
    ]
    for args in cases:
        proc = fleetci("registry", *args)
        line = one_line_error(proc)
        assert proc.returncode == 1 and ("unreachable" in line or "failed" in line), (args, line)
        assert "s3cret" not in proc.stdout + proc.stderr, args


@needs_registry
def test_push_to_an_unreachable_registry_keeps_everything(
    fleetci: Fleetci,
    tmp_path: Path,
) -> None:
    p = prepared(tmp_path, [50_000])
    port = free_port()
    proc = fleetci(*push_argv(p.downloads, f"http://u:pw-s3cret@127.0.0.1:{port}"))
    assert "unreachable" in one_line_error(proc) and proc.returncode == 1
    assert "s3cret" not in proc.stdout + proc.stderr
    assert (p.downloads / TAG / "upload-plan.json").exists()


def test_corrupt_state_files_are_one_line_errors(fleetci: Fleetci, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    tag = downloads / TAG
    tag.mkdir(parents=True)
    (tag / "metadata.json").write_text("{not json")
    proc = fleetci("registry", "prepare", TAG, "--downloads-dir", str(downloads))
    assert "corrupt" in one_line_error(proc) and proc.returncode == 1
    (tag / "upload-plan.json").write_text(json.dumps({"images": []}))
    (tag / "push-state.json").write_text("[1, 2")
    for verb in ("push", "clean"):
        proc = fleetci(
            "registry", verb, TAG, "--downloads-dir", str(downloads), "--registry", "127.0.0.1:1", "--yes"
        )
        assert "push state" in one_line_error(proc) and proc.returncode == 1, verb
    assert (tag / "push-state.json").read_text() == "[1, 2"  # kept for a look, not overwritten
