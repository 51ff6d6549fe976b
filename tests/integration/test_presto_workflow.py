"""workflows/presto-build-and-sync.yml builds real images: its build job under act, then fleetci registry.

The build job runs under act (host mode, offline) against a private ``dockerd`` (fleetci.testing.dockerd):
``docker build`` of tiny ``FROM scratch`` Dockerfiles in the user's repository, ``docker save`` into the
artifact layout. ``actions/upload-artifact`` is the only stub (a local action that copies the file where
the test picks it up, since offline act cannot run GitHub's own); the artifact then goes into the GitHub
emulator as the run's artifact and ``fleetci registry download/prepare/push`` syncs it to a real
``docker-registry``, read back with ``skopeo``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from fleetci.testing.docker_registry import RegistryProcess
from fleetci.testing.dockerd import DockerDaemon
from fleetci.testing.gitlab import GitLabEmulator, GitLabServer, TokenInfo
from support.actions import REPO_ROOT, act_argv, act_events, action_checkout, base_env
from support.registry import GITLAB_TOKEN, OWNER, PROJECT, REPO, needs_registry, plain_registry

__all__ = ["plain_registry"]  # a fixture, used by name

WORKFLOW = REPO_ROOT / "workflows" / "presto-build-and-sync.yml"
PRESTO_SHA = "92865fbce0d2a056af5334a0afecc1f36853b657"
VELOX_SHA = "65797d572e0a297fa898e4f6ab4c1afc75fe3419"
IMAGE_TAG = "presto-92865fbce0d2-velox-65797d572e0a-linux-amd64"
GL_TAG = "presto-92865fbce0d2-velox-65797d572e0a"
UPLOAD_STUB = """name: upload-artifact (test stub)
description: copies the artifact's file into $FLEETCI_TEST_ARTIFACTS/<name>/
inputs:
  name: {required: true}
  path: {required: true}
  retention-days: {required: false}
runs:
  using: composite
  steps:
    - shell: bash
      env:
        NAME: ${{ inputs.name }}
        SRC: ${{ inputs.path }}
      run: mkdir -p "$FLEETCI_TEST_ARTIFACTS/$NAME" && cp "$SRC" "$FLEETCI_TEST_ARTIFACTS/$NAME/"
"""


def user_repo(tmp_path: Path, dockerfiles: dict[str, str]) -> Path:
    """A user's repository: the copied workflow and their Dockerfiles (paths relative to the repo)."""
    repo = tmp_path / "repo"
    (repo / ".github" / "workflows").mkdir(parents=True)
    shutil.copy2(WORKFLOW, repo / ".github" / "workflows" / WORKFLOW.name)
    for rel, text in dockerfiles.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@fleetci.invalid"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, capture_output=True)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-q", "-m", "presto"], check=True, capture_output=True)
    return repo


def run_job(
    tmp_path: Path,
    repo: Path,
    docker_host: str,
    *inputs: str,
    event: str = "workflow_dispatch",
    job: str = "build",
    variables: dict[str, str] | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]], Path]:
    """``act <event> -j <job>`` of the copied workflow; returns act, its events, the artifacts dir."""
    stub = tmp_path / "upload-stub"
    stub.mkdir(exist_ok=True)
    (stub / "action.yml").write_text(UPLOAD_STUB)
    artifacts = tmp_path / "artifacts"
    checkout = tmp_path / "fleetci-action"
    if not checkout.exists():
        action_checkout(checkout)
    argv = act_argv(
        event,
        repo / ".github" / "workflows" / WORKFLOW.name,
        checkout,
        tmp_path / "act-cache",
        job=job,
        local={"actions/upload-artifact@v6": stub},
        env={"DOCKER_HOST": docker_host, "FLEETCI_TEST_ARTIFACTS": str(artifacts)},
        variables=variables,
        secrets=secrets,
        inputs=inputs,
    )
    env = base_env(ACT_DISABLE_VERSION_CHECK="1", RUNNER_TOOL_CACHE=str(tmp_path / "toolcache"))
    env.pop("DOCKER_HOST", None)
    proc = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    return proc, act_events(proc.stdout), artifacts


def describe(proc: subprocess.CompletedProcess[str], events: list[dict[str, Any]]) -> str:
    lines = [str(e.get("msg", "")).rstrip() for e in events]
    return f"act exit {proc.returncode}\n" + "\n".join(lines[-120:]) + "\n--- stderr\n" + proc.stderr[-3000:]


