"""Start the real Debian ``docker-registry`` (distribution 2.8) for tests and benchmarks.

Three modes mirror what fleetci meets in the field: no auth, htpasswd basic auth, and a bearer-token
realm (GitLab's flow, served by :class:`fleetci.testing.gitlab.GitLabEmulator`). The HTTP secret is
fixed so upload sessions survive a restart on the same storage, as they do on a real deployment.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from fleetci.errors import FleetciError
from fleetci.http import client, free_port
from fleetci.process import stop_process
from fleetci.wait import WaitTimeout, wait_until

BINARY = "docker-registry"


def registry_binary() -> str | None:
    return shutil.which(BINARY) or (f"/usr/bin/{BINARY}" if Path(f"/usr/bin/{BINARY}").exists() else None)


def htpasswd_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()}"


@dataclass
class RegistryProcess:
    """A running ``docker-registry serve``; ``stop()``/``start()`` keep storage and port."""

    workdir: Path
    port: int
    auth: dict[str, Any] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.workdir / "storage"

    @property
    def log(self) -> Path:
        return self.workdir / "registry.log"

    def config(self) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.storage)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "fleetci-test-secret"},
            **({"auth": self.auth} if self.auth else {}),
        }

    def start(self, timeout: float = 30.0) -> RegistryProcess:
        binary = registry_binary()
        if binary is None:
            raise FleetciError("docker-registry is not installed (apt-get install docker-registry)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = self.workdir / "config.yml"
        cfg.write_text(yaml.safe_dump(self.config()), encoding="utf-8")
        with self.log.open("ab") as fh:
            proc = self.proc = subprocess.Popen(
                [binary, "serve", str(cfg)], stdout=fh, stderr=subprocess.STDOUT
            )

        def answers() -> bool:
            if proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise FleetciError(f"docker-registry exited: {tail[0] if tail else 'no output'}")
            try:
                return http.get("/v2/").status_code in (200, 401)
            except httpx.HTTPError:
                return False

        with client(self.url, timeout=1) as http:
            try:
                wait_until(answers, timeout=timeout, what=f"docker-registry on {self.url}")
            except WaitTimeout:
                self.stop()
                raise FleetciError(
                    f"docker-registry did not answer on {self.url} within {timeout:g}s"
                ) from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def no_auth_registry(workdir: Path, port: int | None = None) -> RegistryProcess:
    return RegistryProcess(workdir, port or free_port())


def htpasswd_registry(workdir: Path, users: dict[str, str], port: int | None = None) -> RegistryProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "htpasswd"
    path.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in users.items()), encoding="utf-8")
    return RegistryProcess(
        workdir, port or free_port(), {"htpasswd": {"realm": "fleetci", "path": str(path)}}
    )


def token_registry(
    workdir: Path, realm: str, cert_pem: bytes, service: str, issuer: str, port: int | None = None
) -> RegistryProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    bundle = workdir / "token-ca.pem"
    bundle.write_bytes(cert_pem)
    auth = {"token": {"realm": realm, "service": service, "issuer": issuer, "rootcertbundle": str(bundle)}}
    return RegistryProcess(workdir, port or free_port(), auth)
