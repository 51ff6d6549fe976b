"""Distributed builds with real processes on 127.0.0.1: a ``fleetci build master`` and 3-4 workers."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.buildfarm import keys
from fleetci.buildfarm.client import verify_repository
from support import clean_env, one_line_error, run_fleetci, wait_until
from support.buildfarm import ADMIN, JOIN, Fleet, write


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    try:
        yield f
    finally:
        f.close()


# The artifact of each package holds its own line plus its dependencies' artifacts, as a linker would.
BUILD = (
    'sleep 0.4; cat "$FLEETCI_DEPS_DIR"/*/*.pkg > "$FLEETCI_PKG_NAME.pkg" 2>/dev/null || true; '
    'echo "$FLEETCI_PKG_NAME $FLEETCI_PKG_VERSION-$FLEETCI_PKG_RELEASE" >> "$FLEETCI_PKG_NAME.pkg"'
)


DAG = {
    "base": [],
    "libx": ["base"],
    "liby": ["base"],
    "libz": ["base"],
    "tool": [],
    "app": ["libx", "liby", "tool"],
}


def sample_dag(root: Path) -> Path:
    for name, deps in DAG.items():
        write(root, name, deps, BUILD)
    return root


def test_workers_build_a_dag_in_dependency_order_and_everything_verifies(
    fleet: Fleet, tmp_path: Path
) -> None:
    for i in range(3):
        fleet.add_worker(f"w{i}")
    assert wait_until(lambda: len(fleet.active_workers()) == 3, timeout=30), fleet.logs()
    build_id = fleet.submit(sample_dag(tmp_path / "pkgs"))
    info = fleet.wait_build(build_id)
    assert info["state"] == "done", (info, fleet.logs())
    jobs = {j["package"]: j for j in info["jobs"]}
    for name, deps in DAG.items():
        for dep in deps:
            assert jobs[name]["started_at"] >= jobs[dep]["finished_at"], (name, dep)
    # The DAG really ran in parallel on several self-registered workers.
    assert len({j["worker_id"] for j in jobs.values()}) >= 2
    assert len({jobs[n]["worker_id"] for n in ("libx", "liby", "libz")}) >= 2

    result = verify_repository(fleet.url)
    assert result["files"] == len(DAG) and result["master_key"] == fleet.status()["master_key"]
    index = result["index"]
    app = httpx.get(f"{fleet.url}/repo/{index['packages']['app']['files'][0]['path']}").text
    # app's artifact contains what its dependencies built, so their artifacts reached the app's worker.
    assert {"base 1.0-1", "libx 1.0-1", "liby 1.0-1", "tool 1.0-1", "app 1.0-1"} <= set(app.splitlines())
    workers = httpx.get(f"{fleet.url}/api/v1/keys").json()["workers"]
    for pkg in index["packages"].values():
        assert workers[pkg["built_by"]["id"]] == pkg["built_by"]["key"]
    proc = run_fleetci("build", "verify", "--master", fleet.url, "--master-key", result["master_key"])
    assert proc.returncode == 0 and "6 packages, 6 files" in proc.stdout, proc.stderr

    # A tampered index no longer verifies against the master key.
    data = httpx.get(f"{fleet.url}/repo/index.json").content
    sig = httpx.get(f"{fleet.url}/repo/index.json.sig").text
    assert keys.verify(result["master_key"], data, sig)
    assert not keys.verify(result["master_key"], data.replace(b'"release": 1', b'"release": 9', 1), sig)
    other = keys.public_b64(keys.load_or_create_key(tmp_path / "other.pem"))
    proc = run_fleetci("build", "verify", "--master", fleet.url, "--master-key", other)
    assert "does not verify" in one_line_error(proc)

    # Rebuilding an unchanged version bumps the release; the old release's files leave the repository.
    old_path = index["packages"]["base"]["files"][0]["path"]
    info = fleet.wait_build(fleet.submit(tmp_path / "pkgs" / "base"))
    assert info["state"] == "done" and info["jobs"][0]["release"] == 2
    new = verify_repository(fleet.url)["index"]["packages"]["base"]
    assert new["release"] == 2 and new["files"][0]["path"] == "base/1.0-2/base.pkg"
    assert httpx.get(f"{fleet.url}/repo/{old_path}").status_code == 404

    # Status on the command line; the log of a job.
    proc = run_fleetci("build", "status", "--master", fleet.url, env=fleet.env)
    assert proc.returncode == 0 and re.search(r"^  app 1\.0-1 \(built by w\d\)$", proc.stdout, re.M), (
        proc.stdout
    )
    proc = run_fleetci("build", "log", str(jobs["app"]["id"]), "--master", fleet.url, env=fleet.env)
    assert proc.returncode == 0

    # One-step removal; removing something others need is refused unless forced.
    err = one_line_error(run_fleetci("build", "remove", "base", "--master", fleet.url, env=fleet.env))
    assert "needed by libx, liby, libz" in err
    proc = run_fleetci("build", "remove", "app", "--master", fleet.url, env=fleet.env)
    assert proc.returncode == 0, proc.stderr
    after = verify_repository(fleet.url)["index"]["packages"]
    assert "app" not in after and len(after) == 5
    assert httpx.get(f"{fleet.url}/repo/app/1.0-1/app.pkg").status_code == 404
    assert "neither in the repository" in one_line_error(
        run_fleetci("build", "remove", "app", "--master", fleet.url, env=fleet.env)
    )

    # A clean shutdown unregisters: the worker disappears from the list at once.
    w0 = fleet.workers["w0"]
    w0.terminate()
    assert w0.wait(timeout=15) == 0
    assert wait_until(lambda: {w["name"] for w in fleet.status()["workers"]} == {"w1", "w2"}, timeout=5)


def test_a_job_whose_worker_dies_mid_build_is_reassigned(fleet: Fleet, tmp_path: Path) -> None:
    for i in range(3):
        fleet.add_worker(f"w{i}")
    assert wait_until(lambda: len(fleet.active_workers()) == 3, timeout=30), fleet.logs()
    write(tmp_path / "p", "first", [], "echo first > first.pkg")
    write(tmp_path / "p", "slow", ["first"], "sleep 3; echo slow > slow.pkg")
    write(tmp_path / "p", "last", ["slow"], 'cat "$FLEETCI_DEPS_DIR/slow/slow.pkg" > last.pkg')
    build_id = fleet.submit(tmp_path / "p")

    def slow_running() -> dict[str, Any] | None:
        jobs = fleet.http.get(f"/api/v1/builds/{build_id}").json()["jobs"]
        return next((j for j in jobs if j["package"] == "slow" and j["state"] == "running"), None)

    assert wait_until(lambda: slow_running() is not None, timeout=30), fleet.logs()
    job = slow_running()
    assert job is not None
    names = {w["id"]: w["name"] for w in fleet.status()["workers"]}
    victim = fleet.workers[names[job["worker_id"]]]
    os.killpg(victim.pid, signal.SIGKILL)  # no unregister, no goodbye: only the missing heartbeat tells
    victim.wait()
    info = fleet.wait_build(build_id, timeout=60)
    assert info["state"] == "done", (info, fleet.logs())
    slow = next(j for j in info["jobs"] if j["package"] == "slow")
    assert slow["attempts"] == 2 and slow["worker_id"] != job["worker_id"]
    states = {w["id"]: w["state"] for w in fleet.status()["workers"]}
    assert states[job["worker_id"]] == "lost"
    assert verify_repository(fleet.url)["files"] == 3


def test_master_restart_keeps_state_and_workers_carry_on(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add_worker("w0")
    fleet.add_worker("w1")
    assert wait_until(lambda: len(fleet.active_workers()) == 2, timeout=30), fleet.logs()
    write(tmp_path / "p", "one", [], "echo one > one.pkg")
    first = fleet.wait_build(fleet.submit(tmp_path / "p" / "one"))
    assert first["state"] == "done"
    before = fleet.status()
    index_before = verify_repository(fleet.url)

    fleet.stop_master()
    fleet.start_master()
    after = fleet.status()
    assert after["master_key"] == before["master_key"]
    assert after["repository"] == before["repository"]
    assert [j["id"] for j in after["jobs"]] == [j["id"] for j in before["jobs"]]
    assert verify_repository(fleet.url, index_before["master_key"])["files"] == 1
    # The workers reconnect by themselves and build the next submission, which depends on the old one.
    write(tmp_path / "p", "two", ["one"], 'cat "$FLEETCI_DEPS_DIR/one/one.pkg" > two.pkg')
    second = fleet.wait_build(fleet.submit(tmp_path / "p" / "two"), timeout=60)
    assert second["state"] == "done", fleet.logs()
    assert {w["name"] for w in fleet.active_workers()} == {"w0", "w1"}
    # The same version again: release 2, counted across the restart.
    third = fleet.wait_build(fleet.submit(tmp_path / "p" / "one"), timeout=60)
    assert third["jobs"][0]["release"] == 2


@pytest.fixture
def small_upload_fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path, extra=("--max-upload-bytes", "1024"))
    try:
        yield f
    finally:
        f.close()


def test_forged_workers_and_hostile_uploads_are_refused(small_upload_fleet: Fleet, tmp_path: Path) -> None:
    fleet = small_upload_fleet
    url = fleet.url
    key = keys.load_or_create_key(tmp_path / "w.pem")
    pub = keys.public_b64(key)
    # Registration needs the join token.
    r = httpx.post(
        f"{url}/api/v1/workers",
        json={"name": "x", "public_key": pub},
        headers={"Authorization": "Bearer wrong"},
    )
    assert r.status_code == 401 and "join token" in r.json()["message"]
    r = httpx.post(f"{url}/api/v1/workers", json={"name": "x", "public_key": pub})
    assert r.status_code == 401
    r = httpx.post(
        f"{url}/api/v1/workers",
        json={"name": "x", "public_key": "junk"},
        headers={"Authorization": f"Bearer {JOIN}"},
    )
    assert r.status_code == 400
    reg = httpx.post(
        f"{url}/api/v1/workers",
        json={"name": "manual", "public_key": pub},
        headers={"Authorization": f"Bearer {JOIN}"},
    ).json()
    token, wid = reg["token"], reg["worker_id"]
    assert reg["heartbeat_ttl"] == 2.0 and reg["heartbeat_interval"] == 0.5
    # The credential is per worker and stored hashed: neither it nor the join token is in the database.
    db = (fleet.root / "state" / "state.db").read_bytes()
    assert token.encode() not in db and JOIN.encode() not in db and ADMIN.encode() not in db
    forged = [f"{wid}.guessed-secret", "w-000000000000.x", "nonsense", token + "x"]
    for bad in forged:
        r = httpx.post(f"{url}/api/v1/workers/me/heartbeat", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
        r = httpx.post(f"{url}/api/v1/jobs/next?wait=0", headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, bad
    # The worker credential is not an admin token, and the admin token does not make a worker.
    assert httpx.get(f"{url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    r = httpx.post(f"{url}/api/v1/jobs/next?wait=0", headers={"Authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 401

    write(tmp_path / "p", "target", [], "true")
    fleet.submit(tmp_path / "p")
    auth = {"Authorization": f"Bearer {token}"}
    job = httpx.post(f"{url}/api/v1/jobs/next?wait=5", headers=auth, timeout=15).json()
    assert job["package"] == "target"
    jid = job["id"]

    def put(name: str, body: bytes, sha: str | None = None, sign_name: str | None = None) -> httpx.Response:
        digest = sha or hashlib.sha256(body).hexdigest()
        sig = keys.sign(key, keys.artifact_message("target", sign_name or name, digest))
        headers = {**auth, "X-Fleetci-Sha256": digest, "X-Fleetci-Signature": sig}
        return httpx.put(f"{url}/api/v1/jobs/{jid}/artifacts/{name}", content=body, headers=headers)

    state = fleet.root / "state"
    for name in ("..%2F..%2F..%2Fevil.pkg", "%2E%2E", ".hidden", "a%5Cb.pkg", "x%00y"):
        r = put(name, b"evil")
        assert r.status_code in (400, 404), (name, r.status_code, r.text)
    assert not list(fleet.root.rglob("evil.pkg")) and not list(state.rglob(".hidden"))
    r = put("big.pkg", b"x" * 2048)
    assert r.status_code == 413, r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while streaming too
        for _ in range(4):
            yield b"y" * 512

    digest = hashlib.sha256(b"y" * 2048).hexdigest()
    sig = keys.sign(key, keys.artifact_message("target", "stream.pkg", digest))
    r = httpx.put(
        f"{url}/api/v1/jobs/{jid}/artifacts/stream.pkg",
        content=chunks(),
        headers={**auth, "X-Fleetci-Sha256": digest, "X-Fleetci-Signature": sig},
    )
    assert r.status_code == 413, r.text
    r = put("wrong.pkg", b"content", sha=hashlib.sha256(b"other").hexdigest())
    assert r.status_code == 400 and "mismatch" in r.json()["message"]
    r = put("resigned.pkg", b"content", sign_name="other-name.pkg")
    assert r.status_code == 400 and "signature" in r.json()["message"]
    leftovers = [p for p in state.rglob("*") if p.is_file() and p.parent.name == str(jid)]
    assert leftovers == [], leftovers  # refused uploads leave no temp files and no partial artifacts
    r = put("good.pkg", b"good")
    assert r.status_code == 200, r.text

    # Another registered worker cannot upload into or finish this worker's job.
    other = httpx.post(
        f"{url}/api/v1/workers",
        json={"name": "other", "public_key": pub},
        headers={"Authorization": f"Bearer {JOIN}"},
    ).json()
    r = httpx.post(
        f"{url}/api/v1/jobs/{jid}/result",
        json={"ok": True},
        headers={"Authorization": f"Bearer {other['token']}"},
    )
    assert r.status_code == 409

    # Unregistering revokes the credential and hands the job back to the queue.
    assert httpx.delete(f"{url}/api/v1/workers/me", headers=auth).json()["requeued"] == [jid]
    assert httpx.post(f"{url}/api/v1/workers/me/heartbeat", headers=auth).status_code == 401
    jobs = fleet.status()["jobs"]
    assert next(j for j in jobs if j["id"] == jid)["state"] == "ready"
    assert httpx.get(f"{url}/repo/index.json").json()["packages"] == {}


def test_submit_rejects_cycles_missing_dependencies_and_bad_tokens(fleet: Fleet, tmp_path: Path) -> None:
    write(tmp_path / "cyc", "a", ["b"], "true")
    write(tmp_path / "cyc", "b", ["a"], "true")
    err = one_line_error(
        run_fleetci("build", "submit", "--master", fleet.url, str(tmp_path / "cyc"), env=fleet.env)
    )
    assert "dependency cycle" in err
    write(tmp_path / "miss", "c", ["ghost"], "true")
    err = one_line_error(
        run_fleetci("build", "submit", "--master", fleet.url, str(tmp_path / "miss"), env=fleet.env)
    )
    assert "depends on ghost" in err
    # The master checks too, for clients that skip the local check.
    r = fleet.http.post(
        "/api/v1/builds",
        json={
            "packages": [
                {
                    "recipe": {
                        "name": "c",
                        "version": "1",
                        "build": "x",
                        "artifacts": ["a"],
                        "depends": ["ghost"],
                    },
                    "source": "",
                }
            ]
        },
    )
    assert r.status_code == 400 and "ghost" in r.json()["message"]
    env = clean_env(FLEETCI_BUILD_TOKEN="wrong-token")
    err = one_line_error(run_fleetci("build", "status", "--master", fleet.url, env=env))
    assert "401" in err and "invalid admin token" in err
    assert fleet.status()["jobs"] == []


def gated(root: Path, name: str, gate: Path) -> Path:
    """A package whose build waits until the test creates ``gate``."""
    return write(root, name, [], f'while [ ! -e "{gate}" ]; do sleep 0.05; done; echo {name} > {name}.pkg')


def running_job(fleet: Fleet, build_id: int) -> dict[str, Any] | None:
    jobs = fleet.http.get(f"/api/v1/builds/{build_id}").json()["jobs"]
    return next((j for j in jobs if j["state"] == "running"), None)


def worker_log(fleet: Fleet, name: str) -> str:
    return (fleet.root / f"{name}.log").read_text(errors="replace")


def test_a_result_the_master_missed_is_delivered_once_it_is_back(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add_worker("w0")
    assert wait_until(lambda: len(fleet.active_workers()) == 1, timeout=30), fleet.logs()
    gate = tmp_path / "go"
    build_id = fleet.submit(gated(tmp_path / "p", "late", gate))
    assert wait_until(lambda: running_job(fleet, build_id) is not None, timeout=30), fleet.logs()
    assert fleet.master is not None
    fleet.master.kill()  # a crash: no goodbye to anyone
    fleet.master.wait()
    gate.touch()  # the build finishes while nobody can take its result
    assert wait_until(lambda: "result not delivered" in worker_log(fleet, "w0"), timeout=30), fleet.logs()
    assert list((tmp_path / "w0" / "outbox").glob("*/files/late.pkg")), "the result waits on disk"
    fleet.start_master()
    info = fleet.wait_build(build_id, timeout=60)
    assert info["state"] == "done", (info, fleet.logs())
    assert info["jobs"][0]["attempts"] == 1  # delivered, not built again
    assert "result delivered after" in worker_log(fleet, "w0")
    assert verify_repository(fleet.url)["files"] == 1
    assert not list((tmp_path / "w0" / "outbox").iterdir())


def test_a_job_its_worker_no_longer_holds_is_requeued(fleet: Fleet, tmp_path: Path) -> None:
    key = keys.load_or_create_key(tmp_path / "m.pem")
    reg = httpx.post(
        f"{fleet.url}/api/v1/workers",
        json={"name": "manual", "public_key": keys.public_b64(key)},
        headers={"Authorization": f"Bearer {JOIN}"},
    ).json()
    auth = {"Authorization": f"Bearer {reg['token']}"}
    write(tmp_path / "p", "held", [], "echo held > held.pkg")
    build_id = fleet.submit(tmp_path / "p")
    job = httpx.post(f"{fleet.url}/api/v1/jobs/next?wait=10", headers=auth, timeout=30).json()

    def beat(jobs: list[int]) -> str:
        r = httpx.post(f"{fleet.url}/api/v1/workers/me/heartbeat", headers=auth, json={"jobs": jobs})
        assert r.status_code == 200, r.text
        return str(fleet.http.get(f"/api/v1/builds/{build_id}").json()["jobs"][0]["state"])

    # Named in every heartbeat, the job stays this worker's for as long as it likes (here 3 TTLs).
    beats = 0
    while beats < 3 * 4 * 2:
        assert beat([job["id"]]) == "running"
        beats += 1
        time.sleep(fleet.ttl / 8)
    # A worker that is alive but no longer names the job gives it back.
    assert wait_until(lambda: beat([]) != "running", timeout=30), fleet.logs()
    fleet.add_worker("w0")
    info = fleet.wait_build(build_id, timeout=60)
    assert info["state"] == "done", (info, fleet.logs())
    assert info["jobs"][0]["attempts"] == 2 and info["jobs"][0]["worker_id"] != reg["worker_id"]


def test_a_result_the_master_fails_to_commit_is_retried_without_orphans(tmp_path: Path) -> None:
    fleet = Fleet(tmp_path, ttl=8.0)
    try:
        fleet.add_worker("w0")
        assert wait_until(lambda: len(fleet.active_workers()) == 1, timeout=30), fleet.logs()
        gate = tmp_path / "go"
        build_id = fleet.submit(gated(tmp_path / "p", "locked", gate))
        assert wait_until(lambda: running_job(fleet, build_id) is not None, timeout=30), fleet.logs()
        # Another process holds the database's write lock: the master's writes fail ("database is locked")
        # and it answers 500 until the lock goes.
        db = sqlite3.connect(tmp_path / "state" / "state.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        try:
            gate.touch()
            assert wait_until(lambda: "HTTP 500" in worker_log(fleet, "w0"), timeout=60), fleet.logs()
        finally:
            db.execute("ROLLBACK")
            db.close()
        info = fleet.wait_build(build_id, timeout=60)
        assert info["state"] == "done", (info, fleet.logs())
        assert verify_repository(fleet.url)["files"] == 1
        state = tmp_path / "state"
        files = sorted(str(p.relative_to(state)) for p in (state / "repo").rglob("*") if p.is_file())
        rel = f"{info['jobs'][0]['version']}-{info['jobs'][0]['release']}"
        assert files == [f"repo/locked/{rel}/locked.pkg"]
        assert not [p for p in (state / "staging").rglob("*") if p.is_file()]
    finally:
        fleet.close()


def test_submit_wait_gives_up_naming_each_unfinished_job_state(fleet: Fleet, tmp_path: Path) -> None:
    write(tmp_path / "p", "alone", [], "true")
    write(tmp_path / "p", "after", ["alone"], "true")
    proc = run_fleetci(
        "build",
        "submit",
        "--master",
        fleet.url,
        str(tmp_path / "p"),
        "--wait",
        "--timeout",
        "0.5",
        env=fleet.env,
    )
    err = one_line_error(proc)
    assert proc.returncode == 1
    assert "did not finish within 0.5s" in err
    assert re.search(r"alone \(job \d+\) ready", err) and re.search(r"after \(job \d+\) waiting", err), err
