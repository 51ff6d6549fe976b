"""Start a private ``dockerd`` for tests: its own data-root, exec-root and unix socket, no networking setup.

The daemon touches nothing shared: ``storage-driver: vfs`` (works on any filesystem, no overlay mounts),
``iptables: false`` and ``bridge: none`` (no host firewall or bridge changes), and insecure-registries for
the loopback registries the tests start. When the daemon cannot run here (no binary, no privileges, a
kernel without what it needs), :class:`DockerdUnavailable` carries the reason from dockerd's own log so a
test can skip with it instead of pretending.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from fleetci.errors import FleetciError
from fleetci.http import client as http_client
from fleetci.wait import WaitTimeout, wait_until

BINARY = "dockerd"
LOG_LEVEL_RE = re.compile(r'level=(?:fatal|error)\s+msg="([^"]*)"')


class DockerdUnavailable(FleetciError):
    """dockerd is missing or exited before serving its API; the message says why (from its log)."""


def dockerd_binary() -> str | None:
    return shutil.which(BINARY) or next(
        (p for p in (f"/usr/sbin/{BINARY}", f"/usr/bin/{BINARY}") if Path(p).exists()), None
    )


def failure_reason(log_text: str) -> str:
    """The most telling line of a failed dockerd log: its last fatal/error message, else its last line."""
    messages = LOG_LEVEL_RE.findall(log_text)
    if messages:
        return str(messages[-1])
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


@dataclass
class DockerDaemon:
    """A running private ``dockerd``; ``host`` is its ``unix://`` address (``DOCKER_HOST``)."""

    workdir: Path
    insecure_registries: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    rundir: Path | None = None

    @property
    def socket(self) -> Path:
        # unix socket paths are limited to 108 bytes: keep it in a short directory under the temp dir
        assert self.rundir is not None, "start() first"
        return self.rundir / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def log(self) -> Path:
        return self.workdir / "dockerd.log"

    def config(self) -> dict[str, object]:
        assert self.rundir is not None
        return {
            "data-root": str(self.workdir / "data"),
            "exec-root": str(self.rundir / "exec"),
            "pidfile": str(self.rundir / "docker.pid"),
            "hosts": [self.host],
            "storage-driver": "vfs",
            "iptables": False,
            "ip6tables": False,
            "ip-forward": False,
            "ip-masq": False,
            "bridge": "none",
            "insecure-registries": list(self.insecure_registries),
            "log-level": "info",
            "features": {"buildkit": False},
        }

    def start(self, timeout: float = 45.0) -> DockerDaemon:
        binary = dockerd_binary()
        if binary is None:
            raise DockerdUnavailable("dockerd is not installed (apt-get install docker.io)")
        if os.geteuid() != 0:
            raise DockerdUnavailable("dockerd needs root (this process is not root)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.rundir = Path(tempfile.mkdtemp(prefix="fd-", dir="/tmp"))
        cfg = self.workdir / "daemon.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [binary, "--config-file", str(cfg)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        import httpx

        proc = self.proc

        def answering() -> bool:
            if proc.poll() is not None:
                reason = failure_reason(self.log.read_text(errors="replace"))
                self._cleanup()
                raise DockerdUnavailable(f"dockerd exited ({proc.returncode}): {reason}")
            if not self.socket.exists():
                return False
            try:
                return client.get("/_ping").status_code == 200
            except httpx.HTTPError:
                return False

        with http_client("http://docker", uds=self.socket, timeout=2) as client:
            try:
                wait_until(answering, timeout=timeout, what=f"dockerd on {self.host}", interval=0.1)
                return self
            except WaitTimeout:
                pass
        reason = failure_reason(self.log.read_text(errors="replace"))
        self.stop()
        raise DockerdUnavailable(f"dockerd did not answer on {self.host} within {timeout:g}s: {reason}")

    def stop(self) -> None:
        """SIGTERM (dockerd then stops the containerd it started), SIGKILL the group if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            # the managed containerd shares dockerd's session: make sure none of it outlives the test
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None
        self._cleanup()

    def _mounts(self) -> list[str]:
        """Mount points dockerd left under its directories (it bind-mounts its data-root onto itself)."""
        roots = [str(d) for d in (self.workdir, self.rundir) if d is not None]
        found = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if any(point == r or point.startswith(r + "/") for r in roots):
                found.append(point)
        return sorted(found, key=len, reverse=True)

    def _cleanup(self) -> None:
        for point in self._mounts():  # a daemon that died early does not undo its own mounts
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
        if self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
        # vfs layers are plain directories: removing the data-root frees the space at once
        shutil.rmtree(self.workdir / "data", ignore_errors=True)
