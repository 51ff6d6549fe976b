"""The GitHub emulator against GitHub's own rules: OpenAPI response schemas, ETags, rate limits, pagination.

Every test talks HTTP to a real emulator on 127.0.0.1 (httpx, sync). Bodies are checked against the official
OpenAPI description from npm ``@octokit/openapi`` (see ``fleetci.testing.openapi``).
"""

from __future__ import annotations

import asyncio
import io
import select
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.utils import formatdate
from typing import Any

import httpx
import pytest

from fleetci.testing import EmulatorServer
from fleetci.testing.openapi import OpenAPISpec
from support import RunCli
from support.emulator import ORG, R, _env, auth, emulate_github, quiet_emulator, tok


@pytest.fixture
def server() -> Iterator[EmulatorServer]:
    with quiet_emulator(seed=11) as srv:
        yield srv


@pytest.fixture
def ids(server: EmulatorServer) -> dict[str, Any]:
    """Ids to fill URL templates: a completed run of octo-org/api with a job, an artifact and a workflow."""
    emu = server.emulator
    run = emu.run_ids(ORG, "api", status="completed")[0]
    artifact = emu.add_artifact(ORG, "api", run, "dist", {"dist/app.txt": b"hello\n"})
    return {
        "run": run,
        "job": emu.job_ids(run)[0],
        "artifact": artifact,
        "workflow": emu.workflow_ids(ORG, "api")[0],
    }


def admin(server: EmulatorServer, **config: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/_emulator/config", json=config, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


CASES: list[tuple[str, str | None, str, str, int]] = [
    # method, login, url (filled from ids), OpenAPI path template, expected status
    ("GET", "alice", "/user", "/user", 200),
    ("GET", None, "/user", "/user", 401),
    ("GET", "alice", "/user/repos?per_page=100", "/user/repos", 200),
    ("GET", "bob", "/user/repos", "/user/repos", 200),
    ("GET", "alice", f"/orgs/{ORG}/repos", "/orgs/{org}/repos", 200),
    ("GET", None, f"/orgs/{ORG}/repos?type=public&sort=full_name", "/orgs/{org}/repos", 200),
    ("GET", "bob", "/users/alice/repos", "/users/{username}/repos", 200),
    ("GET", "alice", f"/users/{ORG}/repos", "/users/{username}/repos", 200),
    ("GET", "alice", f"/orgs/{ORG}", "/orgs/{org}", 200),
    ("GET", "bob", f"/orgs/{ORG}", "/orgs/{org}", 200),
    ("GET", "bob", "/orgs/alice", "/orgs/{org}", 404),
    ("GET", "bob", "/users/alice", "/users/{username}", 200),
    ("GET", None, f"/users/{ORG}", "/users/{username}", 200),
    ("GET", "alice", f"/repos/{ORG}/api/actions/workflows", f"{R}/actions/workflows", 200),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/workflows/ci.yml",
        f"{R}/actions/workflows/{{workflow_id}}",
        200,
    ),
    ("GET", "alice", f"/repos/{ORG}/api", R, 200),
    ("GET", "bob", f"/repos/{ORG}/api", R, 200),
    ("GET", None, f"/repos/{ORG}/docs", R, 200),
    ("GET", "alice", "/repos/alice/secret-project", R, 200),
    ("GET", "bob", "/repos/alice/secret-project", R, 404),
    ("GET", "alice", f"/repos/{ORG}/api/actions/runs", f"{R}/actions/runs", 200),
    ("GET", "alice", f"/repos/{ORG}/api/actions/runs?status=queued", f"{R}/actions/runs", 200),
    ("GET", "alice", f"/repos/{ORG}/web/actions/runs?status=in_progress", f"{R}/actions/runs", 200),
    ("GET", "bob", f"/repos/{ORG}/api/actions/runs?branch=main&event=push", f"{R}/actions/runs", 200),
    ("GET", "alice", f"/repos/{ORG}/api/actions/runs/{{run}}", f"{R}/actions/runs/{{run_id}}", 200),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/workflows/{{workflow}}/runs",
        f"{R}/actions/workflows/{{workflow_id}}/runs",
        200,
    ),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/workflows/ci.yml/runs?per_page=5",
        f"{R}/actions/workflows/{{workflow_id}}/runs",
        200,
    ),
    ("GET", "alice", f"/repos/{ORG}/api/actions/runs/{{run}}/jobs", f"{R}/actions/runs/{{run_id}}/jobs", 200),
    ("GET", "alice", f"/repos/{ORG}/api/actions/jobs/{{job}}", f"{R}/actions/jobs/{{job_id}}", 200),
    ("GET", "alice", f"/repos/{ORG}/infra/actions/runners", f"{R}/actions/runners", 200),
    ("GET", "fleet-bot", f"/repos/{ORG}/api/actions/runners", f"{R}/actions/runners", 200),
    ("GET", "alice", f"/orgs/{ORG}/actions/runners", "/orgs/{org}/actions/runners", 200),
    (
        "POST",
        "alice",
        f"/repos/{ORG}/infra/actions/runners/registration-token",
        f"{R}/actions/runners/registration-token",
        201,
    ),
    (
        "POST",
        "fleet-bot",
        f"/orgs/{ORG}/actions/runners/registration-token",
        "/orgs/{org}/actions/runners/registration-token",
        201,
    ),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/runs/{{run}}/artifacts",
        f"{R}/actions/runs/{{run_id}}/artifacts",
        200,
    ),
    ("GET", "alice", f"/repos/{ORG}/api/actions/artifacts?per_page=100", f"{R}/actions/artifacts", 200),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/artifacts/{{artifact}}",
        f"{R}/actions/artifacts/{{artifact_id}}",
        200,
    ),
    (
        "GET",
        "alice",
        f"/repos/{ORG}/api/actions/artifacts/{{artifact}}/zip",
        f"{R}/actions/artifacts/{{artifact_id}}/{{archive_format}}",
        302,
    ),
    ("GET", "alice", f"/repos/{ORG}/api/actions/runs/{{run}}/logs", f"{R}/actions/runs/{{run_id}}/logs", 302),
    ("GET", "alice", f"/repos/{ORG}/api/actions/jobs/{{job}}/logs", f"{R}/actions/jobs/{{job_id}}/logs", 302),
    ("GET", "alice", "/rate_limit", "/rate_limit", 200),
    ("GET", None, "/rate_limit", "/rate_limit", 200),
]


