"""``fleetci build worker``: register with the master, heartbeat, build pulled jobs, sign and upload.

Each job builds in a fresh directory with a clean environment; the worker's credential never reaches the
build command. Every heartbeat names the jobs the worker holds, so a job it lets go is requeued. A finished
result waits on disk and its delivery is retried with backoff until the master acknowledges it (or refuses
it, or keeps failing: then the job is handed back). SIGTERM/SIGINT stop the current build and unregister,
so the master requeues the job at once instead of waiting for the heartbeat to expire.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
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
import tenacity

from fleetci import gha
from fleetci.buildfarm import keys
from fleetci.buildfarm.recipe import unpack_source
from fleetci.buildfarm.settings import WorkerSettings
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, open_private, write_private
from fleetci.http import describe, error_message

MAX_LOG = 256 * 1024
POLL_WAIT = 20.0


class Shutdown(Exception):
    """Raised from the signal handler to leave a blocking long poll."""


class Undelivered(Exception):
    """A delivery attempt worth repeating: the master is unreachable or failed (5xx)."""


def api_error(r: httpx.Response) -> str:
    """The one-line reason of a refusal (``fleetci.http.error_message``, for an httpx answer)."""
    return error_message(r.status_code, r.content)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.s = settings
        ensure_private_dir(settings.work_dir)
        self.key = keys.load_or_create_key(settings.work_dir / "worker.key")
        # Results not yet delivered. A new process registers as a new worker, whose master requeued the
        # old one's jobs: what a previous run left here can never be delivered.
        self.outbox = settings.work_dir / "outbox"
        shutil.rmtree(self.outbox, ignore_errors=True)
        ensure_private_dir(self.outbox)
        self.held: set[int] = set()  # jobs this worker holds: named in every heartbeat
        self.held_lock = threading.Lock()
        self.ttl = 60.0
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
        self.ttl = float(data["heartbeat_ttl"])
        self.registered = True
        log(
            f"worker {self.wid} ({self.s.name}) registered with {self.s.master};"
            f" heartbeat every {self.interval:g}s (ttl {float(data['heartbeat_ttl']):g}s)"
        )

    def heartbeat_loop(self) -> None:
        with httpx.Client(base_url=self.s.master, timeout=httpx.Timeout(max(self.interval, 2.0))) as c:
            while not self.stop.wait(self.interval):
                with self.held_lock:
                    held = sorted(self.held)
                try:
                    r = c.post("/api/v1/workers/me/heartbeat", headers=self._auth(), json={"jobs": held})
                    if r.status_code != 200:
                        log(f"heartbeat refused: {api_error(r)}")
                    elif r.json().get("requeued"):
                        log(f"master requeued jobs {r.json()['requeued']}, which this worker does not hold")
                except (httpx.HTTPError, ValueError) as exc:
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
        """Build one job and deliver its result; returns the next job when the master hands one out."""
        jid = int(job["id"])
        with self.held_lock:
            self.held.add(jid)
        try:
            if self.stop.is_set():
                return None  # stopping: unregistering hands this job back
            outbox = self._run_job(job)
            if outbox is None:
                return None
            try:
                return self._deliver(job, outbox)
            finally:
                shutil.rmtree(outbox, ignore_errors=True)
        finally:
            with self.held_lock:
                self.held.discard(jid)  # the next heartbeat tells the master, which requeues it if open

    def _label(self, job: dict[str, Any]) -> str:
        return f"job {job['id']} {job['package']} {job['version']}-{job['release']}"

    def _run_job(self, job: dict[str, Any]) -> Path | None:
        """Build in a fresh directory and keep the outcome on disk (``outbox/<job>``) until delivered."""
        jid = int(job["id"])
        label = self._label(job)
        log(f"{label}: building (attempt {job['attempt']})")
        root = Path(tempfile.mkdtemp(prefix=f"job{jid}-", dir=self.s.work_dir.resolve()))
        try:
            try:
                ok, error, output, duration, files = self._build_in(job, root)
            except httpx.HTTPError as exc:
                log(f"{label}: lost contact with the master ({describe(exc)}); handing the job back")
                return None
            if self.stop.is_set():
                return None  # unregistering hands the job back at once
            outbox = self.outbox / str(jid)
            shutil.rmtree(outbox, ignore_errors=True)
            ensure_private_dir(outbox / "files")
            names = [p.name for p in files]
            dup = sorted({n for n in names if names.count(n) > 1})
            if ok and dup:
                ok, error = False, f"two artifacts share the file name {dup[0]}"
            if ok:
                for path in files:
                    os.replace(path, outbox / "files" / path.name)
            result = {"ok": ok, "error": error, "log": output[-MAX_LOG:], "duration_s": duration}
            # Not fsynced: after a power loss the worker starts as a new identity and drops its outbox.
            write_private(outbox / "result.json", json.dumps(result), durable=False)
            if ok:
                log(f"{label}: built in {duration:.2f}s, {len(files)} artifact(s)")
            else:
                log(f"{label}: failed: {error}")
            return outbox
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _deliver(self, job: dict[str, Any], outbox: Path) -> dict[str, Any] | None:
        """Upload and report until the master acknowledges, with backoff; or hand the job back.

        A master that is down (or restarting) is waited for: the job stays named in the heartbeats, so
        it stays ours. A master that answers but no longer gives us the job (401/404/409, or a request it
        refuses) ends the attempt at once; one that keeps failing (5xx) for ``give_up_s`` gets the job
        back: it drops out of the heartbeats and the master requeues it.
        """
        label = self._label(job)
        result: dict[str, Any] = json.loads((outbox / "result.json").read_text(encoding="utf-8"))
        uploaded: set[str] = set()
        give_up_s = max(60.0, 10 * self.ttl)
        cap = max(0.2, min(self.interval, 5.0))
        failing_since: float | None = None  # the first of an unbroken run of 5xx answers
        attempts = 0

        def attempt() -> tuple[str, Any]:
            nonlocal failing_since, attempts
            if self.stop.is_set():
                return "stopped", None
            attempts += 1
            try:
                verdict, detail = self._try_deliver(job, outbox, result, uploaded)
            except httpx.HTTPError as exc:
                failing_since = None  # unreachable (down, restarting): waited for as long as it takes
                raise Undelivered(describe(exc)) from None
            if verdict == "server":
                failing_since = failing_since or time.monotonic()
                raise Undelivered(detail)
            return verdict, detail

        def give_up(state: tenacity.RetryCallState) -> bool:
            """Stopping, or the master has failed (5xx) for longer than ``give_up_s``."""
            failing = failing_since is not None and time.monotonic() - failing_since > give_up_s
            return self.stop.is_set() or failing

        def report(state: tenacity.RetryCallState) -> None:
            n = state.attempt_number
            if n & (n - 1) == 0:  # 1, 2, 4, 8...: a long outage logs a few lines, not one a try
                why = state.outcome.exception() if state.outcome else None
                log(
                    f"{label}: result not delivered ({why}); kept in {outbox},"
                    f" retrying every {cap:g}s at most (attempt {n})"
                )

        def nap(seconds: float) -> None:
            self.stop.wait(seconds)  # a signal ends the wait

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(Undelivered),
            wait=tenacity.wait_exponential(multiplier=0.4, max=cap),
            stop=give_up,
            sleep=nap,
            before_sleep=report,
            reraise=True,
        )
        try:
            verdict, detail = retrying(attempt)
        except Undelivered as exc:
            if not self.stop.is_set():
                log(f"{label}: the master failed for {give_up_s:g}s ({exc}); handing the job back")
            return None  # stopping: unregistering hands the job back
        if verdict == "refused":
            log(f"{label}: the master no longer takes this result ({detail}); dropping it")
        elif verdict == "done":
            if attempts > 1:
                log(f"{label}: result delivered after {attempts - 1} failed attempt(s)")
            return detail if isinstance(detail, dict) else None
        return None

    def _try_deliver(
        self, job: dict[str, Any], outbox: Path, result: dict[str, Any], uploaded: set[str]
    ) -> tuple[str, Any]:
        """One delivery attempt: ("done", next job), ("refused", why), ("server"|"retry", why)."""
        names = sorted(p.name for p in (outbox / "files").iterdir())
        if result["ok"]:
            for name in names:
                if name in uploaded:
                    continue
                r = self._upload(job, outbox / "files" / name)
                if r.status_code == 200:
                    uploaded.add(name)
                    continue
                if r.status_code in (401, 404, 409):
                    return "refused", f"upload of {name}: {api_error(r)}"
                if r.status_code >= 500:
                    return "server", f"upload of {name}: HTTP {r.status_code} {api_error(r)}"
                result.update(ok=False, error=f"upload of {name} refused: {api_error(r)}")
                break
        r = self.client.post(
            f"/api/v1/jobs/{job['id']}/result",
            headers=self._auth(),
            json={
                **result,
                "artifacts": names if result["ok"] else [],
                "want_next": not self.stop.is_set()
                and not (self.s.max_jobs and self.jobs_done + 1 >= self.s.max_jobs),
            },
        )
        if r.status_code == 200:
            nxt = r.json().get("next")
            return "done", nxt if isinstance(nxt, dict) else None
        if r.status_code >= 500:
            return "server", f"HTTP {r.status_code} {api_error(r)}"
        return "refused", f"HTTP {r.status_code} {api_error(r)}"

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
        with open_private(out_path, "wb") as out:
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

    def _upload(self, job: dict[str, Any], path: Path) -> httpx.Response:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        sig = keys.sign(self.key, keys.artifact_message(str(job["package"]), path.name, sha))
        with path.open("rb") as fh:
            return self.client.put(
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


def run(settings: WorkerSettings) -> int:
    worker = Worker(settings)
    previous = {s: signal.signal(s, worker.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(f"fleetci build worker stopped after {worker.jobs_done} job(s)", file=sys.stderr, flush=True)
