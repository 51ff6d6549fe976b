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

from fleetci import gha, retry
from fleetci.buildfarm import keys
from fleetci.buildfarm.client import MasterApi, MasterRefused, MasterUnreachable, reason
from fleetci.buildfarm.models import Job, Outcome
from fleetci.buildfarm.recipe import unpack_source
from fleetci.buildfarm.settings import WorkerSettings
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, move_into_place, open_private, write_private

MAX_LOG = 256 * 1024
POLL_WAIT = 20.0
# A master that does not answer a poll is asked again after 0.4 s, doubling to 5 s.
UNREACHABLE = retry.Backoff(retries=None, initial=0.4, most=5.0, jitter=0.0)


class Shutdown(Exception):
    """Raised from the signal handler to leave a blocking long poll."""


class Undelivered(retry.Transient):
    """A delivery attempt worth repeating: the master is unreachable or failed (5xx)."""


# A delivery attempt's verdict: ("done", the next job or None), ("refused"|"server", why), ("stopped", None).
Delivery = tuple[str, "Job | str | None"]


class Leave(Exception):
    """Time to stop polling (idle for too long); the reason is already logged."""


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
        self.api = MasterApi(settings.master)
        self.wid = ""
        self.token = ""
        self.interval = 15.0
        self.stop = threading.Event()
        self.child: subprocess.Popen[bytes] | None = None
        self.jobs_done = 0
        self.registered = False

    # --- master API -----------------------------------------------------------------------------------

    def register(self) -> None:
        try:
            data = self.api.register(self.s.join_token, self.s.name, keys.public_b64(self.key))
        except MasterRefused as exc:
            raise FleetciError(f"the master refused registration: {exc.reason}") from None
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
        """Every interval, name the held jobs (its own client: this runs beside a long poll)."""
        with MasterApi(self.s.master, timeout=max(self.interval, 2.0)) as api:
            while not self.stop.wait(self.interval):
                with self.held_lock:
                    held = sorted(self.held)
                try:
                    answer = api.heartbeat(self.token, held)
                except MasterRefused as exc:
                    log(f"heartbeat refused: {exc.reason}")
                except FleetciError as exc:
                    log(f"heartbeat failed: {reason(exc)}")
                else:
                    if answer.get("requeued"):
                        log(f"master requeued jobs {answer['requeued']}, which this worker does not hold")

    def unregister(self) -> None:
        if not self.registered:
            return
        try:
            log(f"worker {self.wid} unregistered (requeued: {self._leave()})")
        except FleetciError as exc:
            log(f"could not unregister: {reason(exc)}")
        self.registered = False

    def _leave(self) -> object:
        """The jobs the master requeued as this worker left, or why it refused."""
        try:
            return self.api.unregister(self.token).get("requeued")
        except MasterRefused as exc:
            return exc.reason

    # --- the loop -------------------------------------------------------------------------------------

    def run(self) -> int:
        self.register()
        hb = threading.Thread(target=self.heartbeat_loop, daemon=True)
        hb.start()
        idle_since = time.monotonic()
        try:
            while not self.stop.is_set():
                if self.s.max_jobs and self.jobs_done >= self.s.max_jobs:
                    log(f"built {self.jobs_done} job(s); --max-jobs reached")
                    break
                try:
                    job = self._poll(idle_since)
                except Leave:
                    break
                except MasterUnreachable:
                    continue  # only when stopping: the loop ends
                except MasterRefused as exc:
                    if exc.status == 401:
                        log(f"master forgot this worker ({exc.reason}); registering again")
                        self.register()
                    else:
                        log(f"master answered {exc.status}: {exc.reason}")
                        self.stop.wait(1.0)
                    continue
                if job is None:
                    continue
                while job is not None:
                    job = self.build(job)
                    self.jobs_done += 1
                idle_since = time.monotonic()
        except Shutdown:
            pass
        finally:
            self.stop.set()
            self.unregister()
            self.api.close()
        return 0

    def _poll(self, idle_since: float) -> Job | None:
        """Long-poll the master for a job (None: none came); asked again, with backoff, while it does
        not answer. :class:`Leave` once idle for ``idle_timeout`` (or stopping)."""

        def ask(attempt: int) -> Job | None:
            if self.stop.is_set():
                raise Leave
            return self.api.next_job(self.token, self._poll_wait(idle_since))

        return retry.call(
            ask,
            UNREACHABLE,
            retry_on=MasterUnreachable,
            on_retry=lambda _n, _s, exc: log(f"master unreachable ({reason(exc)}); retrying"),
            sleep=self._nap,
            give_up=self.stop.is_set,
        )

    def _poll_wait(self, idle_since: float) -> float:
        """How long the next poll may wait: :data:`POLL_WAIT`, or what is left of the idle timeout."""
        if self.s.idle_timeout <= 0:
            return POLL_WAIT
        left = self.s.idle_timeout - (time.monotonic() - idle_since)
        if left <= 0:
            log(f"idle for {self.s.idle_timeout:g}s; leaving")
            raise Leave
        return min(POLL_WAIT, left)

    def _nap(self, seconds: float) -> None:
        self.stop.wait(seconds)  # a signal ends the wait

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

    def build(self, job: Job) -> Job | None:
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

    def _label(self, job: Job) -> str:
        return f"job {job['id']} {job['package']} {job['version']}-{job['release']}"

    def _run_job(self, job: Job) -> Path | None:
        """Build in a fresh directory and keep the outcome on disk (``outbox/<job>``) until delivered."""
        jid = int(job["id"])
        label = self._label(job)
        log(f"{label}: building (attempt {job['attempt']})")
        root = Path(tempfile.mkdtemp(prefix=f"job{jid}-", dir=self.s.work_dir.resolve()))
        try:
            try:
                ok, error, output, duration, files = self._build_in(job, root)
            except MasterUnreachable as exc:
                log(f"{label}: lost contact with the master ({exc.reason}); handing the job back")
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
                    move_into_place(path, outbox / "files" / path.name)
            outcome: Outcome = {"ok": ok, "error": error, "log": output[-MAX_LOG:], "duration_s": duration}
            # Not fsynced: after a power loss the worker starts as a new identity and drops its outbox.
            write_private(outbox / "result.json", json.dumps(outcome), durable=False)
            if ok:
                log(f"{label}: built in {duration:.2f}s, {len(files)} artifact(s)")
            else:
                log(f"{label}: failed: {error}")
            return outbox
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _deliver(self, job: Job, outbox: Path) -> Job | None:
        """Upload and report until the master acknowledges, with backoff; or hand the job back.

        A master that is down (or restarting) is waited for: the job stays named in the heartbeats, so
        it stays ours. A master that answers but no longer gives us the job (401/404/409, or a request it
        refuses) ends the attempt at once; one that keeps failing (5xx) for ``give_up_s`` gets the job
        back: it drops out of the heartbeats and the master requeues it.
        """
        label = self._label(job)
        outcome: Outcome = json.loads((outbox / "result.json").read_text(encoding="utf-8"))
        uploaded: set[str] = set()
        give_up_s = max(60.0, 10 * self.ttl)
        cap = max(0.2, min(self.interval, 5.0))
        failing_since: float | None = None  # the first of an unbroken run of 5xx answers
        attempts = 0

        def attempt(n: int) -> Delivery:
            nonlocal failing_since, attempts
            if self.stop.is_set():
                return "stopped", None
            attempts = n
            try:
                verdict, detail = self._try_deliver(job, outbox, outcome, uploaded)
            except MasterUnreachable as exc:
                failing_since = None  # unreachable (down, restarting): waited for as long as it takes
                raise Undelivered(exc.reason) from None
            if verdict == "server":
                failing_since = failing_since or time.monotonic()
                raise Undelivered(str(detail))
            return verdict, detail

        def give_up() -> bool:
            """Stopping, or the master has failed (5xx) for longer than ``give_up_s``."""
            failing = failing_since is not None and time.monotonic() - failing_since > give_up_s
            return self.stop.is_set() or failing

        def report(n: int, _sleep: float, why: BaseException) -> None:
            if n & (n - 1) == 0:  # 1, 2, 4, 8...: a long outage logs a few lines, not one a try
                log(
                    f"{label}: result not delivered ({why}); kept in {outbox},"
                    f" retrying every {cap:g}s at most (attempt {n})"
                )

        policy = retry.Backoff(retries=None, initial=0.4, most=cap, jitter=0.0)
        try:
            verdict, detail = retry.call(
                attempt, policy, retry_on=Undelivered, on_retry=report, sleep=self._nap, give_up=give_up
            )
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

    def _try_deliver(self, job: Job, outbox: Path, outcome: Outcome, uploaded: set[str]) -> Delivery:
        """One delivery attempt: ("done", next job), ("refused", why), ("server", why)."""
        names = sorted(p.name for p in (outbox / "files").iterdir())
        if outcome["ok"]:
            for name in names:
                if name in uploaded:
                    continue
                try:
                    self._upload(job, outbox / "files" / name)
                except MasterRefused as exc:
                    if exc.status in (401, 404, 409):
                        return "refused", f"upload of {name}: {exc.reason}"
                    if exc.status >= 500:
                        return "server", f"upload of {name}: HTTP {exc.status} {exc.reason}"
                    outcome["ok"], outcome["error"] = False, f"upload of {name} refused: {exc.reason}"
                    break
                uploaded.add(name)
        want_next = not self.stop.is_set() and not (self.s.max_jobs and self.jobs_done + 1 >= self.s.max_jobs)
        body = {**outcome, "artifacts": names if outcome["ok"] else [], "want_next": want_next}
        try:
            answer = self.api.result(self.token, job["id"], body)
        except MasterRefused as exc:
            return "server" if exc.status >= 500 else "refused", f"HTTP {exc.status} {exc.reason}"
        nxt = answer.get("next")
        return "done", nxt if isinstance(nxt, dict) else None

    def _build_in(self, job: Job, root: Path) -> tuple[bool, str | None, str, float, list[Path]]:
        recipe = job["recipe"]
        src, deps_dir, home = root / "src", root / "deps", root / "home"
        for d in (src, deps_dir, home):
            d.mkdir()
        if job.get("source"):
            source = base64.b64decode(str(job["source"]))
        else:
            try:
                source = self.api.source(self.token, str(job["source_url"]))
            except MasterRefused as exc:
                return False, f"cannot fetch the source: {exc.reason}", "", 0.0, []
        try:
            unpack_source(source, src)
            for dep in job.get("deps", []):
                target = deps_dir / str(dep["package"])
                target.mkdir()
                for f in dep["files"]:
                    data = self.api.fetch(str(f["url"]))
                    if hashlib.sha256(data).hexdigest() != f["sha256"]:
                        return False, f"dependency file {f['name']} does not match its digest", "", 0.0, []
                    (target / str(f["name"])).write_bytes(data)
        except MasterUnreachable:
            raise
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

    def _upload(self, job: Job, path: Path) -> None:
        """Send one artifact, signed: the signature binds its digest to the package and file name."""
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        sha = digest.hexdigest()
        sig = keys.sign(self.key, keys.artifact_message(str(job["package"]), path.name, sha))
        self.api.upload(self.token, job["id"], path, sha, sig)


def run(settings: WorkerSettings) -> int:
    worker = Worker(settings)
    previous = {s: signal.signal(s, worker.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return worker.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        print(f"fleetci build worker stopped after {worker.jobs_done} job(s)", file=sys.stderr, flush=True)
