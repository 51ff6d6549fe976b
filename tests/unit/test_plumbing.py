"""The shared plumbing every capability relies on: private files, one-line logs, guarded servers, URLs."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from fleetci.files import ensure_private_dir, open_private, tighten, touch_private, write_private
from fleetci.http import RUNNER_OPTIONS, guarded_app, redact_url
from fleetci.logs import OneLineRateLimited


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- files ---------------------------------------------------------------------------------------------
def test_write_private_is_0600_in_a_0700_dir_and_atomic(tmp_path: Path) -> None:
    target = tmp_path / "state" / "deep" / "s.json"
    write_private(target, '{"a": 1}')
    assert target.read_text() == '{"a": 1}'
    assert mode(target) == 0o600
    assert mode(target.parent) == 0o700
    write_private(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["s.json"]  # no temp file left behind


def test_write_private_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    target = tmp_path / "s.json"
    write_private(target, "old")
    with pytest.raises(TypeError):
        write_private(target, 42)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["s.json"]


def test_existing_wide_files_and_dirs_are_tightened(tmp_path: Path) -> None:
    d = tmp_path / "cache"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    db = d / "cache.db"
    db.write_bytes(b"x")
    db.chmod(0o644)
    log = d / "proxy.log"
    log.write_text("")
    log.chmod(0o666)
    ensure_private_dir(d)
    touch_private(db)
    tighten(log, d / "missing")
    assert (mode(d), mode(db), mode(log)) == (0o700, 0o600, 0o600)
    assert db.read_bytes() == b"x"  # touching never truncates


def test_a_shared_sticky_dir_is_not_ours_to_tighten(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    ensure_private_dir(shared)
    assert mode(shared) == 0o1777


def test_open_private_appends_with_mode_0600(tmp_path: Path) -> None:
    p = tmp_path / "logs" / "x.log"
    old = os.umask(0)
    try:
        with open_private(p) as fh:
            fh.write("one\n")
        with open_private(p) as fh:
            fh.write("two\n")
    finally:
        os.umask(old)
    assert p.read_text() == "one\ntwo\n"
    assert mode(p) == 0o600


# -- logs ----------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_tracebacks_become_one_line_and_repeats_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    logger = logging.getLogger("fleetci.test.plumbing")
    logger.addFilter(OneLineRateLimited(window=10, clock=clock))
    caplog.set_level(logging.ERROR, logger=logger.name)
    for _ in range(50):
        try:
            raise ValueError("bad\nheader line")
        except ValueError:
            logger.exception("Error handling request from %s", "127.0.0.1")
    assert len(caplog.records) == 1
    rec = caplog.records[0]
    assert rec.exc_info is None
    assert rec.getMessage() == "Error handling request from 127.0.0.1: ValueError: bad header line"
    assert "Traceback" not in caplog.text
    clock.now = 11
    logger.error("Error handling request from %s", "127.0.0.1", exc_info=ValueError("again"))
    assert len(caplog.records) == 2
    assert "(49 more like this suppressed)" in caplog.records[1].getMessage()
    logger.error("a different line")
    assert len(caplog.records) == 3


# -- guarded servers -----------------------------------------------------------------------------------
async def _serve_and_probe(probe: object) -> None:
    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("internal detail /etc/secret")

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=str(len(await request.read())))

    app = guarded_app(1024)
    app.router.add_get("/boom", boom)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, **RUNNER_OPTIONS)  # type: ignore[arg-type]
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            await probe(c)  # type: ignore[operator]
    finally:
        await runner.cleanup()


def test_guarded_app_caps_bodies_and_never_shows_a_traceback(caplog: pytest.LogCaptureFixture) -> None:
    async def probe(c: httpx.AsyncClient) -> None:
        for _ in range(3):
            r = await c.get("/boom")
            assert r.status_code == 500
            assert r.json() == {"message": "internal error (RuntimeError)"}  # no detail, no traceback
        r = await c.post("/echo", content=b"a" * 5000)
        assert r.status_code == 413
        assert "over this server's limit of 1024" in r.json()["message"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(8):
                yield b"b" * 512

        r = await c.post("/echo", content=chunks())  # no Content-Length: cut off while reading
        assert r.status_code == 413
        r = await c.post("/echo", content=b"a" * 1024)
        assert (r.status_code, r.text) == (200, "1024")

    caplog.set_level(logging.DEBUG)
    asyncio.run(_serve_and_probe(probe))
    assert "Traceback" not in caplog.text
    failures = [r for r in caplog.records if r.name == "fleetci.server"]
    assert len(failures) == 1  # three identical failures, one line
    assert failures[0].getMessage() == "GET /boom failed: RuntimeError: internal detail /etc/secret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host:1/x?y=1", "http://***@host:1/x?y=1"),
        ("https://ghp_secret@github.com/o/r", "https://***@github.com/o/r"),
        ("http://u:p@[::1]:8/", "http://***@[::1]:8/"),
        ("http://host:1/a@b", "http://host:1/a@b"),
        ("https://api.github.com", "https://api.github.com"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# -- the CLI's last line of defence --------------------------------------------------------------------
class _Broken:
    def __init__(self, *_verb: object) -> None:
        pass

    def parse_args(self, argv: list[str]) -> object:
        import argparse

        def func(args: object) -> int:
            raise RuntimeError("row 7 of state.json\nsecond line")

        return argparse.Namespace(func=func)


def test_an_unforeseen_failure_is_one_line_and_exit_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import fleetci.cli as cli

    monkeypatch.delenv("FLEETCI_DEBUG", raising=False)
    monkeypatch.setattr(cli, "build_parser", _Broken)
    assert cli.main(["anything"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fleetci: error: internal error: RuntimeError: row 7 of state.json second line (")
    monkeypatch.setenv("FLEETCI_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["anything"])


def test_parser_errors_of_aiohttp_never_quote_the_request() -> None:
    """aiohttp's pure-Python parser quotes the request line (a query token) without a ``b'…'`` repr."""
    from aiohttp.http_exceptions import BadStatusLine, InvalidURLError

    for exc in (
        BadStatusLine("GET /x?access_token=ghp_SECRET HTTP/1.1"),
        InvalidURLError("/x?access_token=ghp_SECRET"),
    ):
        rec = logging.LogRecord(
            "aiohttp.server",
            logging.ERROR,
            __file__,
            1,
            "Error handling request from %s",
            ("10.0.0.1",),
            (type(exc), exc, None),
        )
        assert OneLineRateLimited().filter(rec)
        assert rec.getMessage() == f"Error handling request from 10.0.0.1: {type(exc).__name__} (HTTP 400)"


