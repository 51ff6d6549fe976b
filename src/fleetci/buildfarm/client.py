"""The one client of the build master's API, on :class:`fleetci.http.JsonApi`.

The CLI's admin verbs, the worker, the benchmark and repository verification all talk to the master
through :class:`MasterApi`, so its errors read the same everywhere: an unreachable master is
:class:`MasterUnreachable` (``cannot reach the build master at URL: reason``), a refusal is
:class:`MasterRefused` (``master answered 409: reason``, with ``status`` to branch on), the reason read
from the answer by :func:`fleetci.http.error_message`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetci.buildfarm import keys
from fleetci.buildfarm.models import (
    BuildInfo,
    HeartbeatAnswer,
    Job,
    JobRow,
    Queued,
    Registered,
    Removed,
    ResultAnswer,
    Status,
    Unregistered,
    Uploaded,
    Verified,
)
from fleetci.buildfarm.recipe import Recipe, check_graph, pack_source
from fleetci.buildfarm.report import pending
from fleetci.buildfarm.settings import ClientSettings
from fleetci.errors import FleetciError
from fleetci.http import ApiError, JsonApi, describe, error_message, redact_url
from fleetci.wait import WaitTimeout, wait_until

ACTIVE = ("waiting", "ready", "running")
# A download whose digest decides (a dependency, a repository file): any answer is read as it came.
ANY_STATUS = range(400, 600)
UPLOAD_TIMEOUT = 300.0


class MasterUnreachable(FleetciError):
    """The master did not answer; ``reason`` is the network error in one line."""

    def __init__(self, master: str, reason: str) -> None:
        super().__init__(f"cannot reach the build master at {redact_url(master)}: {reason}")
        self.reason = reason


class MasterRefused(ApiError):
    """The master answered with an error status (``status``; ``reason`` is its one-line message)."""

    def __str__(self) -> str:
        return f"master answered {self.status}: {self.reason}"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class MasterApi(JsonApi):
    """Calls to one master. Admin calls use the token given here; worker calls take their credential."""

    def __init__(self, master: str, token: str | None = None, timeout: float = 30.0) -> None:
        super().__init__(master, what="build master", token=token, timeout=timeout)

    @classmethod
    def of(cls, settings: ClientSettings) -> MasterApi:
        return cls(settings.master, settings.token)

    def __enter__(self) -> MasterApi:
        return self

    def unreachable(self, exc: Exception) -> FleetciError:
        return MasterUnreachable(self.base_url, describe(exc))

    def refused(self, status: int, body: bytes) -> ApiError:
        return MasterRefused(status, error_message(status, body))

    def _object(self, method: str, path: str, **kw: Any) -> Any:
        data = self.request(method, path, **kw)
        if not isinstance(data, dict):
            raise FleetciError(f"master sent unexpected data for {path}")
        return data

    # --- admin ----------------------------------------------------------------------------------------

    def submit(self, recipes: Sequence[Recipe]) -> Queued:
        """Queue ``recipes`` (checked first against what the master has built or queued)."""
        check_graph(recipes, available=self.known_packages())
        packages = []
        for r in recipes:
            assert r.path is not None
            packages.append({"recipe": r.to_json(), "source": base64.b64encode(pack_source(r.path)).decode()})
        queued: Queued = self._object("POST", "/api/v1/builds", json_body={"packages": packages})
        return queued

    def known_packages(self) -> set[str]:
        status = self.status()
        active = {j["package"] for j in status["jobs"] if j["state"] in ACTIVE}
        return set(status["repository"]) | active

    def status(self) -> Status:
        status: Status = self._object("GET", "/api/v1/status")
        return status

    def build(self, build_id: int) -> BuildInfo:
        info: BuildInfo = self._object("GET", f"/api/v1/builds/{build_id}")
        return info

    def wait(
        self, build_id: int, timeout: float, progress: Callable[[BuildInfo], None] | None = None
    ) -> BuildInfo:
        """Poll until the build finishes; past ``timeout`` fail naming each unfinished job's state.

        ``progress`` sees the build each time one of its jobs changes state.
        """
        seen: list[BuildInfo] = []
        last = ""

        def finished() -> BuildInfo | None:
            nonlocal last
            info = self.build(build_id)
            seen[:] = [info]
            line = json.dumps(sorted((j["package"], j["state"]) for j in info["jobs"]))
            if progress and line != last:
                progress(info)
                last = line
            return info if info["state"] != "running" else None

        try:
            return wait_until(finished, timeout=timeout, what=f"build {build_id}", interval=0.25)
        except WaitTimeout:
            raise FleetciError(
                f"build {build_id} did not finish within {timeout:g}s: {pending(seen[-1])}"
            ) from None

    def log(self, job_id: int) -> str:
        return self.response("GET", f"/api/v1/jobs/{job_id}/log").text

    def remove(self, name: str, force: bool) -> Removed:
        removed: Removed = self._object(
            "DELETE", f"/api/v1/packages/{name}", params={"force": "1" if force else "0"}
        )
        return removed

    def master_key(self) -> str:
        """The master's ed25519 public key (base64), which signs the repository index."""
        return str(self._object("GET", "/api/v1/keys")["master"])

    # --- workers --------------------------------------------------------------------------------------

    def register(self, join_token: str, name: str, public_key: str) -> Registered:
        body = {"name": name, "public_key": public_key}
        registered: Registered = self._object(
            "POST", "/api/v1/workers", json_body=body, headers=_bearer(join_token)
        )
        return registered

    def heartbeat(self, token: str, jobs: list[int]) -> HeartbeatAnswer:
        answer: HeartbeatAnswer = self._object(
            "POST", "/api/v1/workers/me/heartbeat", json_body={"jobs": jobs}, headers=_bearer(token)
        )
        return answer

    def unregister(self, token: str) -> Unregistered:
        gone: Unregistered = self._object(
            "DELETE", "/api/v1/workers/me", headers=_bearer(token), timeout=10.0
        )
        return gone

    def next_job(self, token: str, wait: float) -> Job | None:
        """Long poll: the ready job with the longest critical path, or None after ``wait`` seconds."""
        job: Job | None = self.request(
            "POST",
            "/api/v1/jobs/next",
            params={"wait": f"{wait:.3f}"},
            headers=_bearer(token),
            timeout=wait + 15,
        )
        return job

    def source(self, token: str, url: str) -> bytes:
        return self.response("GET", url, headers=_bearer(token)).content

    def fetch(self, url: str) -> bytes:
        """A repository file as the master sent it, whatever the status: the caller checks its digest."""
        return self.response("GET", url, ok=ANY_STATUS).content

    def upload(self, token: str, job_id: int, path: Path, sha256: str, signature: str) -> Uploaded:
        """Stream one artifact of a held job, with its digest and the worker's signature."""
        headers = {
            **_bearer(token),
            "X-Fleetci-Sha256": sha256,
            "X-Fleetci-Signature": signature,
            "Content-Length": str(path.stat().st_size),
        }
        with path.open("rb") as fh:
            uploaded: Uploaded = self._object(
                "PUT",
                f"/api/v1/jobs/{job_id}/artifacts/{path.name}",
                content=fh,
                headers=headers,
                timeout=UPLOAD_TIMEOUT,
            )
        return uploaded

    def result(self, token: str, job_id: int, body: Mapping[str, Any]) -> ResultAnswer:
        answer: ResultAnswer = self._object(
            "POST", f"/api/v1/jobs/{job_id}/result", json_body=dict(body), headers=_bearer(token)
        )
        return answer


