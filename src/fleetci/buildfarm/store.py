"""The master's state in SQLite: workers, submissions, jobs, the repository and release numbers.

Every change is one transaction, so a master killed at any point restarts with a consistent view. A
result's files move into the repository after its transaction commits; the ``applying`` journal, written
in that same transaction, lets a restarted master finish the moves (see ``Master._publish``).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, cast

from fleetci.buildfarm.models import (
    ArtifactFile,
    JobRow,
    Package,
    PendingApply,
    QueuedJob,
    Removed,
    Upload,
    WorkerRow,
)
from fleetci.buildfarm.recipe import Recipe, check_graph, parse_recipe, priorities
from fleetci.errors import FleetciError
from fleetci.files import tighten, touch_private

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS workers(
  id TEXT PRIMARY KEY, name TEXT NOT NULL, token_hash TEXT, public_key TEXT NOT NULL,
  state TEXT NOT NULL, registered_at REAL NOT NULL, last_seen REAL NOT NULL, jobs_done INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS builds(id INTEGER PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  id INTEGER PRIMARY KEY, build_id INTEGER NOT NULL, package TEXT NOT NULL, version TEXT NOT NULL,
  release INTEGER NOT NULL, recipe TEXT NOT NULL, source_sha TEXT NOT NULL, state TEXT NOT NULL,
  priority REAL NOT NULL, worker_id TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL,
  ready_at REAL, started_at REAL, finished_at REAL, duration_s REAL, error TEXT, log TEXT);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, priority);
CREATE TABLE IF NOT EXISTS job_deps(job_id INTEGER NOT NULL, dep_job_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS uploads(
  job_id INTEGER NOT NULL, filename TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  signature TEXT NOT NULL, PRIMARY KEY(job_id, filename));
CREATE TABLE IF NOT EXISTS packages(
  name TEXT PRIMARY KEY, version TEXT NOT NULL, release INTEGER NOT NULL, depends TEXT NOT NULL,
  job_id INTEGER NOT NULL, worker_id TEXT NOT NULL, worker_name TEXT NOT NULL, worker_key TEXT NOT NULL,
  built_at REAL NOT NULL, duration_s REAL, files TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS releases(
  name TEXT, version TEXT, last INTEGER NOT NULL, PRIMARY KEY(name, version));
CREATE TABLE IF NOT EXISTS durations(name TEXT PRIMARY KEY, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS applying(
  job_id INTEGER PRIMARY KEY, package TEXT NOT NULL, rel TEXT NOT NULL, stage TEXT NOT NULL,
  files TEXT NOT NULL);
"""

ACTIVE = ("waiting", "ready", "running")