# -- retry ---------------------------------------------------------------------------------------------
class Flaky:
    """An action failing with ``errors`` in turn, then answering ``done``; records each attempt number."""

    def __init__(self, *errors: BaseException, done: str = "done") -> None:
        self.errors = list(errors)
        self.done = done
        self.attempts: list[int] = []

    def __call__(self, attempt: int) -> str:
        self.attempts.append(attempt)
        if self.errors:
            raise self.errors.pop(0)
        return self.done


def test_retry_retries_transient_failures_until_success() -> None:
    from fleetci.retry import Backoff, Transient, call

    sleeps: list[float] = []
    hooks: list[tuple[int, float, str]] = []
    action = Flaky(Transient("mirror blinked"), Transient("again"))
    result = call(
        action,
        Backoff(retries=3, initial=0.5, most=30, jitter=0),
        sleep=sleeps.append,
        on_retry=lambda attempt, wait, exc: hooks.append((attempt, wait, str(exc))),
    )
    assert result == "done"
    assert action.attempts == [1, 2, 3]
    assert sleeps == [0.5, 1.0]  # exponential from ``initial``
    assert hooks == [(1, 0.5, "mirror blinked"), (2, 1.0, "again")]


def test_retry_gives_up_after_retries_plus_one_attempts_and_says_how_many() -> None:
    from fleetci.retry import Backoff, Transient, call

    sleeps: list[float] = []
    action = Flaky(*(Transient(f"down {i}") for i in range(10)))
    with pytest.raises(Transient, match=r"^down 3$") as info:
        call(action, Backoff(retries=3, initial=1, most=2.5, jitter=0), sleep=sleeps.append)
    assert action.attempts == [1, 2, 3, 4]
    assert info.value.attempts == 4  # type: ignore[attr-defined]
    assert sleeps == [1.0, 2.0, 2.5]  # capped at ``most``