@dataclass(frozen=True)
class Submission:
    """A queued build and, when it was waited for, how it ended."""

    queued: Queued
    info: BuildInfo | None = None

    @property
    def build(self) -> int:
        return int(self.queued["build"])

    @property
    def state(self) -> str:
        return self.info["state"] if self.info is not None else "queued"

    @property
    def jobs(self) -> list[JobRow]:
        return self.info["jobs"] if self.info is not None else []

    def to_json(self) -> dict[str, Any]:
        if self.info is not None:
            return dict(self.info)
        return {"build": self.build, "state": "queued", "jobs": self.queued["jobs"]}

    def check(self) -> None:
        """Fail (one line naming the packages) when the build was waited for and did not all build."""
        if self.info is not None and self.info["state"] != "done":
            failed = [j["package"] for j in self.info["jobs"] if j["state"] != "done"]
            raise FleetciError(f"build {self.build} failed: {', '.join(failed)} did not build")


def submit(
    api: MasterApi,
    recipes: Sequence[Recipe],
    *,
    wait: bool = False,
    timeout: float = 3600.0,
    queued: Callable[[Queued], None] | None = None,
    progress: Callable[[BuildInfo], None] | None = None,
) -> Submission:
    """Queue ``recipes``; ``queued`` hears of it at once, then (``wait``) poll until the build ends."""
    answer = api.submit(recipes)
    if queued is not None:
        queued(answer)
    return Submission(answer, api.wait(int(answer["build"]), timeout, progress) if wait else None)


def reason(exc: BaseException) -> str:
    """The short reason of a failed call, for a log line: the network error, or the whole message."""
    if isinstance(exc, MasterUnreachable):
        return exc.reason
    return str(exc) if isinstance(exc, FleetciError) else describe(exc)


def verify_repository(master: str, master_key: str | None = None, timeout: float = 30.0) -> Verified:
    """Check the index signature (pinned or fetched master key), each file's digest and worker signature."""
    with MasterApi(master, timeout=timeout) as api:
        try:
            key = master_key or api.master_key()
            data = api.fetch("/repo/index.json")
            sig = api.fetch("/repo/index.json.sig").decode("utf-8", errors="replace").strip()
        except (FleetciError, ValueError, KeyError) as exc:
            raise FleetciError(f"cannot read the repository at {master}: {reason(exc)}") from exc
        if not keys.verify(key, data, sig):
            raise FleetciError("repository index signature does not verify with the master key")
        index = json.loads(data)
        checked = 0
        for name, pkg in index["packages"].items():
            worker_key = pkg["built_by"]["key"]
            for f in pkg["files"]:
                try:
                    blob = api.fetch(f"/repo/{f['path']}")
                except MasterUnreachable as exc:
                    raise FleetciError(f"cannot download {f['path']}: {exc.reason}") from exc
                sha = hashlib.sha256(blob).hexdigest()
                if sha != f["sha256"]:
                    raise FleetciError(f"{f['path']}: SHA-256 {sha} does not match the index")
                if not keys.verify(worker_key, keys.artifact_message(name, f["name"], sha), f["signature"]):
                    raise FleetciError(f"{f['path']}: the worker signature does not verify")
                checked += 1
    return {"packages": len(index["packages"]), "files": checked, "master_key": key, "index": index}
