"""Providers: what turns a pool's desired count into runners.

- :class:`CommandProvider` (``--scale-cmd CMD``) runs the operator's command once per pool whose desired
  count changed, with ``{"owner", "labels", "current", "desired", "queued", "busy", "idle"}`` as JSON on
  stdin. A non-zero exit or a timeout is a one-line error; the autoscaler logs it and asks again next
  cycle.
- :class:`DockerProvider` (``--docker-image IMAGE``) keeps ``desired`` containers of the image per pool,
  found by their labels (``fleetci.autoscale.owner``/``fleetci.autoscale.pool``): it starts the missing
  ones, removes exited ones (ephemeral runners that finished their job) and, when shrinking, the newest.
  It is asked every cycle (``every_cycle``), so a finished runner is replaced without waiting for the
  desired count to change.
- Anything with a ``scale(request)`` method is a :class:`Provider` for embedding.
"""

from __future__ import annotations

import json
import shlex
import threading
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from fleetci.errors import FleetciError, UsageError
from fleetci.process import run_with_input

LABEL_OWNER = "fleetci.autoscale.owner"
LABEL_POOL = "fleetci.autoscale.pool"


@dataclass(frozen=True)
class ScaleRequest:
    """One pool's counts, as a provider receives them (the JSON on a scale command's stdin)."""

    owner: str
    labels: list[str]
    current: int
    desired: int
    queued: int
    busy: int
    idle: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


class Provider(Protocol):
    """Bring one pool to ``request.desired`` runners; raise :class:`FleetciError` (one line) on failure.
    A provider with a true ``every_cycle`` attribute is asked every cycle, not only on a change."""

    def scale(self, request: ScaleRequest) -> None: ...


class CommandProvider:
    """``--scale-cmd``: the operator's command, the request as JSON on stdin (no shell: split like sh)."""

    def __init__(
        self, command: str, timeout: float = 60.0, stop: threading.Event | None = None, grace: float = 10.0
    ) -> None:
        """``stop``: once set (the autoscaler is stopping), a command in flight gets ``grace`` seconds to
        finish, then its process group is killed."""
        try:
            self.argv = shlex.split(command)
        except ValueError as exc:
            raise UsageError(f"--scale-cmd {command!r} cannot be split into words: {exc}") from None
        if not self.argv:
            raise UsageError("--scale-cmd is empty")
        self.timeout = timeout
        self.stop, self.grace = stop, grace

    def scale(self, request: ScaleRequest) -> None:
        done = run_with_input(
            self.argv, request.to_json() + "\n", self.timeout, cancel=self.stop, grace=self.grace
        )
        if done.returncode != 0:
            said = [ln.strip() for ln in (done.stderr or done.stdout or "").splitlines() if ln.strip()]
            last = f": {said[-1][:200]}" if said else ""
            raise FleetciError(f"scale command {self.argv[0]} exited {done.returncode}{last}")


class DockerProvider:
    """``--docker-image``: containers of ``image`` per pool, via the docker SDK (extra ``[autoscale]``)."""

    def __init__(
        self, image: str, docker_host: str = "", network: str = "", command: list[str] | None = None
    ) -> None:
        try:
            import docker
        except ImportError:
            raise UsageError(
                "--docker-image needs the docker SDK: pip install 'fleetci[autoscale]'"
            ) from None
        where = docker_host or "the default docker socket"
        try:
            self.client: Any = (
                docker.DockerClient(base_url=docker_host, timeout=30)
                if docker_host
                else docker.from_env(timeout=30)
            )
            self.client.ping()
        except Exception as exc:
            first = " ".join(str(exc).split())[:200]
            raise FleetciError(f"no docker daemon reachable at {where}: {first}") from None
        self.image, self.network, self.command = image, network, command
        # asked every cycle, not only when the desired count changes: exited (ephemeral) runners are
        # replaced at once
        self.every_cycle = True

    def containers(self, request: ScaleRequest) -> list[Any]:
        pool = ",".join(request.labels)
        found = self.client.containers.list(
            all=True, filters={"label": [f"{LABEL_OWNER}={request.owner}", f"{LABEL_POOL}={pool}"]}
        )
        return list(found)

    def scale(self, request: ScaleRequest) -> None:
        try:
            self._scale(request)
        except FleetciError:
            raise
        except Exception as exc:  # docker.errors.*, requests' connection errors
            first = " ".join(str(exc).split())[:200]
            raise FleetciError(f"docker: {type(exc).__name__}: {first}") from None

    def _scale(self, request: ScaleRequest) -> None:
        pool = ",".join(request.labels)
        mine = self.containers(request)
        for gone in [c for c in mine if c.status in ("exited", "dead")]:
            gone.remove(force=True)
        alive = sorted(
            (c for c in mine if c.status not in ("exited", "dead")), key=lambda c: c.attrs["Created"]
        )
        for extra in alive[request.desired :][::-1]:  # the newest go first
            extra.remove(force=True)
        options: dict[str, Any] = {"network": self.network} if self.network else {}
        for _ in range(request.desired - len(alive)):
            self.client.containers.run(
                self.image,
                self.command,
                detach=True,
                name=f"fleetci-runner-{uuid.uuid4().hex[:12]}",
                labels={LABEL_OWNER: request.owner, LABEL_POOL: pool},
                environment={"RUNNER_LABELS": pool, "RUNNER_OWNER": request.owner},
                **options,
            )
