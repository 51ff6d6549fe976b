"""Providers: what turns a pool's desired count into runners.

- :class:`CommandProvider` (``--scale-cmd CMD``) runs the operator's command for each pool whose desired
  count changed (and again, at most every ``max(poll, 30 s)``, while the pool's online runners differ),
  with ``{"owner", "labels", "current", "desired", "queued", "busy", "idle"}`` as JSON on stdin. A
  non-zero exit or a timeout is a one-line error; the autoscaler logs it and asks again after a per-pool
  back-off.
- :class:`DockerProvider` (``--docker-image IMAGE``) keeps ``desired`` containers of the image per pool,
  found by their labels (``fleetci.autoscale.owner``/``fleetci.autoscale.pool``). Each container gets
  ``RUNNER_NAME`` (its own name: the image registers under it), ``RUNNER_LABELS`` and ``RUNNER_OWNER``;
  how it gets a registration is the image's business (see docs/autoscale.md). The provider starts the
  missing ones; removes exited ones (ephemeral runners that finished their job) and ones stuck in
  ``created`` (a start that failed) after ``CREATED_GRACE_S``; when shrinking, removes unregistered
  containers first, then idle ones (newest first) and NEVER one whose runner the cycle read as busy; and
  drains the containers of pools no longer configured the same way. It is asked every cycle
  (``every_cycle``), so a finished runner is replaced without waiting for the desired count to change.
- Anything with a ``scale(request)`` method is a :class:`Provider` for embedding.
"""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from fleetci.errors import FleetciError, UsageError
from fleetci.process import run_with_input

LABEL_OWNER = "fleetci.autoscale.owner"
LABEL_POOL = "fleetci.autoscale.pool"
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")
CREATED_GRACE_S = 60.0  # a container still ``created`` after this never started (bad image, OCI error)


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
    # every runner of the owner the cycle read: name -> busy (not in the command's JSON: 5,000 names)
    runners: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def to_json(self) -> str:
        fields = ("owner", "labels", "current", "desired", "queued", "busy", "idle")
        return json.dumps({k: getattr(self, k) for k in fields}, sort_keys=True)


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
        self,
        image: str,
        docker_host: str = "",
        network: str = "",
        command: list[str] | None = None,
        *,
        pools: Iterable[str] | None = None,
        created_grace: float = CREATED_GRACE_S,
    ) -> None:
        """``pools``: the configured pools' names; containers of any other pool of the owner are drained
        (None: left alone, for an embedding that scales only some pools)."""
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
        self.pools = None if pools is None else frozenset(pools)
        self.created_grace = created_grace
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
        owners = self.client.containers.list(all=True, filters={"label": [f"{LABEL_OWNER}={request.owner}"]})
        mine = [c for c in owners if c.labels.get(LABEL_POOL) == pool]
        if self.pools is not None:  # pools no longer configured drain: their idle runners go now
            orphans = [c for c in owners if c.labels.get(LABEL_POOL) not in self.pools]
            self._shrink(self._alive(orphans), 0, request.runners)
        alive = self._shrink(self._alive(mine), request.desired, request.runners)
        options: dict[str, Any] = {"network": self.network} if self.network else {}
        for _ in range(request.desired - len(alive)):
            name = f"fleetci-runner-{uuid.uuid4().hex[:12]}"
            self.client.containers.run(
                self.image,
                self.command,
                detach=True,
                name=name,
                labels={LABEL_OWNER: request.owner, LABEL_POOL: pool},
                environment={"RUNNER_NAME": name, "RUNNER_LABELS": pool, "RUNNER_OWNER": request.owner},
                **options,
            )

    def _alive(self, found: list[Any]) -> list[Any]:
        """Remove the dead (exited, or ``created`` and never started within the grace); the others."""
        now, alive = time.time(), []
        for c in found:
            stuck = c.status == "created" and now - _created_at(c) >= self.created_grace
            if c.status in ("exited", "dead") or stuck:
                c.remove(force=True)
            else:
                alive.append(c)
        return alive

    def _shrink(self, alive: list[Any], desired: int, runners: dict[str, bool]) -> list[Any]:
        """Down to ``desired``: unregistered containers first, then idle ones, newest first; a busy one
        is never removed (the pool stays above ``desired`` until its job ends). The containers kept."""
        if len(alive) <= desired:
            return alive
        free = [c for c in alive if not runners.get(c.name, False)]
        free.sort(key=lambda c: (c.name in runners, -_created_at(c)))  # unregistered, then newest
        gone = {c.id for c in free[: len(alive) - desired]}
        for c in free:
            if c.id in gone:
                c.remove(force=True)
        return [c for c in alive if c.id not in gone]


def _created_at(container: Any) -> float:
    """Docker's ``Created`` (RFC 3339 with nanoseconds) as a Unix time; 0 when unreadable."""
    found = _RFC3339.fullmatch(str(container.attrs.get("Created", "")))
    if found is None:
        return 0.0
    zone = found.group(2) or "Z"
    return datetime.fromisoformat(found.group(1) + ("+00:00" if zone == "Z" else zone)).timestamp()