@pytest.mark.parametrize("error", [ValueError("bad digest"), KeyError("no such package")])
def test_retry_fails_at_once_on_what_is_not_transient(error: Exception) -> None:
    from fleetci.retry import Backoff, Permanent, call

    sleeps: list[float] = []
    action = Flaky(error)
    with pytest.raises(type(error)) as info:
        call(action, Backoff(retries=5, initial=0.01), sleep=sleeps.append)
    assert info.value is error
    assert (action.attempts, sleeps, info.value.attempts) == ([1], [], 1)  # type: ignore[attr-defined]

    action = Flaky(Permanent("401 bad credentials"))
    with pytest.raises(Permanent) as perm:
        call(action, Backoff(retries=5, initial=0.01), sleep=sleeps.append)
    assert (action.attempts, sleeps, perm.value.attempts) == ([1], [], 1)  # type: ignore[attr-defined]


def test_retry_on_names_what_is_worth_retrying() -> None:
    from fleetci.retry import Backoff, call

    sleeps: list[float] = []
    action = Flaky(ConnectionResetError("reset"), TimeoutError("slow"))
    assert call(action, Backoff(retries=2, initial=0.01, jitter=0), retry_on=OSError, sleep=sleeps.append)
    assert action.attempts == [1, 2, 3]
    assert sleeps == [0.01, 0.02]


def test_retry_jitter_stays_within_its_bound() -> None:
    from fleetci.retry import Backoff, Transient, call

    sleeps: list[float] = []
    with pytest.raises(Transient):
        call(
            Flaky(*(Transient("x") for _ in range(9))),
            Backoff(retries=8, initial=1, most=100, jitter=0.25),
            sleep=sleeps.append,
        )
    bases = [1, 2, 4, 8, 16, 32, 64, 100]
    assert len(sleeps) == 8
    assert all(b <= s <= min(b + 0.25, 100) for b, s in zip(bases, sleeps, strict=True)), sleeps


def test_retry_async_retries_and_reports_attempts() -> None:
    from fleetci.retry import Backoff, Transient, call_async

    hooks: list[int] = []

    def run(action: Flaky) -> str:
        async def attempt(n: int) -> str:
            return action(n)

        return asyncio.run(
            call_async(
                attempt,
                Backoff(retries=2, initial=0.001, most=0.001, jitter=0),
                on_retry=lambda n, wait, exc: hooks.append(n),
            )
        )

    ok = Flaky(Transient("peer blinked"), done="served")
    assert run(ok) == "served"
    assert ok.attempts == [1, 2]
    assert hooks == [1]

    down = Flaky(*(Transient("peer gone") for _ in range(5)))
    with pytest.raises(Transient) as info:
        run(down)
    assert down.attempts == [1, 2, 3]
    assert info.value.attempts == 3  # type: ignore[attr-defined]

    refused = Flaky(ValueError("not retryable"))
    with pytest.raises(ValueError):
        run(refused)
    assert refused.attempts == [1]


def test_retry_policy_warns_about_nothing() -> None:
    """The waits are computed without tenacity's deprecated arguments (a warning on every call)."""
    import warnings

    from fleetci.retry import Backoff, Transient, call

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(Transient):
            call(Flaky(Transient("x"), Transient("y")), Backoff(retries=1, initial=0.5), sleep=lambda s: None)