def docker(host: str, *args: str) -> str:
    proc = subprocess.run(
        ["docker", *args], env=base_env(DOCKER_HOST=host), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def layer_file(archive: Path, name: str) -> bytes:
    """The file ``name`` in the single layer of the ``docker save`` archive ``archive``."""
    with tarfile.open(archive) as outer:
        manifest_file = outer.extractfile("manifest.json")
        assert manifest_file is not None
        (layer_name,) = json.load(manifest_file)[0]["Layers"]
        layer = outer.extractfile(layer_name)
        assert layer is not None
        data = layer.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def skopeo_config(ref: str) -> bytes:
    raw = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}"],
        capture_output=True,
        timeout=60,
    )
    assert raw.returncode == 0, raw.stderr
    return raw.stdout


def sync_under_act(
    emulator: Any, registry: RegistryProcess, tmp_path: Path, repo: Path, artifacts: Path, pushed: list[str]
) -> None:
    """The build's artifacts as GitHub keeps them (a completed run of this workflow), then the workflow's
    own sync job, scheduled, under act: GitHub emulator -> GitLab emulator listing the real registry.
    ``pushed``: the repositories (``x86/<image>``) the step summary must show as pushed."""
    bundle = artifacts / "presto-images" / "presto-images.tar.gz"
    metadata = (artifacts / "image-metadata" / "metadata.json").read_bytes()
    emu = emulator.emulator
    wf = emu.add_workflow(OWNER, REPO, "Presto build", f".github/workflows/{WORKFLOW.name}")
    run_id = emu.add_completed_run(OWNER, REPO, wf)
    emu.add_artifact(OWNER, REPO, run_id, "presto-images", {bundle.name: bundle.read_bytes()})
    emu.add_artifact(OWNER, REPO, run_id, "image-metadata", {"metadata.json": metadata})
    gh_token = str(emu.token_for("alice"))
    gitlab = GitLabServer(
        GitLabEmulator(
            registry_url=registry.url,
            registry_host=registry.host,
            tokens={GITLAB_TOKEN: TokenInfo("maintainer")},
        )
    ).start()
    try:
        proc, events, _ = run_job(
            tmp_path,
            repo,
            "unix:///nonexistent.sock",  # the sync needs no daemon
            event="schedule",
            job="sync",
            variables={
                "GH_SYNC_REPO": f"{OWNER}/{REPO}",
                "GH_SYNC_API_URL": emulator.url,
                "GITLAB_HOST": gitlab.url,
                "GITLAB_PROJECT": PROJECT,
                "GITLAB_REGISTRY": registry.url,
            },
            secrets={"GITHUB_TOKEN": gh_token, "GITLAB_TOKEN": GITLAB_TOKEN},
        )
    finally:
        gitlab.stop()
    assert [e["jobResult"] for e in events if "jobResult" in e] == ["success"], describe(proc, events)
    summary = "".join(str(e.get("content", "")) for e in events if e.get("command") == "summary")
    for repository in pushed:
        assert f"| {PROJECT}/{repository}:{GL_TAG} | pushed |" in summary, describe(proc, events)
    log = "\n".join(str(e["msg"]) for e in events if e.get("raw_output"))  # what the job printed
    assert GITLAB_TOKEN not in log and gh_token not in log


