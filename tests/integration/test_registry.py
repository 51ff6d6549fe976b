"""fleetci registry: GitHub artifacts -> GitLab registry, against real components.

Real ``docker-registry`` processes (no auth, htpasswd, GitLab-style bearer realm), the GitHub emulator
with artifacts and logs, the GitLab emulator in ``fleetci.testing.gitlab``, and ``skopeo inspect`` as an
independent reader of what was pushed. Test images are written here from random bytes (no docker).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import signal
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.http import free_port
from fleetci.registry.archive import DockerArchive, verify_image
from fleetci.registry.settings import registry_settings
from fleetci.testing.docker_registry import (
    RegistryProcess,
    htpasswd_registry,
    token_registry,
)
from fleetci.testing.dockerd import DockerDaemon, DockerdUnavailable, dockerd_binary
from fleetci.testing.images import BuiltImage, write_docker_archive
from support import clean_env, fleetci_cmd, one_line_error, run_fleetci, wait_until
from support.registry import (
    GITLAB_TOKEN,
    GL_TAG,
    OWNER,
    PROJECT,
    REPO,
    TAG,
    gh_args,
    needs_registry,
    push_again,
    push_argv,
)

READ_TOKEN = "glpat-emulatorReadOnly00000"


JOB_TOKEN = "glcbt-emulatorJobToken00000"


@dataclass
class Build:
    run_id: int
    tag: str
    images: list[BuiltImage]


def alice(emulator: Any) -> str:
    return str(emulator.emulator.token_for("alice"))


def add_build(
    emulator: Any,
    tmp: Path,
    tag: str,
    specs: list[tuple[str, str, list[int]]],
    *,
    metadata: str = "log",
    seed: int = 1,
    bundle: bool = True,
) -> Build:
    """A successful presto-build-images run: an artifact holding `docker save | gzip` output + metadata."""
    emu = emulator.emulator
    wf = emu.add_workflow(OWNER, REPO, "Presto build images", ".github/workflows/presto-build-images.yml")
    run_id = emu.add_completed_run(OWNER, REPO, wf)
    work = tmp / f"build-{run_id}"
    built = [
        write_docker_archive(work / f"{name}.tar", f"{name}:{tag}", sizes, layout=layout, seed=seed + i)
        for i, (name, layout, sizes) in enumerate(specs)
    ]
    files: dict[str, bytes] = {}
    if bundle:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for b in built:
                tar.add(b.path, b.path.name)
        files["presto-images.tar.gz"] = gzip.compress(buf.getvalue(), compresslevel=1)
    else:
        for b in built:
            files[b.path.name] = b.path.read_bytes()
    emu.add_artifact(OWNER, REPO, run_id, "presto-images", files)
    block = (
        "Presto commit: 92865fbce0d2\nVelox commit: 65797d572e0a\nTarget platform: linux/amd64\n"
        f"Image tag: {tag}\n"
    )
    if metadata == "artifact":
        emu.add_artifact(
            OWNER, REPO, run_id, "image-metadata", {"metadata.json": json.dumps({"image_tag": tag}).encode()}
        )
    else:
        emu.set_job_log(
            emu.job_ids(run_id)[0],
            "2025-03-01T10:00:00.0000000Z ##[group]metadata\n"
            + "".join(f"2025-03-01T10:00:00.0000000Z {line}\n" for line in block.splitlines()),
        )
    return Build(run_id, tag, built)


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    reg = htpasswd_registry(tmp_path / "registry-basic", {"ci": "s3cret-pass"}).start()
    try:
        yield reg
    finally:
        reg.stop()


@dataclass
class GitLabStack:
    gitlab: Any
    registry: RegistryProcess

    def args(self) -> list[str]:
        return [
            "--gitlab-host",
            self.gitlab.url,
            "--gitlab-project",
            PROJECT,
            "--registry",
            self.registry.url,
        ]


@pytest.fixture
def gitlab_stack(tmp_path: Path) -> Iterator[GitLabStack]:
    from fleetci.testing.gitlab import ISSUER, SERVICE, GitLabEmulator, GitLabServer, TokenInfo

    port = free_port()
    emu = GitLabEmulator(
        registry_url=f"http://127.0.0.1:{port}",
        registry_host=f"127.0.0.1:{port}",
        tokens={
            GITLAB_TOKEN: TokenInfo("maintainer"),
            READ_TOKEN: TokenInfo("reporter", write=False),
            JOB_TOKEN: TokenInfo("ci", kind="job"),
        },
    )
    server = GitLabServer(emu).start()
    reg = token_registry(
        tmp_path / "registry-token", server.realm, emu.signing.cert_pem, SERVICE, ISSUER, port
    )
    reg.start()
    try:
        yield GitLabStack(server, reg)
    finally:
        reg.stop()
        server.stop()


def skopeo_inspect(ref: str, creds: str | None = None) -> dict[str, Any]:
    argv = ["skopeo", "inspect", "--tls-verify=false", "--raw" if False else "--no-tags", f"docker://{ref}"]
    if creds:
        argv[2:2] = ["--creds", creds]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return data


def download(emulator: Any, downloads: Path, env: dict[str, str], prepare: bool = False) -> None:
    """``registry download`` of TAG from the emulator into ``downloads``, then (``prepare``) ``registry
    prepare``: each must succeed."""
    argv = ["registry", "download", TAG, *gh_args(emulator), "--output-dir", str(downloads)]
    assert run_fleetci(*argv, env=env).returncode == 0
    if prepare:
        argv = ["registry", "prepare", TAG, "--downloads-dir", str(downloads)]
        assert run_fleetci(*argv, env=env).returncode == 0


def sent_bytes(stdout: str) -> list[int]:
    return [
        int(line.rsplit("(", 1)[1].split()[0]) for line in stdout.splitlines() if "blob bytes sent" in line
    ]


@needs_registry
def test_download_prepare_push_clean_without_auth(
    emulator: Any, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    build = add_build(
        emulator,
        tmp_path,
        TAG,
        [
            ("presto-coordinator", "docker", [300_000, 1_500_000]),
            ("presto-native-worker-cpu", "oci", [300_000, 900_000]),
        ],
        metadata="artifact",
    )
    downloads = tmp_path / "downloads"
    env = clean_env(GH_TOKEN=alice(emulator))
    common = ["--downloads-dir", str(downloads)]
    reg = ["--registry", plain_registry.url, "--registry-project", PROJECT, "--skip-login"]
    reg += ["--compression", "none"]  # the archive's own blobs: digests and sizes as the plan has them

    proc = run_fleetci("registry", "gh-list", *gh_args(emulator), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    runs = {r["run_id"]: r for r in json.loads(proc.stdout)}
    assert runs[build.run_id]["metadata"]["image_tag"] == TAG

    proc = run_fleetci(
        "registry", "download", TAG, *gh_args(emulator), "--output-dir", str(downloads), env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert "download presto-images" in proc.stderr  # progress on stderr
    meta = json.loads((downloads / TAG / "metadata.json").read_text())
    assert meta["run"]["run_id"] == build.run_id and meta["gitlab_tag"] == GL_TAG

    proc = run_fleetci("registry", "prepare", TAG, *common, env=env)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads((downloads / TAG / "upload-plan.json").read_text())
    assert sorted(i["repository"] for i in plan["images"]) == [
        "x86/presto-coordinator",
        "x86/presto-native-worker-cpu",
    ]
    for img in plan["images"]:  # the tag gets another manifest digest once compressed: not promised here
        assert f"image {img['config_digest']}" in proc.stdout and img["manifest_digest"] not in proc.stdout

    proc = run_fleetci(
        "registry", "push", TAG, *common, *reg, "--yes", "--retag-as-latest", "--chunk-mb", "1", env=env
    )
    assert proc.returncode == 0, proc.stderr
    total = sum(b.size for b in build.images)
    assert sum(sent_bytes(proc.stdout)) == total
    for img in plan["images"]:
        for ref_tag in (GL_TAG, "latest"):
            info = skopeo_inspect(f"{plain_registry.host}/{PROJECT}/{img['repository']}:{ref_tag}")
            assert info["Digest"] == img["manifest_digest"]
            assert len(info["Layers"]) == 2

    again = run_fleetci("registry", "push", TAG, *common, *reg, "--yes", env=env)
    assert again.returncode == 0 and sent_bytes(again.stdout) == [0, 0], again.stdout
    forced = run_fleetci("registry", "push", TAG, *common, *reg, "--yes", "--force", env=env)
    assert forced.returncode == 0 and sent_bytes(forced.stdout) == [0, 0], forced.stdout  # blob HEAD skips

    proc = run_fleetci("registry", "clean", TAG, *common, "--registry-project", PROJECT, env=env)
    assert "--yes" in one_line_error(proc) and (downloads / TAG).exists()
    proc = run_fleetci("registry", "clean", TAG, *common, "--registry-project", PROJECT, "--yes", env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (downloads / TAG).exists()


@needs_registry
def test_daemon_once_syncs_new_runs_through_the_gitlab_token_realm(
    emulator: Any, gitlab_stack: GitLabStack, tmp_path: Path
) -> None:
    first = add_build(emulator, tmp_path, TAG, [("presto-coordinator", "docker", [200_000, 800_000])])
    downloads = tmp_path / "downloads"
    env = clean_env(GH_TOKEN=alice(emulator), GITLAB_TOKEN=GITLAB_TOKEN)
    args = [*gh_args(emulator), *gitlab_stack.args(), "--downloads-dir", str(downloads)]

    proc = run_fleetci("registry", "xref", *gh_args(emulator), *gitlab_stack.args(), "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["missing"] == [TAG]

    proc = run_fleetci("registry", "daemon", *args, "--once", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ref = f"{gitlab_stack.registry.host}/{PROJECT}/x86/presto-coordinator:{GL_TAG}"
    info = skopeo_inspect(ref, creds=f"oauth2:{GITLAB_TOKEN}")
    assert info["Labels"]["fleetci.test.seed"] == "1"
    assert not (downloads / TAG).exists()  # cleaned after a verified push
    state = json.loads((downloads / "daemon-state.json").read_text())
    assert state["tags"][TAG]["status"] == "pushed" and state["tags"][TAG]["run_id"] == first.run_id
    assert GITLAB_TOKEN not in proc.stdout + proc.stderr

    # a newer build of another tag (and a rebuild of the first: the newest run wins, nothing re-pushed)
    tag2 = "presto-aaaaaaaaaaaa-velox-bbbbbbbbbbbb-linux-amd64"
    add_build(
        emulator, tmp_path, tag2, [("presto-coordinator", "docker", [200_000, 400_000])], seed=7, bundle=False
    )
    add_build(emulator, tmp_path, TAG, [("presto-coordinator", "docker", [200_000, 800_000])])
    proc = run_fleetci(
        "registry", "xref", *gh_args(emulator), *gitlab_stack.args(), "--json", "--list-extra", env=env
    )
    x = json.loads(proc.stdout)
    assert x["missing"] == [tag2] and x["present"] == [TAG] and x["extra"] == [], proc.stdout
    proc = run_fleetci("registry", "daemon", *args, "--once", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing = run_fleetci("registry", "gitlab-list", *gitlab_stack.args(), "--json", env=env)
    repos = {r["name"]: r["tags"] for r in json.loads(listing.stdout)}
    assert repos == {"x86/presto-coordinator": sorted([GL_TAG, "presto-aaaaaaaaaaaa-velox-bbbbbbbbbbbb"])}

    # read-only token: listing works, pushing is refused with one line
    ro_env = clean_env(GITLAB_TOKEN=READ_TOKEN)
    proc = run_fleetci(
        "registry", "retag", f"x86/presto-coordinator:{GL_TAG}", "latest", *gitlab_stack.args(), env=ro_env
    )
    assert "401" in one_line_error(proc)


@needs_registry
def test_gitlab_tag_listing_uses_keyset_pagination_and_both_token_kinds(
    emulator: Any, gitlab_stack: GitLabStack, tmp_path: Path
) -> None:
    from fleetci.registry.gitlab import GitLabAPI
    from fleetci.registry.oci import RegistryClient

    built = write_docker_archive(tmp_path / "i.tar", f"img:{TAG}", [10_000])
    archive = DockerArchive(built.path)
    image = verify_image(archive, archive.images()[0])
    repo = f"{PROJECT}/arm/img"
    with RegistryClient(gitlab_stack.registry.url, "oauth2", GITLAB_TOKEN) as client:
        for blob in image.blobs:
            client.push_blob(repo, blob, built.path)
        for i in range(105):  # more than one page of 100
            client.put_manifest(repo, f"t{i:03d}", image.manifest, image.media_type)
        assert client.counters.blob_bytes_sent == image.size
    for token in ({"gitlab_token": GITLAB_TOKEN}, {}):
        env = {} if token else {"CI_JOB_TOKEN": JOB_TOKEN}
        s = registry_settings({"gitlab_host": gitlab_stack.gitlab.url, **token}, {}, env)
        api = GitLabAPI(s)
        try:
            [r] = api.repositories()
        finally:
            api.close()
        assert r.name == "arm/img" and len(r.tags) == 105 and r.tags == sorted(r.tags)
    # the emulator pages like GitLab: a Link to the next keyset page
    base = f"{gitlab_stack.gitlab.url}/api/v4/projects/{PROJECT.replace('/', '%2F')}/registry/repositories"
    rid = httpx.get(base, headers={"PRIVATE-TOKEN": GITLAB_TOKEN}).json()[0]["id"]
    page = httpx.get(
        f"{base}/{rid}/tags",
        params={"pagination": "keyset", "per_page": 2, "order_by": "name"},
        headers={"PRIVATE-TOKEN": GITLAB_TOKEN},
    )
    assert [t["name"] for t in page.json()] == ["t000", "t001"] and "last=t001" in page.headers["link"]
    assert httpx.get(base, headers={"PRIVATE-TOKEN": "wrong"}).status_code == 401
    assert httpx.get(base, headers={"JOB-TOKEN": GITLAB_TOKEN}).status_code == 401


@needs_registry
def test_basic_auth_401_retag_and_cross_repo_mount(
    emulator: Any, basic_registry: RegistryProcess, tmp_path: Path
) -> None:
    add_build(emulator, tmp_path, TAG, [("presto-coordinator", "oci", [100_000, 600_000])])
    downloads = tmp_path / "downloads"
    env = clean_env(GH_TOKEN=alice(emulator))
    common = [
        "--downloads-dir",
        str(downloads),
        "--registry",
        basic_registry.url,
        "--registry-project",
        PROJECT,
    ]
    download(emulator, downloads, env, prepare=True)

    bad = run_fleetci(
        "registry",
        "push",
        TAG,
        *common,
        "--yes",
        "--verbose",
        "--registry-username",
        "ci",
        "--registry-password",
        "wrong-pass",
        env=env,
    )
    line = one_line_error(bad)
    assert "401" in line and "wrong-pass" not in bad.stdout + bad.stderr
    assert (downloads / TAG / "upload-plan.json").exists()  # nothing lost

    creds = ["--registry-username", "ci", "--registry-password", "s3cret-pass"]
    ok = run_fleetci("registry", "push", TAG, *common, *creds, "--yes", "--verbose", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "s3cret-pass" not in ok.stdout + ok.stderr

    def retag(target: str) -> subprocess.CompletedProcess[str]:
        coordinator = f"x86/presto-coordinator:{GL_TAG}"
        return run_fleetci("registry", "retag", coordinator, target, *common[2:], *creds, "--json", env=env)

    same = retag("latest")
    assert same.returncode == 0, same.stderr
    assert json.loads(same.stdout)["blob_bytes_sent"] == 0
    other = retag("x86/presto-mirror:v1")
    assert other.returncode == 0, other.stderr
    result = json.loads(other.stdout)
    assert result["blob_bytes_sent"] == 0
    a = skopeo_inspect(
        f"{basic_registry.host}/{PROJECT}/x86/presto-coordinator:latest", creds="ci:s3cret-pass"
    )
    b = skopeo_inspect(f"{basic_registry.host}/{PROJECT}/x86/presto-mirror:v1", creds="ci:s3cret-pass")
    assert a["Digest"] == b["Digest"] == result["digest"]
    missing = run_fleetci("registry", "retag", "x86/nope:v0", "v1", *common[2:], *creds, env=env)
    assert "does not exist" in one_line_error(missing)


@dataclass
class Interrupted:
    """A push killed with its registry, at a chunk boundary the saved session and the registry agree on."""

    downloads: Path
    env: dict[str, str]
    layer_size: int
    total_size: int
    location: str
    offset: int


def upload_data_file(registry: RegistryProcess, location: str) -> Path:
    """The registry's on-disk data of an upload session (filesystem driver layout)."""
    path = httpx.URL(location).path  # /v2/<repo>/blobs/uploads/<uuid>
    repo, _, uuid = path.removeprefix("/v2/").partition("/blobs/uploads/")
    root = registry.storage / "docker" / "registry" / "v2" / "repositories"
    return root / repo / "_uploads" / uuid / "data"


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def saved_session(state_file: Path) -> tuple[str, int] | None:
    try:
        uploads = json.loads(state_file.read_text())["uploads"]
    except (FileNotFoundError, ValueError, KeyError):
        return None  # not written yet
    if len(uploads) != 1:
        return None
    entry = next(iter(uploads.values()))
    return str(entry["location"]), int(entry["offset"])


