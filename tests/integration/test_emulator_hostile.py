"""The GitHub emulator under hostile input: every answer is a one-line 4xx, no traceback, nothing lost.

A real emulator on 127.0.0.1 per test (as in ``test_emulator``); raw requests go through ``http.client``
so paths and headers reach the server exactly as written. Error bodies must stay GitHub-shaped and
validate against GitHub's OpenAPI description, like the emulator's other errors.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetci.testing import EmulatorConfig, EmulatorServer, GitHubEmulator
from fleetci.testing.github import MAX_BODY_BYTES
from fleetci.testing.openapi import OpenAPISpec
from support import raw_request, server_lines_are_one_line
from support.emulator import ORG, R, _env, auth, quiet_emulator

BASELINE = {"latency_ms": (0.0, 0.0), "error_rate": 0.0, "drop_rate": 0.0, "primary_limit": 5000}


@pytest.fixture
def server(server_log: pytest.LogCaptureFixture) -> Iterator[EmulatorServer]:
    with quiet_emulator(seed=11) as srv:
        yield srv


def raw(
    server: EmulatorServer,
    method: str,
    path: str,
    headers: dict[str, str | bytes] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    return raw_request(server.host, server.port, method, path, headers, body)


def one_line_json(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    assert isinstance(data.get("message"), str) and data["message"], data
    assert "\n" not in data["message"] and "Traceback" not in data["message"], data
    return data


def still_serves(server: EmulatorServer) -> None:
    """A normal request after the hostile ones: same answer as on a fresh server, settings untouched."""
    r = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("alice"), timeout=10)
    assert r.status_code == 200 and r.json()["full_name"] == f"{ORG}/api"
    config = httpx.get(f"{server.url}/_emulator/config", timeout=10).json()
    assert config["latency_ms"] == [0.0, 0.0] and config["error_rate"] == 0.0
    assert config["window_seconds"] == 3600.0 and config["primary_limit"] == 5000


def test_declared_body_over_the_cap_is_413_in_githubs_shape(
    server: EmulatorServer, spec: OpenAPISpec, server_log: pytest.LogCaptureFixture
) -> None:
    # Only the headers are sent: the cap must answer before a byte of the body is read.
    status, _, body = raw(
        server,
        "POST",
        "/graphql",
        {"Authorization": auth("alice")["Authorization"], "Content-Length": str(MAX_BODY_BYTES + 1)},
    )
    assert status == 413
    data = one_line_json(body)
    assert data["documentation_url"].startswith("https://docs.github.com/") and data["status"] == "413"
    spec.validate("GET", R, 404, data)  # GitHub's basic-error shape, as every other emulator error
    still_serves(server)
    server_lines_are_one_line(server_log)


def test_chunked_body_over_the_cap_is_413(server: EmulatorServer, spec: OpenAPISpec) -> None:
    def chunks() -> Iterator[bytes]:
        block = b" " * (1024 * 1024)
        for _ in range(MAX_BODY_BYTES // len(block) + 1):
            yield block

    for path in ("/graphql", "/_emulator/config"):
        r = httpx.post(server.url + path, content=chunks(), headers=auth("alice"), timeout=60)
        assert r.status_code == 413, (path, r.text)
        one_line_json(r.content)
    spec.validate("GET", R, 404, r.json())
    still_serves(server)


# Bodies a JSON endpoint must answer 400 "Problems parsing JSON" to, never a 500.
BAD_JSON = {
    "malformed": b'{"query": ',
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
    "nested-object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nan": b'{"n": NaN, "query": "{viewer{login}}"}',
    "not-utf8": b'{"query": "\xff\xfe"}',
    "huge-int": b'{"n": ' + b"9" * 5000 + b"}",
}


def write_routes() -> list[tuple[str, str]]:
    """Every route of the emulator's router that takes a body, filled with real names (method, path)."""
    app = GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0))).make_app()
    fill = {
        "owner": ORG,
        "repo": "infra",
        "org": ORG,
        "tail": "no/such/endpoint",
        "hook_id": "1",
        "delivery_id": "1",
    }
    out = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        template = str(info.get("path") or info.get("formatter"))
        methods = ["POST", "PATCH", "PUT"] if route.method == "*" else [route.method]
        out += [(m, template.format(**fill)) for m in methods if m in ("POST", "PATCH", "PUT")]
    return out


JSON_ENDPOINTS = {  # the ones that parse their body
    "/graphql",
    "/_emulator/config",
    "/_emulator/mutate",
    f"/repos/{ORG}/infra/hooks",
    f"/orgs/{ORG}/hooks",
}