@pytest.mark.parametrize(
    ("method", "login", "url", "template", "status"),
    CASES,
    ids=[f"{c[0]} {c[2]} as {c[1] or 'anon'}" for c in CASES],
)
def test_bodies_match_openapi(
    server: EmulatorServer,
    spec: OpenAPISpec,
    ids: dict[str, Any],
    method: str,
    login: str | None,
    url: str,
    template: str,
    status: int,
) -> None:
    r = httpx.request(method, server.url + url.format(**ids), headers=auth(login), timeout=10)
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"
    spec.validate(method, template, status, r.json() if r.content else None)
    if status == 302:
        assert r.headers["Location"].startswith(f"{server.url}/_emulator/blobs/")


def test_list_contents_follow_the_filters(server: EmulatorServer) -> None:
    with httpx.Client(base_url=server.url, headers=auth("alice")) as c:
        total = 0
        for repo in ("api", "web", "infra", "runner-images", "docs", "mobile", "fleet-tools"):
            for status in ("queued", "in_progress", "completed", "success"):
                body = c.get(
                    f"/repos/{ORG}/{repo}/actions/runs", params={"status": status, "per_page": 100}
                ).json()
                runs = body["workflow_runs"]
                assert body["total_count"] == len(runs)
                key = "conclusion" if status == "success" else "status"
                assert all(r[key] == status for r in runs)
                total += len(runs) if status != "success" else 0
        assert total >= 40
        queued = [
            run
            for repo in ("api", "web", "infra", "runner-images", "docs", "mobile", "fleet-tools")
            for run in c.get(f"/repos/{ORG}/{repo}/actions/runs?status=queued").json()["workflow_runs"]
        ]
        assert queued, "the dataset has queued runs"
        runs = c.get(f"/repos/{ORG}/api/actions/runs", params={"branch": "main", "event": "push"}).json()
        assert all(r["head_branch"] == "main" and r["event"] == "push" for r in runs["workflow_runs"])
        runners = c.get(f"/orgs/{ORG}/actions/runners").json()
        assert runners["total_count"] >= 6
        labels = {lb["name"] for r in runners["runners"] for lb in r["labels"]}
        assert {"self-hosted", "Linux", "X64", "ARM64"} <= labels
        assert {r["status"] for r in runners["runners"]} <= {"online", "offline"}
        repos = c.get(f"/orgs/{ORG}/repos?per_page=100").json()
        assert len(repos) >= 5 and {True, False} == {r["private"] for r in repos}


