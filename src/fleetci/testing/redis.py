"""A throw-away ``redis-server`` (Debian's) for the shared-store tests and ``bench cache --backend redis``.

No persistence, loopback only, a password. ``--port 0`` turns redis-server's TCP off, so a free port is
picked first and kept across :meth:`RedisServer.restart`, as a real store comes back on its address.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fleetci.errors import UsageError
from fleetci.http import free_port
from fleetci.process import spawn_logged

if TYPE_CHECKING:
    import valkey

READY = "Ready to accept connections"


@dataclass
class RedisServer:
    """One redis-server process in ``workdir`` (its log: ``redis.log``); start, kill, restart."""

    workdir: Path
    password: str = field(default_factory=lambda: os.urandom(12).hex())
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise UsageError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "redis.log"
        log.unlink(missing_ok=True)  # a restart waits for its own "ready" line, not the last run's
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.workdir), "--requirepass", self.password]
        self.proc = spawn_logged(argv, log, READY)
        return self

    def client(self) -> valkey.Valkey:
        """A synchronous client (the ``redis`` extra) to look at or tamper with what the proxies wrote."""
        import valkey

        return valkey.Valkey(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, no goodbye to the clients."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()