# -- wait ----------------------------------------------------------------------------------------------
def test_wait_until_returns_the_first_truthy_value() -> None:
    from fleetci.wait import wait_until

    answers: list[object] = [None, 0, "", {}, {"port": 8080}, {"port": 9}]
    calls: list[int] = []

    def check() -> object:
        calls.append(1)
        return answers.pop(0)

    assert wait_until(check, timeout=60, what="the port", interval=0) == {"port": 8080}
    assert len(calls) == 5


def test_wait_until_times_out_in_one_line_naming_what_and_the_last_state() -> None:
    from fleetci.errors import FleetciError
    from fleetci.wait import WaitTimeout, wait_until

    checks: list[int] = []
    with pytest.raises(WaitTimeout) as info:
        wait_until(
            lambda: checks.append(1),
            timeout=0,
            what="the master on :9000",
            last=lambda: "HTTP 503\n<html>\n  busy</html>",
        )
    assert isinstance(info.value, FleetciError) and isinstance(info.value, TimeoutError)
    assert str(info.value) == (
        "timed out after 0s waiting for the master on :9000 (last: HTTP 503 <html> busy</html>)"
    )
    assert checks == [1]  # checked once even with no time left
    with pytest.raises(WaitTimeout) as bare:
        wait_until(lambda: None, timeout=0.01, what="a peer", interval=0.001)
    assert str(bare.value) == "timed out after 0.01s waiting for a peer"


def test_wait_until_lets_the_checks_own_failure_through() -> None:
    from fleetci.wait import wait_until

    class Exited(Exception):
        pass

    def check() -> None:
        raise Exited("worker exited with code 3")

    with pytest.raises(Exited, match=r"^worker exited with code 3$"):
        wait_until(check, timeout=60, what="the worker")


def test_wait_until_async_awaits_coroutine_checks() -> None:
    from fleetci.wait import WaitTimeout, wait_until_async

    answers = [None, None, "ready"]

    async def check() -> str | None:
        return answers.pop(0)

    assert asyncio.run(wait_until_async(check, timeout=60, what="x", interval=0)) == "ready"
    assert asyncio.run(wait_until_async(lambda: 7, timeout=0, what="x")) == 7  # plain functions too

    async def never() -> None:
        return None

    with pytest.raises(WaitTimeout, match=r"^timed out after 0s waiting for the swarm \(last: 2 peers\)$"):
        asyncio.run(wait_until_async(never, timeout=0, what="the swarm", last=lambda: "2 peers"))


# -- JSON state files and moving damaged ones aside -----------------------------------------------------
def test_write_json_is_private_unless_told_and_reads_back(tmp_path: Path) -> None:
    from fleetci.files import read_json, write_json

    secret = write_json(tmp_path / "state" / "push.json", {"b": [1, 2], "a": "x"})
    assert (mode(secret), mode(secret.parent)) == (0o600, 0o700)
    assert secret.read_text() == '{\n  "a": "x",\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert read_json(secret, "push state") == {"a": "x", "b": [1, 2]}

    public = tmp_path / "public"
    public.mkdir()
    public.chmod(0o755)
    old = os.umask(0o077)  # the mode is exact, whatever the umask
    try:
        shared = write_json(public / "report.json", [1], private=False)
    finally:
        os.umask(old)
    assert (mode(shared), mode(public)) == (0o644, 0o755)  # others read it: its directory stays open
    assert shared.read_text() == "[\n  1\n]\n"


def test_read_json_says_in_one_line_what_is_missing_or_corrupt(tmp_path: Path) -> None:
    from fleetci.errors import FleetciError
    from fleetci.files import read_json

    with pytest.raises(FleetciError) as missing:
        read_json(tmp_path / "plan.json", "upload plan")
    assert str(missing.value) == f"upload plan {tmp_path / 'plan.json'} does not exist"

    bad = tmp_path / "meta.json"
    bad.write_text('{"a": 1,\n\n   "b": ')
    with pytest.raises(FleetciError) as corrupt:
        read_json(bad, "metadata")
    text = str(corrupt.value)
    assert text.startswith(f"metadata {bad} is corrupt: ")
    assert "\n" not in text and "line 3" in text  # the parser's position, on one line

    bad.write_bytes(b'{"a": "\xff\xfe"}')
    with pytest.raises(FleetciError, match="is corrupt"):
        read_json(bad, "metadata")  # not UTF-8: one line too, not a UnicodeDecodeError


