"""The local package index (``fleetci.install.index``, what pip and ``fleetci bench install`` talk to)
under hostile input: refusals are one JSON line with a 4xx, logged once, and the index keeps serving.

A real index on 127.0.0.1 per test; raw requests go through ``http.client`` or a socket so paths,
headers and framing reach it exactly as written.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleetci.install.index import MAX_BODY_BYTES, LocalIndex, build_wheel
from support import raw_request, server_lines_are_one_line

WHEEL = "alpha-1.0-py3-none-any.whl"


@pytest.fixture
def index(tmp_path: Path, server_log: pytest.LogCaptureFixture) -> Iterator[LocalIndex]:
    wheels = tmp_path / "wheels"
    build_wheel(wheels, "alpha", "1.0")
    (wheels / "notes.txt").write_text("not a wheel: never served\n")
    (tmp_path / "secret.txt").write_text("outside the wheel directory\n")
    with LocalIndex(wheels) as idx:
        yield idx


def port(index: LocalIndex) -> int:
    return int(index.url.split(":")[2].split("/")[0])


def raw(
    index: LocalIndex,
    method: str,
    path: str,
    headers: dict[str, str | bytes] | None = None,
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    return raw_request("127.0.0.1", port(index), method, path, headers, body)


def one_line(body: bytes) -> str:
    message = json.loads(body)["message"]
    assert isinstance(message, str) and message and "\n" not in message, message
    return message


def still_serves(index: LocalIndex) -> None:
    """pip's two requests: the project page, then the wheel it links to."""
    page = httpx.get(f"{index.url}alpha/", timeout=10)
    assert page.status_code == 200 and WHEEL in page.text
    wheel = httpx.get(index.url.replace("/simple/", f"/packages/{WHEEL}"), timeout=10)
    assert wheel.status_code == 200 and wheel.content[:2] == b"PK"


def exchange(index: LocalIndex, data: bytes) -> bytes:
    """Send ``data`` on one connection and read everything the index answers until it closes."""
    with socket.create_connection(("127.0.0.1", port(index)), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_declared_body_over_the_cap_is_413(index: LocalIndex, server_log: pytest.LogCaptureFixture) -> None:
    status, headers, body = raw(index, "GET", "/simple/", {"Content-Length": str(MAX_BODY_BYTES + 1)})
    assert status == 413 and headers["content-type"] == "application/json"
    assert "over this server's limit" in one_line(body)
    r = httpx.request("GET", index.url, content=b"x" * 5_000_000, timeout=30)  # sent, never read
    assert r.status_code == 413
    still_serves(index)
    server_lines_are_one_line(server_log)


def test_an_undeclared_chunked_body_is_refused(index: LocalIndex) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(32):
            yield b"x" * 65536

    r = httpx.request("GET", index.url, content=chunks(), timeout=30)
    assert r.status_code == 411  # the stdlib server cannot frame it: refused, never misread as requests
    one_line(r.content)
    still_serves(index)


def test_a_small_body_is_drained_so_keep_alive_stays_in_step(index: LocalIndex) -> None:
    # Pipelined: a GET carrying 5 body bytes, then a second GET on the same connection.
    out = exchange(
        index,
        b"GET /simple/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /simple/alpha/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert out.count(b"HTTP/1.1 200 OK") == 2, out[:500]
    assert WHEEL.encode() in out


def test_oversize_headers_are_refused_and_logged_once(
    index: LocalIndex, server_log: pytest.LogCaptureFixture
) -> None:
    for size in (20_000,) * 10 + (70_000,) * 10:  # over our cap; over the stdlib's line limit too
        status, _, body = raw(index, "GET", "/simple/", {"X-Padding": "a" * size})
        assert status == 431
        one_line(body)
    lines = [r for r in server_log.records if r.name == "fleetci.server"]
    assert len(lines) == 1 and "431" in lines[0].getMessage(), [r.getMessage() for r in lines]
    server_lines_are_one_line(server_log)
    still_serves(index)


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /simple/ extra HTTP/1.1\r\n\r\n", 400),  # the stdlib quotes this line in its message
        (b"GET /simple/ HTTP/9.9\r\n\r\n", 505),
        (b"GET /simple/ HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"GET /simple/ HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n", 400),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 414),
    ],
)
def test_malformed_requests_are_one_json_line(
    index: LocalIndex, server_log: pytest.LogCaptureFixture, data: bytes, status: int
) -> None:
    out = exchange(index, data.replace(b"/simple/", b"/simple/?token=ghp_NotForTheLog"))
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()) or head.startswith(
        f"HTTP/1.0 {status} ".encode()
    ), out[:300]
    one_line(body)
    assert "ghp_NotForTheLog" not in server_log.text  # the log says what was refused, not what was sent
    server_lines_are_one_line(server_log)
    still_serves(index)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
def test_writes_are_405_in_one_line(index: LocalIndex, method: str) -> None:
    status, _, body = raw(index, method, "/simple/", {}, b'{"name": "evil"}')
    assert status == 405 and "read-only" in one_line(body)
    still_serves(index)


@pytest.mark.parametrize(
    "path",
    [
        "/packages/notes.txt",  # in the wheel directory, but not a wheel
        "/packages/..",
        "/packages/%2e%2e",
        "/packages/../secret.txt",
        "/packages/..%2fsecret.txt",
        "/packages/%2e%2e%2fsecret.txt",
        f"/packages//{WHEEL}/../../secret.txt",
        "//simple//..//..//secret.txt",
        "/simple/../../secret.txt",
        "/packages/%00",
    ],
)
def test_path_tricks_serve_nothing_but_wheels(index: LocalIndex, path: str) -> None:
    status, _, body = raw(index, "GET", path)
    assert status == 404, (status, body[:200])
    assert b"outside the wheel directory" not in body and b"not a wheel" not in body
    still_serves(index)