@pytest.mark.parametrize(("method", "path"), write_routes(), ids=lambda v: str(v))
def test_bad_json_on_every_write_endpoint_is_a_one_line_4xx(
    server: EmulatorServer, server_log: pytest.LogCaptureFixture, method: str, path: str
) -> None:
    for name, body in BAD_JSON.items():
        r = httpx.request(method, server.url + path, content=body, headers=auth("alice"), timeout=30)
        assert r.status_code < 500, (name, r.status_code, r.text[:200])
        if r.status_code >= 400:
            data = one_line_json(r.content)
            if path in JSON_ENDPOINTS:
                assert r.status_code == 400 and data["message"].startswith("Problems parsing JSON"), name
    still_serves(server)
    server_lines_are_one_line(server_log)


def test_graphql_parse_errors_validate_as_github_errors(server: EmulatorServer, spec: OpenAPISpec) -> None:
    r = httpx.post(f"{server.url}/graphql", content=BAD_JSON["deeply-nested"], headers=auth("alice"))
    assert r.status_code == 400
    assert r.json()["message"] == "Problems parsing JSON" and r.json()["status"] == "400"
    spec.validate("GET", R, 404, r.json())


def test_admin_values_that_would_break_the_server_are_refused(server: EmulatorServer) -> None:
    bad: list[tuple[bytes, int]] = [
        (b'{"window_seconds": NaN}', 400),  # not JSON; in Python it broke every new rate-limit window
        (b'{"window_seconds": 1e400}', 422),
        (b'{"primary_limit": 1e400}', 422),
        (b'{"latency_ms": [0, 1e12]}', 422),  # a delay no client waits for
        (b'{"latency_ms": "05"}', 422),
        (b'{"self": 1}', 422),
        (b'{"gzip": "no"}', 422),
        (b'{"secondary_for_seconds": 1e400}', 422),
        (b"[1, 2]", 422),
    ]
    for body, status in bad:
        r = httpx.post(f"{server.url}/_emulator/config", content=body, timeout=10)
        assert r.status_code == status, (body, r.text)
        one_line_json(r.content)
    for body in (b'{"n": 1e400}', b'{"n": 1000000000}', b'{"n": -1}', b'{"n": "5"}', b"[]", b'{"n": true}'):
        r = httpx.post(f"{server.url}/_emulator/mutate", content=body, timeout=10)
        assert r.status_code == 422, (body, r.text)
    version = httpx.get(f"{server.url}/_emulator/health").json()["version"]
    assert version == 0  # nothing was mutated
    # a new token opens a new rate-limit window: it must still compute
    r = httpx.get(f"{server.url}/repos/{ORG}/api", headers=auth("bob"), timeout=10)
    assert r.status_code == 200 and int(r.headers["X-RateLimit-Reset"]) > 0
    still_serves(server)


def test_oversize_headers_are_400_and_one_log_line(
    server: EmulatorServer, server_log: pytest.LogCaptureFixture
) -> None:
    for _ in range(20):
        status, _, body = raw(server, "GET", "/user", {"X-Padding": "a" * 20_000})
        assert status == 400
        assert b"Traceback" not in body
    lines = [r for r in server_log.records if r.name.startswith("aiohttp")]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # the 19 repeats are held back
    assert "LineTooLong" in lines[0].getMessage()
    server_lines_are_one_line(server_log)
    still_serves(server)


def test_an_oversize_authorization_line_is_not_logged(
    server: EmulatorServer, server_log: pytest.LogCaptureFixture
) -> None:
    secret = "ghp_" + "S3cr3t" * 6
    status, _, _ = raw(server, "GET", "/user", {"Authorization": f"token {secret}" + "a" * 9000})
    assert status == 400
    lines = [r.getMessage() for r in server_log.records if r.name.startswith("aiohttp")]
    assert len(lines) == 1 and "LineTooLong" in lines[0], lines
    assert secret[:10] not in server_log.text
    server_lines_are_one_line(server_log)


def test_a_host_header_that_is_not_ascii_is_400(server: EmulatorServer, spec: OpenAPISpec) -> None:
    status, _, body = raw(server, "GET", f"/repos/{ORG}/api", {"Host": b"\xff\xfe.example"})
    assert status == 400
    spec.validate("GET", R, 404, one_line_json(body))
    still_serves(server)


