"""The build-fleet helpers of the buildfarm integration tests (a master and workers on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import yaml

from fleetci.http import free_port
from fleetci.process import stop_process
from support import clean_env, fleetci_cmd, run_fleetci, wait_until

ADMIN = "test-admin-" + "a" * 20


JOIN = "test-join-" + "j" * 20


class Fleet:
    """A real master process (restartable on the same port and state) and worker processes."""

    def __init__(
        self, root: Path, ttl: float = 2.0, extra: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ttl = ttl
        self.extra = extra
        self.env = clean_env(FLEETCI_BUILD_TOKEN=ADMIN, FLEETCI_BUILD_JOIN_TOKEN=JOIN, **(env or {}))
        self.master: subprocess.Popen[bytes] | None = None
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.starts = 0
        self.start_master()
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)

    def start_master(self) -> None:
        self.starts += 1
        log = self.root / f"master-{self.starts}.log"
        argv = fleetci_cmd(
            "build",
            "master",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.root / "state"),
            "--heartbeat-ttl",
            str(self.ttl),
            *self.extra,
        )
        with log.open("wb") as fh:
            self.master = subprocess.Popen(argv, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        ok = wait_until(lambda: "listening on http://" in log.read_text(errors="replace"), timeout=30)
        assert ok, f"master did not start:\n{log.read_text(errors='replace')}"

    def stop_master(self) -> None:
        assert self.master is not None
        self.master.terminate()
        self.master.wait(timeout=15)

    def add_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            fleetci_cmd(
                "build", "worker", "--master", self.url, "--name", name, "--work-dir", str(self.root / name)
            ),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers[name] = proc
        return proc

    def active_workers(self) -> list[dict[str, Any]]:
        return [w for w in self.status()["workers"] if w["state"] == "active"]

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = self.http.get("/api/v1/status").json()
        return data

    def submit(self, *dirs: Path) -> int:
        proc = run_fleetci("build", "submit", "--master", self.url, *map(str, dirs), "--json", env=self.env)
        assert proc.returncode == 0, proc.stderr
        return int(json.loads(proc.stdout)["build"])

    def wait_build(self, build_id: int, timeout: float = 60) -> dict[str, Any]:
        info: dict[str, Any] = {}

        def finished() -> bool:
            info.update(self.http.get(f"/api/v1/builds/{build_id}").json())
            return bool(info["state"] != "running")

        assert wait_until(finished, timeout=timeout, interval=0.1), (info, self.logs())
        return info

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.root.glob("*.log")
        )

    def close(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.workers.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.master is not None:
            stop_process(self.master)
        self.http.close()

    def assert_master_logs_clean(self) -> None:
        """Every master this fleet started logged one-line events only: no traceback."""
        for log in self.root.glob("master-*.log"):
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, text[-3000:]


def write(root: Path, name: str, depends: list[str], build: str, version: str = "1.0") -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    data = {
        "name": name,
        "version": version,
        "depends": depends,
        "build": build,
        "artifacts": [f"{name}.pkg"],
    }
    (d / "recipe.yml").write_text(yaml.safe_dump(data), encoding="utf-8")
    return d
