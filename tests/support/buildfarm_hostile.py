"""Hostile-client helpers shared by the buildfarm hostile-input and race tests."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.buildfarm import keys
from support.buildfarm import JOIN, Fleet

MAX_BODY = 64 * 1024


MAX_UPLOAD = 1024 * 1024


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(
        tmp_path,
        extra=("--max-upload-bytes", str(MAX_UPLOAD)),
        env={"FLEETCI_BUILD_MAX_BODY": str(MAX_BODY)},
    )
    try:
        yield f
    finally:
        f.close()
        f.assert_master_logs_clean()


def refused(r: httpx.Response, status: int | tuple[int, ...], needle: str = "") -> str:
    """A 4xx whose body is ``{"message": <one line>}``."""
    wanted = (status,) if isinstance(status, int) else status
    assert r.status_code in wanted, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["message"]
    assert isinstance(message, str) and "\n" not in message and "Traceback" not in message
    assert needle in message, message
    return str(message)


class Manual:
    """A worker driven by hand through the HTTP API (to send what a real worker never would)."""

    def __init__(self, fleet: Fleet, root: Path) -> None:
        self.url = fleet.url
        self.key = keys.load_or_create_key(root / "manual.pem")
        reg = httpx.post(
            f"{self.url}/api/v1/workers",
            json={"name": "manual", "public_key": keys.public_b64(self.key)},
            headers={"Authorization": f"Bearer {JOIN}"},
        ).json()
        self.wid, self.token = reg["worker_id"], reg["token"]
        self.auth = {"Authorization": f"Bearer {self.token}"}

    def next(self) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/api/v1/jobs/next?wait=10", headers=self.auth, timeout=30)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        return job

    def put_headers(self, package: str, name: str, body: bytes) -> dict[str, str]:
        """The digest and signature headers of an artifact upload."""
        sha = hashlib.sha256(body).hexdigest()
        sig = keys.sign(self.key, keys.artifact_message(package, name, sha))
        return {"X-Fleetci-Sha256": sha, "X-Fleetci-Signature": sig}

    def put(self, jid: int, package: str, name: str, body: bytes) -> httpx.Response:
        headers = {**self.auth, **self.put_headers(package, name, body)}
        return httpx.put(f"{self.url}/api/v1/jobs/{jid}/artifacts/{name}", content=body, headers=headers)

    def post(self, path: str, body: bytes) -> httpx.Response:
        headers = {**self.auth, "Content-Type": "application/json"}
        return httpx.post(f"{self.url}{path}", content=body, headers=headers)