def test_error_bodies_match_openapi(server: EmulatorServer, spec: OpenAPISpec) -> None:
    r = httpx.get(f"{server.url}/repos/alice/secret-project", headers={"Authorization": "token ghp_nope"})
    assert r.status_code == 401 and r.json()["message"] == "Bad credentials"
    spec.validate("GET", "/user", 401, r.json())
    r = httpx.get(f"{server.url}/repos/{ORG}/no-such-repo", headers=auth("alice"))
    assert r.status_code == 404 and r.json()["message"] == "Not Found" and r.json()["status"] == "404"
    assert r.json()["documentation_url"].startswith("https://docs.github.com/")
    spec.validate("GET", R, 404, r.json())
    r = httpx.get(f"{server.url}/repos/{ORG}/api/actions/runners", headers=auth("bob"))
    assert r.status_code == 403
    spec.validate("GET", R, 403, r.json())


def test_private_repos_are_invisible_to_others(server: EmulatorServer) -> None:
    base = server.url
    assert httpx.get(f"{base}/repos/alice/secret-project", headers=auth("alice")).status_code == 200
    assert httpx.get(f"{base}/repos/alice/secret-project", headers=auth("bob")).status_code == 404
    assert httpx.get(f"{base}/repos/alice/secret-project", headers=auth("fleet-bot")).status_code == 404
    assert httpx.get(f"{base}/repos/alice/secret-project").status_code == 404
    mine = {
        r["full_name"] for r in httpx.get(f"{base}/user/repos?per_page=100", headers=auth("alice")).json()
    }
    bobs = {r["full_name"] for r in httpx.get(f"{base}/user/repos?per_page=100", headers=auth("bob")).json()}
    assert "alice/secret-project" in mine and "alice/secret-project" not in bobs
    assert all(name.startswith("bob/") for name in bobs) and bobs
    org_alice = httpx.get(f"{base}/orgs/{ORG}/repos?per_page=100", headers=auth("alice")).json()
    org_bob = httpx.get(f"{base}/orgs/{ORG}/repos?per_page=100", headers=auth("bob")).json()
    assert {r["private"] for r in org_bob} == {False}
    assert {r["full_name"] for r in org_bob} < {r["full_name"] for r in org_alice}
    assert httpx.get(f"{base}/repos/{ORG}/infra", headers=auth("bob")).status_code == 404
    assert httpx.get(f"{base}/repos/{ORG}/infra", headers=auth("fleet-bot")).status_code == 200


def test_bearer_and_token_schemes_and_bad_token(server: EmulatorServer) -> None:
    for header in (f"token {tok('bob')}", f"Bearer {tok('bob')}"):
        r = httpx.get(f"{server.url}/user", headers={"Authorization": header})
        assert r.status_code == 200 and r.json()["login"] == "bob"
    bad = httpx.get(
        f"{server.url}/user", headers={"Authorization": "token ghp_000000000000000000000000000000000000"}
    )
    assert bad.status_code == 401 and bad.json()["message"] == "Bad credentials"
    assert server.emulator.charged(None) == 1  # a failed login is charged to the address, as anonymous


