"""The shared plumbing every capability relies on: private files, one-line logs, guarded servers, URLs."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

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
