"""A local PEP 503 package index with fault injection, for tests and ``fleetci bench install``.

Real pip talks to it over HTTP on 127.0.0.1, so retries are exercised against genuine 503s and TCP
resets rather than mocks. Wheels are generated on the fly (no setuptools, no network).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import json
import logging
import re
import socket
import struct
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from fleetci.http import parse_id
from fleetci.logs import quiet_server_logs

_log = logging.getLogger("fleetci.server")
MAX_BODY_BYTES = 64 * 1024  # pip sends no bodies; a small one is drained, a larger one refused
MAX_HEADER_BYTES = 16 * 1024  # all header lines together (the stdlib alone allows 100 x 64 KiB)
IDLE_TIMEOUT_S = 60.0
LOG_MAX = 10_000  # FaultPlan.log entries kept: tests read a handful, a flood must not grow it forever


def normalize(name: str) -> str:
    """PEP 503 name normalization (the key pip uses in /simple/<name>/)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(
    dest: Path, name: str, version: str, requires: tuple[str, ...] = (), module: str | None = None
) -> Path:
    """Write a minimal pure-Python wheel whose module reports ``__version__``."""
    dist = re.sub(r"[-.]+", "_", name)
    mod = module or dist.lower()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{mod}/__init__.py": f'__version__ = "{version}"\n',
        f"{info}/METADATA": "Metadata-Version: 2.1\n"
        f"Name: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: fleetci\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/top_level.txt": f"{mod}\n",
    }
    record = []
    with zipfile.ZipFile(path, "w") as zf:
        for arc, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{arc},sha256={digest},{len(data)}")
            zf.writestr(arc, data)
        record.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return path


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FaultPlan:
    """Fault every other request among the first ``first`` ones, alternating 503 and TCP reset."""

    first: int = 0
    kinds: tuple[str, ...] = ("503", "reset")
    requests: int = 0
    faults: int = 0
    log: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next(self, path: str) -> str | None:
        with self.lock:
            i = self.requests
            self.requests += 1
            kind = None
            if i < self.first and i % 2 == 0:
                kind = self.kinds[self.faults % len(self.kinds)]
                self.faults += 1
            if len(self.log) < LOG_MAX:
                self.log.append(f"{path} {kind or 'ok'}")
            return kind


class _Handler(BaseHTTPRequestHandler):
    """GET-only PEP 503 pages and wheels; anything else is refused in one JSON line, never a traceback.

    The stdlib server reads no body on its own: a declared one is capped and drained (so a keep-alive
    connection stays in step), an undeclared (chunked) one is refused, and headers are capped in total.
    """

    server: _IndexServer
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S  # a client that stops sending frees its thread (stdlib: wait forever)
    _answered = False

    def log_message(self, format: str, *args: object) -> None:  # quiet: pip's output is what matters
        return

    def log_error(self, format: str, *args: object) -> None:
        """Refusals as one rate-limited line (``fleetci.server``); an idle keep-alive timeout is routine."""
        level = logging.DEBUG if format.startswith("Request timed out") else logging.WARNING
        _log.log(level, "local index: %s from %s", format % args, self.client_address[0])

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A one-line JSON ``{"message": …}`` instead of the stdlib's HTML page; the connection closes."""
        phrase = self.responses.get(code, ("Error", ""))[0]
        text = " ".join((message or phrase).split())[:300]
        self.log_error("%d %s", code, phrase)  # not ``text``: it can quote the client's request line
        body = json.dumps({"message": text}).encode()
        if self.request_version == "HTTP/0.9":  # a garbage request line: still a status line, not bare body
            self.request_version = "HTTP/1.0"
        self.send_response(code, phrase)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self._answered = True

    def parse_request(self) -> bool:
        """The stdlib's parsing, then our caps on header size and request bodies, for every method."""
        if not super().parse_request():
            return False
        size = sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > MAX_HEADER_BYTES:
            self.send_error(431, f"request headers of {size} bytes are over this server's limit")
            return False
        if "Transfer-Encoding" in self.headers:
            self.send_error(411, "this index reads no body without a Content-Length")
            return False
        declared = self.headers.get("Content-Length")
        if declared is None:
            return True
        length = parse_id(declared)
        if length is None:
            self.send_error(400, "bad Content-Length")
            return False
        if length > MAX_BODY_BYTES:
            self.send_error(413, f"request body of {length} bytes is over this server's limit")
            return False
        if length:
            self.rfile.read(length)  # unused, but read so the next request on this connection parses
        return True

    def _not_allowed(self) -> None:
        self.send_error(405, f"{self.command} is not allowed here: the index is read-only")

    do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed

    def do_GET(self) -> None:
        self._answered = False
        try:
            self._get()
        except (ConnectionError, TimeoutError):
            raise  # the client left: nothing to answer (handle_error stays quiet about it)
        except Exception as exc:
            _log.error("local index: GET failed", exc_info=exc)  # one line: OneLineRateLimited
            if not self._answered:
                self.send_error(500, f"internal error ({type(exc).__name__})")

    def _get(self) -> None:
        fault = self.server.plan.next(self.path)
        if fault == "reset":
            # SO_LINGER 0 makes close() send RST: pip sees "Connection reset by peer".
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if fault is not None:
            self._send(int(fault), b"injected fault\n", "text/plain")
            return
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        wheels = {w.name: w for w in self.server.wheels.glob("*.whl")}  # served by name: no path tricks
        if parts == ["simple"]:
            names = sorted({normalize(name.split("-")[0]) for name in wheels})
            body = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in names)
            self._send(200, f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode(), "text/html")
        elif len(parts) == 2 and parts[0] == "simple":
            files = sorted(w for name, w in wheels.items() if normalize(name.split("-")[0]) == parts[1])
            if not files:
                self._send(404, b"not found\n", "text/plain")
                return
            links = "".join(
                f'<a href="/packages/{html.escape(w.name)}#sha256={_sha256(w)}">{html.escape(w.name)}</a>\n'
                for w in files
            )
            self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")
        elif len(parts) == 2 and parts[0] == "packages" and parts[1] in wheels:
            self._send(200, wheels[parts[1]].read_bytes(), "application/octet-stream")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self._answered = True
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        with contextlib.suppress(OSError):  # the socket was reset on purpose
            super().finish()


class _IndexServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, wheels: Path, plan: FaultPlan) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.wheels = wheels
        self.plan = plan

    def handle_error(self, request: object, client_address: object) -> None:
        """Resets and disconnects are expected here; anything else is one line, never a traceback."""
        exc = sys.exc_info()[1]
        if exc is None or isinstance(exc, ConnectionError | TimeoutError):
            return
        _log.error("local index: a connection failed", exc_info=exc)


class LocalIndex:
    """``/simple/`` over the wheels in a directory, with an optional :class:`FaultPlan` in front."""

    def __init__(self, wheels: Path, plan: FaultPlan | None = None) -> None:
        quiet_server_logs()
        self.plan = plan or FaultPlan()
        self._server = _IndexServer(wheels, self.plan)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/simple/"

    def start(self) -> LocalIndex:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LocalIndex:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