@needs_registry
@pytest.mark.timeout(600)
def test_build_job_builds_saves_and_the_artifact_syncs_to_a_registry(
    emulator: Any, plain_registry: RegistryProcess, dockerd: DockerDaemon, tmp_path: Path
) -> None:
    scratch = "FROM scratch\nARG PRESTO_COMMIT\nLABEL presto.commit=$PRESTO_COMMIT\nCOPY {src} /{src}\n"
    files = {
        "docker/presto-coordinator.Dockerfile": scratch.format(src="coordinator.txt"),
        "docker/coordinator.txt": "coordinator\n",
        "docker/presto-native-worker-cpu/Dockerfile": scratch.format(src="cpu.txt"),
        "docker/presto-native-worker-cpu/cpu.txt": "native cpu worker\n",
        "docker/presto-native-worker-gpu.Dockerfile": scratch.format(src="gpu.txt"),
        "docker/gpu.txt": "native gpu worker\n",
    }
    repo = user_repo(tmp_path, files)
    proc, events, artifacts = run_job(
        tmp_path,
        repo,
        dockerd.host,
        f"presto_commit={PRESTO_SHA}",
        f"velox_commit={VELOX_SHA}",
        "worker_bundle_mode=all_native",
    )
    assert proc.returncode == 0, describe(proc, events)
    assert [e["jobResult"] for e in events if "jobResult" in e] == ["success"], describe(proc, events)
    summary = "".join(str(e.get("content", "")) for e in events if e.get("command") == "summary")
    assert f"| `presto-coordinator:{IMAGE_TAG}` | amd64 |" in summary, summary

    bundle = artifacts / "presto-images" / "presto-images.tar.gz"
    metadata = json.loads((artifacts / "image-metadata" / "metadata.json").read_text())
    assert metadata["image_tag"] == IMAGE_TAG
    images = ["presto-coordinator", "presto-native-worker-cpu", "presto-native-worker-gpu"]
    assert metadata["images"] == ",".join(images)
    with tarfile.open(bundle, "r:gz") as tar:
        assert sorted(Path(n).name for n in tar.getnames() if n.endswith(".tar")) == [
            f"{i}.tar" for i in images
        ]

    sync_under_act(emulator, plain_registry, tmp_path, repo, artifacts, [f"x86/{i}" for i in images])

    for image, src in zip(images, ["coordinator.txt", "cpu.txt", "gpu.txt"], strict=True):
        config = skopeo_config(f"{plain_registry.host}/{PROJECT}/x86/{image}:{GL_TAG}")
        # the registry holds exactly what dockerd built: its config blob is the image ID
        image_id = docker(dockerd.host, "image", "inspect", "-f", "{{.Id}}", f"{image}:{IMAGE_TAG}")
        assert "sha256:" + hashlib.sha256(config).hexdigest() == image_id
        doc = json.loads(config)
        assert doc["architecture"] == "amd64"
        assert doc["config"]["Labels"]["presto.commit"] == PRESTO_SHA  # the build arg reached the build
        assert len(doc["rootfs"]["diff_ids"]) == 1  # FROM scratch + one COPY
        saved = tmp_path / f"{image}.tar"
        docker(dockerd.host, "save", "-o", str(saved), f"{image}:{IMAGE_TAG}")
        assert (
            layer_file(saved, src)
            == files[f"docker/{image}/{src}" if image.endswith("cpu") else f"docker/{src}"].encode()
        )


@pytest.mark.timeout(300)
def test_build_job_without_a_dockerfile_fails_naming_the_missing_file(tmp_path: Path) -> None:
    repo = user_repo(tmp_path, {"docker/presto-coordinator.Dockerfile": "FROM scratch\n"})
    proc, events, artifacts = run_job(
        tmp_path, repo, "unix:///nonexistent.sock", f"presto_commit={PRESTO_SHA}", "worker_variant=java"
    )
    assert [e["jobResult"] for e in events if "jobResult" in e] == ["failure"], describe(proc, events)
    errors = [str(e.get("msg", "")) for e in events if "no Dockerfile for" in str(e.get("msg", ""))]
    assert any(
        "no Dockerfile for presto-java-worker: add docker/presto-java-worker.Dockerfile" in m for m in errors
    )
    assert not artifacts.exists()  # nothing uploaded


@needs_registry
@pytest.mark.timeout(600)
def test_build_job_for_arm64_lands_under_arm(
    emulator: Any, plain_registry: RegistryProcess, dockerd: DockerDaemon, tmp_path: Path
) -> None:
    files = {"docker/presto-java-worker/Dockerfile": "FROM scratch\nCOPY java.txt /java.txt\n"}
    files["docker/presto-java-worker/java.txt"] = "java worker\n"
    repo = user_repo(tmp_path, files)
    proc, events, artifacts = run_job(
        tmp_path,
        repo,
        dockerd.host,
        f"presto_commit={PRESTO_SHA}",
        f"velox_commit={VELOX_SHA}",
        "worker_variant=java",
        "target_platform=linux/arm64",
    )
    assert [e["jobResult"] for e in events if "jobResult" in e] == ["success"], describe(proc, events)
    arm_tag = f"{GL_TAG}-linux-arm64"
    summary = "".join(str(e.get("content", "")) for e in events if e.get("command") == "summary")
    assert f"| `presto-java-worker:{arm_tag}` | arm64 |" in summary, summary
    metadata = json.loads((artifacts / "image-metadata" / "metadata.json").read_text())
    assert metadata["image_tag"] == arm_tag and metadata["images"] == "presto-java-worker"

    sync_under_act(emulator, plain_registry, tmp_path, repo, artifacts, ["arm/presto-java-worker"])
    config = skopeo_config(f"{plain_registry.host}/{PROJECT}/arm/presto-java-worker:{GL_TAG}")
    image_id = docker(dockerd.host, "image", "inspect", "-f", "{{.Id}}", f"presto-java-worker:{arm_tag}")
    assert "sha256:" + hashlib.sha256(config).hexdigest() == image_id
    assert json.loads(config)["architecture"] == "arm64"
