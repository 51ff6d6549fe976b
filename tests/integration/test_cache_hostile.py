"""The caching proxy (a real ``fleetci cache serve`` process) against hostile input.

Every refusal is a one-line JSON ``{"message": …}`` with a 4xx status, the proxy keeps answering
afterwards, its log holds no traceback, and no answer fetched under one credential reaches another.
Upstreams are the GitHub emulator (it authorises with the first ``Authorization`` header, like GitHub)
or a small recording server started here, so what reached the upstream can be checked exactly.
"""

from __future__ import annotations

import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from aiohttp import web

from fleetci.testing import TOKENS
from fleetci.testing.server import BackgroundApp
from support import Answer, Proxy, clean_env, read_answer

MiB = 1024 * 1024


ALICE, BOB = (next(t for t, who in TOKENS.items() if who == login) for login in ("alice", "bob"))


@dataclass
class Seen:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body_bytes: int = 0
    complete: bool = True


@dataclass
class Recorder:
    """A tiny real upstream: records every request (headers, body size) and answers small JSON.

    Bodies are read in chunks and counted, never kept, so it can take hundreds of MiB."""

    server: BackgroundApp | None = None
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.raw_path, list(request.headers.items()))
        if request.raw_path != "/rate_limit":  # the proxy's start-up probe is not a client's request
            with self.lock:
                self.seen.append(seen)
        if request.body_exists:
            try:
                async for chunk in request.content.iter_chunked(256 * 1024):
                    seen.body_bytes += len(chunk)
            except (ConnectionError, web.HTTPException):  # the sender gave up (or was cut off) mid-body
                seen.complete = False
                return web.Response(status=400)
        base = self.url
        body = {
            "url": f"{base}/user",
            "repos_url": f"{base}/user/repos",
            "received": seen.body_bytes,
            "authorization": request.headers.getall("Authorization", []),
            "pad": "x" * int(request.query.get("pad", "0")),
        }
        return web.json_response(
            body,
            status=201 if request.method == "POST" else 200,
            headers={"Link": f'<{base}/user/repos?page=2>; rel="next"', "ETag": f'"{len(self.seen)}"'},
        )

    def credentials_seen(self, index: int = -1) -> list[tuple[str, str]]:
        """Header (name, value) pairs of one request that could carry a credential."""
        words = ("auth", "token", "cookie", "secret", "key", "session")
        return [(k, v) for k, v in self.seen[index].headers if any(w in k.lower() for w in words)]


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    rec.server = BackgroundApp(rec.make_app)
    rec.server.start()
    try:
        yield rec
    finally:
        rec.server.stop()