class StateError(FleetciError):
    """A request that conflicts with the current state (HTTP 409) or names something unknown (404)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # 0600 before SQLite opens it: its -wal and -shm files take the database file's mode.
            touch_private(path)
            tighten(f"{path}-wal", f"{path}-shm")
        except OSError as exc:
            raise FleetciError(f"state database {path} is unusable: {exc.strerror or exc}") from exc
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise FleetciError(f"state database {path} is unusable: {exc}") from exc

    def tx(self) -> sqlite3.Connection:
        """``with store.tx():`` one IMMEDIATE transaction."""
        return self.db

    def _exec(self, sql: str, args: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, tuple(args))

    def begin(self) -> None:
        self._exec("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self._exec("COMMIT")

    def rollback(self) -> None:
        if self.db.in_transaction:
            self._exec("ROLLBACK")

    # --- meta -----------------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._exec("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", (key, value))

    # --- workers --------------------------------------------------------------------------------------

    def add_worker(self, wid: str, name: str, token_hash: str, public_key: str) -> None:
        now = time.time()
        self._exec(
            "INSERT INTO workers(id, name, token_hash, public_key, state, registered_at, last_seen)"
            " VALUES(?, ?, ?, ?, 'active', ?, ?)",
            (wid, name, token_hash, public_key, now, now),
        )

    def worker(self, wid: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._exec("SELECT * FROM workers WHERE id=?", (wid,)).fetchone()
        return row

    def touch_worker(self, wid: str) -> None:
        self._exec(
            "UPDATE workers SET last_seen=?, state='active' WHERE id=? AND state != 'gone'",
            (time.time(), wid),
        )

    def workers(self, include_gone: bool = False) -> list[WorkerRow]:
        sql = "SELECT id, name, state, registered_at, last_seen, jobs_done, public_key FROM workers"
        if not include_gone:
            sql += " WHERE state != 'gone'"
        return [cast(WorkerRow, dict(r)) for r in self._exec(sql + " ORDER BY registered_at")]

    def grace_all_workers(self) -> None:
        """After a master restart, every active worker gets a full TTL to heartbeat again."""
        self._exec("UPDATE workers SET last_seen=? WHERE state='active'", (time.time(),))

    def unregister(self, wid: str) -> list[int]:
        self.begin()
        try:
            self._exec("UPDATE workers SET state='gone', token_hash=NULL WHERE id=?", (wid,))
            jobs = self._requeue_worker_jobs(wid, count_attempt=False)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return jobs

    def expire_workers(self, ttl: float, max_attempts: int) -> list[str]:
        """Mark workers silent for longer than ``ttl`` as lost and hand their running jobs back out."""
        limit = time.time() - ttl
        lost = [
            str(r[0])
            for r in self._exec("SELECT id FROM workers WHERE state='active' AND last_seen < ?", (limit,))
        ]
        for wid in lost:
            self.begin()
            try:
                self._exec("UPDATE workers SET state='lost' WHERE id=?", (wid,))
                self._requeue_worker_jobs(wid, count_attempt=True, max_attempts=max_attempts)
                self.commit()
            except BaseException:
                self.rollback()
                raise
        return lost

    def release_unheld(
        self, wid: str, held: Iterable[int], claimed_before: float, max_attempts: int
    ) -> list[int]:
        """Requeue this worker's running jobs that its heartbeat no longer names.

        Only jobs handed out before ``claimed_before``: one handed out a moment ago may still be on its
        way to the worker, which cannot name it yet.
        """
        keep = set(held)
        sql = "SELECT id, attempts FROM jobs WHERE worker_id=? AND state='running' AND started_at < ?"
        if all(int(r["id"]) in keep for r in self._exec(sql, (wid, claimed_before))):
            return []  # the usual heartbeat: no write transaction
        self.begin()
        try:
            rows = [r for r in self._exec(sql, (wid, claimed_before)).fetchall() if int(r["id"]) not in keep]
            self._requeue(rows, wid, "no longer holds it", count_attempt=True, max_attempts=max_attempts)
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return [int(r["id"]) for r in rows]

    def _requeue_worker_jobs(self, wid: str, count_attempt: bool, max_attempts: int = 3) -> list[int]:
        rows = self._exec(
            "SELECT id, attempts FROM jobs WHERE worker_id=? AND state='running'", (wid,)
        ).fetchall()
        self._requeue(rows, wid, "lost" if count_attempt else "left", count_attempt, max_attempts)
        return [int(r["id"]) for r in rows]

    def _requeue(
        self, rows: list[sqlite3.Row], wid: str, why: str, count_attempt: bool, max_attempts: int
    ) -> None:
        now = time.time()
        for row in rows:
            self._exec("DELETE FROM uploads WHERE job_id=?", (row["id"],))
            if count_attempt and row["attempts"] >= max_attempts:
                self._fail(
                    int(row["id"]), f"handed out {row['attempts']} times, never finished (worker {wid} {why})"
                )
            else:
                attempts = row["attempts"] if count_attempt else max(0, row["attempts"] - 1)
                self._exec(
                    "UPDATE jobs SET state='ready', worker_id=NULL, started_at=NULL, ready_at=?, attempts=?,"
                    " error=? WHERE id=?",
                    (now, attempts, f"requeued: worker {wid} {why}", row["id"]),
                )

    # --- submissions ----------------------------------------------------------------------------------

    def submit(self, items: list[tuple[Recipe, str]]) -> tuple[int, list[QueuedJob]]:
        """Queue one build: validates the graph against the repository and queued work, bumps releases."""
        recipes = [r for r, _ in items]
        repo = {str(r[0]) for r in self._exec("SELECT name FROM packages")}
        active = {
            str(r["package"]): int(r["id"])
            for r in self._exec(f"SELECT id, package FROM jobs WHERE state IN {ACTIVE}")
        }
        for r in recipes:
            if r.name in active:
                raise StateError(f"package {r.name} is already queued or building (job {active[r.name]})")
        graph = check_graph(recipes, available=repo | set(active))
        known = {str(r[0]): float(r[1]) for r in self._exec("SELECT name, seconds FROM durations")}
        cost = {r.name: r.estimate_s if r.estimate_s is not None else known.get(r.name, 1.0) for r in recipes}
        prio = priorities(graph, cost)
        now = time.time()
        self.begin()
        try:
            build_id = int(self._exec("INSERT INTO builds(created_at) VALUES(?)", (now,)).lastrowid or 0)
            ids: dict[str, int] = {}
            out: list[QueuedJob] = []
            for recipe, sha in items:
                row = self._exec(
                    "SELECT last FROM releases WHERE name=? AND version=?", (recipe.name, recipe.version)
                ).fetchone()
                release = 1 if row is None else int(row[0]) + 1
                self._exec(
                    "INSERT OR REPLACE INTO releases(name, version, last) VALUES(?, ?, ?)",
                    (recipe.name, recipe.version, release),
                )
                jid = int(
                    self._exec(
                        "INSERT INTO jobs(build_id, package, version, release, recipe, source_sha, state,"
                        " priority, created_at) VALUES(?, ?, ?, ?, ?, ?, 'waiting', ?, ?)",
                        (
                            build_id,
                            recipe.name,
                            recipe.version,
                            release,
                            json.dumps(recipe.to_json()),
                            sha,
                            prio[recipe.name],
                            now,
                        ),
                    ).lastrowid
                    or 0
                )
                ids[recipe.name] = jid
                out.append(
                    {"job": jid, "package": recipe.name, "version": recipe.version, "release": release}
                )
            for recipe in recipes:
                for dep in recipe.depends:
                    dep_job = ids.get(dep, active.get(dep))
                    if dep_job is not None:
                        self._exec(
                            "INSERT INTO job_deps(job_id, dep_job_id) VALUES(?, ?)",
                            (ids[recipe.name], dep_job),
                        )
            self._promote(list(ids.values()))
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return build_id, out

    def _promote(self, job_ids: Iterable[int]) -> None:
        """Waiting jobs whose dependencies are all done become ready."""
        now = time.time()
        for jid in job_ids:
            pending = self._exec(
                "SELECT COUNT(*) FROM job_deps d JOIN jobs j ON j.id=d.dep_job_id"
                " WHERE d.job_id=? AND j.state != 'done'",
                (jid,),
            ).fetchone()[0]
            if pending == 0:
                self._exec(
                    "UPDATE jobs SET state='ready', ready_at=? WHERE id=? AND state='waiting'", (now, jid)
                )

    def _dependents(self, jid: int) -> list[int]:
        return [int(r[0]) for r in self._exec("SELECT job_id FROM job_deps WHERE dep_job_id=?", (jid,))]

    def _fail(self, jid: int, error: str) -> None:
        now = time.time()
        self._exec(
            "UPDATE jobs SET state='failed', error=?, finished_at=? WHERE id=?", (error[:2000], now, jid)
        )
        name = self._exec("SELECT package FROM jobs WHERE id=?", (jid,)).fetchone()[0]
        for dep in self._dependents(jid):
            state = self._exec("SELECT state FROM jobs WHERE id=?", (dep,)).fetchone()[0]
            if state in ("waiting", "ready"):
                self._fail(dep, f"dependency {name} failed")

    # --- scheduling -----------------------------------------------------------------------------------

    def claim(self, wid: str) -> sqlite3.Row | None:
        """Critical-path-first: the ready job with the longest chain of work behind it."""
        row = self._exec(
            "SELECT * FROM jobs WHERE state='ready' ORDER BY priority DESC, id LIMIT 1"
        ).fetchone()
        if row is None:
            return None
        self._exec(
            "UPDATE jobs SET state='running', worker_id=?, started_at=?, attempts=attempts+1, error=NULL"
            " WHERE id=?",
            (wid, time.time(), row["id"]),
        )
        claimed: sqlite3.Row = self._exec("SELECT * FROM jobs WHERE id=?", (row["id"],)).fetchone()
        return claimed

    def job(self, jid: int) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._exec("SELECT * FROM jobs WHERE id=?", (jid,)).fetchone()
        return row

    def running_job(self, jid: int, wid: str) -> sqlite3.Row:
        row = self.job(jid)
        if row is None:
            raise StateError(f"job {jid} does not exist", 404)
        if row["state"] != "running" or row["worker_id"] != wid:
            raise StateError(f"job {jid} is not assigned to this worker (state {row['state']})")
        return row

    def running_jobs(self) -> list[tuple[str, str]]:
        """(worker id, job id) of every running job: what staging directories may belong to."""
        rows = self._exec("SELECT worker_id, id FROM jobs WHERE state='running'")
        return [(str(r[0]), str(r[1])) for r in rows]

    @contextlib.contextmanager
    def holding(self, job: sqlite3.Row) -> Iterator[None]:
        """One IMMEDIATE transaction in which ``job`` is still the attempt its worker was handed.

        A request checks the job's owner, then awaits its body; meanwhile the job may have gone back to
        the queue (a lost worker, a heartbeat that no longer names it) and out again, even to the same
        worker as a new attempt. Then ``StateError`` (409), and nothing in the block is committed.
        """
        self.begin()
        try:
            held = self._exec(
                "SELECT 1 FROM jobs WHERE id=? AND state='running' AND worker_id=? AND attempts=?",
                (job["id"], job["worker_id"], job["attempts"]),
            ).fetchone()
            if held is None:
                raise StateError(f"job {job['id']} is no longer assigned to this worker: it was requeued")
            yield
            self.commit()
        except BaseException:
            self.rollback()
            raise

    def record_upload(self, jid: int, filename: str, sha256: str, size: int, signature: str) -> None:
        """One uploaded artifact (inside ``holding``: only while the uploading attempt holds the job)."""
        self._exec(
            "INSERT OR REPLACE INTO uploads(job_id, filename, sha256, size, signature) VALUES(?, ?, ?, ?, ?)",
            (jid, filename, sha256, size, signature),
        )

    def uploads(self, jid: int) -> list[Upload]:
        rows = self._exec("SELECT * FROM uploads WHERE job_id=? ORDER BY filename", (jid,))
        return [cast(Upload, dict(r)) for r in rows]

    def finish(
        self,
        job: sqlite3.Row,
        ok: bool,
        duration: float,
        log: str,
        error: str | None,
        files: list[ArtifactFile],
        stage: str = "",
    ) -> None:
        """Record a result; on success the package enters the repository and dependents become ready.

        Only while ``job`` (the row its worker was handed) still holds the job, else ``StateError``; on
        success the same transaction journals the file moves from ``stage`` (see ``applying``).
        """
        jid = int(job["id"])
        now = time.time()
        with self.holding(job):
            self._exec(
                "UPDATE jobs SET log=?, duration_s=?, finished_at=? WHERE id=?", (log, duration, now, jid)
            )
            if not ok:
                self._fail(jid, error or "build failed")
            else:
                worker = self.worker(str(job["worker_id"]))
                assert worker is not None
                recipe = parse_recipe(json.loads(job["recipe"]), f"job {jid}")
                self._exec("UPDATE jobs SET state='done' WHERE id=?", (jid,))
                self._exec(
                    "INSERT OR REPLACE INTO packages(name, version, release, depends, job_id, worker_id,"
                    " worker_name, worker_key, built_at, duration_s, files)"
                    " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        job["package"],
                        job["version"],
                        job["release"],
                        json.dumps(list(recipe.depends)),
                        jid,
                        worker["id"],
                        worker["name"],
                        worker["public_key"],
                        now,
                        duration,
                        json.dumps(files),
                    ),
                )
                self._exec(
                    "INSERT OR REPLACE INTO durations(name, seconds) VALUES(?, ?)", (job["package"], duration)
                )
                self._exec("UPDATE workers SET jobs_done=jobs_done+1 WHERE id=?", (worker["id"],))
                self._exec(
                    "INSERT OR REPLACE INTO applying(job_id, package, rel, stage, files)"
                    " VALUES(?, ?, ?, ?, ?)",
                    (
                        jid,
                        job["package"],
                        f"{job['version']}-{job['release']}",
                        stage,
                        json.dumps([f["name"] for f in files]),
                    ),
                )
                self._promote(self._dependents(jid))
            self._exec("DELETE FROM uploads WHERE job_id=?", (jid,))

    def pending_applies(self) -> list[PendingApply]:
        """Committed results whose files may not all be in the repository yet (a crash in between)."""
        out = []
        for r in self._exec("SELECT * FROM applying ORDER BY job_id"):
            d = dict(r)
            d["files"] = json.loads(d["files"])
            out.append(cast(PendingApply, d))
        return out

    def applied(self, jid: int) -> None:
        self._exec("DELETE FROM applying WHERE job_id=?", (jid,))

    # --- repository -----------------------------------------------------------------------------------

    def packages(self) -> dict[str, Package]:
        out = {}
        for r in self._exec("SELECT * FROM packages ORDER BY name"):
            d = dict(r)
            d["depends"] = json.loads(d["depends"])
            d["files"] = json.loads(d["files"])
            out[str(d.pop("name"))] = cast(Package, d)
        return out

    def remove_package(self, name: str, force: bool) -> Removed:
        """Drop a package from the repository and cancel its queued jobs, in one transaction."""
        pkgs = self.packages()
        active = [
            int(r[0])
            for r in self._exec(f"SELECT id FROM jobs WHERE package=? AND state IN {ACTIVE}", (name,))
        ]
        if name not in pkgs and not active:
            raise StateError(f"package {name} is neither in the repository nor queued", 404)
        users = sorted(n for n, p in pkgs.items() if name in p["depends"])
        if users and not force:
            raise StateError(
                f"package {name} is needed by {', '.join(users)}; pass --force to remove it anyway"
            )
        self.begin()
        try:
            for jid in active:
                self._fail(jid, "cancelled: package removed")
                self._exec("UPDATE jobs SET state='cancelled' WHERE id=?", (jid,))
            self._exec("DELETE FROM packages WHERE name=?", (name,))
            self.commit()
        except BaseException:
            self.rollback()
            raise
        return {"removed": name, "cancelled_jobs": active, "was_in_repository": name in pkgs}

    # --- reporting ------------------------------------------------------------------------------------

    def jobs(self, build_id: int | None = None, limit: int = 500) -> list[JobRow]:
        cols = (
            "id, build_id, package, version, release, state, priority, worker_id, attempts, created_at,"
            " ready_at, started_at, finished_at, duration_s, error"
        )
        if build_id is None:
            rows = self._exec(f"SELECT {cols} FROM jobs ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._exec(f"SELECT {cols} FROM jobs WHERE build_id=? ORDER BY id", (build_id,))
        out = [cast(JobRow, dict(r)) for r in rows]
        for job in out:
            job["depends_on"] = [
                int(r[0]) for r in self._exec("SELECT dep_job_id FROM job_deps WHERE job_id=?", (job["id"],))
            ]
        return out

    def build_exists(self, build_id: int) -> bool:
        return self._exec("SELECT 1 FROM builds WHERE id=?", (build_id,)).fetchone() is not None

    def counts(self) -> dict[str, int]:
        return {str(r[0]): int(r[1]) for r in self._exec("SELECT state, COUNT(*) FROM jobs GROUP BY state")}

    def close(self) -> None:
        self.db.close()