@pytest.mark.parametrize(
    "path",
    [
        "/repos/alice/../alice/secret-project",
        "/repos/alice/%2e%2e/alice/secret-project",
        "/repos/%2e%2e/alice/secret-project",
        "//repos/alice/secret-project",
        "/repos//alice/secret-project",
        "/repos/alice%2Fsecret-project",
        f"/repos/{ORG}/api/actions/runs/{'9' * 5000}",
        f"/repos/{ORG}/api/actions/jobs/{'1' * 40}",
        f"/repos/{ORG}/api/actions/artifacts/{'7' * 4400}/zip",
        "/_emulator/blobs/artifacts/..%2F..%2Fetc%2Fpasswd",
        "/_emulator/blobs/run-logs/%C2%B2.zip",
        "/_emulator/blobs/job-logs/" + "9" * 4400 + ".txt",
        "/_emulator/../_emulator/config",
    ],
)
def test_path_tricks_find_nothing_and_never_fail(
    server: EmulatorServer, server_log: pytest.LogCaptureFixture, path: str
) -> None:
    status, _, body = raw(server, "GET", path)
    assert status < 500, (status, body[:200])
    if status == 200:  # only a normalized admin path may answer, never the private repository
        assert path == "/_emulator/../_emulator/config" and b"latency_ms" in body
    assert b"secret-project" not in body
    server_lines_are_one_line(server_log)
    still_serves(server)


@pytest.mark.parametrize(
    "header",
    [
        "token ",
        "token",
        "Bearer",
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "token ghp_emuAliceiqPyQL7nUEQ4wRTuppimk5hgl7vQx",
        "token ghp_emuAliceiqPyQL7nUEQ4wRTuppimk5hgl7vQ ghp_emuAliceiqPyQL7nUEQ4wRTuppimk5hgl7vQ",
        b"token \xff\xfe",
    ],
)
def test_wrong_tokens_are_401_bad_credentials(
    server: EmulatorServer, spec: OpenAPISpec, header: str | bytes
) -> None:
    status, _, body = raw(server, "GET", "/user", {"Authorization": header})
    assert status == 401
    data = one_line_json(body)
    assert data["message"] == "Bad credentials"
    spec.validate("GET", "/user", 401, data)
    status, _, body = raw(server, "POST", f"/repos/{ORG}/api/actions/runners/registration-token", {})
    assert status == 401 and one_line_json(body)["message"] == "Requires authentication"
    still_serves(server)


SETTING_KEYS = [
    *EmulatorConfig.__dataclass_fields__,
    "secondary_for_seconds",
    "secondary_retry_after",
    "n",
    "query",
    "self",
]


# Numbers weigh more than in plain JSON: limits, rates and counts are where the emulator's checks live.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


bodies = st.one_of(
    json_values.map(json.dumps).map(str.encode),
    st.dictionaries(st.sampled_from(SETTING_KEYS), json_values, max_size=3).map(json.dumps).map(str.encode),
    st.binary(max_size=64),
)


def test_random_bodies_on_write_endpoints_never_5xx(server_log: pytest.LogCaptureFixture) -> None:
    one_each = sorted({path: (method, path) for method, path in write_routes()}.values())
    routes = one_each + [r for r in one_each if r[1] in JSON_ENDPOINTS] * 2  # the parsers, more often
    with (
        EmulatorServer(GitHubEmulator(EmulatorConfig(latency_ms=(0.0, 0.0), seed=5))) as srv,
        httpx.Client(base_url=srv.url, headers=auth("alice"), timeout=30) as client,
    ):
        emu = srv.emulator

        @settings(
            max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
        )
        @given(route=st.sampled_from(routes), body=bodies)
        def check(route: tuple[str, str], body: bytes) -> None:
            method, path = route
            try:
                r = client.request(method, path, content=body)
                assert r.status_code < 500, (route, body[:200], r.status_code, r.text[:200])
                if r.status_code >= 400:
                    one_line_json(r.content)
            finally:  # a valid random setting (drop_rate 1, a long latency) must not leak into the next
                emu.configure(**BASELINE)
                emu.trigger_secondary(0)

        check()
        r = client.get(f"/repos/{ORG}/api")
        assert r.status_code == 200
    server_lines_are_one_line(server_log)


def test_cli_emulator_logs_one_line_for_a_flood_of_bad_requests() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetci", "emulate", "github", "--port", "0", "--latency-ms", "0-0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "no output within 60 s"
        url = proc.stdout.readline().split(" on ", 1)[1].strip()
        for _ in range(25):
            r = httpx.get(f"{url}/user", headers={"X-Padding": "a" * 20_000}, timeout=10)
            assert r.status_code == 400
        for body in BAD_JSON.values():
            assert httpx.post(f"{url}/_emulator/mutate", content=body, timeout=30).status_code == 400
            r = httpx.post(f"{url}/graphql", content=body, headers=auth("alice"), timeout=30)
            assert r.status_code == 400
        assert httpx.get(f"{url}/repos/{ORG}/api", headers=auth("alice"), timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err, err[:2000]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "LineTooLong" in lines[0], lines
