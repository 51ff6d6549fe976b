"""fleetci registry: GitHub artifacts -> GitLab registry, against real components.

Real ``docker-registry`` processes (no auth, htpasswd, GitLab-style bearer realm), the GitHub emulator
with artifacts and logs, the GitLab emulator in ``fleetci.testing.gitlab``, and ``skopeo inspect`` as an
independent reader of what was pushed. Test images are written here from random bytes (no docker).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetci.errors import FleetciError, UsageError
from fleetci.http import free_port
from fleetci.registry.archive import DockerArchive, verify_image
from fleetci.registry.settings import registry_settings
from fleetci.registry.state import exclusive_lock
from fleetci.registry.tags import map_tag, parse_metadata_block
from fleetci.testing.images import write_docker_archive
from support import RunCli, one_line_error
from support.registry import GL_TAG, TAG, gh_args


def test_tag_mapping_follows_the_seed() -> None:
    m = map_tag(TAG)
    assert (m.arch_dir, m.gitlab_tag) == ("x86", GL_TAG)
    assert m.repository("presto-coordinator") == "x86/presto-coordinator"
    arm = map_tag("presto-1-velox-2-linux-arm64")
    assert (arm.arch_dir, arm.gitlab_tag) == ("arm", "presto-1-velox-2")
    for bad in ("presto-1-velox-2", "../etc-linux-amd64", "", "presto-1-linux-amd64\n"):
        with pytest.raises(FleetciError):
            map_tag(bad)


def test_a_trailing_newline_is_no_valid_tag_or_repository() -> None:
    """``$`` matches before a final newline: names must match whole, or a tag prints as two lines."""
    from fleetci.registry.tags import check_repository, check_tag

    for check, bad in ((check_tag, "v1\n"), (check_repository, "x86/presto\n")):
        with pytest.raises(UsageError):
            check(bad)


def test_metadata_block_is_read_from_a_timestamped_log() -> None:
    log = (
        "2025-03-01T10:00:00.0000000Z ##[group]Build metadata\n"
        "2025-03-01T10:00:00.0000000Z Presto commit: 92865fbce0d2a056af5334a0afecc1f36853b657\n"
        "2025-03-01T10:00:00.0000000Z Target platform: linux/amd64\n"
        f"2025-03-01T10:00:00.0000000Z Image tag: {TAG}\n"
        "2025-03-01T10:00:01.0000000Z Unrelated: value\n"
    )
    meta = parse_metadata_block(log)
    assert meta["image_tag"] == TAG
    assert meta["target_platform"] == "linux/amd64"
    assert "unrelated" not in meta
    assert parse_metadata_block("no block here\nTarget platform: x\n") == {}


def test_settings_precedence_and_seed_env_names(tmp_path: Path) -> None:
    env = {
        "GITLAB_TOKEN": "tok-env",
        "CI_REGISTRY_USER": "ci-user",
        "GH_TOKEN": "gh-env",
        "FLEETCI_API_URL": "http://127.0.0.1:9101",
    }
    s = registry_settings({"registry": "127.0.0.1:5000"}, {"registry": {"limit": 5, "registry": "x:1"}}, env)
    assert s.registry_url == "http://127.0.0.1:5000"  # flag beats config; loopback defaults to http
    assert s.limit == 5  # config beats default
    assert s.registry_password == "tok-env" and s.registry_username == "ci-user"
    assert s.api_url == "http://127.0.0.1:9101"  # the fleetci cache proxy when one runs
    assert s.gh_token == "gh-env"
    assert registry_settings({}, {}, {}).registry_url == "https://gitlab-master.nvidia.com:5005"
    job = registry_settings({}, {}, {"CI_JOB_TOKEN": "job"})
    assert (job.registry_username, job.registry_password) == ("gitlab-ci-token", "job")


@pytest.mark.parametrize("layout", ["docker", "oci"])
def test_archive_reader_finds_every_blob_with_its_digest(tmp_path: Path, layout: str) -> None:
    built = write_docker_archive(
        tmp_path / "a.tar", "presto-coordinator:x-linux-amd64", [4096, 70_000], layout=layout
    )
    archive = DockerArchive(built.path)
    [image] = archive.images()
    image = verify_image(archive, image)
    assert image.repo_tags == ["presto-coordinator:x-linux-amd64"]
    assert [b.digest for b in image.layers] == built.layer_digests
    assert image.config.digest == built.config_digest
    doc = json.loads(image.manifest)
    assert doc["config"]["digest"] == built.config_digest


def test_archive_reader_rejects_gzip_truncation_and_tampering(tmp_path: Path) -> None:
    built = write_docker_archive(tmp_path / "a.tar", "img:t-linux-amd64", [50_000], compress=True)
    with pytest.raises(FleetciError, match="gzipped"):
        DockerArchive(built.path)
    plain = write_docker_archive(tmp_path / "b.tar", "img:t-linux-amd64", [50_000])
    truncated = tmp_path / "c.tar"
    truncated.write_bytes(plain.path.read_bytes()[:30_000])
    with pytest.raises(FleetciError):
        DockerArchive(truncated).images()
    archive = DockerArchive(plain.path)
    [image] = archive.images()
    layer = image.layers[0]
    data = bytearray(plain.path.read_bytes())
    data[layer.offset + 2000] ^= 0xFF  # one flipped bit inside the layer
    plain.path.write_bytes(bytes(data))
    with pytest.raises(FleetciError, match="digest mismatch"):
        verify_image(DockerArchive(plain.path), DockerArchive(plain.path).images()[0])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["registry", "gh-list", "--limit", "0"], "--limit"),
        (["registry", "push"], "image_tag"),
        (["registry", "gh-list", "--no-such-flag"], "unrecognized"),
        (["registry", "gh-list"], "no GitHub token"),
        (["registry", "gitlab-list"], "no GitLab token"),
        (["registry", "push", TAG, "--engine", "podman", "--yes"], "--engine"),
        (["registry", "download", "not-a-tag", "--gh-token", "x"], "not end in -linux"),
        (["registry", "retag", "no-tag-here", "v1", "--registry", "127.0.0.1:1"], "REPOSITORY:TAG"),
        (["registry", "daemon", "--interval", "0", "--once"], "--interval"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(fleetci: RunCli, args: list[str], needle: str) -> None:
    line = one_line_error(fleetci(*args))
    assert needle in line, line


def test_unreachable_hosts_are_one_line_errors(fleetci: RunCli, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc = fleetci("registry", "gh-list", "--api-url", dead, "--gh-token", "ghp_x", "--repo", "a/b")
    assert "unreachable" in one_line_error(proc)
    proc = fleetci("registry", "gitlab-list", "--gitlab-host", dead, "--gitlab-token", "t")
    assert "unreachable" in one_line_error(proc)
    proc = fleetci("registry", "retag", "x86/a:b", "c", "--registry", dead, "--skip-login")
    assert "unreachable" in one_line_error(proc)


def test_github_401_and_missing_plan(fleetci: RunCli, emulator: Any, tmp_path: Path) -> None:
    proc = fleetci("registry", "gh-list", *gh_args(emulator), "--gh-token", "ghp_wrong")
    assert "401" in one_line_error(proc)
    proc = fleetci("registry", "push", TAG, "--downloads-dir", str(tmp_path), "--yes")
    assert "prepare" in one_line_error(proc)


def test_only_one_daemon_holds_the_lock(fleetci: RunCli, tmp_path: Path) -> None:
    downloads = tmp_path / "downloads"
    # flock: a second open file of the lock is refused in this very process too
    with exclusive_lock(downloads / "daemon.lock"):
        proc = fleetci(
            "registry",
            "daemon",
            "--once",
            "--downloads-dir",
            str(downloads),
            "--gh-token",
            "x",
            "--gitlab-token",
            "y",
        )
    assert "another daemon" in one_line_error(proc)