STAMP = r"\d{8}T\d{6}Z"


def test_move_aside_keeps_the_damaged_file_under_a_dated_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import re
    import time

    from fleetci.files import move_aside

    db = tmp_path / "cache.db"
    db.write_text("garbage")
    kept = move_aside(db)
    assert kept is not None and kept.parent == tmp_path
    assert re.fullmatch(rf"cache\.db\.corrupt-{STAMP}", kept.name), kept.name
    assert (kept.read_text(), db.exists()) == ("garbage", False)

    frozen = time.gmtime()  # two in the same second: both kept, under distinct names
    monkeypatch.setattr(time, "gmtime", lambda *a: frozen)
    names = []
    for content in ("one", "two", "three"):
        db.write_text(content)
        target = move_aside(db, reason="partial")
        assert target is not None
        names.append(target.name)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", frozen)
    assert names == [
        f"cache.db.partial-{stamp}",
        f"cache.db.partial-{stamp}-2",
        f"cache.db.partial-{stamp}-3",
    ]
    assert [(tmp_path / n).read_text() for n in names] == ["one", "two", "three"]

    blobs = tmp_path / "blobs"
    (blobs / "sha256").mkdir(parents=True)
    moved = move_aside(blobs)
    assert moved is not None and (moved / "sha256").is_dir()  # directories too


def test_move_aside_of_a_missing_path_is_none(tmp_path: Path) -> None:
    from fleetci.files import move_aside

    assert move_aside(tmp_path / "gone.json") is None
    assert list(tmp_path.iterdir()) == []


# -- JsonApi against a real server ---------------------------------------------------------------------
def _json_app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response(
            {"path": request.path, "q": dict(request.query), "auth": request.headers.get("Authorization")}
        )

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"got": await request.json(), "method": request.method})

    async def missing(request: web.Request) -> web.Response:
        return web.json_response({"message": "no such job"}, status=404)

    async def busy(request: web.Request) -> web.Response:
        return web.json_response({"error": "job 7 is\nleased"}, status=409)

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>\n<body>Bad gateway</body>\n</html>", status=502)

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="hello, not json")

    async def nan(request: web.Request) -> web.Response:
        return web.Response(text='{"ratio": NaN}', content_type="application/json")

    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/missing", missing)
    app.router.add_post("/busy", busy)
    app.router.add_get("/html", html)
    app.router.add_get("/text", text)
    app.router.add_get("/nan", nan)
    app.router.add_delete("/empty", empty)
    return app


@pytest.fixture(scope="module")
def json_server() -> Iterator[str]:
    from fleetci.testing.server import BackgroundApp

    with BackgroundApp(_json_app) as app:
        yield app.url


def test_json_api_decodes_answers_and_sends_token_and_params(json_server: str) -> None:
    from fleetci.http import JsonApi

    with JsonApi(json_server + "/", token="s3cret", what="the master") as api:
        assert api.get("/ok", params={"state": "queued"}) == {
            "path": "/ok",
            "q": {"state": "queued"},
            "auth": "Bearer s3cret",
        }
        assert api.post("/echo", json_body={"jobs": [1, 2]}) == {"got": {"jobs": [1, 2]}, "method": "POST"}
        assert api.request("PUT", "/echo", content=b'{"raw": true}') == {
            "got": {"raw": True},
            "method": "PUT",
        }
        assert api.request("DELETE", "/empty") is None
    with JsonApi(json_server) as anonymous:
        assert anonymous.get("/ok")["auth"] is None


