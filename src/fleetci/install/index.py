"""A local PEP 503 package index with fault injection, for tests and ``fleetci bench install``.

Real pip talks to it over HTTP on 127.0.0.1, so retries are exercised against genuine 503s and TCP
resets rather than mocks. Wheels are generated on the fly (no setuptools, no network).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import re
import socket
import struct
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


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
            self.log.append(f"{path} {kind or 'ok'}")
            return kind


class _Handler(BaseHTTPRequestHandler):
    server: _IndexServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # quiet: pip's output is what matters
        return

    def do_GET(self) -> None:
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
        wheels = self.server.wheels
        if parts == ["simple"]:
            names = sorted({normalize(w.name.split("-")[0]) for w in wheels.glob("*.whl")})
            body = "".join(f'<a href="/simple/{n}/">{n}</a>\n' for n in names)
            self._send(200, f"<!DOCTYPE html><html><body>\n{body}</body></html>\n".encode(), "text/html")
        elif len(parts) == 2 and parts[0] == "simple":
            files = sorted(w for w in wheels.glob("*.whl") if normalize(w.name.split("-")[0]) == parts[1])
            if not files:
                self._send(404, b"not found\n", "text/plain")
                return
            links = "".join(
                f'<a href="/packages/{html.escape(w.name)}#sha256={_sha256(w)}">{html.escape(w.name)}</a>\n'
                for w in files
            )
            self._send(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")
        elif len(parts) == 2 and parts[0] == "packages" and (wheels / parts[1]).is_file():
            self._send(200, (wheels / parts[1]).read_bytes(), "application/octet-stream")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
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
        return  # resets and client disconnects are expected here


class LocalIndex:
    """``/simple/`` over the wheels in a directory, with an optional :class:`FaultPlan` in front."""

    def __init__(self, wheels: Path, plan: FaultPlan | None = None) -> None:
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
