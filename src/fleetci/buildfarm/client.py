"""Admin-side calls to the master (submit, wait, status, remove) and repository verification."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from fleetci.buildfarm import keys
from fleetci.buildfarm.recipe import Recipe, check_graph, pack_source
from fleetci.buildfarm.settings import ClientSettings
from fleetci.errors import FleetciError
from fleetci.http import describe, error_message


def pending(info: dict[str, Any]) -> str:
    """``b running on w-1 (attempt 2), c ready``: the unfinished jobs of a build, for a timeout message."""
    parts = []
    for j in info["jobs"]:
        if j["state"] in ("done", "failed", "cancelled"):
            continue
        where = f" on {j['worker_id']}" if j.get("worker_id") and j["state"] == "running" else ""
        tries = f" (attempt {j['attempts']})" if j.get("attempts", 0) > 1 else ""
        parts.append(f"{j['package']} (job {j['id']}) {j['state']}{where}{tries}")
    return ", ".join(parts) or "no job left"


class MasterClient:
    def __init__(self, settings: ClientSettings, timeout: float = 30.0) -> None:
        self.s = settings
        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        self.http = httpx.Client(base_url=settings.master, headers=headers, timeout=timeout)

    def __enter__(self) -> MasterClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise FleetciError(f"cannot reach the build master at {self.s.master}: {describe(exc)}") from exc
        if r.status_code >= 400:
            raise FleetciError(f"master answered {r.status_code}: {error_message(r.status_code, r.content)}")
        return r

    def json(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        data = self.call(method, path, **kw).json()
        if not isinstance(data, dict):
            raise FleetciError(f"master sent unexpected data for {path}")
        return data

    def submit(self, recipes: Sequence[Recipe]) -> dict[str, Any]:
        check_graph(recipes, available=self.known_packages())
        packages = []
        for r in recipes:
            assert r.path is not None
            packages.append({"recipe": r.to_json(), "source": base64.b64encode(pack_source(r.path)).decode()})
        return self.json("POST", "/api/v1/builds", json={"packages": packages})

    def known_packages(self) -> set[str]:
        status = self.status()
        active = {j["package"] for j in status["jobs"] if j["state"] in ("waiting", "ready", "running")}
        return set(status["repository"]) | active

    def status(self) -> dict[str, Any]:
        return self.json("GET", "/api/v1/status")

    def build(self, build_id: int) -> dict[str, Any]:
        return self.json("GET", f"/api/v1/builds/{build_id}")

    def wait(
        self, build_id: int, timeout: float, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the build finishes; past ``timeout`` fail with each unfinished job's state."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            info = self.build(build_id)
            line = json.dumps(sorted((j["package"], j["state"]) for j in info["jobs"]))
            if progress and line != last:
                progress(info)
                last = line
            if info["state"] != "running":
                return info
            if time.monotonic() > deadline:
                raise FleetciError(f"build {build_id} did not finish within {timeout:g}s: {pending(info)}")
            time.sleep(0.25)

    def log(self, job_id: int) -> str:
        return self.call("GET", f"/api/v1/jobs/{job_id}/log").text

    def remove(self, name: str, force: bool) -> dict[str, Any]:
        return self.json("DELETE", f"/api/v1/packages/{name}", params={"force": "1" if force else "0"})


def verify_repository(master: str, master_key: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Check the index signature (pinned or fetched master key), each file's digest and worker signature."""
    with httpx.Client(base_url=master.rstrip("/"), timeout=timeout) as http:
        try:
            key = master_key or str(http.get("/api/v1/keys").json()["master"])
            data = http.get("/repo/index.json").content
            sig = http.get("/repo/index.json.sig").text.strip()
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise FleetciError(f"cannot read the repository at {master}: {describe(exc)}") from exc
        if not keys.verify(key, data, sig):
            raise FleetciError("repository index signature does not verify with the master key")
        index = json.loads(data)
        checked = 0
        for name, pkg in index["packages"].items():
            worker_key = pkg["built_by"]["key"]
            for f in pkg["files"]:
                try:
                    blob = http.get(f"/repo/{f['path']}").content
                except httpx.HTTPError as exc:
                    raise FleetciError(f"cannot download {f['path']}: {describe(exc)}") from exc
                sha = hashlib.sha256(blob).hexdigest()
                if sha != f["sha256"]:
                    raise FleetciError(f"{f['path']}: SHA-256 {sha} does not match the index")
                if not keys.verify(worker_key, keys.artifact_message(name, f["name"], sha), f["signature"]):
                    raise FleetciError(f"{f['path']}: the worker signature does not verify")
                checked += 1
    return {"packages": len(index["packages"]), "files": checked, "master_key": key, "index": index}