def test_github_headers(server: EmulatorServer) -> None:
    r = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"))
    h = r.headers
    for name in (
        "X-RateLimit-Limit",
        "X-RateLimit-Remaining",
        "X-RateLimit-Used",
        "X-RateLimit-Reset",
        "X-GitHub-Request-Id",
        "ETag",
        "Last-Modified",
    ):
        assert name in h, name
    assert h["X-RateLimit-Resource"] == "core" and h["X-GitHub-Api-Version-Selected"] == "2022-11-28"
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Used"], h["X-RateLimit-Remaining"]) == (
        "5000",
        "1",
        "4999",
    )
    assert h["Content-Type"] == "application/json; charset=utf-8"
    assert h["Cache-Control"] == "private, max-age=60, s-maxage=60"
    assert "Authorization" in h["Vary"] and h["Vary"].startswith(
        "Accept, Authorization, Cookie, X-GitHub-OTP"
    )
    assert h["ETag"].startswith('W/"') and h["ETag"].endswith('"')
    again = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"))
    assert again.headers["X-RateLimit-Used"] == "2" and again.headers["ETag"] == h["ETag"]
    assert again.headers["X-GitHub-Request-Id"] != h["X-GitHub-Request-Id"]
    assert again.headers["X-RateLimit-Reset"] == h["X-RateLimit-Reset"]
    missing = httpx.get(f"{server.url}/no/such/thing", headers=auth("alice"))
    assert missing.status_code == 404 and missing.json()["message"] == "Not Found"
    assert missing.headers["X-RateLimit-Used"] == "3" and "ETag" not in missing.headers


def test_etag_is_per_token_and_304_is_free(server: EmulatorServer, spec: OpenAPISpec) -> None:
    emu = server.emulator
    url = f"{server.url}/user"
    first = httpx.get(url, headers=auth("alice"))
    etag = first.headers["ETag"]
    assert emu.charged(tok("alice")) == 1
    for _ in range(3):
        r = httpx.get(url, headers={**auth("alice"), "If-None-Match": etag})
        assert r.status_code == 304 and r.content == b""
        assert r.headers["ETag"] == etag and r.headers["X-RateLimit-Used"] == "1"
        spec.validate("GET", "/user", 304, None)
    assert emu.charged(tok("alice")) == 1
    # the same resource for another token has a different ETag; alice's does not validate bob's copy
    bob = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("bob"))
    alice = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"))
    assert bob.headers["ETag"] != alice.headers["ETag"]
    cross = httpx.get(
        f"{server.url}/repos/{ORG}/api", headers={**auth("bob"), "If-None-Match": alice.headers["ETag"]}
    )
    assert cross.status_code == 200 and cross.json()["full_name"] == f"{ORG}/api"
    assert emu.charged(tok("bob")) == 2 and emu.charged(tok("alice")) == 2
    stats = httpx.get(f"{server.url}/_emulator/stats").json()
    assert stats["not_modified"] == 3 and stats["charged"] == {"alice": 2, "bob": 2}


def test_if_modified_since_on_repositories(server: EmulatorServer) -> None:
    url = f"{server.url}/repos/{ORG}/api"
    r = httpx.get(url, headers=auth("alice"))
    last_modified = r.headers["Last-Modified"]
    same = httpx.get(url, headers={**auth("alice"), "If-Modified-Since": last_modified})
    assert same.status_code == 304
    older = formatdate(0, usegmt=True)
    assert httpx.get(url, headers={**auth("alice"), "If-Modified-Since": older}).status_code == 200
    assert server.emulator.charged(tok("alice")) == 2


def test_mutate_changes_the_world_and_etags(server: EmulatorServer) -> None:
    urls = [f"/repos/{ORG}/{name}/actions/runs?per_page=100" for name in ("api", "web", "infra", "docs")]
    urls.append(f"/orgs/{ORG}/actions/runners")
    with httpx.Client(base_url=server.url, headers=auth("alice")) as c:
        before = {u: c.get(u).headers["ETag"] for u in urls}
        statuses = [run["status"] for u in urls[:4] for run in c.get(u).json()["workflow_runs"]]
        r = httpx.post(f"{server.url}/_emulator/mutate", json={"n": 25})
        assert r.status_code == 200 and r.json()["mutated"] == 25
        after = {u: c.get(u).headers["ETag"] for u in urls}
        statuses_after = [run["status"] for u in urls[:4] for run in c.get(u).json()["workflow_runs"]]
        assert before != after and statuses != statuses_after
        stale = c.get(urls[0], headers={"If-None-Match": before[urls[0]]})
        assert stale.status_code == (304 if before[urls[0]] == after[urls[0]] else 200)


