"""Hostile input against a real ``fleetci build master`` process: every refusal is one JSON line with a 4xx,
the master never answers 500 nor logs a traceback, and nothing lands outside its state directory."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fleetci.buildfarm import keys
from fleetci.buildfarm.client import verify_repository
from support import clean_env, one_line_error, raw_request, run_fleetci, wait_until
from support.buildfarm import ADMIN, JOIN, Fleet, write
from support.buildfarm_hostile import MAX_BODY, MAX_UPLOAD, Manual, refused


def test_oversize_bodies_and_headers_are_refused_before_they_are_read(fleet: Fleet, tmp_path: Path) -> None:
    # A declared body over the JSON cap: 413 at once, although not a byte of it was sent.
    headers: dict[str, str | bytes] = {
        "Authorization": f"Bearer {ADMIN}",
        "Content-Type": "application/json",
        "Content-Length": "1000000000",
    }
    status, _, body = raw_request("127.0.0.1", fleet.port, "POST", "/api/v1/builds", headers)
    assert status == 413 and "limit" in json.loads(body)["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading too
        yield b'{"packages": ["'
        for _ in range(8):
            yield b"x" * 16384
        yield b'"]}'

    r = fleet.http.post("/api/v1/builds", content=chunks(), headers={"Content-Type": "application/json"})
    refused(r, 413, "limit")

    # A header far over aiohttp's line limit: a 4xx, and the master carries on.
    status, _, _ = raw_request("127.0.0.1", fleet.port, "GET", "/health", {"X-Big": "b" * 100_000})
    assert 400 <= status < 500
    assert httpx.get(f"{fleet.url}/health").status_code == 200

    # Artifacts are not held to the small JSON cap: they stream to disk under their own, larger one.
    w = Manual(fleet, tmp_path)
    write(tmp_path / "p", "big", [], "true")
    fleet.submit(tmp_path / "p")
    job = w.next()
    assert w.put(job["id"], "big", "big.pkg", b"z" * (4 * MAX_BODY)).status_code == 200
    refused(w.put(job["id"], "big", "huge.pkg", b"z" * (MAX_UPLOAD + 1)), 413, str(MAX_UPLOAD))


def test_malformed_nested_and_out_of_range_json_is_a_400(fleet: Fleet, tmp_path: Path) -> None:
    w = Manual(fleet, tmp_path)
    write(tmp_path / "p", "pkg", [], "true")
    build_id = fleet.submit(tmp_path / "p")
    job = w.next()
    jid = job["id"]
    result = f"/api/v1/jobs/{jid}/result"
    for body, needle in [
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b"[" * 30_000 + b"]" * 30_000, "nested"),
        (json.dumps({"ok": False, "log": _nest(40)}).encode(), "nested"),
        (b'{"ok": true, "duration_s": NaN}', "NaN"),
        (b'{"ok": true, "duration_s": Infinity}', "Infinity"),
        (b'{"ok": true, "duration_s": 1e400}', "duration_s"),
        (b'{"ok": true, "duration_s": "nan"}', "duration_s"),
        (b'{"ok": true, "artifacts": [1, "a"]}', "artifacts.0"),
        (b'{"ok": true, "artifacts": ["../x"]}', "artifacts.0"),
        (b'{"ok": "yes"}', "ok"),
        (b'{"ok": true, "surprise": 1}', "surprise"),
        (b"{}", "ok"),
    ]:
        refused(w.post(result, body), 400, needle)
    # None of it touched the job: it is still this worker's, running.
    assert next(j for j in fleet.status()["jobs"] if j["id"] == jid)["state"] == "running"

    refused(w.post("/api/v1/workers/me/heartbeat", b'{"jobs": ["x"]}'), 400, "jobs.0")
    refused(w.post("/api/v1/workers/me/heartbeat", b'{"jobs": [100000000000000000000000]}'), 400, "jobs.0")
    for bad in ("nan", "inf", "-1", "61", "1e999", "soon"):
        refused(httpx.post(f"{fleet.url}/api/v1/jobs/next?wait={bad}", headers=w.auth), 400, "wait")
    join = {"Authorization": f"Bearer {JOIN}", "Content-Type": "application/json"}
    for body in (b'{"name": "a\\nb", "public_key": "x"}', b'{"name": "ok"}', b"null"):
        refused(httpx.post(f"{fleet.url}/api/v1/workers", content=body, headers=join), 400)
    for body in (
        {"packages": []},
        {"packages": [{"recipe": {"name": "x"}, "source": ""}]},
        {"packages": [{"recipe": _recipe(timeout_s=1e308), "source": ""}]},
        {"packages": [{"recipe": _recipe(estimate_s=-1), "source": ""}]},
        {"packages": [{"recipe": _recipe(), "source": "not base64!"}]},
        {"packages": [{"recipe": _recipe(), "source": ""}, {"recipe": _recipe(), "source": ""}]},
    ):
        refused(fleet.http.post("/api/v1/builds", json=body), 400)

    # Ids beyond what the database stores, or not numbers, name nothing.
    huge = str(10**23)
    for path in (
        f"/api/v1/builds/{huge}",
        f"/api/v1/jobs/{huge}/log",
        "/api/v1/builds/-1",
        "/api/v1/builds/1e3",
    ):
        refused(fleet.http.get(path), 404)
    refused(httpx.get(f"{fleet.url}/api/v1/jobs/{huge}/source", headers=w.auth), 404)
    refused(w.post(f"/api/v1/jobs/{huge}/result", b'{"ok": true}'), 404)
    refused(fleet.http.delete("/api/v1/packages/Bad%20Name"), 404)
    refused(fleet.http.delete("/api/v1/packages/pkg", params={"force": "maybe"}), 400, "force")
    refused(fleet.http.get("/no/such/route"), 404)
    refused(fleet.http.put("/api/v1/status"), 405)
    assert fleet.http.get(f"/api/v1/builds/{build_id}").status_code == 200


def _nest(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def _recipe(**extra: Any) -> dict[str, Any]:
    return {"name": "r", "version": "1", "build": "true", "artifacts": ["r.pkg"], **extra}


def test_path_tricks_and_repository_names_cannot_collide(fleet: Fleet, tmp_path: Path) -> None:
    w = Manual(fleet, tmp_path)
    write(tmp_path / "p", "target", [], "true")
    fleet.submit(tmp_path / "p")
    job = w.next()
    jid = job["id"]
    for name in ("..", "a..b", "..%2F..%2Fevil.pkg", "%2E%2E", ".hidden", "a%5Cb", "x%00y", "a%2Fb"):
        r = w.put(jid, "target", name, b"evil")
        refused(r, (400, 404))
    assert not [p for p in fleet.root.rglob("*evil*")] and not list(fleet.root.rglob(".hidden"))
    # Reserved-looking names are plain files of a package: the index lives outside the package tree.
    assert w.put(jid, "target", "index.json", b"not the index").status_code == 200
    assert httpx.delete(f"{fleet.url}/api/v1/workers/me", headers=w.auth).status_code == 200

    # Packages named like the repository's own files build, publish and verify; the index stays the index.
    recipes = tmp_path / "reserved"
    for name in ("index.json", "index.json.sig"):
        d = write(recipes, name, [], f"echo {name} > index.json; echo sig > index.json.sig")
        (d / "recipe.yml").write_text(
            json.dumps(
                {"name": name, "version": "1.0", "build": "echo x > index.json", "artifacts": ["index.json"]}
            )
        )
    fleet.add_worker("w0")
    info = fleet.wait_build(fleet.submit(recipes), timeout=60)
    assert info["state"] == "done", (info, fleet.logs())
    result = verify_repository(fleet.url)
    assert set(result["index"]["packages"]) == {"index.json", "index.json.sig"}
    assert httpx.get(f"{fleet.url}/repo/index.json").json()["format"] == 1
    assert httpx.get(f"{fleet.url}/repo/index.json/1.0-1/index.json").text == "x\n"


def test_credentials_are_checked_per_role_on_every_endpoint(fleet: Fleet, tmp_path: Path) -> None:
    w = Manual(fleet, tmp_path)
    admin_ops = [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/builds/1"),
        ("GET", "/api/v1/jobs/1/log"),
        ("POST", "/api/v1/builds"),
        ("DELETE", "/api/v1/packages/x"),
    ]
    worker_ops = [
        ("POST", "/api/v1/workers/me/heartbeat"),
        ("POST", "/api/v1/jobs/next?wait=0"),
        ("GET", "/api/v1/jobs/1/source"),
        ("PUT", "/api/v1/jobs/1/artifacts/a.pkg"),
        ("POST", "/api/v1/jobs/1/result"),
        ("DELETE", "/api/v1/workers/me"),
    ]
    wrong = ["", "Bearer", "Bearer nonsense", "Basic " + ADMIN, f"Bearer {ADMIN}x", f"Bearer {w.wid}.forged"]
    for method, path in admin_ops:
        for auth in [*wrong, f"Bearer {w.token}", f"Bearer {JOIN}"]:
            r = httpx.request(method, f"{fleet.url}{path}", headers={"Authorization": auth}, json={})
            refused(r, 401)
    for method, path in worker_ops:
        for auth in [*wrong, f"Bearer {ADMIN}", f"Bearer {JOIN}"]:
            r = httpx.request(method, f"{fleet.url}{path}", headers={"Authorization": auth}, json={})
            refused(r, 401)
    pub = keys.public_b64(w.key)
    for auth in (f"Bearer {ADMIN}", f"Bearer {w.token}", "Bearer wrong"):
        r = httpx.post(
            f"{fleet.url}/api/v1/workers", json={"public_key": pub}, headers={"Authorization": auth}
        )
        refused(r, 401, "join token")
    # The refused worker is untouched; the right credential still works.
    assert httpx.post(f"{fleet.url}/api/v1/workers/me/heartbeat", headers=w.auth).status_code == 200


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["status", "--build", str(10**23)], "--build"),
        (["log", "abc"], "job"),
        (["log", "0"], "job"),
        (["remove", "Bad/Name"], "not a package name"),
        (["submit", ".", "--wait", "--timeout", "nan"], "--timeout"),
        (["submit", ".", "--wait", "--timeout", "-1"], "--timeout"),
        (["tree", ".", "--partitions", "100000"], "--partitions"),
        (["worker", "--master", "ftp://x"], "http://"),
        (["master", "--max-upload-bytes", "-5"], "max-upload-bytes"),
        (["master", "--heartbeat-ttl", "inf"], "heartbeat-ttl"),
        (["verify"], "no master URL"),
    ],
)
def test_every_verb_refuses_bad_input_with_one_line_and_exit_2(args: list[str], needle: str) -> None:
    env = clean_env(
        FLEETCI_BUILD_TOKEN="t", FLEETCI_BUILD_JOIN_TOKEN="j", FLEETCI_BUILD_MASTER="http://127.0.0.1:9"
    )
    if args == ["verify"]:
        env.pop("FLEETCI_BUILD_MASTER")
    proc = run_fleetci("build", *args, env=env)
    err = one_line_error(proc)
    assert proc.returncode == 2 and needle in err, (proc.returncode, err)


def test_verbs_against_a_live_master_fail_in_one_line(fleet: Fleet, tmp_path: Path) -> None:
    env = {**fleet.env, "FLEETCI_BUILD_MASTER": fleet.url}
    for args, needle in [
        (["status", "--build", "999"], "404"),
        (["log", "999"], "404"),
        (["remove", "ghost"], "neither in the repository"),
        (["verify", "--master-key", "junk"], "public key"),
    ]:
        proc = run_fleetci("build", *args, env=env)
        assert proc.returncode == 1 and needle in one_line_error(proc), proc.stderr
    assert wait_until(lambda: fleet.status()["jobs"] == [], timeout=5)