def test_json_api_errors_are_one_line_with_the_status_and_the_bodys_message(json_server: str) -> None:
    from fleetci.errors import FleetciError
    from fleetci.http import ApiError, JsonApi

    with JsonApi(json_server, what="build master") as api:
        with pytest.raises(ApiError) as info:
            api.get("/missing")
        assert (info.value.status, info.value.reason) == (404, "no such job")
        assert str(info.value) == "build master: HTTP 404: no such job"
        assert isinstance(info.value, FleetciError)

        with pytest.raises(ApiError) as busy:
            api.post("/busy", json_body={})
        assert (busy.value.status, str(busy.value)) == (409, "build master: HTTP 409: job 7 is leased")

        with pytest.raises(ApiError) as gateway:
            api.get("/html")
        assert gateway.value.status == 502
        assert str(gateway.value) == "build master: HTTP 502: <html> <body>Bad gateway</body> </html>"

        assert api.get("/missing", ok=(404,)) == {"message": "no such job"}  # the caller handles 404

        for path in ("/text", "/nan"):
            with pytest.raises(FleetciError) as not_json:
                api.get(path)
            assert not isinstance(not_json.value, ApiError)
            assert str(not_json.value) == f"build master: answer to GET {path} is not JSON"


def test_json_api_names_an_unreachable_host_in_one_line() -> None:
    from fleetci.errors import FleetciError
    from fleetci.http import ApiError, JsonApi, free_port

    port = free_port()  # nothing listens there
    with JsonApi(f"http://user:pw@127.0.0.1:{port}", timeout=5) as api, pytest.raises(FleetciError) as info:
        api.get("/jobs")
    text = str(info.value)
    assert not isinstance(info.value, ApiError)
    assert text.startswith(f"http://***@127.0.0.1:{port} unreachable: ")
    assert "\n" not in text and "pw" not in text


def test_json_api_over_a_unix_socket(tmp_path: Path) -> None:
    from fleetci.http import ApiError, JsonApi

    sock = tmp_path / "api.sock"

    async def serve() -> None:
        runner = web.AppRunner(_json_app(), **RUNNER_OPTIONS)  # type: ignore[arg-type]
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        try:

            def calls() -> tuple[object, int]:
                with JsonApi("http://proxy", uds=sock) as api:
                    answer = api.get("/ok")
                    try:
                        api.get("/missing")
                    except ApiError as exc:
                        return answer, exc.status
                raise AssertionError("no ApiError")

            answer, status = await asyncio.to_thread(calls)
            assert answer == {"path": "/ok", "q": {}, "auth": None}
            assert status == 404
        finally:
            await runner.cleanup()

    asyncio.run(serve())


# -- child processes -----------------------------------------------------------------------------------
def _child(code: str) -> list[str]:
    import sys

    return [sys.executable, "-c", code]


def test_spawn_returns_once_the_child_says_where_it_listens() -> None:
    from fleetci.process import running

    code = (
        "import time; print('warming up'); "
        "print('fleetci listening on http://127.0.0.1:4567', flush=True); time.sleep(60)"
    )
    with running(_child(code), timeout=60) as svc:
        assert (svc.url, svc.banner) == (
            "http://127.0.0.1:4567",
            "fleetci listening on http://127.0.0.1:4567",
        )
        assert svc.proc.poll() is None
    assert svc.proc.poll() is not None  # stopped on leaving


def test_spawn_of_a_child_that_exits_names_its_error_line() -> None:
    from fleetci.errors import FleetciError
    from fleetci.process import spawn

    code = "import sys; print('fleetci: error: port 80 is taken', file=sys.stderr); sys.exit(1)"
    with pytest.raises(FleetciError) as info:
        spawn(_child(code), timeout=60)
    assert str(info.value) == f"{code} did not start within 60s: port 80 is taken"


def test_spawn_gives_up_on_a_silent_child() -> None:
    from fleetci.errors import FleetciError
    from fleetci.process import spawn

    with pytest.raises(FleetciError, match=r"did not start within 0\.2s: no output$"):
        spawn(_child("import time; time.sleep(60)"), timeout=0.2)