def test_charged_counting(server: EmulatorServer) -> None:
    emu = server.emulator
    with httpx.Client(base_url=server.url, headers=auth("fleet-bot")) as c:
        assert c.get(f"/repos/{ORG}/api").status_code == 200
        assert c.get(f"/repos/{ORG}/nope").status_code == 404  # 4xx are charged too
        assert c.post("/graphql", json={"query": "{ viewer { login } }"}).json() == {
            "data": {"viewer": {"login": "fleet-bot"}}
        }
        assert c.post(f"/orgs/{ORG}/actions/runners/registration-token").status_code == 201
        rl = c.get("/rate_limit")  # never charged
        # GraphQL has its own budget, in points: the query above cost 1 of it and no REST call
        assert rl.json()["resources"]["core"]["used"] == 3 and rl.json()["rate"]["remaining"] == 4997
        c.get("/_emulator/stats")  # admin endpoints are not charged either
    assert httpx.get(f"{server.url}/orgs/{ORG}/repos").status_code == 200
    assert httpx.post(f"{server.url}/graphql", json={"query": "{ viewer { login } }"}).status_code == 401
    assert emu.charged(tok("fleet-bot")) == 3 and emu.charged("fleet-bot") == 3
    assert emu.graphql_points(tok("fleet-bot")) == 1 and emu.stats()["graphql_total_points"] == 1
    assert emu.charged(None) == 1 and emu.total_charged == 4
    stats = httpx.get(f"{server.url}/_emulator/stats").json()
    assert stats["charged"] == {"fleet-bot": 3, "anonymous": 1} and stats["total_charged"] == 4
    assert stats["requests"] == 9  # every request, admin ones included (this one too)
    assert httpx.post(f"{server.url}/_emulator/reset").status_code == 200
    assert emu.total_charged == 0 and emu.charged(tok("fleet-bot")) == 0


def test_primary_rate_limit(server: EmulatorServer, spec: OpenAPISpec) -> None:
    admin(server, primary_limit=3)
    url = f"{server.url}/repos/{ORG}/api"
    ok = [httpx.get(url, headers=auth("bob")) for _ in range(3)]
    assert [r.status_code for r in ok] == [200, 200, 200]
    assert ok[-1].headers["X-RateLimit-Remaining"] == "0"
    blocked = [httpx.get(url, headers=auth("bob")) for _ in range(2)]
    for r in blocked:
        assert r.status_code == 403
        assert r.headers["X-RateLimit-Remaining"] == "0" and r.headers["X-RateLimit-Used"] == "3"
        assert r.headers["X-RateLimit-Reset"] == ok[0].headers["X-RateLimit-Reset"]
        assert r.json()["message"].startswith("API rate limit exceeded for user ID ")
        spec.validate("GET", R, 403, r.json())
    uid = httpx.get(f"{server.url}/users/bob/repos", headers=auth("alice")).json()[0]["owner"]["id"]
    assert f"user ID {uid}." in blocked[0].json()["message"]
    assert server.emulator.charged(tok("bob")) == 3  # refusals are not charged
    assert httpx.get(url, headers=auth("alice")).status_code == 200  # per token
    limits = httpx.get(f"{server.url}/rate_limit", headers=auth("bob")).json()["resources"]["core"]
    assert limits == {"limit": 3, "used": 3, "remaining": 0, "reset": int(ok[0].headers["X-RateLimit-Reset"])}
    server.emulator.reset_counters()  # a new window
    assert httpx.get(url, headers=auth("bob")).status_code == 200


def test_anonymous_limit_is_per_address(server: EmulatorServer) -> None:
    admin(server, anon_limit=2)
    codes = [httpx.get(f"{server.url}/orgs/{ORG}/repos").status_code for _ in range(3)]
    assert codes == [200, 200, 403]
    r = httpx.get(f"{server.url}/orgs/{ORG}/repos")
    assert r.json()["message"].startswith("API rate limit exceeded for 127.0.0.1.")
    assert r.headers["X-RateLimit-Limit"] == "2" and server.emulator.charged(None) == 2


