"""``fleetci build master``: the aiohttp service that queues builds, hands jobs to workers and signs the repo.

Workers register themselves (join token -> a per-worker credential stored hashed), heartbeat naming the
jobs they hold, and long-poll for the ready job with the longest critical path. A worker silent for a
heartbeat TTL is marked lost, and a job its heartbeat no longer names goes back to the queue. Every request
is checked against the OpenAPI document in ``api.py``; errors are one JSON line. Artifacts arrive hardened
(basename only, streamed under their own size limit, SHA-256 and the worker's ed25519 signature checked)
and enter the repository in one journaled step; the master signs the repository's index.

On disk (all 0600 files in 0700 directories): ``state.db``, ``master.key``, ``*.token``, ``index.json``
(+ ``.sig``), ``sources/``, ``staging/<worker>/<job>/`` and ``repo/<package>/<version>-<release>/``, which
holds package files only, so no package name can collide with repository metadata.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web

from fleetci import __version__, gha
from fleetci.buildfarm import api, keys
from fleetci.buildfarm.api import ApiError
from fleetci.buildfarm.models import ArtifactFile, Dep, Job, PendingApply, ResultAnswer, Status, WorkerInfo
from fleetci.buildfarm.recipe import MAX_SOURCE_BYTES, NAME_RE, parse_recipe
from fleetci.buildfarm.settings import MasterSettings
from fleetci.buildfarm.store import StateError, Store
from fleetci.errors import FleetciError
from fleetci.files import ensure_private_dir, move_into_place, open_private, tighten, write_private
from fleetci.http import RUNNER_OPTIONS, check_port_free, describe, error_response, guarded_app

ARTIFACT_NAME = re.compile(api.ARTIFACT_PATTERN)
MAX_LOG = 256 * 1024
INLINE_SOURCE = 256 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = logging.getLogger(
    "fleetci.buildfarm"
)  # one line per kind, rate-limited (fleetci.logs, via guarded_app)


def valid_artifact_name(name: str) -> bool:
    """A plain file name (the same rule as the document's ``ArtifactName``, matched whole)."""
    return len(name) <= api.ARTIFACT_MAX and ARTIFACT_NAME.fullmatch(name) is not None


def _real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _remove(path: Path) -> None:
    """Delete a file, a symlink (never what it points to) or a directory tree."""
    if _real_dir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _secret_file(path: Path, prefix: str) -> str:
    """Read a token file (tightened to 0600), or create it 0600 with a fresh token."""
    if path.exists():
        tighten(path)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = keys.new_token(prefix)
    write_private(path, token + "\n")
    return token


@web.middleware
async def one_line_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refusals and aiohttp's own 404/405 become ``{"message": ...}`` lines; 413 is left to the guard."""
    try:
        return await handler(request)
    except ApiError as exc:
        resp = error_response(exc.status, str(exc))
        if exc.status == 413:
            resp.force_close()  # the body was not read
        return resp
    except web.HTTPRequestEntityTooLarge:
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        resp = error_response(exc.status, exc.reason)
        if "Allow" in exc.headers:
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp


class Master:
    def __init__(self, settings: MasterSettings) -> None:
        self.settings = settings
        d = settings.state_dir
        try:
            for sub in ("sources", "staging", "repo"):
                ensure_private_dir(d / sub)
            ensure_private_dir(d)
        except OSError as exc:
            raise FleetciError(f"state dir {d} is not usable: {exc.strerror or exc}") from exc
        self.repo = d / "repo"
        self.store = Store(d / "state.db")
        self.waiters: set[asyncio.Future[None]] = set()
        self.closing = False
        self.index_bytes = b""
        self.index_sig = ""
        try:
            self.key = keys.load_or_create_key(d / "master.key")
            self.public_key = keys.public_b64(self.key)
            admin = settings.admin_token or _secret_file(d / "admin.token", "fca")
            join = settings.join_token or _secret_file(d / "join.token", "fcj")
            gha.add_mask(admin)
            gha.add_mask(join)
            self.admin_hash = keys.token_hash(admin)
            self.join_hash = keys.token_hash(join)
            self.store.grace_all_workers()
            self._recover()
            self._write_index()
        except BaseException:
            self.store.close()  # a master that cannot start leaves no open database behind
            raise

    # --- plumbing -------------------------------------------------------------------------------------

    def wake(self) -> None:
        for fut in list(self.waiters):
            if not fut.done():
                fut.set_result(None)

    def _bearer(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing credentials: send 'Authorization: Bearer <token>'")
        return token.strip()

    def admin(self, request: web.Request) -> None:
        if not keys.token_matches(self._bearer(request), self.admin_hash):
            raise ApiError(401, "invalid admin token")

    def worker(self, request: web.Request) -> str:
        token = self._bearer(request)
        wid, _, _ = token.partition(".")
        row = self.store.worker(wid) if wid.startswith("w-") else None
        if row is None or not row["token_hash"] or not keys.token_matches(token, row["token_hash"]):
            raise ApiError(401, "unknown or revoked worker credential; register again")
        self.store.touch_worker(wid)
        return wid

    async def _body(self, request: web.Request, op_id: str) -> dict[str, Any]:
        """The request's JSON object, valid for ``op_id`` (the body is capped by the guarded app)."""
        return api.parse_body(op_id, await request.read())

    def _stage(self, wid: str, jid: int) -> Path:
        return self.settings.state_dir / "staging" / wid / str(jid)

    def _write_index(self) -> None:
        """Rebuild, sign and atomically publish ``index.json`` (+ ``.sig``), kept apart from ``repo/``."""
        pkgs = self.store.packages()
        index = {
            "format": 1,
            "master_key": self.public_key,
            "generated_at": time.time(),
            "packages": {
                name: {
                    "version": p["version"],
                    "release": p["release"],
                    "depends": p["depends"],
                    "built_by": {"id": p["worker_id"], "name": p["worker_name"], "key": p["worker_key"]},
                    "built_at": p["built_at"],
                    "duration_s": p["duration_s"],
                    "job": p["job_id"],
                    "files": p["files"],
                }
                for name, p in pkgs.items()
            },
        }
        data = json.dumps(index, sort_keys=True, indent=1).encode()
        sig = keys.sign(self.key, data)
        # Not fsynced: the index is rebuilt from the database on every start (the served copy is in memory).
        write_private(self.settings.state_dir / "index.json", data, durable=False)
        write_private(self.settings.state_dir / "index.json.sig", sig.encode(), durable=False)
        self.index_bytes, self.index_sig = data, sig

    # --- applying results -----------------------------------------------------------------------------

    def _publish(self, pending: PendingApply) -> None:
        """Move a committed result's staged files into ``repo/`` and drop older releases (idempotent).

        Runs right after the result's transaction, again from the reaper while it fails, and on start-up
        for a journal entry a crash left behind; a file already moved is skipped, an entry for a
        superseded release only cleans up.
        """
        jid, package, rel = int(pending["job_id"]), str(pending["package"]), str(pending["rel"])
        stage = self.settings.state_dir / str(pending["stage"])
        current = self.store.packages().get(package)
        if current is not None and f"{current['version']}-{current['release']}" == rel:
            dest = ensure_private_dir(self.repo / package / rel)
            for name in pending["files"]:
                src = stage / str(name)
                if src.exists():
                    move_into_place(src, dest / str(name))
                elif not (dest / str(name)).exists():
                    print(
                        f"job {jid}: staged file {name} is missing; `fleetci build verify` reports it",
                        flush=True,
                    )
            for old in (self.repo / package).iterdir():
                if old.name != rel:
                    shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)
        self.store.applied(jid)

    def _publish_pending(self) -> bool:
        """Publish every journaled result not yet in ``repo/``; True if one was (the index is then stale).

        A failure (a full disk, something in the way) is logged and left in the journal: the reaper
        tries again every round, and ``_drop_stage`` keeps the staged files until then.
        """
        published = False
        for pending in self.store.pending_applies():
            try:
                self._publish(pending)
            except (OSError, sqlite3.Error) as exc:
                _log.error("publishing job %s failed, will retry: %s", pending["job_id"], describe(exc))
                continue
            published = True
        return published

    def _drop_stage(self, wid: str, jid: int | None = None) -> None:
        """Delete a worker's staged uploads (one job's, or all) but those a journaled result still moves."""
        keep = {str(p["stage"]) for p in self.store.pending_applies()}
        root = self.settings.state_dir / "staging" / wid
        if jid is not None:
            stages = [root / str(jid)]
        else:
            stages = list(root.iterdir()) if root.is_dir() and not root.is_symlink() else []
        for stage in stages:
            if str(stage.relative_to(self.settings.state_dir)) not in keep:
                _remove(stage)

    def _recover(self) -> None:
        """Finish what a crash interrupted, then drop what no committed state refers to.

        Nothing found on disk stops the start: what is not a directory where one belongs is removed (a
        symlink is never followed), and a result that cannot be published yet is retried by the reaper.
        """
        for stale in ("index.json", "index.json.sig", ".index.json.tmp", ".index.json.sig.tmp"):
            path = self.repo / stale  # an older layout kept the index inside repo/
            if path.is_file():
                path.unlink()
        pkgs = self.store.packages()
        for entry in self.repo.iterdir():
            p = pkgs.get(entry.name)
            if p is None or not _real_dir(entry):
                _remove(entry)
                continue
            for rel in entry.iterdir():
                if rel.name != f"{p['version']}-{p['release']}" or not _real_dir(rel):
                    _remove(rel)
        self._publish_pending()
        keep = {f"staging/{w}/{j}" for w, j in self.store.running_jobs()}
        keep |= {str(p["stage"]) for p in self.store.pending_applies()}
        staging = self.settings.state_dir / "staging"
        for wdir in staging.iterdir():
            if not _real_dir(wdir):
                _remove(wdir)
                continue
            for jdir in wdir.iterdir():
                if f"staging/{wdir.name}/{jdir.name}" not in keep:
                    _remove(jdir)
        for root, dirs, files in os.walk(self.settings.state_dir):
            for name in dirs:
                ensure_private_dir(Path(root) / name)
            tighten(*(Path(root) / name for name in files))

    async def reaper(self) -> None:
        """Expire silent workers (their jobs become ready again for the others); retry failed publishing."""
        interval = min(1.0, self.settings.heartbeat_ttl / 10)
        while True:
            await asyncio.sleep(interval)
            try:
                if self._publish_pending():
                    self._write_index()
                lost = self.store.expire_workers(self.settings.heartbeat_ttl, self.settings.max_attempts)
            except (OSError, sqlite3.Error) as exc:  # e.g. another process holds the write lock: next round
                _log.error("reaper round failed: %s", describe(exc))
                continue
            if lost:
                for wid in lost:
                    self._drop_stage(wid)
                print(
                    f"workers lost (no heartbeat for {self.settings.heartbeat_ttl:g}s): {', '.join(lost)}",
                    flush=True,
                )
                self.wake()

    # --- public ---------------------------------------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "version": __version__, "master_key": self.public_key})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=api.DOCUMENT_BYTES, content_type="application/json")

    async def keys_(self, request: web.Request) -> web.Response:
        workers = {w["id"]: w["public_key"] for w in self.store.workers(include_gone=True)}
        return web.json_response({"master": self.public_key, "workers": workers})

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.index_bytes, content_type="application/json")

    async def index_sig_(self, request: web.Request) -> web.Response:
        return web.Response(text=self.index_sig, content_type="text/plain")

    async def repo_file(self, request: web.Request) -> web.StreamResponse:
        name, rel, filename = (request.match_info[k] for k in ("name", "rel", "file"))
        if not all(valid_artifact_name(x) for x in (name, rel, filename)):
            raise ApiError(404, "no such file")
        path = self.repo / name / rel / filename
        if not path.is_file():
            raise ApiError(404, "no such file")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    # --- workers --------------------------------------------------------------------------------------

    async def register(self, request: web.Request) -> web.Response:
        if not keys.token_matches(self._bearer(request), self.join_hash):
            raise ApiError(401, "invalid join token")
        body = await self._body(request, "register")
        name = str(body.get("name") or "worker")
        public = str(body["public_key"])
        try:
            keys.parse_public(public)
        except FleetciError as exc:
            raise ApiError(400, f"public_key: {exc}") from None
        wid = "w-" + secrets.token_hex(6)
        token = f"{wid}.{secrets.token_urlsafe(32)}"
        self.store.add_worker(wid, name, keys.token_hash(token), public)
        ttl = self.settings.heartbeat_ttl
        print(f"worker {wid} ({name}) registered", flush=True)
        return web.json_response(
            {"worker_id": wid, "token": token, "heartbeat_ttl": ttl, "heartbeat_interval": ttl / 4}
        )

    async def heartbeat(self, request: web.Request) -> web.Response:
        """Alive; with ``jobs``, also the truth about what it holds: a job it dropped is requeued."""
        wid = self.worker(request)
        body = await self._body(request, "heartbeat")
        requeued: list[int] = []
        if "jobs" in body:
            requeued = self.store.release_unheld(
                wid, body["jobs"], time.time() - self.settings.heartbeat_ttl, self.settings.max_attempts
            )
            if requeued:
                for jid in requeued:
                    self._drop_stage(wid, jid)
                print(f"worker {wid} no longer holds jobs {requeued}: requeued", flush=True)
                self.wake()
        return web.json_response({"worker_id": wid, "state": "active", "requeued": requeued})

    async def unregister(self, request: web.Request) -> web.Response:
        wid = self.worker(request)
        requeued = self.store.unregister(wid)
        self._drop_stage(wid)
        print(f"worker {wid} unregistered; requeued jobs {requeued}", flush=True)
        self.wake()
        return web.json_response({"worker_id": wid, "requeued": requeued})

    async def next_job(self, request: web.Request) -> web.Response:
        """Long poll: answer at once when a job is ready, else when one becomes ready or ``wait`` ends."""
        wid = self.worker(request)
        wait = api.number_param("next_job", "wait", request.query.get("wait", "20"))

        async def until_answered() -> web.Response:
            while (answer := self._offer(wid, request)) is None:
                await self._woken()
            return answer

        try:
            return await asyncio.wait_for(until_answered(), timeout=wait)
        except asyncio.TimeoutError:
            return self._offer(wid, request) or web.Response(status=204)

    def _offer(self, wid: str, request: web.Request) -> web.Response | None:
        """A ready job for this worker, 204 when it should get none, or None: nothing ready yet."""
        row = self.store.worker(wid)
        if row is None or row["state"] == "gone":
            raise ApiError(401, "this worker has unregistered")
        if self.closing or request.transport is None or request.transport.is_closing():
            return web.Response(status=204)  # the worker hung up: do not hand it a job
        job = self.store.claim(wid)
        return None if job is None else web.json_response(self._job_payload(job))

    async def _woken(self) -> None:
        """Until :meth:`wake` (a job may have become ready)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.add(fut)
        try:
            await fut
        finally:
            self.waiters.discard(fut)

    def _job_payload(self, job: sqlite3.Row) -> Job:
        recipe = json.loads(job["recipe"])
        repo = self.store.packages()
        deps: list[Dep] = []
        for dep in recipe.get("depends", []):
            p = repo.get(dep)
            if p is None:
                continue
            rel = f"{p['version']}-{p['release']}"
            deps.append(
                {
                    "package": dep,
                    "version": p["version"],
                    "release": p["release"],
                    "files": [
                        {"name": f["name"], "sha256": f["sha256"], "url": f"/repo/{dep}/{rel}/{f['name']}"}
                        for f in p["files"]
                    ],
                }
            )
        return {
            "id": job["id"],
            "package": job["package"],
            "version": job["version"],
            "release": job["release"],
            "attempt": job["attempts"],
            "recipe": recipe,
            "source_url": f"/api/v1/jobs/{job['id']}/source",
            "source": self._inline_source(str(job["source_sha"])),
            "deps": deps,
        }

    def _inline_source(self, sha: str) -> str | None:
        """Small sources travel with the job, saving the worker a round trip per job."""
        path = self.settings.state_dir / "sources" / f"{sha}.tar.gz"
        if path.stat().st_size > INLINE_SOURCE:
            return None
        return base64.b64encode(path.read_bytes()).decode()

    @contextlib.contextmanager
    def _holding(self, job: Any) -> Iterator[None]:
        """The store's ``holding`` transaction, its refusal as the API's 409."""
        try:
            with self.store.holding(job):
                yield
        except StateError as exc:
            raise ApiError(exc.status, str(exc)) from None

    def _own_job(self, request: web.Request, wid: str, op_id: str) -> Any:
        jid = api.path_id(op_id, "job", request.match_info["job"])
        try:
            return self.store.running_job(jid, wid)
        except StateError as exc:
            raise ApiError(exc.status, str(exc)) from None

    async def source(self, request: web.Request) -> web.StreamResponse:
        wid = self.worker(request)
        job = self._own_job(request, wid, "source")
        path = self.settings.state_dir / "sources" / f"{job['source_sha']}.tar.gz"
        return web.FileResponse(path, headers={"Content-Type": "application/gzip"})

    async def upload(self, request: web.Request) -> web.Response:
        """One artifact: checked name, bounded size, streamed to a temp file, digest + signature verified."""
        wid = self.worker(request)
        job = self._own_job(request, wid, "upload")
        filename = request.match_info["file"]
        if not valid_artifact_name(filename):
            raise ApiError(400, f"invalid artifact name {filename[:80]!r}: a plain file name is required")
        declared = request.headers.get("X-Fleetci-Sha256", "").lower()
        signature = request.headers.get("X-Fleetci-Signature", "")
        if not re.fullmatch(r"[0-9a-f]{64}", declared):
            raise ApiError(400, "X-Fleetci-Sha256 must be the artifact's hex SHA-256")
        limit = self.settings.max_upload_bytes
        if request.content_length is not None and request.content_length > limit:
            raise ApiError(413, f"artifact is {request.content_length} bytes; the limit is {limit}")
        stage = ensure_private_dir(self._stage(wid, int(job["id"])))
        tmp = stage / f".upload-{secrets.token_hex(8)}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            with open_private(tmp, "wb") as fh:
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"artifact exceeds the {limit}-byte limit")
                    digest.update(chunk)
                    fh.write(chunk)
            # No fsync: the same durability as the SQLite state (WAL, synchronous=NORMAL) - safe when the
            # master crashes, while a power loss may drop the newest files, which `verify` then reports.
            actual = digest.hexdigest()
            if actual != declared:
                raise ApiError(
                    400, f"SHA-256 mismatch for {filename}: declared {declared}, received {actual}"
                )
            worker = self.store.worker(wid)
            assert worker is not None
            message = keys.artifact_message(str(job["package"]), filename, actual)
            if not keys.verify(str(worker["public_key"]), message, signature):
                raise ApiError(400, f"signature of {filename} does not verify with this worker's key")
            # The job may have been requeued (and handed out again) while the body streamed in: the file
            # and its row enter only if this attempt still holds it, so no other attempt's row is replaced.
            with self._holding(job):
                move_into_place(tmp, stage / filename)
                self.store.record_upload(int(job["id"]), filename, actual, size, signature)
        finally:
            tmp.unlink(missing_ok=True)
        return web.json_response({"name": filename, "sha256": actual, "size": size})

    async def result(self, request: web.Request) -> web.Response:
        """Record a job's outcome; a success enters the repository in one journaled step.

        The database commit comes first and journals the file moves, so a failure before it changes
        nothing (the worker retries); moves that fail after it are retried by the reaper, and a crash
        after it is finished by ``_recover`` on restart.
        """
        wid = self.worker(request)
        job = self._own_job(request, wid, "result")
        body = await self._body(request, "result")
        ok = bool(body["ok"])
        log = str(body.get("log") or "")[-MAX_LOG:]
        error = str(body.get("error") or "")[:2000] or None
        duration = float(body.get("duration_s") or 0.0)
        jid = int(job["id"])
        stage = self._stage(wid, jid)
        uploads = self.store.uploads(jid)
        expected = body.get("artifacts")
        if ok and (
            not uploads
            or (isinstance(expected, list) and sorted(expected) != [u["filename"] for u in uploads])
        ):
            ok, error = (
                False,
                f"artifacts reported {expected} but uploaded {[u['filename'] for u in uploads]}",
            )
        rel = f"{job['version']}-{job['release']}"
        files: list[ArtifactFile] = []
        if ok:
            missing = [u["filename"] for u in uploads if not (stage / u["filename"]).is_file()]
            if missing:
                raise ApiError(409, f"staged artifacts {missing} are missing: upload them again")
            files = [
                {
                    "name": u["filename"],
                    "path": f"{job['package']}/{rel}/{u['filename']}",
                    "sha256": u["sha256"],
                    "size": u["size"],
                    "signature": u["signature"],
                }
                for u in uploads
            ]
        stage_rel = str(stage.relative_to(self.settings.state_dir))
        try:  # only if this attempt still holds the job: it may have been requeued while the body came in
            self.store.finish(job, ok, duration, log, error, files, stage=stage_rel)
        except StateError as exc:
            raise ApiError(exc.status, str(exc)) from None
        if not ok:
            shutil.rmtree(stage, ignore_errors=True)
        elif self._publish_pending():
            self._write_index()
        self.wake()
        state = "done" if ok else "failed"
        print(f"job {jid} {job['package']} {rel} {state} on {wid}", flush=True)
        answer: ResultAnswer = {"job": jid, "state": state, "error": error, "next": None}
        if body.get("want_next") and not self.closing:
            # Hand the worker its next job in the same round trip (a ready job, if any; no waiting).
            nxt = self.store.claim(wid)
            answer["next"] = None if nxt is None else self._job_payload(nxt)
        return web.json_response(answer)

    # --- admin ----------------------------------------------------------------------------------------

    async def submit(self, request: web.Request) -> web.Response:
        self.admin(request)
        body = await self._body(request, "submit")
        parsed = []
        seen: set[str] = set()
        for i, item in enumerate(body["packages"]):
            try:
                recipe = parse_recipe(item["recipe"], f"packages[{i}]")
                source = base64.b64decode(str(item["source"]), validate=True)
            except FleetciError as exc:
                raise ApiError(400, str(exc)) from None
            except (binascii.Error, ValueError):
                raise ApiError(400, f"packages[{i}].source is not base64") from None
            if recipe.name in seen:
                raise ApiError(400, f"packages[{i}]: package {recipe.name} is submitted twice")
            seen.add(recipe.name)
            if len(source) > MAX_SOURCE_BYTES:
                raise ApiError(413, f"packages[{i}] source is larger than {MAX_SOURCE_BYTES} bytes")
            sha = hashlib.sha256(source).hexdigest()
            path = self.settings.state_dir / "sources" / f"{sha}.tar.gz"
            if not path.exists():
                write_private(path, source)
            parsed.append((recipe, sha))
        try:
            build_id, jobs = self.store.submit(parsed)
        except StateError as exc:
            raise ApiError(exc.status, str(exc)) from None
        except FleetciError as exc:
            raise ApiError(400, str(exc)) from None
        self.wake()
        print(f"build {build_id} queued: {', '.join(j['package'] for j in jobs)}", flush=True)
        return web.json_response({"build": build_id, "jobs": jobs})

    async def build_status(self, request: web.Request) -> web.Response:
        self.admin(request)
        build_id = api.path_id("build_status", "build", request.match_info["build"])
        if not self.store.build_exists(build_id):
            raise ApiError(404, f"build {build_id} does not exist")
        jobs = self.store.jobs(build_id)
        states = {j["state"] for j in jobs}
        if states & {"waiting", "ready", "running"}:
            state = "running"
        elif states <= {"done"}:
            state = "done"
        else:
            state = "failed"
        return web.json_response({"build": build_id, "state": state, "jobs": jobs})

    async def status(self, request: web.Request) -> web.Response:
        self.admin(request)
        workers: list[WorkerInfo] = [
            {
                "id": w["id"],
                "name": w["name"],
                "state": w["state"],
                "registered_at": w["registered_at"],
                "last_seen": w["last_seen"],
                "jobs_done": w["jobs_done"],
            }
            for w in self.store.workers()
        ]
        status: Status = {
            "master_key": self.public_key,
            "heartbeat_ttl": self.settings.heartbeat_ttl,
            "workers": workers,
            "counts": self.store.counts(),
            "jobs": self.store.jobs(limit=200),
            "repository": {
                n: {"version": p["version"], "release": p["release"], "built_by": p["worker_name"]}
                for n, p in self.store.packages().items()
            },
        }
        return web.json_response(status)

    async def job_log(self, request: web.Request) -> web.Response:
        self.admin(request)
        job = self.store.job(api.path_id("job_log", "job", request.match_info["job"]))
        if job is None:
            raise ApiError(404, "no such job")
        return web.Response(text=job["log"] or "", content_type="text/plain")

    async def remove(self, request: web.Request) -> web.Response:
        self.admin(request)
        name = request.match_info["name"]
        force = request.query.get("force", "0")
        api.check_param("remove", "force", force)
        if not NAME_RE.fullmatch(name):
            raise ApiError(404, f"no package is named {name[:80]!r}")
        try:
            result = self.store.remove_package(name, force=force in ("1", "true"))
        except StateError as exc:
            raise ApiError(exc.status, str(exc)) from None
        shutil.rmtree(self.repo / name, ignore_errors=True)
        self._write_index()
        self.wake()
        return web.json_response(result)

    def _body_limit(self, request: web.Request) -> int:
        """Artifact uploads stream to disk under their own cap; everything else is read whole."""
        if request.match_info.route.name == "upload":
            return self.settings.max_upload_bytes
        return self.settings.max_body_bytes

    def app(self) -> web.Application:
        app = guarded_app(self.settings.max_body_bytes, body_limit=self._body_limit)
        app.middlewares.append(one_line_errors)
        r = app.router
        r.add_get("/health", self.health)
        r.add_get("/api/v1/openapi.json", self.openapi)
        r.add_get("/api/v1/keys", self.keys_)
        r.add_get("/repo/index.json", self.index)
        r.add_get("/repo/index.json.sig", self.index_sig_)
        r.add_get("/repo/{name}/{rel}/{file}", self.repo_file)
        r.add_post("/api/v1/workers", self.register)
        r.add_post("/api/v1/workers/me/heartbeat", self.heartbeat)
        r.add_delete("/api/v1/workers/me", self.unregister)
        r.add_post("/api/v1/jobs/next", self.next_job)
        r.add_get("/api/v1/jobs/{job}/source", self.source)
        r.add_put("/api/v1/jobs/{job}/artifacts/{file}", self.upload, name="upload")
        r.add_post("/api/v1/jobs/{job}/result", self.result)
        r.add_get("/api/v1/jobs/{job}/log", self.job_log)
        r.add_post("/api/v1/builds", self.submit)
        r.add_get("/api/v1/builds/{build}", self.build_status)
        r.add_get("/api/v1/status", self.status)
        r.add_delete("/api/v1/packages/{name}", self.remove)
        return app


def run(settings: MasterSettings) -> int:
    """Serve until SIGTERM/SIGINT; prints ``listening on http://…`` once the socket is bound."""
    check_port_free(settings.host, settings.port)
    master = Master(settings)

    async def main() -> None:
        runner = web.AppRunner(
            master.app(),
            **RUNNER_OPTIONS,  # type: ignore[arg-type]
            handler_cancellation=True,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise FleetciError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        port = runner.addresses[0][1]
        reaper = asyncio.create_task(master.reaper())
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"fleetci build master {__version__} listening on http://{settings.host}:{port}"
            f" (state {settings.state_dir}, heartbeat ttl {settings.heartbeat_ttl:g}s,"
            f" master key {master.public_key})",
            flush=True,
        )
        await stop.wait()
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        master.closing = True  # pending long polls answer "no job" so the shutdown does not wait for them
        master.wake()
        await runner.cleanup()

    try:
        asyncio.run(main())
    finally:
        master.store.close()
    print("fleetci build master stopped", file=sys.stderr, flush=True)
    return 0