# -- GitHub Actions file commands ----------------------------------------------------------------------
def _file_command(text: str) -> dict[str, str]:
    """Read ``$GITHUB_OUTPUT``/``$GITHUB_ENV`` as the runner does: ``k=v`` lines and ``k<<DELIM`` blocks."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delimiter = line.split("<<", 1)
            body = []
            for nxt in lines:
                if nxt == delimiter:
                    break
                body.append(nxt)
            else:
                raise AssertionError(f"unterminated {key}")
            values[key] = "\n".join(body)
        else:
            key, value = line.split("=", 1)
            values[key] = value
    return values


def test_outputs_and_env_survive_values_with_line_breaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetci import gha

    out, env = tmp_path / "out", tmp_path / "env"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    monkeypatch.setenv("GITHUB_ENV", str(env))
    assert gha.set_output("api-url", "http://127.0.0.1:8080")
    assert gha.set_output("failed", "pkg-a\nother=injected")
    assert gha.set_env("CACHE_DIR", "/tmp/a\nPATH=/evil")
    assert out.read_text().startswith("api-url=http://127.0.0.1:8080\n")  # single lines as before
    assert _file_command(out.read_text()) == {
        "api-url": "http://127.0.0.1:8080",
        "failed": "pkg-a\nother=injected",
    }
    assert _file_command(env.read_text()) == {"CACHE_DIR": "/tmp/a\nPATH=/evil"}
    monkeypatch.delenv("GITHUB_OUTPUT")
    assert not gha.set_output("x", "y")  # outside Actions: nothing written, and says so


# -- pagination (one JsonApi.pages for every paginated list) ------------------------------------------------


def test_pages_walk_every_link_page_and_a_cap_is_reported_never_silent(emulator: Any) -> None:
    """Against the real GitHub emulator: per_page=1 walks one repository a page; a cap below the list's
    length raises (or reports through ``truncated``) instead of returning a cut list."""
    from fleetci.http import JsonApi, ListTruncated
    from support.emulator import tok

    with JsonApi(emulator.url, token=tok("alice")) as api:
        whole = api.get("/orgs/octo-org/repos?per_page=100")
        paged = list(api.pages("/orgs/octo-org/repos?per_page=1"))
        assert len(whole) > 3 and [r["full_name"] for r in paged] == [r["full_name"] for r in whole]
        with pytest.raises(ListTruncated, match=r"more than 3 pages"):
            list(api.pages("/orgs/octo-org/repos?per_page=1", max_pages=3))
        said: list[str] = []
        cut = list(api.pages("/orgs/octo-org/repos?per_page=1", max_pages=3, truncated=said.append))
        assert len(cut) == 3 and len(said) == 1 and "/orgs/octo-org/repos" in said[0]
        assert len(list(api.pages("/orgs/octo-org/repos?per_page=1", max_pages=len(whole)))) == len(whole)


@pytest.mark.parametrize(
    ("link", "found"),
    [
        ('<https://h/x?page=2>; rel="next", <https://h/x?page=9>; rel="last"', "https://h/x?page=2"),
        ('<https://h/x?page=9>; rel="last",<https://h/x?page=3>;rel="next"', "https://h/x?page=3"),
        ('<https://h/x?page=1>; rel="prev"', None),
        ("garbage; rel=next", None),
        ("", None),
    ],
)
def test_next_link_reads_only_a_well_formed_next(link: str, found: str | None) -> None:
    from fleetci.http import next_link

    assert next_link({"Link": link}) == found


def test_alive_sees_a_running_process_and_not_one_that_exited() -> None:
    """One check for every 'is that proxy/command still there' question: our exited child (a zombie
    until reaped) and a process that is gone both count as not running."""
    import contextlib
    import subprocess

    from fleetci.process import alive
    from fleetci.wait import wait_until

    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert alive(proc.pid)
        proc.kill()
        # not waited for: a zombie child, which kill(pid, 0) alone reports as alive
        assert wait_until(lambda: not alive(proc.pid), timeout=10, what="the killed child to be gone")
    finally:
        proc.kill()
        with contextlib.suppress(ChildProcessError):
            proc.wait(timeout=10)
    assert not alive(proc.pid)