@pytest.mark.parametrize("retry_after", [30, None])
def test_secondary_rate_limit_trigger(
    server: EmulatorServer, spec: OpenAPISpec, retry_after: int | None
) -> None:
    url = f"{server.url}/repos/{ORG}/api/actions/runs"
    assert httpx.get(url, headers=auth("alice")).status_code == 200
    cfg = admin(server, secondary_for_seconds=600, secondary_retry_after=retry_after)
    assert cfg["secondary_retry_after"] == retry_after
    r = httpx.get(url, headers=auth("alice"))
    assert r.status_code == 403
    assert "You have exceeded a secondary rate limit" in r.json()["message"]
    spec.validate("GET", R, 403, r.json())
    if retry_after is None:
        assert "Retry-After" not in r.headers
    else:
        assert r.headers["Retry-After"] == str(retry_after)
    assert httpx.get(f"{server.url}/rate_limit", headers=auth("alice")).status_code == 200  # not limited
    admin(server, secondary_for_seconds=0)
    assert httpx.get(url, headers=auth("alice")).status_code == 200


def test_secondary_rate_limit_on_concurrency(server: EmulatorServer) -> None:
    admin(server, secondary_concurrency=0)  # any in-flight request is one too many
    r = httpx.get(f"{server.url}/user", headers=auth("alice"))
    assert r.status_code == 403 and r.headers["Retry-After"] == "60"
    admin(server, secondary_concurrency=2, latency_ms=[1500, 1500])

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            headers=auth("alice"), timeout=30, limits=httpx.Limits(max_connections=10)
        ) as c:
            return await asyncio.gather(*(c.get(f"{server.url}/user") for _ in range(8)))

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert 403 in codes and 200 in codes
    assert codes.count(200) >= 2


