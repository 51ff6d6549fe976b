"""The GitLab emulator (REST API + registry token realm) under hostile input: one-line 4xx, no traceback.

A real emulator on 127.0.0.1 in front of the real Debian ``docker-registry`` (token auth, as in
``test_registry``), holding two small images so listings paginate; raw requests go through
``http.client`` so paths and headers reach the server exactly as written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.http import free_port
from fleetci.testing.docker_registry import RegistryProcess, registry_binary, token_registry
from fleetci.testing.gitlab import ISSUER, SERVICE, GitLabEmulator, GitLabServer, TokenInfo
from support import raw_request, server_lines_are_one_line

pytestmark = [
    pytest.mark.skipif(registry_binary() is None, reason="docker-registry is installed by scripts/test.sh"),
]


PROJECT = "hercules/veloxtesting"


PROJECT_ID = 4242


WRITE = "glpat-hostileWriteToken0000"


JOB = "glcbt-hostileJobToken000000"


REPOS = f"/api/v4/projects/{PROJECT_ID}/registry/repositories"


@dataclass
class Stack:
    gitlab: GitLabServer
    registry: RegistryProcess

    @property
    def emulator(self) -> GitLabEmulator:
        return self.gitlab.emulator


def push_image(registry_url: str, emu: GitLabEmulator, name: str, tag: str) -> None:
    """One config blob, one layer and an OCI manifest, straight through the registry API."""
    token = emu.issue("seeder", [{"type": "repository", "name": name, "actions": ["pull", "push"]}])
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=registry_url, headers=headers, timeout=30) as c:

        def blob(data: bytes) -> dict[str, Any]:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            start = c.post(f"/v2/{name}/blobs/uploads/")
            assert start.status_code == 202, start.text
            location = start.headers["Location"]  # keeps its signed _state: add to the query, never replace
            put = c.put(f"{location}{'&' if '?' in location else '?'}digest={digest}", content=data)
            assert put.status_code == 201, put.text
            return {"digest": digest, "size": len(data)}

        config = blob(json.dumps({"architecture": "amd64", "os": "linux"}).encode())
        layer = blob(b"hostile-input layer " + name.encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **layer}],
        }
        r = c.put(
            f"/v2/{name}/manifests/{tag}",
            content=json.dumps(manifest).encode(),
            headers={"Content-Type": manifest["mediaType"]},
        )
        assert r.status_code == 201, r.text


@pytest.fixture
def stack(tmp_path: Path, server_log: pytest.LogCaptureFixture) -> Iterator[Stack]:
    port = free_port()
    emu = GitLabEmulator(
        registry_url=f"http://127.0.0.1:{port}",
        registry_host=f"127.0.0.1:{port}",
        tokens={WRITE: TokenInfo("maintainer"), JOB: TokenInfo("ci", kind="job")},
    )
    server = GitLabServer(emu).start()
    reg = token_registry(tmp_path / "registry", server.realm, emu.signing.cert_pem, SERVICE, ISSUER, port)
    reg.start()
    try:
        for image in ("app", "worker"):
            push_image(reg.url, emu, f"{PROJECT}/{image}", "v1")
        yield Stack(server, reg)
    finally:
        reg.stop()
        server.stop()


def raw(
    stack: Stack, method: str, path: str, headers: dict[str, str | bytes] | None = None
) -> tuple[int, bytes]:
    status, _, body = raw_request(stack.gitlab.host, stack.gitlab.port, method, path, headers)
    return status, body


def one_line(body: bytes) -> str:
    message = json.loads(body)["message"]
    assert isinstance(message, str) and message and "\n" not in message, message
    assert "Traceback" not in message
    return message


def still_serves(stack: Stack) -> None:
    """Both images listed, with paging, and a registry token still issued."""
    r = httpx.get(
        f"{stack.gitlab.url}{REPOS}", params={"per_page": 1}, headers={"PRIVATE-TOKEN": WRITE}, timeout=30
    )
    assert r.status_code == 200 and r.headers["X-Total"] == "2", r.text
    r = httpx.get(
        stack.gitlab.realm,
        params={"service": SERVICE, "scope": f"repository:{PROJECT}/app:pull"},
        auth=("gitlab-ci-token", JOB),
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["token"]


def test_bodies_over_the_cap_are_413(stack: Stack, server_log: pytest.LogCaptureFixture) -> None:
    auth = {"PRIVATE-TOKEN": WRITE}
    status, body = raw(stack, "GET", REPOS, {**auth, "Content-Length": str(10 * 1024 * 1024)})
    assert status == 413, body  # refused on the declaration: nothing of it was read

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 4096

    r = httpx.request("GET", f"{stack.gitlab.url}{REPOS}", content=chunks(), headers=auth, timeout=30)
    assert r.status_code == 413, r.text
    one_line(r.content)
    still_serves(stack)
    server_lines_are_one_line(server_log)


def test_oversize_headers_are_400_and_one_log_line(
    stack: Stack, server_log: pytest.LogCaptureFixture
) -> None:
    for _ in range(20):
        status, body = raw(stack, "GET", REPOS, {"PRIVATE-TOKEN": WRITE, "X-Padding": "a" * 20_000})
        assert status == 400 and b"Traceback" not in body
    lines = [r for r in server_log.records if r.name.startswith("aiohttp")]
    assert len(lines) == 1 and "LineTooLong" in lines[0].getMessage(), [r.getMessage() for r in lines]
    server_lines_are_one_line(server_log)
    still_serves(stack)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v4/projects/..%2F..%2Fetc/registry/repositories", 404),
        ("/api/v4/projects/hercules%2F..%2Fhercules%2Fveloxtesting/registry/repositories", 404),
        ("/api/v4/projects/%C2%B2/registry/repositories", 404),  # a digit to str.isdigit, not to int()
        ("/api/v4/projects/" + "4" * 5000 + "/registry/repositories", 404),
        (f"{REPOS}/" + "1" * 5000 + "/tags", 404),
        (f"{REPOS}/%D9%A3/tags", 404),
        ("//api/v4/projects/4242/registry/repositories", 404),
        ("/api/v4/projects/4242/registry/repositories/../repositories", 200),
    ],
)
def test_path_tricks_are_404_never_500(
    stack: Stack, server_log: pytest.LogCaptureFixture, path: str, status: int
) -> None:
    got, body = raw(stack, "GET", path, {"PRIVATE-TOKEN": WRITE})
    assert got in (status, 404), (got, body[:200])
    if got == 404:
        one_line(body)
    server_lines_are_one_line(server_log)
    still_serves(stack)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"PRIVATE-TOKEN": "glpat-wrong"},
        {"PRIVATE-TOKEN": JOB},  # a job token is not a personal one
        {"JOB-TOKEN": WRITE},  # and the other way round
        {"Authorization": "Bearer "},
        {"Authorization": "Basic bWFpbnRhaW5lcjpnbHBhdA=="},
        {"PRIVATE-TOKEN": b"\xff\xfe"},
    ],
)
def test_wrong_or_missing_tokens_are_401(stack: Stack, headers: dict[str, str | bytes]) -> None:
    for path in (REPOS, f"{REPOS}/1/tags"):
        status, body = raw(stack, "GET", path, headers)
        assert status == 401 and one_line(body) == "401 Unauthorized"
    still_serves(stack)


@pytest.mark.parametrize(
    "auth", [b"Basic !!!not-base64", b"Basic " + b"\xff" * 8, b"Basic Z2l0bGFiLWNpLXRva2VuOndyb25n"]
)
def test_the_token_realm_refuses_bad_basic_credentials(stack: Stack, auth: bytes) -> None:
    status, body = raw(stack, "GET", f"/jwt/auth?service={SERVICE}", {"Authorization": auth})
    assert status == 401
    assert json.loads(body)["errors"][0]["code"] == "UNAUTHORIZED"
    still_serves(stack)


def test_a_host_header_that_is_not_ascii_is_400(stack: Stack, server_log: pytest.LogCaptureFixture) -> None:
    # per_page=1 of 2 repositories: the answer carries a Link built from the Host header
    status, body = raw(stack, "GET", f"{REPOS}?per_page=1", {"PRIVATE-TOKEN": WRITE, "Host": b"\xff.example"})
    assert status == 400 and one_line(body).startswith("400 Bad request")
    server_lines_are_one_line(server_log)
    still_serves(stack)


def test_registry_down_is_a_one_line_502(stack: Stack, server_log: pytest.LogCaptureFixture) -> None:
    stack.registry.stop()
    for path in (REPOS, f"{REPOS}/1/tags"):
        r = httpx.get(f"{stack.gitlab.url}{path}", headers={"PRIVATE-TOKEN": WRITE}, timeout=30)
        assert r.status_code == 502, r.text
        assert one_line(r.content).startswith("502 Bad Gateway - container registry: ")
    server_lines_are_one_line(server_log)
    stack.registry.start()
    still_serves(stack)
