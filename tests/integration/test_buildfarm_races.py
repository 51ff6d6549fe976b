"""Races against a real ``fleetci build master``: a job requeued while a request about it is in flight, and
publishing that fails after a result is committed.

A request whose body is still arriving has passed the master's owner check; the job is then requeued (its
worker is lost) and handed to another worker before the body is complete. What the old worker sends then
must change nothing. Workers are driven by hand (``Manual``) so each step happens exactly when the test says.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.buildfarm.client import verify_repository
from fleetci.errors import FleetciError
from support import wait_until
from support.buildfarm import Fleet, write
from support.buildfarm_hostile import Manual, refused

TTL = 1.0  # a silent worker is lost (and its jobs requeued) after this long


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path, ttl=TTL)
    try:
        yield f
    finally:
        f.close()
        f.assert_master_logs_clean()


class Partial:
    """One request sent in two parts: headers and the start of the body now, the rest on ``finish``."""

    def __init__(self, port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.sock.sendall(head + body[:1])
        self.rest = body[1:]

    def finish(self) -> httpx.Response:
        self.sock.sendall(self.rest)
        answer = http.client.HTTPResponse(self.sock)
        answer.begin()
        body = answer.read()
        self.sock.close()
        return httpx.Response(answer.status, headers=answer.getheaders(), content=body)


def last_seen(fleet: Fleet, wid: str) -> float:
    return float(next(w["last_seen"] for w in fleet.status()["workers"] if w["id"] == wid))


def job_row(fleet: Fleet, jid: int) -> dict[str, Any]:
    return next(j for j in fleet.status()["jobs"] if j["id"] == jid)


def in_flight(
    fleet: Fleet, w: Manual, method: str, path: str, headers: dict[str, str], body: bytes
) -> Partial:
    """Start a request and return once the master has checked it (credential, owner) and awaits its body.

    The check touches the worker's ``last_seen`` and runs without a pause up to the body read, so the
    master answering a status request with the new ``last_seen`` means the handler is at that await.
    """
    before = last_seen(fleet, w.wid)
    req = Partial(fleet.port, method, path, {**w.auth, **headers}, body)
    assert wait_until(lambda: last_seen(fleet, w.wid) > before, timeout=10)
    return req


def lose(fleet: Fleet, w: Manual, jid: int) -> None:
    """``w`` stays silent until the master marks it lost and requeues ``jid``."""
    assert wait_until(lambda: job_row(fleet, jid)["state"] == "ready", timeout=30), fleet.logs()
    assert job_row(fleet, jid)["error"].startswith(f"requeued: worker {w.wid} lost")


def test_a_result_sent_while_the_job_was_requeued_and_handed_out_again_is_refused(
    fleet: Fleet, tmp_path: Path
) -> None:
    old, new = Manual(fleet, tmp_path / "old"), Manual(fleet, tmp_path / "new")
    build_id = fleet.submit(write(tmp_path / "p", "pkg", [], "true"))
    job = old.next()
    jid = job["id"]
    assert old.put(jid, "pkg", "pkg.pkg", b"built by the old worker").status_code == 200
    body = json.dumps({"ok": True, "artifacts": ["pkg.pkg"], "duration_s": 1.0}).encode()
    late = in_flight(
        fleet, old, "POST", f"/api/v1/jobs/{jid}/result", {"Content-Type": "application/json"}, body
    )
    lose(fleet, old, jid)
    assert new.next()["id"] == jid  # the new worker builds it now

    # The old result arrives: it must neither finish nor fail the job the new worker holds.
    refused(late.finish(), 409, "no longer assigned")
    row = job_row(fleet, jid)
    assert (row["state"], row["worker_id"]) == ("running", new.wid)

    assert new.put(jid, "pkg", "pkg.pkg", b"built by the new worker").status_code == 200
    r = new.post(f"/api/v1/jobs/{jid}/result", body)
    assert r.status_code == 200 and r.json()["state"] == "done", r.text
    info = fleet.http.get(f"/api/v1/builds/{build_id}").json()
    assert info["state"] == "done" and info["jobs"][0]["worker_id"] == new.wid
    assert verify_repository(fleet.url)["files"] == 1
    assert httpx.get(f"{fleet.url}/repo/pkg/1.0-1/pkg.pkg").content == b"built by the new worker"


def test_an_upload_that_ends_after_the_job_was_handed_out_again_changes_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    old, new = Manual(fleet, tmp_path / "old"), Manual(fleet, tmp_path / "new")
    fleet.submit(write(tmp_path / "p", "pkg", [], "true"))
    jid = old.next()["id"]
    content = b"built by the old worker"
    signed = old.put_headers("pkg", "pkg.pkg", content)
    late = in_flight(fleet, old, "PUT", f"/api/v1/jobs/{jid}/artifacts/pkg.pkg", signed, content)
    lose(fleet, old, jid)
    assert new.next()["id"] == jid
    assert new.put(jid, "pkg", "pkg.pkg", b"built by the new worker").status_code == 200

    # The old upload completes: refused in one line, and the new worker's upload stays what was recorded.
    refused(late.finish(), 409, "no longer assigned")
    r = new.post(f"/api/v1/jobs/{jid}/result", json.dumps({"ok": True, "artifacts": ["pkg.pkg"]}).encode())
    assert r.status_code == 200 and r.json()["state"] == "done", r.text
    assert verify_repository(fleet.url)["files"] == 1
    assert httpx.get(f"{fleet.url}/repo/pkg/1.0-1/pkg.pkg").content == b"built by the new worker"


def test_publishing_that_fails_after_the_commit_is_retried_and_its_staged_files_are_kept(
    fleet: Fleet, tmp_path: Path
) -> None:
    w = Manual(fleet, tmp_path)
    build_id = fleet.submit(write(tmp_path / "p", "pkg", [], "true"))
    jid = w.next()["id"]
    assert w.put(jid, "pkg", "pkg.pkg", b"the artifact").status_code == 200
    # Something in the way of the package's directory: moving the files into repo/ fails.
    blocker = tmp_path / "state" / "repo" / "pkg"
    blocker.write_text("in the way")
    r = w.post(f"/api/v1/jobs/{jid}/result", json.dumps({"ok": True, "artifacts": ["pkg.pkg"]}).encode())
    assert r.status_code == 200 and r.json()["state"] == "done", r.text  # committed: the worker is done
    assert fleet.http.get(f"/api/v1/builds/{build_id}").json()["state"] == "done"

    # The worker goes away (lost: the master deletes its staging), while the files still wait there.
    assert wait_until(
        lambda: next(x for x in fleet.status()["workers"] if x["id"] == w.wid)["state"] == "lost", timeout=30
    ), fleet.logs()
    assert list((tmp_path / "state" / "staging" / w.wid).rglob("pkg.pkg"))
    blocker.unlink()

    def published() -> bool:
        try:
            return bool(verify_repository(fleet.url)["files"] == 1)
        except FleetciError:
            return False

    assert wait_until(published, timeout=30), fleet.logs()
    assert httpx.get(f"{fleet.url}/repo/pkg/1.0-1/pkg.pkg").content == b"the artifact"
    assert not list((tmp_path / "state" / "staging").rglob("pkg.pkg"))