def raw(url: str, request_line: str, headers: list[tuple[str, str]], body: bytes = b"") -> Answer:
    """Send one request exactly as given (``Connection: close`` added) and read the answer."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        head = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        sock.sendall(head.encode("latin-1") + b"Connection: close\r\n\r\n" + body)
        return read_answer(sock)


def get(proxy: Proxy, target: str, headers: list[tuple[str, str]], host: str | None = None) -> Answer:
    return raw(proxy.url, f"GET {target} HTTP/1.1", [("Host", host or urlsplit(proxy.url).netloc), *headers])


def send_big(
    url: str,
    target: str,
    size: int,
    chunked: bool,
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
) -> Answer:
    """POST ``size`` bytes (declared, or chunked without a length) in 1 MiB writes; a server that
    answers early and closes is fine: whatever answer it sent is read back."""
    parts = urlsplit(url)
    framing = ("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(size))
    headers = [("Host", parts.netloc), ("Content-Type", "application/octet-stream"), framing, *extra]
    block = b"x" * MiB
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(
            f"POST {target} HTTP/1.1\r\n".encode() + "".join(f"{k}: {v}\r\n" for k, v in headers).encode()
        )
        sock.sendall(b"Connection: close\r\n\r\n")
        try:
            sent = 0
            while sent < size:
                n = min(MiB, size - sent)
                sock.sendall(b"%x\r\n" % n + block[:n] + b"\r\n" if chunked else block[:n])
                sent += n
            if chunked:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered before the whole body was sent
        return read_answer(sock)


def assert_one_line_error(a: Answer, status: int) -> str:
    assert a.status == status, (a.status, a.body[:300])
    assert (a.header("Content-Type") or "").startswith("application/json")
    message = a.json()["message"]
    assert isinstance(message, str) and message and "\n" not in message
    assert "Traceback" not in message
    return message


def assert_alive_and_quiet(proxy: Proxy) -> None:
    """The proxy still answers and has logged no traceback."""
    assert httpx.get(f"{proxy.url}/_fleetci/health", timeout=10).status_code == 200
    log = proxy.log.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def vm_kb(pid: int, field_name: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field_name + ":"))


def login_of(a: Answer) -> str | None:
    return str(a.json().get("login")) if a.status == 200 else None


AMBIGUOUS = [
    pytest.param([("Authorization", f"token {BOB}"), ("Authorization", f"token {ALICE}")], id="twice"),
    pytest.param([("authorization", f"token {BOB}"), ("Authorization", f"token {ALICE}")], id="two-cases"),
    pytest.param([("Authorization", f"token {BOB}, token {ALICE}")], id="comma"),
    pytest.param([("Authorization", f"Bearer {BOB} {ALICE}")], id="two-words"),
    pytest.param([("Authorization", f"token {ALICE}"), ("AUTHORIZATION", f"token {ALICE}")], id="same-twice"),
]


@pytest.mark.parametrize("headers", AMBIGUOUS)
def test_an_ambiguous_credential_is_refused_not_served_from_anothers_entry(
    emulator: Any, proxy: Proxy, headers: list[tuple[str, str]]
) -> None:
    alice = [("Authorization", f"token {ALICE}")]
    assert get(proxy, "/repos/alice/secret-project", alice).status == 200  # alice's entry is cached
    assert login_of(get(proxy, "/user", alice)) == "alice"
    for target in ("/repos/alice/secret-project", "/user"):
        assert_one_line_error(get(proxy, target, headers), 400)
    assert get(proxy, "/repos/alice/secret-project", [("Authorization", f"token {BOB}")]).status == 404
    assert get(proxy, "/repos/alice/secret-project", []).status in (401, 404)
    assert_alive_and_quiet(proxy)


def test_upstream_gets_exactly_the_credential_that_keyed_the_entry(
    recorder: Recorder, proxy_factory: Any
) -> None:
    proxy = proxy_factory(recorder.url)
    smuggled = [
        ("Cookie", "user_session=other"),
        ("X-GitHub-Token", "other"),
        ("Proxy-Authorization", "Basic b3RoZXI6eA=="),
        ("X-Api-Key", "other"),
    ]
    spaced = get(proxy, "/user", [("Authorization", "token  A1"), *smuggled])  # two spaces
    assert spaced.header("X-Fleetci-Cache") == "MISS"
    assert recorder.credentials_seen() == [("Authorization", "token  A1")]
    single = get(proxy, "/user", [("Authorization", "token A1")])
    assert single.header("X-Fleetci-Cache") == "MISS"  # another value: its own entry, its own call
    assert recorder.credentials_seen() == [("Authorization", "token A1")]
    calls = len(recorder.seen)
    same = get(proxy, "/user", [("authorization", "token  A1")])  # the header name's case is no matter
    assert same.header("X-Fleetci-Cache") == "HIT" and len(recorder.seen) == calls
    assert same.json()["authorization"] == ["token  A1"]
    anon = get(proxy, "/user", [("Cookie", "user_session=other")])
    assert anon.header("X-Fleetci-Cache") == "MISS" and recorder.credentials_seen() == []
    posted = raw(
        proxy.url,
        "POST /user/repos HTTP/1.1",
        [("Host", "p"), ("Authorization", "Bearer B2"), *smuggled, ("Content-Length", "2")],
        b"{}",
    )
    assert posted.status == 201 and recorder.credentials_seen() == [("Authorization", "Bearer B2")]
    assert_alive_and_quiet(proxy)


def test_the_upstream_urls_credential_keys_what_it_fetches(
    emulator: Any, proxy_factory: Any, tmp_path: Any
) -> None:
    """``--upstream https://x-access-token:T@host`` authorises requests that bring no credential: what
    they fetch is alice's, so it must not land in the anonymous partition that a proxy without that
    userinfo (or a peer) would serve to anyone."""
    host = emulator.url.split("://", 1)[1]
    shared_dir = tmp_path / "one-cache"
    as_alice = proxy_factory(f"http://x-access-token:{ALICE}@{host}", cache_dir=shared_dir)
    first = get(as_alice, "/repos/alice/secret-project", [])
    assert first.status == 200 and first.header("X-Fleetci-Cache") == "MISS"
    assert get(as_alice, "/repos/alice/secret-project", []).header("X-Fleetci-Cache") == "HIT"
    assert login_of(get(as_alice, "/user", [])) == "alice"
    assert login_of(get(as_alice, "/user", [("Authorization", f"token {BOB}")])) == "bob"  # own one wins
    as_alice.stop()
    plain = proxy_factory(emulator.url, cache_dir=shared_dir)
    anonymous = get(plain, "/repos/alice/secret-project", [])
    assert anonymous.status in (401, 404) and anonymous.header("X-Fleetci-Cache") == "MISS"
    assert get(plain, "/user", []).status == 401
    assert_alive_and_quiet(plain)


@pytest.mark.parametrize(
    "target",
    [
        "/user?access_token=SECRET1",
        "/user?per_page=5&client_id=abc&client_secret=SECRET1",
        "/user?ACCESS%5FTOKEN=SECRET1",
        "/user?a=1;access_token=SECRET1",
    ],
)
def test_credentials_in_the_query_are_refused_and_never_stored(
    recorder: Recorder, proxy_factory: Any, target: str
) -> None:
    proxy = proxy_factory(recorder.url)
    assert "query string" in assert_one_line_error(get(proxy, target, []), 400)
    post = raw(proxy.url, f"POST {target} HTTP/1.1", [("Host", "p"), ("Content-Length", "2")], b"{}")
    assert_one_line_error(post, 400)
    assert recorder.seen == []
    assert get(proxy, "/user?per_page=5", []).status == 200  # a stored entry, to look into the file
    con = sqlite3.connect(proxy.cache_dir / "cache.db")
    assert "SECRET1" not in "\n".join(con.iterdump())
    assert_alive_and_quiet(proxy)


def test_a_declared_body_over_the_cap_gets_413_before_it_is_read(
    recorder: Recorder, proxy_factory: Any
) -> None:
    proxy = proxy_factory(recorder.url)
    parts = urlsplit(proxy.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(
            b"POST /repos/o/r/git/blobs HTTP/1.1\r\nHost: p\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (300 * MiB)
        )  # and not one byte of the body: the answer must come anyway
        answer = read_answer(sock)
    assert "limit" in assert_one_line_error(answer, 413)
    assert recorder.seen == []
    assert_alive_and_quiet(proxy)


def test_a_chunked_body_is_streamed_upstream_and_cut_off_at_the_cap(
    recorder: Recorder, proxy_factory: Any
) -> None:
    proxy = proxy_factory(recorder.url, env=clean_env(CACHE_MAX_BODY_BYTES=str(4 * MiB)))
    under = send_big(proxy.url, "/repos/o/r/git/blobs", 3 * MiB, chunked=True)
    assert under.status == 201 and under.json()["received"] == 3 * MiB  # chunked, under the cap: passed on
    over = send_big(proxy.url, "/repos/o/r/git/blobs", 32 * MiB, chunked=True)
    assert_one_line_error(over, 413)
    assert not recorder.seen[-1].complete and recorder.seen[-1].body_bytes <= 4 * MiB  # aborted upstream
    declared = send_big(proxy.url, "/repos/o/r/git/blobs", 3 * MiB, chunked=False)
    assert declared.status == 201 and declared.json()["received"] == 3 * MiB
    assert ("Content-Length", str(3 * MiB)) in recorder.seen[-1].headers  # a declared length is kept
    assert_alive_and_quiet(proxy)


@pytest.mark.parametrize("mode", ["refused", "streamed"])
def test_rss_stays_bounded_over_five_300mib_posts(recorder: Recorder, proxy_factory: Any, mode: str) -> None:
    """Issue 14 target: proxy RSS <= 150 MB after five sequential 300 MiB POSTs, and it still answers.

    ``refused``: the default cap; each body is refused (declared: before reading; chunked: at the cap).
    ``streamed``: a raised cap; each body goes through to the upstream without being held."""
    env = clean_env(CACHE_MAX_BODY_BYTES=str(512 * MiB)) if mode == "streamed" else None
    proxy = proxy_factory(recorder.url, env=env)
    pid = proxy.proc.pid
    idle = vm_kb(pid, "VmRSS")
    for i in range(5):
        answer = send_big(proxy.url, "/repos/o/r/releases", 300 * MiB, chunked=i % 2 == 1)
        if mode == "streamed":
            assert answer.status == 201 and answer.json()["received"] == 300 * MiB
        else:
            assert_one_line_error(answer, 413)
    rss, peak = vm_kb(pid, "VmRSS"), vm_kb(pid, "VmHWM")
    print(f"proxy {mode}: idle {idle / 1024:.1f} MB, after {rss / 1024:.1f} MB, peak {peak / 1024:.1f} MB")
    assert rss <= 150 * 1000, rss
    assert peak <= 150 * 1000, peak
    assert_alive_and_quiet(proxy)


def test_oversize_headers_get_400_and_one_rate_limited_log_line(emulator: Any, proxy: Proxy) -> None:
    for _ in range(40):
        a = get(proxy, "/user", [("X-Big", "a" * 70_000)])
        assert a.status == 400
    a = raw(proxy.url, "GET /user HTTP/1.1", [("Host", "p"), *[(f"X-H{i}", "v") for i in range(200)]])
    assert a.status in (400, 401)
    wrong = [("Authorization", "token ghp_" + "0" * 36)]  # and it still answers correctly: a wrong token
    answers = [get(proxy, "/user", wrong) for _ in range(2)]  # passes through, uncached
    assert [(a.status, a.header("X-Fleetci-Cache")) for a in answers] == [(401, "MISS"), (401, "MISS")]
    assert login_of(get(proxy, "/user", [("Authorization", f"token {ALICE}")])) == "alice"
    assert_alive_and_quiet(proxy)
    noisy = [ln for ln in proxy.log.read_text().splitlines() if "Error handling request" in ln]
    assert 1 <= len(noisy) <= 3, noisy  # 40 bad requests, one line (the same kind is held back)
    assert all(len(ln) < 600 for ln in noisy)


@pytest.mark.parametrize(
    "host",
    [
        'a"b',
        'p>; rel="next", <http://evil.example/x',
        "evil.example/path",
        "h" * 300,
        "user@evil.example",
        "a b",
        "%0d%0aSet-Cookie:x",
    ],
)
def test_a_hostile_host_header_is_refused(emulator: Any, proxy: Proxy, host: str) -> None:
    alice = [("Authorization", f"token {ALICE}")]
    assert "Host" in assert_one_line_error(
        get(proxy, "/orgs/octo-org/repos?per_page=2", alice, host=host), 400
    )
    assert_alive_and_quiet(proxy)


def test_hosts_are_echoed_only_when_safe_and_never_grow_memory(
    recorder: Recorder, proxy_factory: Any
) -> None:
    proxy = proxy_factory(recorder.url)
    token = [("Authorization", "token A1")]
    for host in ("127.0.0.1:9", "[::1]:9101", "runner-7.internal", "api.github.com"):
        a = get(proxy, "/user", token, host=host)
        assert a.status == 200 and a.json()["url"] == f"http://{host}/user"  # valid JSON, our base
        assert (a.header("Link") or "").startswith(f"<http://{host}/user/repos?page=2>")
    twice = raw(proxy.url, "GET /user HTTP/1.1", [("Host", "a"), ("Host", "b"), *token])
    assert twice.status == 400  # aiohttp's parser refuses it before the proxy sees it
    before = vm_kb(proxy.proc.pid, "VmRSS")
    for i in range(1000):  # distinct Hosts, each a rewritten copy of the same cached 200 kB body
        assert get(proxy, "/user?pad=200000", token, host=f"h{i}.example").status == 200
    grown = vm_kb(proxy.proc.pid, "VmRSS") - before
    assert grown < 24 * 1024, f"RSS grew {grown} kB"
    assert_alive_and_quiet(proxy)


PATH_TRICKS = (
    "GET //evil.example/user HTTP/1.1",
    "GET /repos/../user HTTP/1.1",
    "GET /repos/%2e%2e/user HTTP/1.1",
    "GET /repos/%2E%2E/%2E%2E/user HTTP/1.1",
    "GET /%2F%2Fevil.example/user HTTP/1.1",
    "GET /user/..%2f..%2fadmin HTTP/1.1",
    "GET {evil}/user HTTP/1.1",
    "GET @evil.example/user HTTP/1.1",
    "GET * HTTP/1.1",
    "GET /user?x=%00 HTTP/1.1",
    "POST {evil}/user/repos HTTP/1.1",
)


def test_path_tricks_never_reach_another_host(recorder: Recorder, proxy_factory: Any) -> None:
    """``//host``, dot segments (plain and encoded) and absolute-form targets stay paths on the upstream."""
    evil = Recorder()
    evil.server = BackgroundApp(evil.make_app)
    evil.server.start()
    try:
        proxy = proxy_factory(recorder.url)
        for trick in PATH_TRICKS:
            line = trick.replace("{evil}", evil.url)
            extra = [("Content-Length", "0")] if line.startswith("POST") else []
            a = raw(proxy.url, line, [("Host", "p"), ("Authorization", "token A1"), *extra])
            assert a.status < 500, (line, a.status, a.body[:200])
            if a.status >= 400 and (a.header("Content-Type") or "").startswith("application/json"):
                assert_one_line_error(a, a.status)
        assert evil.seen == []
        upstream_host = urlsplit(recorder.url).netloc
        assert all(
            s.target.startswith("/") and dict(s.headers)["Host"] == upstream_host for s in recorder.seen
        )
        assert_alive_and_quiet(proxy)
    finally:
        evil.server.stop()