def settled_size(path: Path, polls: int = 10, interval: float = 0.02, limit: int = 500) -> int:
    """The file's size once it stopped changing for ``polls`` polls in a row (the socket buffers drained)."""
    last, same = file_size(path), 0
    for _ in range(limit):
        time.sleep(interval)
        now = file_size(path)
        same = same + 1 if now == last else 0
        last = now
        if same >= polls:
            break
    return last


def interrupt_push_at_chunk_boundary(
    emulator: Any, registry: RegistryProcess, tmp_path: Path, attempts: int = 25
) -> Interrupted:
    """Start a chunked push, freeze it when the registry holds exactly the saved offset, kill the registry.

    The pusher may have the next chunk in flight when it is frozen (loopback buffers hold it), so the
    registry's upload data can run past the offset signed into the saved session's ``_state``; such a
    session is rightly refused on resume. So: freeze, let the registry drain, and only kill it when its
    on-disk upload data is exactly the saved offset; otherwise let the pusher go on to the next chunk.
    """
    add_build(emulator, tmp_path, TAG, [("presto-coordinator", "docker", [48_000_000])], bundle=False)
    downloads = tmp_path / "downloads"
    env = clean_env(GH_TOKEN=alice(emulator))
    download(emulator, downloads, env, prepare=True)
    plan = json.loads((downloads / TAG / "upload-plan.json").read_text())
    blob_sizes = [int(b["size"]) for b in plan["images"][0]["blobs"]]
    layer_size = max(blob_sizes)
    state_file = downloads / TAG / "push-state.json"
    proc = subprocess.Popen(
        fleetci_cmd(*push_argv(downloads, registry.url)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    consistent: tuple[str, int] | None = None
    seen: list[tuple[int, int]] = []  # (saved offset, registry bytes) of each inconsistent attempt
    previous = 0
    try:
        for _ in range(attempts):
            assert wait_until(
                lambda prev=previous: (s := saved_session(state_file)) is not None and s[1] > prev,
                timeout=60,
                interval=0.002,
            ), f"the push saved no chunk offset past {previous}"
            proc.send_signal(signal.SIGSTOP)
            session = saved_session(state_file)  # re-read: it may have moved on before the stop
            assert session is not None
            on_disk = settled_size(upload_data_file(registry, session[0]))
            if on_disk == session[1] and session[1] < layer_size:
                consistent = session
                break
            seen.append((session[1], on_disk))
            previous = session[1]
            proc.send_signal(signal.SIGCONT)
        assert consistent is not None, (
            f"never froze the pusher at a chunk boundary in {attempts} tries (offset, registry bytes): {seen}"
        )
        registry.kill()
        # the registry is gone: nothing more can land, so this is what a resume will find
        assert file_size(upload_data_file(registry, consistent[0])) == consistent[1]
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    errors = [ln for ln in err.splitlines() if ln.startswith("fleetci: error:")]
    assert len(errors) == 1 and "unreachable" in errors[0], err
    assert (downloads / TAG / "upload-plan.json").exists()
    assert saved_session(state_file) == consistent  # the failed chunk did not move the saved offset
    return Interrupted(downloads, env, layer_size, sum(blob_sizes), consistent[0], consistent[1])


@needs_registry
def test_registry_down_mid_push_then_a_rerun_resumes(
    emulator: Any, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    cut = interrupt_push_at_chunk_boundary(emulator, plain_registry, tmp_path)
    assert 0 < cut.offset < cut.layer_size

    plain_registry.start()
    rerun = push_again(cut.downloads, plain_registry.url, env=cut.env)
    assert f"at {cut.offset / 1e6:.1f} MB" in rerun.stderr and "resume" in rerun.stderr, rerun.stderr
    assert "refused by the registry" not in rerun.stderr
    # finished chunks were not sent again: only the rest of the layer (and the config) went over the wire
    assert sent_bytes(rerun.stdout) == [cut.total_size - cut.offset], rerun.stdout
    info = skopeo_inspect(f"{plain_registry.host}/{PROJECT}/x86/presto-coordinator:{GL_TAG}")
    plan = json.loads((cut.downloads / TAG / "upload-plan.json").read_text())
    assert info["Digest"] == plan["images"][0]["manifest_digest"]
    assert info["Layers"] == [b["digest"] for b in plan["images"][0]["blobs"][:-1]]


@needs_registry
def test_registry_down_mid_push_with_a_refused_session_sends_the_blob_again(
    emulator: Any, plain_registry: RegistryProcess, tmp_path: Path
) -> None:
    cut = interrupt_push_at_chunk_boundary(emulator, plain_registry, tmp_path)
    plain_registry.start()
    # Another chunk lands through the saved session after its offset was recorded (what an in-flight chunk
    # does when the pusher dies): the registry now holds more than the session's signed _state says.
    plan = json.loads((cut.downloads / TAG / "upload-plan.json").read_text())
    layer = plan["images"][0]["blobs"][0]
    tarball = cut.downloads / TAG / plan["images"][0]["tarball"]
    n = 1024 * 1024
    with tarball.open("rb") as fh:
        fh.seek(int(layer["offset"]) + cut.offset)
        chunk = fh.read(n)
    resp = httpx.patch(
        cut.location,
        content=chunk,
        headers={
            "Content-Range": f"{cut.offset}-{cut.offset + n - 1}",
            "Content-Type": "application/octet-stream",
        },
        timeout=30,
    )
    assert resp.status_code == 202, resp.text
    assert file_size(upload_data_file(plain_registry, cut.location)) == cut.offset + n

    rerun = push_again(cut.downloads, plain_registry.url, env=cut.env)
    refused = [ln for ln in rerun.stderr.splitlines() if "refused by the registry" in ln]
    assert len(refused) == 1 and "from the start" in refused[0], rerun.stderr
    assert layer["digest"][:19] in refused[0] and f"offset {cut.offset}" in refused[0]
    assert "resume" not in rerun.stderr
    assert sent_bytes(rerun.stdout) == [cut.total_size], rerun.stdout  # the whole layer, once more
    info = skopeo_inspect(f"{plain_registry.host}/{PROJECT}/x86/presto-coordinator:{GL_TAG}")
    assert info["Digest"] == plan["images"][0]["manifest_digest"]
    assert info["Layers"] == [layer["digest"]]
    state = json.loads((cut.downloads / TAG / "push-state.json").read_text())
    assert state["uploads"] == {}  # the refused session is not kept around


@needs_registry
def test_engine_docker_pushes_through_a_real_daemon(
    emulator: Any, plain_registry: RegistryProcess, dockerd: DockerDaemon, tmp_path: Path
) -> None:
    build = add_build(
        emulator, tmp_path, TAG, [("presto-coordinator", "docker", [300_000, 700_000])], bundle=False
    )
    downloads = tmp_path / "downloads"
    env = clean_env(GH_TOKEN=alice(emulator))
    download(emulator, downloads, env, prepare=True)
    argv = [
        "registry",
        "push",
        TAG,
        "--downloads-dir",
        str(downloads),
        "--registry",
        plain_registry.url,
        "--registry-project",
        PROJECT,
        "--engine",
        "docker",
        "--docker-host",
        dockerd.host,
        "--skip-login",
        "--yes",
        "--retag-as-latest",
    ]
    proc = run_fleetci(*argv, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    ref = f"{plain_registry.host}/{PROJECT}/x86/presto-coordinator"
    assert "docker load extracted/presto-coordinator.tar" in proc.stderr, proc.stderr
    assert "pushed with docker" in proc.stderr, proc.stderr
    # the daemon re-compresses layers (its manifest digest is its own), so compare what does not change:
    # the config blob (the image ID) and the uncompressed layer digests inside it
    for tag in (GL_TAG, "latest"):
        raw = subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{ref}:{tag}"],
            capture_output=True,
            timeout=60,
        )
        assert raw.returncode == 0, raw.stderr
        assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == build.images[0].config_digest
        assert json.loads(raw.stdout)["rootfs"]["diff_ids"] == build.images[0].layer_digests
    info = skopeo_inspect(f"{ref}:{GL_TAG}")
    assert len(info["Layers"]) == 2 and info["Labels"]["fleetci.test.seed"] == "1"
    state = json.loads((downloads / TAG / "push-state.json").read_text())
    assert state["verified"][f"{PROJECT}/x86/presto-coordinator:{GL_TAG}"]["digest"] == info["Digest"]

    again = run_fleetci(*argv, env=env, timeout=60)  # present now: skipped without loading anything
    assert again.returncode == 0, again.stderr
    assert "already present" in again.stderr and "docker load" not in again.stderr


@pytest.mark.skipif(
    dockerd_binary() is None, reason="dockerd is installed by scripts/test.sh (apt docker.io)"
)
def test_dockerd_fixture_reports_why_the_daemon_cannot_start(tmp_path: Path) -> None:
    daemon = DockerDaemon(tmp_path / "dockerd", insecure_registries=["http://bad/x/y"])
    with pytest.raises(DockerdUnavailable, match=r"dockerd exited \(1\): .*insecure registry bad/x/y"):
        daemon.start()
    assert daemon.proc is not None and daemon.proc.poll() is not None  # nothing left running
    assert daemon._mounts() == [] and not (tmp_path / "dockerd" / "data").exists()  # nor mounted


@needs_registry
def test_corrupt_artifact_and_digest_mismatch_are_one_line_errors(emulator: Any, tmp_path: Path) -> None:
    env = clean_env(GH_TOKEN=alice(emulator))
    downloads = tmp_path / "downloads"
    build = add_build(emulator, tmp_path, TAG, [("presto-coordinator", "docker", [200_000])], bundle=False)
    download(emulator, downloads, env)
    zip_path = next((downloads / TAG / "artifacts").glob("*.zip"))
    original = zip_path.read_bytes()

    # a tampered layer inside the tarball
    data = bytearray(build.images[0].path.read_bytes())
    archive = DockerArchive(build.images[0].path)
    layer = archive.images()[0].layers[0]
    data[layer.offset + 100] ^= 0x01
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(build.images[0].path.name, bytes(data))
    proc = run_fleetci("registry", "prepare", TAG, "--downloads-dir", str(downloads), env=env)
    assert "digest mismatch" in one_line_error(proc)
    assert zip_path.exists()

    # a truncated tarball, then a zip that is not a zip
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(build.images[0].path.name, bytes(data[: len(data) // 2]))
    assert "fleetci: error:" in one_line_error(
        run_fleetci("registry", "prepare", TAG, "--downloads-dir", str(downloads), "--clean", env=env)
    )
    zip_path.write_bytes(b"PK\x03\x04 broken")
    assert "not a valid zip" in one_line_error(
        run_fleetci("registry", "prepare", TAG, "--downloads-dir", str(downloads), env=env)
    )

    # the original again: prepare works, and a corrupt plan is reported, not trusted
    zip_path.write_bytes(original)
    assert (
        run_fleetci(
            "registry", "prepare", TAG, "--downloads-dir", str(downloads), "--clean", env=env
        ).returncode
        == 0
    )
    (downloads / TAG / "upload-plan.json").write_text("{not json")
    proc = run_fleetci(
        "registry",
        "push",
        TAG,
        "--downloads-dir",
        str(downloads),
        "--registry",
        "127.0.0.1:1",
        "--yes",
        env=env,
    )
    assert "corrupt" in one_line_error(proc)
    proc = run_fleetci("registry", "clean", TAG, "--downloads-dir", str(downloads), "--yes", env=env)
    assert "fleetci: error:" in one_line_error(proc) and zip_path.exists()
