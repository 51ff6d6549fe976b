"""``fleetci build worker``: register with the master, heartbeat, build pulled jobs, sign and upload.

Each job builds in a fresh directory with a clean environment; the worker's credential never reaches the
build command. SIGTERM/SIGINT stop the current build and unregister, so the master requeues the job at
once instead of waiting for the heartbeat to expire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from fleetci import gha
from fleetci.build import keys
from fleetci.build.recipe import unpack_source
from fleetci.build.settings import WorkerSettings
from fleetci.errors import FleetciError
from fleetci.http import describe

MAX_LOG = 256 * 1024
POLL_WAIT = 20.0


class Shutdown(Exception):
    """Raised from the signal handler to leave a blocking long poll."""


def api_error(r: httpx.Response) -> str:
    try:
        return str(r.json().get("error") or r.text[:200])
    except ValueError:
        return f"HTTP {r.status_code} {r.text[:200]}"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        self.key = keys.load_or_create_key(settings.work_dir / "worker.key")
        self.client = httpx.Client(base_url=settings.master, timeout=httpx.Timeout(30.0))
        self.wid = ""
        self.token = ""
        self.interval = 15.0
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.jobs_done = 0
        self.registered = False

    # --- master API -----------------------------------------------------------------------------------

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def register(self) -> None:
        try:
            r = self.client.post(
                "/api/v1/workers",
                json={"name": self.s.name, "public_key": keys.public_b64(self.key)},
                headers={"Authorization": f"Bearer {self.s.join_token}"},
            )
        except httpx.HTTPError as exc:
            raise FleetciError(f"cannot reach the build master at {self.s.master}: {describe(exc)}") from exc
        if r.status_code != 200:
            raise FleetciError(f"the master refused registration: {api_error(r)}")
        data = r.json()
        self.wid, self.token = str(data["worker_id"]), str(data["token"])
        gha.add_mask(self.token)
        self.interval = float(data["heartbeat_interval"])
        self.registered = True
        log(
            f"worker {self.wid} ({self.s.name}) registered with {self.s.master};"
            f" heartbeat every {self.interval:g}s (ttl {float(data['heartbeat_ttl']):g}s)"
        )

    def heartbeat_loop(self) -> None:
        with httpx.Client(base_url=self.s.master, timeout=httpx.Timeout(max(self.interval, 2.0))) as c:
            while not self.stop.wait(self.interval):
                try:
                    r = c.post("/api/v1/workers/me/heartbeat", headers=self._auth())
                    if r.status_code != 200:
                        log(f"heartbeat refused: {api_error(r)}")
                except httpx.HTTPError as exc:
                    log(f"heartbeat failed: {describe(exc)}")

    def unregister(self) -> None:
        if not self.registered:
            return
        try:
            r = self.client.delete("/api/v1/workers/me", headers=self._auth(), timeout=10)
            requeued = r.json().get("requeued") if r.status_code == 200 else api_error(r)
            log(f"worker {self.wid} unregistered (requeued: {requeued})")
        except (httpx.HTTPError, ValueError) as exc:
            log(f"could not unregister: {describe(exc)}")
        self.registered = False

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.register()
        hb = threading.Thread(target=self.heartbeat_loop, daemon=True)
        hb.start()
        idle_since = time.monotonic()
        failures = 0
        try:
            while not self.stop.is_set():
                if self.s.max_jobs and self.jobs_done >= self.s.max_jobs:
                    log(f"built {self.jobs_done} job(s); --max-jobs reached")
                    break
                wait = POLL_WAIT
                if self.s.idle_timeout > 0:
                    left = self.s.idle_timeout - (time.monotonic() - idle_since)
                    if left <= 0:
                        log(f"idle for {self.s.idle_timeout:g}s; leaving")
                        break
                    wait = min(wait, left)
                try:
                    r = self.client.post(
                        "/api/v1/jobs/next",
                        params={"wait": f"{wait:.3f}"},
                        headers=self._auth(),
                        timeout=wait + 15,
                    )
                except httpx.HTTPError as exc:
                    failures += 1
                    log(f"master unreachable ({describe(exc)}); retrying")
                    self.stop.wait(min(0.2 * 2**failures, 5.0))
                    continue
                failures = 0
                if r.status_code == 204:
                    continue
                if r.status_code == 401:
                    log(f"master forgot this worker ({api_error(r)}); registering again")
                    self.register()
                    continue
                if r.status_code != 200:
                    log(f"master answered {r.status_code}: {api_error(r)}")
                    self.stop.wait(1.0)
                    continue
                job: dict[str, Any] | None = r.json()
                while job is not None:
                    job = self.build(job)
                    self.jobs_done += 1
                idle_since = time.monotonic()
        except Shutdown:
            pass
        finally:
            self.stop.set()
            self.unregister()
            self.client.close()
        return 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        log(f"signal {signum}: stopping")
        self.stop.set()
        child = self.child
        if child is not None and child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
        else:
            raise Shutdown

    # --- one job --------------------------------------------------------------------------------------

    def build(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Build one job and report it; returns the next job when the master hands one out with the answer."""
        if self.stop.is_set():
            return None  # stopping: unregistering hands this job back
        jid = int(job["id"])
        label = f"job {jid} {job['package']} {job['version']}-{job['release']}"
        log(f"{label}: building (attempt {job['attempt']})")
        root = Path(tempfile.mkdtemp(prefix=f"job{jid}-", dir=self.s.work_dir.resolve()))
        t0 = time.monotonic()
        try:
            ok, error, output, duration, files = self._build_in(job, root)
            t1 = time.monotonic()
            if self.stop.is_set():
                return None  # unregistering hands the job back at once
            artifacts = []
            if ok:
                try:
                    artifacts = [self._upload(job, path) for path in files]
                except FleetciError as exc:
                    ok, error = False, str(exc)
            t2 = time.monotonic()
            if ok:
                log(
                    f"{label}: built in {duration:.2f}s, uploaded {len(artifacts)} artifact(s)"
                    f" (prepare+build {1000 * (t1 - t0):.0f} ms, upload {1000 * (t2 - t1):.0f} ms)"
                )
            else:
                log(f"{label}: failed: {error}")
            r = self.client.post(
                f"/api/v1/jobs/{jid}/result",
                headers=self._auth(),
                json={
                    "want_next": not self.stop.is_set()
                    and not (self.s.max_jobs and self.jobs_done + 1 >= self.s.max_jobs),
                    "ok": ok,
                    "error": error,
                    "log": output[-MAX_LOG:],
                    "duration_s": duration,
                    "artifacts": artifacts,
                },
            )
            if r.status_code != 200:
                log(f"{label}: result refused: {api_error(r)}")
                return None
            nxt = r.json().get("next")
            return nxt if isinstance(nxt, dict) else None
        except httpx.HTTPError as exc:
            log(f"{label}: lost contact with the master ({describe(exc)}); the job will be requeued")
            return None
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _build_in(self, job: dict[str, Any], root: Path) -> tuple[bool, str | None, str, float, list[Path]]:
        recipe = job["recipe"]
        src, deps_dir, home = root / "src", root / "deps", root / "home"
        for d in (src, deps_dir, home):
            d.mkdir()
        if job.get("source"):
            source = base64.b64decode(str(job["source"]))
        else:
            r = self.client.get(str(job["source_url"]), headers=self._auth())
            if r.status_code != 200:
                return False, f"cannot fetch the source: {api_error(r)}", "", 0.0, []
            source = r.content
        try:
            unpack_source(source, src)
            for dep in job.get("deps", []):
                target = deps_dir / str(dep["package"])
                target.mkdir()
                for f in dep["files"]:
                    data = self.client.get(str(f["url"])).content
                    if hashlib.sha256(data).hexdigest() != f["sha256"]:
                        return False, f"dependency file {f['name']} does not match its digest", "", 0.0, []
                    (target / str(f["name"])).write_bytes(data)
        except FleetciError as exc:
            return False, str(exc), "", 0.0, []
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(home),
            "TMPDIR": str(home),
            "LANG": "C.UTF-8",
            "FLEETCI_PKG_NAME": str(job["package"]),
            "FLEETCI_PKG_VERSION": str(job["version"]),
            "FLEETCI_PKG_RELEASE": str(job["release"]),
            "FLEETCI_DEPS_DIR": str(deps_dir),
            "FLEETCI_JOB_ID": str(job["id"]),
        }
        out_path = root / "build.log"
        start = time.monotonic()
        with out_path.open("wb") as out:
            self.child = subprocess.Popen(
                ["bash", "-eo", "pipefail", "-c", str(recipe["build"])],
                cwd=src,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                code = self.child.wait(timeout=float(recipe.get("timeout_s") or 3600))
                error = None if code == 0 else f"build command exited with code {code}"
            except subprocess.TimeoutExpired:
                os.killpg(self.child.pid, signal.SIGKILL)
                self.child.wait()
                error = f"build command timed out after {recipe.get('timeout_s')}s"
            finally:
                self.child = None
        duration = time.monotonic() - start
        output = out_path.read_bytes()[-MAX_LOG:].decode("utf-8", errors="replace")
        if error:
            return False, error, output, duration, []
        files: list[Path] = []
        for pattern in recipe["artifacts"]:
            matched = sorted(p for p in src.glob(pattern) if p.is_file() and not p.is_symlink())
            if not matched:
                return False, f"artifact pattern {pattern!r} matched no file", output, duration, []
            files += [m for m in matched if m not in files]
        return True, None, output, duration, files

    def _upload(self, job: dict[str, Any], path: Path) -> str:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        sig = keys.sign(self.key, keys.artifact_message(str(job["package"]), path.name, sha))
        with path.open("rb") as fh:
            r = self.client.put(
                f"/api/v1/jobs/{job['id']}/artifacts/{path.name}",
                content=fh,
                headers={
                    **self._auth(),
                    "X-Fleetci-Sha256": sha,
                    "X-Fleetci-Signature": sig,
                    "Content-Length": str(path.stat().st_size),
                },
                timeout=300,
            )
        if r.status_code != 200:
            raise FleetciError(f"upload of {path.name} refused: {api_error(r)}")
        return path.name


def run(settings: WorkerSettings) -> int:
    worker = Worker(settings)
    previous = {s: signal.signal(s, worker.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(f"fleetci build worker stopped after {worker.jobs_done} job(s)", file=sys.stderr, flush=True)