def test_link_pagination_walks_all_pages(server: EmulatorServer) -> None:
    with httpx.Client(headers=auth("alice")) as c:
        everything = c.get(f"{server.url}/repos/{ORG}/api/actions/runs?per_page=100").json()
        assert "Link" not in c.get(f"{server.url}/repos/{ORG}/api/actions/runs?per_page=100").headers
        seen: list[int] = []
        url: str | None = f"{server.url}/repos/{ORG}/api/actions/runs?per_page=2"
        pages = 0
        while url:
            r = c.get(url)
            assert r.status_code == 200
            seen += [run["id"] for run in r.json()["workflow_runs"]]
            assert r.json()["total_count"] == everything["total_count"]
            url = r.links.get("next", {}).get("url")
            pages += 1
            if url:
                assert url.startswith(f"{server.url}/repos/{ORG}/api/actions/runs?") and "per_page=2" in url
        assert seen == [run["id"] for run in everything["workflow_runs"]]
        assert pages == -(-everything["total_count"] // 2) and pages >= 3
        middle = c.get(f"{server.url}/repos/{ORG}/api/actions/runs?per_page=2&page=2")
        links = {rel: v["url"] for rel, v in middle.links.items()}
        assert set(links) == {"prev", "next", "last", "first"}
        assert links["prev"].endswith("page=1") and links["next"].endswith("page=3")
        assert links["last"].endswith(f"page={pages}") and links["first"].endswith("page=1")
        assert list(middle.links) == ["prev", "next", "last", "first"]  # GitHub's order
        repos = []
        url = f"{server.url}/orgs/{ORG}/repos?per_page=2"
        while url:
            r = c.get(url)
            repos += [x["full_name"] for x in r.json()]
            url = r.links.get("next", {}).get("url")
        assert repos == [x["full_name"] for x in c.get(f"{server.url}/orgs/{ORG}/repos?per_page=100").json()]
        assert len(c.get(f"{server.url}/user/repos?per_page=1000").json()) <= 100
        assert len(c.get(f"{server.url}/repos/{ORG}/api/actions/runs").json()["workflow_runs"]) <= 30


def test_error_rate_answers_5xx_json(server: EmulatorServer) -> None:
    admin(server, error_rate=1.0)
    for _ in range(6):
        r = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"))
        assert r.status_code in (502, 503) and r.json()["message"]
        assert "X-GitHub-Request-Id" in r.headers
    assert server.emulator.charged(tok("alice")) == 6
    assert httpx.get(f"{server.url}/_emulator/stats").status_code == 200  # admin is never faulty
    admin(server, error_rate=0.0)
    assert httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice")).status_code == 200


def test_drop_rate_closes_the_connection(server: EmulatorServer) -> None:
    admin(server, drop_rate=1.0)
    for _ in range(3):
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"), timeout=10)
    admin(server, drop_rate=0.0)
    assert httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice")).status_code == 200


def test_bad_admin_config_is_refused(server: EmulatorServer) -> None:
    for bad in (
        {"error_rate": 2},
        {"latency_ms": [5, 1]},
        {"primary_limit": "many"},
        {"bogus": 1},
        {"secondary_retry_after": "soon"},
    ):
        r = httpx.post(f"{server.url}/_emulator/config", json=bad)
        assert r.status_code == 422, bad
    assert httpx.get(f"{server.url}/_emulator/config").json()["error_rate"] == 0.0


def test_artifact_zip_through_the_redirect(server: EmulatorServer) -> None:
    emu = server.emulator
    run = emu.run_ids(ORG, "web", status="completed")[0]
    files = {"report/summary.txt": b"42 passed\n", "report/data.bin": bytes(range(256)) * 10}
    art = emu.add_artifact(ORG, "web", run, "test-report", files)
    with httpx.Client(base_url=server.url, headers=auth("alice")) as c:
        listed = c.get(f"/repos/{ORG}/web/actions/runs/{run}/artifacts").json()
        mine = next(a for a in listed["artifacts"] if a["id"] == art)
        assert mine["name"] == "test-report" and not mine["expired"]
        redirect = c.get(mine["archive_download_url"])
        assert redirect.status_code == 302
        before = emu.total_charged
        blob = c.get(redirect.headers["Location"])
    assert blob.status_code == 200 and blob.headers["Content-Type"] == "application/zip"
    assert emu.total_charged == before  # the blob host is not the API: not charged
    assert mine["size_in_bytes"] == len(blob.content)
    with zipfile.ZipFile(io.BytesIO(blob.content)) as zf:
        assert {n: zf.read(n) for n in zf.namelist()} == files
    assert httpx.get(mine["archive_download_url"]).status_code == 401  # downloads need a token


def test_job_and_run_logs(server: EmulatorServer) -> None:
    emu = server.emulator
    run = emu.run_ids(ORG, "api", status="completed")[0]
    job = emu.job_ids(run)[0]
    emu.set_job_log(job, "2025-03-03T10:00:00.0000000Z hello from the emulator\n")
    with httpx.Client(base_url=server.url, headers=auth("alice"), follow_redirects=True) as c:
        text = c.get(f"/repos/{ORG}/api/actions/jobs/{job}/logs")
        archive = c.get(f"/repos/{ORG}/api/actions/runs/{run}/logs")
        queued = emu.run_ids(ORG, "api", status="queued") + emu.run_ids(ORG, "web", status="queued")
    assert text.status_code == 200 and "hello from the emulator" in text.text
    assert text.headers["Content-Type"].startswith("text/plain")
    with zipfile.ZipFile(io.BytesIO(archive.content)) as zf:
        logs = {n: zf.read(n).decode() for n in zf.namelist()}
    assert any("hello from the emulator" in v for v in logs.values()) and len(logs) > 1
    for qrun in queued[:1]:
        r = httpx.get(
            f"{server.url}/repos/{ORG}/{'api' if qrun in emu.run_ids(ORG, 'api') else 'web'}"
            f"/actions/runs/{qrun}/logs",
            headers=auth("alice"),
        )
        assert r.status_code == 404  # no logs before a run has any


def test_cli_serves_until_sigterm() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetci",
            "emulate",
            "github",
            "--port",
            "0",
            "--latency-ms",
            "0-0",
            "--limit",
            "10",
            "--token",
            "carol=ghp_carolcarolcarolcarolcarolcarolcarol00",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        line = proc.stdout.readline()
        assert line.startswith("fleetci emulator listening on http://127.0.0.1:"), line
        url = line.split(" on ", 1)[1].strip()
        assert not url.endswith(":0")
        r = httpx.get(
            f"{url}/user", headers={"Authorization": "token ghp_carolcarolcarolcarolcarolcarolcarol00"}
        )
        assert r.status_code == 200 and r.json()["login"] == "carol"
        assert r.headers["X-RateLimit-Limit"] == "10"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stdout.read() == ""  # exactly one line


def test_cli_port_in_use(server: EmulatorServer, fleetci: RunCli) -> None:
    proc = fleetci(*emulate_github("--port", str(server.port)))
    code, err = proc.returncode, proc.stderr
    assert code == 1
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [f"fleetci: error: cannot listen on 127.0.0.1:{server.port}: address already in use"]
