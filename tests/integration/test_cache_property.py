"""Property: whatever credential headers a client sends, no answer crosses credentials.

Hypothesis draws sequences of requests (so earlier answers sit in the cache) with any mix of
``Authorization`` headers (repeated, differently cased, several credentials in one, whitespace and scheme
variants), query credentials and other credential-looking headers, and sends them to a real proxy process
in front of the GitHub emulator, which authorises with the first ``Authorization`` header like GitHub.

The oracle is independent of the proxy's code: an ambiguous request must be refused (400); any other
must get what the emulator itself answers, asked directly, for that request's one ``Authorization`` value
(or none). A cached answer fetched under another credential would differ in status, login or repositories.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetci.testing import TOKENS, EmulatorServer
from support import Proxy, start_proxy
from support.emulator import quiet_emulator

WRONG = "ghp_" + "0" * 36


TOKEN_VALUES = [*TOKENS, WRONG]


PATHS = ["/user", "/repos/alice/secret-project", "/user/repos?per_page=100"]


QUERY_CREDENTIALS = ["access_token", "client_secret", "client_id"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[EmulatorServer]:
    with quiet_emulator(primary_limit=10**9, anon_limit=10**9) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: EmulatorServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    with start_proxy(upstream.url, Path(tmp_path_factory.mktemp("property")) / "cache") as p:
        yield p


tokens = st.sampled_from(TOKEN_VALUES)


one_credential = st.builds(
    lambda scheme, sep, tok: f"{scheme}{sep}{tok}",
    st.sampled_from(["token", "Token", "TOKEN", "bearer", "Bearer", "Basic"]),
    st.sampled_from([" ", "  ", "\t"]),
    tokens,
)


auth_value = st.one_of(
    one_credential,
    tokens,  # a bare token
    st.builds(lambda a, b: f"{a}, {b}", one_credential, one_credential),
    st.builds(lambda a, b: f"{a},{b}", one_credential, tokens),
    st.builds(lambda a, b: f"{a} {b}", one_credential, tokens),
)


auth_name = st.sampled_from(["Authorization", "authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"])


other_credential = st.tuples(
    st.sampled_from(["Cookie", "X-GitHub-Token", "Proxy-Authorization", "X-Api-Key", "X-Auth-Token"]),
    st.builds(lambda tok, form: form.format(tok), tokens, st.sampled_from(["{}", "token {}", "s={}"])),
)


request = st.fixed_dictionaries(
    {
        "path": st.sampled_from(PATHS),
        "query": st.one_of(st.just(None), st.tuples(st.sampled_from(QUERY_CREDENTIALS), tokens)),
        "auth": st.lists(st.tuples(auth_name, auth_value), max_size=3),
        "other": st.lists(other_credential, max_size=2),
        "order": st.randoms(use_true_random=False),
    }
)


def ambiguous(req: dict[str, Any]) -> bool:
    """Refusal expected: a query credential, several Authorization headers, several credentials in one."""
    if req["query"] is not None or len(req["auth"]) > 1:
        return True
    return bool(req["auth"]) and ("," in req["auth"][0][1] or len(req["auth"][0][1].split()) > 2)


def identity(resp: httpx.Response, path: str) -> tuple[object, ...]:
    """What an answer reveals about whose credential it was fetched with."""
    if resp.status_code != 200:
        return (resp.status_code,)
    data = resp.json()
    if path == "/user":
        return (200, data["login"])
    if path.startswith("/user/repos"):
        return (200, tuple(sorted(r["full_name"] for r in data)))
    return (200, data["full_name"])


def send(client: httpx.Client, req: dict[str, Any]) -> httpx.Response:
    headers = [("Accept", "application/vnd.github+json"), *req["auth"], *req["other"]]
    order: random.Random = req["order"]
    order.shuffle(headers)
    target = req["path"]
    if req["query"] is not None:
        name, tok = req["query"]
        target += ("&" if "?" in target else "?") + f"{name}={tok}"
    return client.get(target, headers=headers)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(request, min_size=1, max_size=4))
def test_no_answer_is_served_under_another_credential(
    proxy: Proxy, upstream: EmulatorServer, requests: list[dict[str, Any]]
) -> None:
    with (
        httpx.Client(base_url=proxy.url, timeout=30) as via,
        httpx.Client(base_url=upstream.url, timeout=30) as direct,
    ):
        for req in requests:
            got = send(via, req)
            if ambiguous(req):
                assert got.status_code == 400, (req, got.status_code, got.headers.get("X-Fleetci-Cache"))
                assert "\n" not in got.json()["message"]
                continue
            own = [("Authorization", req["auth"][0][1])] if req["auth"] else []
            expected = direct.get(req["path"], headers=[("Accept", "application/vnd.github+json"), *own])
            assert identity(got, req["path"]) == identity(expected, req["path"]), (
                req,
                got.headers.get("X-Fleetci-Cache"),
            )
